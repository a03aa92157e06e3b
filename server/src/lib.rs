//! The composition root: the one place that puts the API and the workers together.
//! The `daypass` binary serves with it, and the in-process test harness builds what
//! `serve` builds from it.

pub mod cli;

use daypass_api::state::{Connected, RunMaintenance};
use daypass_ops::config::SharedConfig;
use daypass_worker::WorkerDeps;
use futures::future::BoxFuture;
use std::sync::Arc;

/// The workers' dependencies on the API's database, clock and job queue, and the
/// test clock's `runMaintenance` over them. Built even when the workers run
/// elsewhere: `runMaintenance` runs their jobs here, and a mail setting that cannot
/// work fails the start.
pub fn workers_beside(
    connected: &Connected,
    shared: &SharedConfig,
) -> anyhow::Result<(WorkerDeps, Arc<dyn RunMaintenance>)> {
    let deps = WorkerDeps::new(
        connected.db.clone(),
        connected.clock.clone(),
        connected.queue.clone(),
        shared,
    )?;
    Ok((deps.clone(), Arc::new(Maintenance(deps))))
}

/// The test clock's `runMaintenance`, run by this process's own workers' jobs.
struct Maintenance(WorkerDeps);

impl RunMaintenance for Maintenance {
    fn run_now(&self) -> BoxFuture<'_, daypass_domain::Result<()>> {
        Box::pin(async move {
            daypass_worker::run_maintenance_now(&self.0).await?;
            Ok(())
        })
    }
}
