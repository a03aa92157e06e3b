//! The job queue for background jobs (today: sending notifications from the outbox),
//! on apalis 1.0: the producer the domain's committed notifications go to, the job's
//! payload, and the consumer the workers register. The backend is chosen by the URL (`DAYPASS_QUEUE_URL`):
//!
//! | URL            | storage                                                    |
//! |----------------|------------------------------------------------------------|
//! | `sqlite://…`   | `apalis_sqlite::SqliteStorage` (tables `Jobs`, `Workers`)  |
//! | `postgres://…` | `apalis_postgres::PostgresStorage` (schema `apalis`)       |
//! | `redis://…`    | `apalis_redis::RedisStorage` (keys `<queue>:…`)            |
//!
//! What this module takes care of, so that callers don't have to:
//!
//! * **Its own pool.** The queue never shares the ledger's connections; it gets a URL
//!   and opens its own sqlx pool. On SQLite it runs apalis's *migrations* but not
//!   `SqliteStorage::setup`, which would also switch the connection it runs on to
//!   `PRAGMA synchronous = OFF`. The queue's connections are WAL with
//!   `synchronous = NORMAL` (as the ledger's) and a busy timeout, so queue writes and
//!   the ledger's `BEGIN IMMEDIATE` transactions wait for each other instead of failing
//!   with "database is locked". Every apalis transaction starts with a write, so the
//!   busy timeout applies to it.
//! * **Long jobs are not re-run while their worker is alive.** apalis re-enqueues the
//!   jobs of a *worker* whose heartbeat is older than `heartbeat_interval ×
//!   missed_heartbeats`, whatever the job's run time. The heartbeat is sent from the
//!   backend's `poll_ready`, which stops while the backend holds a fetched-but-not-started
//!   batch: so the fetch batch is 1 and a busy worker keeps heart-beating. Job futures
//!   must not block the thread (they run on the monitor's task).
//! * **Bounded retries with backoff, no storms.** Failed attempts are retried in-process
//!   by apalis's `BackoffRetryPolicy` with tower's jittered exponential backoff, at most
//!   `max_attempts` attempts in all; the last failure is turned into an `AbortError`,
//!   so the job ends `Killed` on every backend (the SQL backends would otherwise keep it
//!   fetchable and Redis would re-schedule it up to 25 times).
//! * **Unique worker names.** Each consumer registers as `<queue>-<pid>-<random>`, so
//!   `daypass serve` and `daypass-worker` (or a restart within the heartbeat window)
//!   never collide on the backends' worker registration; a dead worker's jobs are
//!   re-enqueued by the live workers' heartbeats after the orphan timeout.

mod deliveries;

use anyhow::{Context as _, bail};
use apalis::layers::retry::{
    HasherRng,
    backoff::{ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff},
};
use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;
use daypass_ops::QueueProbe;
use daypass_ops::config::SharedConfig;
use futures::{FutureExt, future::BoxFuture};
use serde::{Deserialize, Serialize};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use std::{panic::AssertUnwindSafe, str::FromStr, sync::Arc, time::Duration};

/// The job: send (or retry sending) one notification from the outbox table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SendNotification {
    pub notification_id: i32,
}

/// What the consumer does with a job. `Err` = the attempt failed (retried later with
/// backoff, up to [`QueueConfig::max_attempts`] attempts).
pub type SendFn =
    Arc<dyn Fn(SendNotification) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Tuning of the queue. [`Default`] is for production; tests shorten the intervals.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Queue name: the SQL `job_type`, the Redis key prefix. Different names never see
    /// each other's jobs.
    pub queue: String,
    /// Jobs one consumer runs at once (retries waiting for their backoff included).
    pub concurrency: usize,
    /// Attempts per job in all (first run included), then the job is given up.
    pub max_attempts: usize,
    /// Delay before the first retry; each further retry doubles it (plus up to 50 %
    /// jitter), capped at `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often a consumer tells the backend it is alive (at least 1 s: the SQLite
    /// and Redis backends count in whole seconds).
    pub heartbeat_interval: Duration,
    /// A worker silent for `heartbeat_interval × missed_heartbeats` is dead and its
    /// jobs are re-enqueued. Counted in whole seconds, so keep it well above 1 interval.
    pub missed_heartbeats: usize,
    /// How often an idle consumer looks for new jobs.
    pub poll_interval: Duration,
    /// SQLite: how long a queue write waits for the database's write lock (the ledger
    /// waits 30 s for it the other way round).
    pub sqlite_busy_timeout: Duration,
    /// Connections of the queue's own pool (SQLite, PostgreSQL).
    pub pool_size: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            queue: "daypass.send_notification".into(),
            concurrency: 4,
            max_attempts: 5,
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(10),
            missed_heartbeats: 6,
            poll_interval: Duration::from_secs(1),
            sqlite_busy_timeout: Duration::from_secs(30),
            pool_size: 4,
        }
    }
}

