//! Readiness: the database and the job queue both answer.

use crate::PROBE_TIMEOUT;
use daypass_domain::Db;
use futures::future::BoxFuture;

/// How many jobs a queue holds, by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    pub pending: u64,
    pub running: u64,
}

/// What `/readyz` and the scrape-time gauges ask of the job queue. The queue crate
/// implements it, so operations need not know the queue's backends.
pub trait QueueProbe: Send + Sync {
    /// Whether the queue's backend answers.
    fn ping(&self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Jobs waiting and running.
    fn depth(&self) -> BoxFuture<'_, anyhow::Result<QueueDepth>>;
}

/// What is not reachable, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady(pub Vec<&'static str>);

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unreachable: {}", self.0.join(", "))
    }
}

/// Ready when the database and the job queue both answer (each within a few seconds).
pub async fn check_ready(db: &Db, queue: &dyn QueueProbe) -> Result<(), NotReady> {
    let database = async {
        match tokio::time::timeout(PROBE_TIMEOUT, db.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "database unreachable");
                false
            }
            Err(_) => {
                tracing::warn!("database ping timed out");
                false
            }
        }
    };
    let queue = async {
        match tokio::time::timeout(PROBE_TIMEOUT, queue.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "job queue unreachable");
                false
            }
            Err(_) => {
                tracing::warn!("job queue ping timed out");
                false
            }
        }
    };
    let (database, queue) = tokio::join!(database, queue);
    let mut failed = Vec::new();
    if !database {
        failed.push("database");
    }
    if !queue {
        failed.push("queue");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(NotReady(failed))
    }
}
