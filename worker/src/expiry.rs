//! The expiry sweep (rule 2), every minute.

use crate::WorkerDeps;
use apalis::prelude::*;
use apalis_cron::{CronScheduler, Tick};
use std::str::FromStr;

/// Every minute, at second 0.
pub const SCHEDULE: &str = "0 * * * * *";

pub async fn sweep_now(deps: &WorkerDeps) -> daypass_domain::Result<u64> {
    daypass_domain::lots::sweep_expired(&deps.db, deps.clock.now()).await
}

pub async fn on_tick(_tick: Tick, deps: Data<WorkerDeps>) -> Result<(), BoxDynError> {
    let expired = daypass_ops::record_cron_job("expiry_sweep", sweep_now(&deps).await)?;
    if expired > 0 {
        tracing::info!(expired, "expiry sweep expired lots");
    }
    Ok(())
}

pub fn scheduler() -> CronScheduler<cron::Schedule> {
    CronScheduler::new(cron::Schedule::from_str(SCHEDULE).expect("valid cron schedule"))
}
