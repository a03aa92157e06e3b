//! Daypass's background jobs: thin adapters that schedule and run `domain` use-cases
//! on apalis. `daypass serve` embeds them; `daypass-worker` runs them alone.

pub mod expiry;

use apalis::prelude::*;
use daypass_domain::{Clock, Db};
use std::{future::Future, sync::Arc, time::Duration};

/// What every job needs.
#[derive(Clone)]
pub struct WorkerDeps {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
}

/// One place that registers every job.
pub fn build_monitor(deps: WorkerDeps) -> Monitor {
    Monitor::new()
        .shutdown_timeout(Duration::from_secs(30))
        .register(move |_restarts| {
            WorkerBuilder::new("expiry-sweep")
                .backend(expiry::scheduler())
                .data(deps.clone())
                .build(expiry::on_tick)
        })
}

/// Runs every worker until `shutdown` resolves, then lets running jobs finish.
pub async fn run_until(
    deps: WorkerDeps,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    build_monitor(deps)
        .run_with_signal(async move {
            shutdown.await;
            Ok(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("workers stopped with an error: {e}"))
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceReport {
    pub lots_expired: u64,
}

/// Runs every periodic job once, now, and returns when all are done (the test
/// clock's `runMaintenance`).
pub async fn run_maintenance_now(deps: &WorkerDeps) -> daypass_domain::Result<MaintenanceReport> {
    let lots_expired = expiry::sweep_now(deps).await?;
    Ok(MaintenanceReport { lots_expired })
}
