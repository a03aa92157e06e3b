//! The port through which committed notifications reach whoever sends them.
//!
//! The rules record a notification in the same transaction as the change that
//! caused it (the outbox); after that transaction commits, the domain hands the new
//! ids to the [`Deliveries`] the process installed (the job queue, or the workers
//! delivering in place). A lost hand-over loses nothing: the periodic dispatcher
//! finds every due notification in the outbox.

use crate::store::Db;
use crate::units::NotificationId;
use futures::future::BoxFuture;
use std::sync::{Arc, RwLock};

/// Takes notifications whose transaction has committed.
pub trait Deliveries: Send + Sync + 'static {
    /// Hands `notification_ids` on. Failures are the implementer's to log, never the
    /// caller's: the change they belong to has committed already.
    fn committed<'a>(&'a self, notification_ids: &'a [NotificationId]) -> BoxFuture<'a, ()>;
}

/// Where a process's [`Deliveries`] is kept: shared by every clone of a database
/// handle, empty until the process installs one (then the dispatcher alone delivers).
#[derive(Default)]
pub struct DeliverySlot(RwLock<Option<Arc<dyn Deliveries>>>);

impl std::fmt::Debug for DeliverySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeliverySlot")
    }
}

impl DeliverySlot {
    pub fn install(&self, deliveries: Arc<dyn Deliveries>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(deliveries);
    }

    /// Hands committed notifications to the installed port, if any.
    pub async fn committed(&self, notification_ids: &[NotificationId]) {
        if notification_ids.is_empty() {
            return;
        }
        let port = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(port) = port {
            port.committed(notification_ids).await;
        }
    }
}

impl Db {
    /// Installs where this process's committed notifications go (every clone of this
    /// handle shares it).
    pub fn install_deliveries(&self, deliveries: Arc<dyn Deliveries>) {
        self.shared::<DeliverySlot>().install(deliveries);
    }

    pub(crate) fn deliveries(&self) -> Arc<DeliverySlot> {
        self.shared::<DeliverySlot>()
    }
}
