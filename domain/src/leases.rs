// TEMPORARY compile shim until the leases branch merges. DO NOT COMMIT.
use crate::error::{DomainError, Result};
use crate::store::Db;
use chrono::{DateTime, Utc};
pub struct LeaseClaims {
    pub account_id: i32,
    pub user_id: i32,
    pub product_code: String,
    pub source: crate::vocabulary::AccessSource,
    pub session_id: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}
pub async fn issue_lease(_db: &Db, _claims: &LeaseClaims) -> Result<String> {
    Err(DomainError::Internal("shim".into()))
}
