//! The rules of Daypass (PRODUCT.md), and nothing else.
//!
//! Pure rules take `now` as an argument (see [`rules`]); use-cases run them in
//! transactions over a [`Db`]. Every use-case takes the [`Actor`] it acts for and
//! checks its rights here, so no caller can forget a tenancy check.

pub mod access;
pub mod accounts;
pub mod alerts;
pub mod auth;
pub mod catalog;
pub mod charging;
pub mod clock;
pub mod conditions;
pub mod delivery;
pub mod error;
pub mod leases;
pub mod ledger;
pub mod lots;
pub mod notifications;
pub mod page;
pub mod reports;
pub mod rollups;
pub mod rules;
#[cfg(test)]
mod rules_properties;
pub mod scheduled_reports;
pub mod sessions;
pub mod store;
pub mod subscriptions;
pub mod units;
pub mod users;
pub mod vocabulary;
pub mod webhooks;

pub use access::Actor;
pub use clock::{Clock, SystemClock, TestClock};
pub use daypass_entity as entity;
pub use error::{DomainError, Result};
pub use store::Db;
pub use vocabulary::*;

impl Db {
    /// Applies pending migrations and seeds the price list, in one write transaction,
    /// one process at a time (see [`Db::migrate_then`]).
    pub async fn migrate(&self) -> Result<()> {
        self.migrate_then(|tx| Box::pin(catalog::seed_price_list(tx)))
            .await
    }
}
