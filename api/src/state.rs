use crate::config::Config;
use crate::graphql::AppSchema;
use crate::ws_limits::CallerConnections;
use daypass_domain::store::BalanceFeed;
use daypass_domain::{Clock, Db, SystemClock, TestClock, auth::OperatorKey};
use daypass_worker::WorkerDeps;
use std::sync::Arc;

/// Everything a request handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    /// Present only with DAYPASS_TEST_CLOCK=1.
    pub test_clock: Option<Arc<TestClock>>,
    pub operator_key: OperatorKey,
    pub schema: AppSchema,
    /// The mailer and the job queue, shared with the embedded workers.
    pub workers: WorkerDeps,
    /// Balance announcements from every process on the database, for `balanceChanged`.
    pub balance_feed: BalanceFeed,
    /// Open WebSocket connections per caller, held to their cap.
    pub ws_connections: CallerConnections,
}

impl AppState {
    pub async fn new(db: Db, config: &Config) -> anyhow::Result<AppState> {
        let test_clock = config.test_clock.then(|| Arc::new(TestClock::new()));
        let clock: Arc<dyn Clock> = match &test_clock {
            Some(c) => c.clone(),
            None => Arc::new(SystemClock),
        };
        let workers =
            WorkerDeps::connect(db.clone(), clock.clone(), &config.worker_config()).await?;
        if let Some(queue) = &workers.queue {
            db.install_deliveries(Arc::new(queue.clone()));
        }
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
                config.env == "production",
                config.mutation_rate,
            ),
            workers,
            balance_feed,
            ws_connections: CallerConnections::default(),
        })
    }

    pub fn worker_deps(&self) -> WorkerDeps {
        self.workers.clone()
    }
}
