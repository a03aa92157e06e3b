use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "charges")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub account_id: i32,
    pub user_id: i32,
    pub product_id: i32,
    pub version: Option<String>,
    pub tokens: i64,
    pub cost_minor: i64,
    pub window_starts_at: DateTimeUtc,
    pub window_ends_at: DateTimeUtc,
    /// The session whose open or renewal paid it.
    pub session_id: Option<String>,
    /// Set when a short launch was refunded (rule 21).
    pub refunded_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
