//! The rows the generator writes, as the domain writes them (`lots::purchase`,
//! `charging::charge_and_open`, `lots::sweep_expired`).

use chrono::{DateTime, Utc};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct LotRow {
    pub id: i32,
    pub account_id: i32,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub currency: Arc<str>,
    pub purchased_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub idempotency_key: String,
    pub created_at: DateTime<Utc>,
}

/// A lot's counts when the year is over (written over the row inserted at purchase).
#[derive(Debug, Clone)]
pub struct LotFinal {
    pub id: i32,
    pub remaining: i64,
    pub used: i64,
    pub expired: i64,
    pub status: &'static str,
}

#[derive(Debug, Clone)]
pub struct ChargeRow {
    pub id: i32,
    pub account_id: i32,
    pub user_id: i32,
    pub product_id: i32,
    pub version: Option<Arc<str>>,
    pub tokens: i64,
    pub cost_minor: i64,
    pub window_starts_at: DateTime<Utc>,
    pub window_ends_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct LedgerRow {
    pub id: i32,
    pub account_id: i32,
    pub kind: &'static str,
    pub tokens: i64,
    pub lot_id: i32,
    pub charge_id: Option<i32>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct OpenRow {
    pub id: i32,
    pub account_id: i32,
    pub user_id: i32,
    pub product_id: Option<i32>,
    pub product_code: Arc<str>,
    pub version: Option<Arc<str>>,
    pub at: DateTime<Utc>,
    pub granted: bool,
    pub source: Option<&'static str>,
    pub deny_reason: Option<&'static str>,
    pub charge_id: Option<i32>,
    pub tokens: i64,
}

#[derive(Debug, Clone)]
pub struct WindowRow {
    pub user_id: i32,
    pub product_id: i32,
    pub charge_id: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// Rows to write together, in foreign-key order: lots, charges, then the ledger and
/// the opens that point at them.
#[derive(Debug, Default)]
pub struct Batch {
    pub lots: Vec<LotRow>,
    pub charges: Vec<ChargeRow>,
    pub ledger: Vec<LedgerRow>,
    pub opens: Vec<OpenRow>,
    /// The last simulated day in this batch (for progress).
    pub through: Option<chrono::NaiveDate>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.lots.is_empty()
            && self.charges.is_empty()
            && self.ledger.is_empty()
            && self.opens.is_empty()
    }
}
