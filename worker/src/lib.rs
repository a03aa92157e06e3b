//! Daypass's background jobs: thin adapters that schedule and run `domain` use-cases
//! on apalis. `daypass serve` embeds them; `daypass-worker` runs them alone.
//!
//! Jobs (all registered in [`build_monitor`]):
//! - the expiry sweep, every minute (apalis-cron);
//! - the lapsed-session sweep, every minute;
//! - the usage rollup, every five minutes;
//! - the outbox dispatcher, every 10 seconds: records due expiry reminders and
//!   scheduled reports, and (re-)enqueues every due notification;
//! - the notification sender, consuming the job queue (SQLite, PostgreSQL or Redis);
//! - the webhook sender, beside the queue (see [`webhooks`]).

pub mod email;
pub mod expiry;
pub mod mailer;
pub mod notify;
pub mod report_email;
pub mod rollup;
pub mod sessions;
pub mod webhooks;

use apalis::prelude::*;
use daypass_domain::{Clock, Db};
use daypass_ops::config::SharedConfig;
use daypass_queue::{JobQueue, SendFn, restarting_monitor};
use email::MailSettings;
use mailer::Mailer;
use std::{future::Future, str::FromStr, sync::Arc};

/// What every job needs.
#[derive(Clone)]
pub struct WorkerDeps {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    pub mailer: Arc<Mailer>,
    pub mail: MailSettings,
    /// Where send jobs go.
    pub queue: JobQueue,
    pub webhooks: Arc<webhooks::WebhookSender>,
}

impl WorkerDeps {
    /// The mailer and the e-mails' settings from the configuration, beside the
    /// database and the queue the process already holds.
    pub fn new(
        db: Db,
        clock: Arc<dyn Clock>,
        queue: JobQueue,
        config: &SharedConfig,
    ) -> anyhow::Result<WorkerDeps> {
        let mailer = Mailer::from_config(config.smtp_url.as_deref(), &config.mail_dir)?;
        let mail = MailSettings {
            from: config.mail_from.clone(),
            public_url: config.public_url.clone(),
        };
        // Fail at start, not at the first e-mail, on a sender that cannot parse.
        mail.from.parse::<lettre::message::Mailbox>().map_err(|e| {
            anyhow::anyhow!("DAYPASS_MAIL_FROM {:?} is not a mailbox: {e}", mail.from)
        })?;
        let guard = daypass_domain::webhooks::guard::AddressGuard::new(
            &config.env,
            config.webhook_allow_hosts.as_deref(),
        );
        db.install_webhook_guard(guard.clone());
        let webhooks = webhooks::WebhookSender::new(db.clone(), clock.clone(), guard)?;
        Ok(WorkerDeps {
            db,
            clock,
            mailer: Arc::new(mailer),
            mail,
            queue,
            webhooks: Arc::new(webhooks),
        })
    }
}

/// The dispatcher's schedule: every 10 seconds.
pub const DISPATCH_SCHEDULE: &str = "*/10 * * * * *";

async fn on_dispatch_tick(
    _tick: apalis_cron::Tick,
    deps: Data<WorkerDeps>,
) -> Result<(), BoxDynError> {
    daypass_ops::record_cron_job("outbox_dispatch", notify::dispatch_due(&deps).await)?;
    Ok(())
}

/// One place that registers every job.
pub fn build_monitor(deps: WorkerDeps) -> Monitor {
    let sweep_deps = deps.clone();
    let dispatch_deps = deps.clone();
    let rollup_deps = deps.clone();
    let lapse_deps = deps.clone();
    let send_deps = deps.clone();
    let send: SendFn = Arc::new(move |job| {
        let deps = send_deps.clone();
        Box::pin(async move {
            // Send failures are recorded on the notification and retried by the
            // dispatcher with backoff; only an unreachable database fails the job.
            notify::deliver(&deps, job.notification_id)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    });
    let monitor = restarting_monitor()
        .register(move |_restarts| {
            WorkerBuilder::new("expiry-sweep")
                .backend(expiry::scheduler())
                .data(sweep_deps.clone())
                .build(expiry::on_tick)
        })
        .register(move |_restarts| {
            WorkerBuilder::new("session-lapses")
                .backend(sessions::scheduler())
                .data(lapse_deps.clone())
                .build(sessions::on_tick)
        })
        .register(move |_restarts| {
            WorkerBuilder::new("usage-rollup")
                .backend(rollup::scheduler())
                .data(rollup_deps.clone())
                .build(rollup::on_tick)
        })
        .register(move |_restarts| {
            let schedule =
                cron::Schedule::from_str(DISPATCH_SCHEDULE).expect("valid cron schedule");
            WorkerBuilder::new("outbox-dispatcher")
                .backend(apalis_cron::CronScheduler::new(schedule))
                .data(dispatch_deps.clone())
                .build(on_dispatch_tick)
        });
    deps.queue.register_consumer(monitor, send)
}

/// Runs every worker until `shutdown` resolves, then lets running jobs finish.
pub async fn run_until(
    deps: WorkerDeps,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sender = tokio::spawn(deps.webhooks.clone().run());
    let stopped = build_monitor(deps)
        .run_with_signal(async move {
            shutdown.await;
            Ok(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("workers stopped with an error: {e}"));
    // An attempt cut short leaves its lease; the delivery is tried again after it.
    sender.abort();
    stopped
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceReport {
    pub lots_expired: u64,
    pub sessions_lapsed: u64,
    pub days_rolled: u32,
    pub notifications_sent: usize,
    pub notifications_failed: usize,
    pub webhooks_tried: usize,
}

/// Runs every periodic job once, now, and returns when all are done (the test
/// clock's `runMaintenance`): the expiry sweep, lapsed sessions (whose refunds the
/// rollup must see), the usage rollup, then every due notification and webhook
/// delivery is tried once.
pub async fn run_maintenance_now(deps: &WorkerDeps) -> daypass_domain::Result<MaintenanceReport> {
    let lots_expired = expiry::sweep_now(deps).await?;
    let sessions_lapsed = sessions::end_lapsed_now(deps).await?.lapsed;
    let days_rolled = rollup::roll_up_now(deps).await?;
    let (mut notifications_sent, mut notifications_failed) = notify::deliver_due_now(deps).await?;
    let webhooks_tried = deps.webhooks.deliver_due_now().await?;
    // The e-mails that webhook failures called for (an endpoint disabled).
    let (sent, failed) = notify::deliver_due_now(deps).await?;
    notifications_sent += sent;
    notifications_failed += failed;
    Ok(MaintenanceReport {
        webhooks_tried,
        lots_expired,
        sessions_lapsed,
        days_rolled,
        notifications_sent,
        notifications_failed,
    })
}
