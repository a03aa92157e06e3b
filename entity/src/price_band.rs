use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "price_bands")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub min_quantity: i64,
    pub max_quantity: i64,
    pub unit_price_minor: i64,
    pub currency: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
