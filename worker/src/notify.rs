//! Delivering the notification outbox: one attempt per job, the outcome recorded
//! in the notification itself, and a periodic dispatcher that (re-)enqueues every
//! due notification, so a crash between commit and push, or mid-send, loses none.

use crate::WorkerDeps;
use crate::{email, report_email};
use daypass_domain::notifications::{self, Delivery, NotificationKind, NotificationState};
use daypass_domain::scheduled_reports;

/// What one delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Sent,
    Failed(NotificationState),
    /// Sent, dead, not due, or held by another sender: nothing done.
    Skipped,
}

/// One attempt to deliver notification `id`.
pub async fn deliver(deps: &WorkerDeps, id: i32) -> daypass_domain::Result<Attempt> {
    let now = deps.clock.now();
    let Some(delivery) = notifications::lease_for_delivery(&deps.db, id, now).await? else {
        return Ok(Attempt::Skipped);
    };
    if delivery.recipients.is_empty() {
        notifications::mark_dead(&deps.db, id, "the account has no active admin to notify").await?;
        return Ok(Attempt::Failed(NotificationState::Dead));
    }
    let sent = match compose(deps, &delivery).await {
        Ok(message) => deps.mailer.send(message).await,
        Err(e) => Err(e),
    };
    daypass_ops::record_email(if sent.is_ok() { "sent" } else { "failed" });
    match sent {
        Ok(()) => {
            notifications::mark_sent(&deps.db, id, deps.clock.now()).await?;
            tracing::info!(notification = id, kind = %delivery.kind, "notification sent");
            Ok(Attempt::Sent)
        }
        Err(error) => {
            let state =
                notifications::mark_failed(&deps.db, &delivery, &error, deps.clock.now()).await?;
            tracing::warn!(notification = id, attempt = delivery.attempt, %state, %error, "notification not sent");
            Ok(Attempt::Failed(state))
        }
    }
}

/// The e-mail of a delivery; a scheduled report's is written from the report as it
/// reads now, with its CSV attached.
async fn compose(deps: &WorkerDeps, delivery: &Delivery) -> Result<lettre::Message, String> {
    match delivery.kind {
        NotificationKind::ScheduledReport => {
            let content = scheduled_reports::report_content(&deps.db, &delivery.facts)
                .await
                .map_err(|e| format!("reading the report: {e}"))?;
            report_email::render_report(delivery, &content, &deps.mail)
        }
        _ => email::render(delivery, &deps.mail),
    }
}

/// The periodic pass: expiry reminders and scheduled reports that came due, then
/// every due notification enqueued.
pub async fn dispatch_due(deps: &WorkerDeps) -> daypass_domain::Result<usize> {
    let now = deps.clock.now();
    notifications::record_expiry_reminders(&deps.db, now).await?;
    // A report that cannot be recorded now is tried again on the next tick; the
    // e-mails already waiting still go.
    if let Err(error) = scheduled_reports::record_due_reports(&deps.db, now).await {
        tracing::error!(%error, "recording due scheduled reports failed");
    }
    let due = notifications::due_notifications(&deps.db, now, 500).await?;
    deps.queue.push_notifications(&due).await;
    Ok(due.len())
}

/// Delivers every due notification now, in this task, and returns when each has
/// been sent or has failed (the test clock's `runMaintenance`).
pub async fn deliver_due_now(deps: &WorkerDeps) -> daypass_domain::Result<(usize, usize)> {
    let now = deps.clock.now();
    notifications::record_expiry_reminders(&deps.db, now).await?;
    scheduled_reports::record_due_reports(&deps.db, now).await?;
    let (mut sent, mut failed) = (0, 0);
    for id in notifications::due_notifications(&deps.db, now, 10_000).await? {
        match deliver(deps, id).await? {
            Attempt::Sent => sent += 1,
            Attempt::Failed(_) => failed += 1,
            Attempt::Skipped => {}
        }
    }
    // Attempts other senders (the queue's consumers) have under way finish too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while notifications::in_flight(&deps.db, deps.clock.now()).await? > 0
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    Ok((sent, failed))
}
