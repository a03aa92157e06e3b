use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "accounts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub name: String,
    /// None: the default, 20% of the tokens in unexpired lots.
    pub low_balance_threshold: Option<i64>,
    /// Whether the account-wide allowed-product list applies.
    pub restricts_products: bool,
    pub created_at: DateTimeUtc,
    /// How many alert rules the account has (rule 25), so a charging batch reads
    /// rules only for accounts that have some.
    pub alert_rules: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
