use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "notifications")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub account_id: i32,
    pub kind: String,
    #[sea_orm(unique)]
    pub dedupe_key: String,
    /// JSON array of e-mail addresses, fixed when the notification is created.
    pub recipients: String,
    /// JSON facts the e-mail is rendered from (balance, threshold, lots …).
    pub payload: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    /// While set and in the future, one sender holds the notification.
    pub lease_until: Option<DateTimeUtc>,
    pub sent_at: Option<DateTimeUtc>,
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
