//! The usage rollup (rule 17), every five minutes: rolls each closed UTC day into
//! the daily aggregates the reports read.

use crate::WorkerDeps;
use apalis::prelude::*;
use apalis_cron::{CronScheduler, Tick};
use std::str::FromStr;

/// Every five minutes, at second 30 (off the expiry sweep's second).
pub const SCHEDULE: &str = "30 */5 * * * *";

pub async fn roll_up_now(deps: &WorkerDeps) -> daypass_domain::Result<u32> {
    daypass_domain::rollups::roll_up(&deps.db, deps.clock.now()).await
}

pub async fn on_tick(_tick: Tick, deps: Data<WorkerDeps>) -> Result<(), BoxDynError> {
    let days = daypass_ops::record_cron_job("usage_rollup", roll_up_now(&deps).await)?;
    if days > 0 {
        tracing::info!(days, "usage rollup rolled closed days");
    }
    Ok(())
}

pub fn scheduler() -> CronScheduler<cron::Schedule> {
    CronScheduler::new(cron::Schedule::from_str(SCHEDULE).expect("valid cron schedule"))
}
