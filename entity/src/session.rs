use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub account_id: i32,
    pub user_id: i32,
    pub product_id: i32,
    pub device_id: String,
    pub version: Option<String>,
    pub source: String,
    pub state: String,
    /// The last heartbeat said the product was in use.
    pub active: bool,
    pub started_at: DateTimeUtc,
    /// None until the first heartbeat.
    pub last_heartbeat_at: Option<DateTimeUtc>,
    pub ended_at: Option<DateTimeUtc>,
    pub deny_reason: Option<String>,
    /// The charge of the open that started the session, if it charged.
    pub open_charge_id: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
