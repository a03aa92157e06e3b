//! Webhooks (rule 26): endpoints an admin registers, events written in the same
//! transaction as their cause, and deliveries a sender POSTs with Standard Webhooks
//! signatures, retried with rule 15's backoff and every attempt kept.

mod deliveries;
mod endpoints;
mod events;
pub mod guard;
pub mod signature;

pub use deliveries::*;
pub use endpoints::*;
pub(crate) use events::*;

use crate::store::Db;
use std::sync::{Arc, RwLock};

crate::vocabulary::vocabulary!(
    /// What an endpoint may be sent (rule 26); TEST goes to any endpoint on request.
    WebhookEvent {
        BalanceLow => "BALANCE_LOW",
        TokensExhausted => "TOKENS_EXHAUSTED",
        LotExpiring => "LOT_EXPIRING",
        LotExpired => "LOT_EXPIRED",
        PurchaseCompleted => "PURCHASE_COMPLETED",
        ChargeRefunded => "CHARGE_REFUNDED",
        BudgetReached => "BUDGET_REACHED",
        Test => "TEST",
    }
);
crate::vocabulary::vocabulary!(
    /// PENDING until the first attempt, FAILED while retries remain, DELIVERED on a
    /// 2xx, DEAD when given up (its endpoint disabled or deleted); a replay sends a
    /// DEAD or DELIVERED one again.
    DeliveryState { Pending => "PENDING", Delivered => "DELIVERED", Failed => "FAILED", Dead => "DEAD" }
);

/// The process's webhook settings, shared by every clone of a database handle.
#[derive(Default)]
pub struct WebhookSettings {
    guard: RwLock<guard::AddressGuard>,
    /// Woken after a transaction that wrote deliveries commits, so the sender
    /// starts at once instead of at its next poll.
    wake: tokio::sync::Notify,
}

impl Db {
    /// Installs where this process's webhooks may go (DAYPASS_ENV,
    /// DAYPASS_WEBHOOK_ALLOW_HOSTS).
    pub fn install_webhook_guard(&self, guard: guard::AddressGuard) {
        *self
            .webhook_settings()
            .guard
            .write()
            .unwrap_or_else(|e| e.into_inner()) = guard;
    }

    pub fn webhook_guard(&self) -> guard::AddressGuard {
        self.webhook_settings()
            .guard
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves when deliveries were committed since the last call (or at once, if
    /// some were and nobody waited).
    pub async fn webhook_deliveries_committed(&self) {
        self.webhook_settings().wake.notified().await
    }

    /// Tells this process's sender that deliveries were committed.
    pub(crate) fn wake_webhook_sender(&self) {
        self.webhook_settings().wake.notify_one();
    }

    fn webhook_settings(&self) -> Arc<WebhookSettings> {
        self.shared::<WebhookSettings>()
    }
}
