use crate::config::Config;
use crate::graphql::AppSchema;
use crate::ws_limits::CallerConnections;
use daypass_domain::store::BalanceFeed;
use daypass_domain::{Clock, Db, SystemClock, TestClock, auth::OperatorKey};
use daypass_queue::JobQueue;
use futures::future::BoxFuture;
use std::sync::Arc;

/// What the test clock's `runMaintenance` runs: every periodic job once, now,
/// returning when all are done. The API does not know the jobs; the process that
/// embeds the workers provides this.
pub trait RunMaintenance: Send + Sync {
    fn run_now(&self) -> BoxFuture<'_, daypass_domain::Result<()>>;
}

/// What the API serves from: the database (migrated) and the job queue, connected,
/// and the clock of the process. The workers a process embeds share them.
#[derive(Clone)]
pub struct Connected {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    /// Present only with DAYPASS_TEST_CLOCK=1; then it is `clock` too.
    pub test_clock: Option<Arc<TestClock>>,
    pub queue: JobQueue,
}

impl Connected {
    /// The clock the configuration asks for, and the job queue it names, beside `db`.
    pub async fn new(db: Db, config: &Config) -> anyhow::Result<Connected> {
        let test_clock = config.test_clock.then(|| Arc::new(TestClock::new()));
        let clock: Arc<dyn Clock> = match &test_clock {
            Some(c) => c.clone(),
            None => Arc::new(SystemClock),
        };
        let queue = JobQueue::connect_configured(&config.shared).await?;
        Ok(Connected {
            db,
            clock,
            test_clock,
            queue,
        })
    }
}

/// Everything a request handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    /// Present only with DAYPASS_TEST_CLOCK=1.
    pub test_clock: Option<Arc<TestClock>>,
    pub operator_key: OperatorKey,
    pub schema: AppSchema,
    /// The job queue, probed by `/readyz` and `/metrics`.
    pub queue: JobQueue,
    /// The test clock's `runMaintenance`.
    pub maintenance: Arc<dyn RunMaintenance>,
    /// Balance announcements from every process on the database, for `balanceChanged`.
    pub balance_feed: BalanceFeed,
    /// Open WebSocket connections per caller, held to their cap.
    pub ws_connections: CallerConnections,
}

impl AppState {
    /// Installs the queue as where the database's committed notifications go and
    /// where webhooks may go, and starts the balance feed.
    pub async fn new(
        connected: Connected,
        config: &Config,
        maintenance: Arc<dyn RunMaintenance>,
    ) -> anyhow::Result<AppState> {
        let Connected {
            db,
            clock,
            test_clock,
            queue,
        } = connected;
        db.install_deliveries(Arc::new(queue.clone()));
        // Where webhooks may go is checked when endpoints are registered, here too.
        db.install_webhook_guard(daypass_domain::webhooks::guard::AddressGuard::new(
            &config.shared.env,
            config.shared.webhook_allow_hosts.as_deref(),
        ));
        let balance_feed = BalanceFeed::start(&db)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(AppState {
            db,
            clock,
            test_clock,
            operator_key: OperatorKey::new(config.operator_key.as_deref()),
            schema: AppSchema::build(
                config.test_clock,
                config.shared.env == "production",
                config.mutation_rate,
            ),
            queue,
            maintenance,
            balance_feed,
            ws_connections: CallerConnections::default(),
        })
    }
}