impl QueueConfig {
    /// After this long without a heartbeat, a worker's jobs are re-enqueued.
    pub fn orphan_timeout(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats as u32
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.queue.is_empty() {
            bail!("queue name is empty");
        }
        if self.concurrency == 0 || self.max_attempts == 0 || self.pool_size == 0 {
            bail!("concurrency, max_attempts and pool_size must be at least 1");
        }
        if self.heartbeat_interval < Duration::from_secs(1) {
            bail!("heartbeat_interval must be at least 1 s (backends count whole seconds)");
        }
        if self.missed_heartbeats < 2 {
            bail!("missed_heartbeats must be at least 2");
        }
        if self.backoff_max.is_zero() || self.backoff_min > self.backoff_max {
            bail!("need 0 <= backoff_min <= backoff_max and backoff_max > 0");
        }
        if self.poll_interval.is_zero() {
            bail!("poll_interval must be positive");
        }
        Ok(())
    }

    fn retry_policy(&self) -> BackoffRetryPolicy<ExponentialBackoff> {
        let backoff = ExponentialBackoffMaker::new(
            self.backoff_min,
            self.backoff_max,
            0.5,
            HasherRng::default(),
        )
        .expect("validated backoff bounds")
        .make_backoff();
        // `retries` counts re-runs after the first attempt.
        RetryPolicy::retries(self.max_attempts - 1).with_backoff(backoff)
    }
}

/// The apalis storage behind a [`JobQueue`], one variant per backend.
#[derive(Clone)]
pub enum QueueStorage {
    Sqlite(SqliteStorage<SendNotification>),
    Postgres(PostgresStorage<SendNotification>),
    Redis(RedisStorage<SendNotification>),
}

/// A job queue on one backend: producers [`push`](JobQueue::push), consumers are
/// registered on an apalis [`Monitor`] with [`register_consumer`](JobQueue::register_consumer).
/// Cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    storage: QueueStorage,
    config: QueueConfig,
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue")
            .field("backend", &self.backend_name())
            .field("config", &self.config)
            .finish()
    }
}

impl JobQueue {
    /// Connects with the production [`QueueConfig::default`].
    pub async fn connect(url: &str) -> anyhow::Result<JobQueue> {
        Self::connect_with(url, QueueConfig::default()).await
    }

    /// Connects to the queue the configuration names (DAYPASS_QUEUE_URL, else the
    /// database; DAYPASS_QUEUE_NAME, else the default name), tuned for production.
    pub async fn connect_configured(config: &SharedConfig) -> anyhow::Result<JobQueue> {
        let mut queue_config = QueueConfig::default();
        if let Some(name) = config.queue_name() {
            queue_config.queue = name.to_owned();
        }
        Self::connect_with(config.queue_url(), queue_config).await
    }

    /// Connects to `sqlite://…`, `postgres://…` or `redis://…` with its own pool /
    /// connection and creates or migrates the backend's tables.
    pub async fn connect_with(url: &str, config: QueueConfig) -> anyhow::Result<JobQueue> {
        config.validate()?;
        let scheme = url.split(':').next().unwrap_or_default();
        let storage = match scheme {
            "sqlite" => QueueStorage::Sqlite(connect_sqlite(url, &config).await?),
            "postgres" | "postgresql" => {
                QueueStorage::Postgres(connect_postgres(url, &config).await?)
            }
            "redis" | "rediss" | "redis+unix" => {
                let conn = apalis_redis::connect(url)
                    .await
                    .context("cannot connect to the Redis job queue")?;
                let cfg = apalis_redis::Config::default()
                    .queue(&config.queue)
                    .batch_size(1)
                    .heartbeat_interval(config.heartbeat_interval)
                    .missed_heartbeats(config.missed_heartbeats);
                QueueStorage::Redis(RedisStorage::new(conn).with_config(cfg))
            }
            other => bail!("unsupported job queue URL scheme `{other}:` (sqlite, postgres, redis)"),
        };
        Ok(JobQueue { storage, config })
    }

