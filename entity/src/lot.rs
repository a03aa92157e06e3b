use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "lots")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub account_id: i32,
    pub quantity: i64,
    pub remaining: i64,
    pub used: i64,
    pub expired: i64,
    pub unit_price_minor: i64,
    pub currency: String,
    pub purchased_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub status: String,
    pub idempotency_key: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
