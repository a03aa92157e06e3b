//! The queue as the domain's delivery port: notifications committed by a use-case
//! become send jobs.

use crate::{JobQueue, SendNotification};
use daypass_domain::delivery::Deliveries;
use daypass_domain::units::NotificationId;
use futures::future::BoxFuture;

impl JobQueue {
    /// Enqueues one send job per notification. A failed push is only logged: the
    /// outbox dispatcher finds the notification anyway.
    pub async fn push_notifications(&self, notification_ids: &[i32]) {
        for &id in notification_ids {
            if let Err(e) = self
                .push(SendNotification {
                    notification_id: id,
                })
                .await
            {
                tracing::warn!(notification = id, error = %e, "could not enqueue; the dispatcher will");
            }
        }
    }
}

impl Deliveries for JobQueue {
    fn committed<'a>(&'a self, notification_ids: &'a [NotificationId]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let ids: Vec<i32> = notification_ids.iter().map(|id| id.get()).collect();
            self.push_notifications(&ids).await
        })
    }
}