    /// `"sqlite"`, `"postgres"` or `"redis"`.
    pub fn backend_name(&self) -> &'static str {
        match self.storage {
            QueueStorage::Sqlite(_) => "sqlite",
            QueueStorage::Postgres(_) => "postgres",
            QueueStorage::Redis(_) => "redis",
        }
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The underlying apalis storage (for inspection and tooling).
    pub fn storage(&self) -> &QueueStorage {
        &self.storage
    }

    /// Enqueues `job` to run now, with the configured attempt budget. Any number of
    /// tasks may push at once (each push works on its own clone of the storage).
    pub async fn push(&self, job: SendNotification) -> anyhow::Result<()> {
        let task = TaskBuilder::new(job)
            .max_attempts(self.config.max_attempts)
            .build();
        match &self.storage {
            QueueStorage::Sqlite(s) => s.clone().push_task(task).await?,
            QueueStorage::Postgres(s) => s.clone().push_task(task).await?,
            QueueStorage::Redis(s) => s.clone().push_task(task).await?,
        }
        Ok(())
    }

    /// Whether the queue's backend answers (a `SELECT 1` or a Redis `PING`).
    pub async fn ping(&self) -> anyhow::Result<()> {
        match &self.storage {
            QueueStorage::Sqlite(s) => {
                sqlx::query("SELECT 1").execute(s.pool()).await?;
            }
            QueueStorage::Postgres(s) => {
                sqlx::query("SELECT 1").execute(s.pool()).await?;
            }
            QueueStorage::Redis(s) => {
                let mut s = s.clone();
                let pong: String = redis::cmd("PING").query_async(s.get_connection()).await?;
                if pong != "PONG" {
                    bail!("unexpected answer to PING: {pong}");
                }
            }
        }
        Ok(())
    }

    /// Jobs of this queue waiting and running, from the backend's own statistics.
    pub async fn depth(&self) -> anyhow::Result<QueueDepth> {
        use apalis::prelude::Metrics as _;
        let stats = match &self.storage {
            QueueStorage::Sqlite(s) => s.fetch_by_queue().await?,
            QueueStorage::Postgres(s) => s.fetch_by_queue().await?,
            QueueStorage::Redis(s) => s.fetch_by_queue().await?,
        };
        let value = |title: &str| {
            stats
                .iter()
                .find(|s| s.title == title)
                .and_then(|s| s.value.parse::<f64>().ok())
                .map_or(0, |v| v.max(0.0) as u64)
        };
        Ok(QueueDepth {
            pending: value("PENDING_JOBS"),
            running: value("RUNNING_JOBS"),
        })
    }

    /// Registers a consumer of this queue on `monitor`: at most
    /// [`QueueConfig::concurrency`] jobs at once, at most [`QueueConfig::max_attempts`]
    /// attempts per job with exponential backoff in between. Call it on several
    /// monitors (or processes) to get several consumers; each has its own name.
    pub fn register_consumer(&self, monitor: Monitor, send: SendFn) -> Monitor {
        let config = self.config.clone();
        let job_ctx = JobCtx {
            send,
            max_attempts: config.max_attempts,
        };
        macro_rules! register {
            ($storage:expr) => {{
                let storage = $storage.clone();
                monitor.register(move |_restarts| {
                    WorkerBuilder::new(worker_name(&config.queue))
                        .backend(storage.clone().poll_with_interval(config.poll_interval))
                        .concurrency(config.concurrency)
                        .retry(config.retry_policy())
                        .data(job_ctx.clone())
                        .build(run_job)
                })
            }};
        }
        match &self.storage {
            QueueStorage::Sqlite(s) => register!(s),
            QueueStorage::Postgres(s) => register!(s),
            QueueStorage::Redis(s) => register!(s),
        }
    }
}

pub use daypass_ops::QueueDepth;

/// The queue as `/readyz` and `/metrics` probe it.
impl QueueProbe for JobQueue {
    fn ping(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(JobQueue::ping(self))
    }

    fn depth(&self) -> BoxFuture<'_, anyhow::Result<QueueDepth>> {
        Box::pin(JobQueue::depth(self))
    }
}

/// A monitor whose workers come back when a passing error stops them (say, the
/// database was locked or unreachable during a poll or a heartbeat) instead of
/// staying down.
pub fn restarting_monitor() -> Monitor {
    Monitor::new()
        .shutdown_timeout(Duration::from_secs(30))
        .should_restart(|ctx, error| {
            tracing::warn!(worker = %ctx.name(), %error, "worker stopped with an error; restarting");
            true
        })
}

