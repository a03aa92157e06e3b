use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "report_subscriptions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub account_id: i32,
    /// WEEKLY or MONTHLY.
    pub schedule: String,
    /// JSON array of e-mail addresses.
    pub recipients: String,
    pub created_by: i32,
    pub created_at: DateTimeUtc,
    /// When the next period's e-mail is due.
    pub next_run_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
