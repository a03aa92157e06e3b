use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "opens")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub account_id: i32,
    pub user_id: i32,
    /// None when the code named no catalog product.
    pub product_id: Option<i32>,
    pub product_code: String,
    pub version: Option<String>,
    pub at: DateTimeUtc,
    pub granted: bool,
    pub source: Option<String>,
    pub deny_reason: Option<String>,
    pub charge_id: Option<i32>,
    pub tokens: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