/// What every attempt needs.
#[derive(Clone)]
struct JobCtx {
    send: SendFn,
    max_attempts: usize,
}

/// The `job` label of the queue's jobs in the metrics.
const JOB_KIND: &str = "send_notification";

/// One attempt. A panic in `send` counts as a failed attempt; the last failed attempt
/// is an [`AbortError`], which ends the job (status `Killed`) on every backend.
async fn run_job(
    job: SendNotification,
    attempt: Attempt,
    ctx: Data<JobCtx>,
) -> Result<(), BoxDynError> {
    let attempt = attempt.current();
    let id = job.notification_id;
    let result = AssertUnwindSafe((ctx.send)(job))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(format!("panicked: {}", panic_message(&panic))));
    match result {
        Ok(()) => {
            daypass_ops::record_job(JOB_KIND, "succeeded");
            Ok(())
        }
        Err(e) if attempt >= ctx.max_attempts => {
            daypass_ops::record_job(JOB_KIND, "failed");
            tracing::warn!(notification_id = id, attempt, error = %e, "giving up sending notification");
            Err(AbortError::new(JobFailed(e)).into())
        }
        Err(e) => {
            daypass_ops::record_job(JOB_KIND, "retried");
            tracing::info!(notification_id = id, attempt, error = %e, "sending notification failed; will retry");
            Err(JobFailed(e).into())
        }
    }
}

/// A failed attempt, as reported by [`SendFn`].
#[derive(Debug)]
struct JobFailed(String);

impl std::fmt::Display for JobFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JobFailed {}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

/// Unique per consumer and per (re)start: the backends refuse a second live worker of
/// the same name, and a fresh name never inherits a previous run's registration.
fn worker_name(queue: &str) -> String {
    format!(
        "{queue}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

fn sqlite_config(config: &QueueConfig) -> apalis_sqlite::Config {
    apalis_sqlite::Config::default()
        .queue(&config.queue)
        .batch_size(1)
        .heartbeat_interval(config.heartbeat_interval)
        .missed_heartbeats(config.missed_heartbeats)
}

async fn connect_sqlite(
    url: &str,
    config: &QueueConfig,
) -> anyhow::Result<SqliteStorage<SendNotification>> {
    let options = SqliteConnectOptions::from_str(url)
        .context("invalid SQLite job queue URL")?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(config.sqlite_busy_timeout);
    // An in-memory database lives as long as its one connection.
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let pool = SqlitePoolOptions::new()
        .max_connections(if in_memory { 1 } else { config.pool_size })
        .min_connections(u32::from(in_memory))
        .idle_timeout(if in_memory {
            None
        } else {
            Some(Duration::from_secs(600))
        })
        .max_lifetime(if in_memory {
            None
        } else {
            Some(Duration::from_secs(1800))
        })
        .acquire_timeout(config.sqlite_busy_timeout + Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("cannot open the SQLite job queue")?;
    // The migrations only: `SqliteStorage::setup` would also set `synchronous = OFF`.
    // sqlx takes no lock on SQLite, so processes starting together on a new file
    // would race; under `BEGIN IMMEDIATE` they apply them one at a time (each
    // migration a savepoint of this transaction) and the others find them done.
    let mut conn = pool
        .acquire()
        .await
        .context("cannot open the SQLite job queue")?;
    let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
        .await
        .context("cannot lock the SQLite job queue for its migrations")?;
    SqliteStorage::migrations()
        .run(&mut tx)
        .await
        .context("cannot migrate the SQLite job queue")?;
    tx.commit()
        .await
        .context("cannot migrate the SQLite job queue")?;
    drop(conn);
    Ok(SqliteStorage::new(&pool).with_config(sqlite_config(config)))
}

async fn connect_postgres(
    url: &str,
    config: &QueueConfig,
) -> anyhow::Result<PostgresStorage<SendNotification>> {
    let options = PgConnectOptions::from_str(url).context("invalid PostgreSQL job queue URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .context("cannot connect to the PostgreSQL job queue")?;
    // Creates / migrates schema `apalis` (its own `apalis._sqlx_migrations`).
    PostgresStorage::setup(&pool)
        .await
        .context("cannot migrate the PostgreSQL job queue")?;
    let cfg = apalis_postgres::Config::default()
        .queue(&config.queue)
        .batch_size(1)
        .heartbeat_interval(config.heartbeat_interval)
        .missed_heartbeats(config.missed_heartbeats);
    Ok(PostgresStorage::new(&pool).with_config(cfg))
}
