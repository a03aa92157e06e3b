//! Lapsed sessions (rules 20, 21), every minute: ended at their last heartbeat,
//! short launches refunded; the count of open sessions kept for /metrics.

use crate::WorkerDeps;
use apalis::prelude::*;
use apalis_cron::{CronScheduler, Tick};
use daypass_domain::sessions::LapseReport;
use daypass_ops::names;
use std::str::FromStr;

/// Every minute, at second 30 (beside the expiry sweep at second 0).
pub const SCHEDULE: &str = "30 * * * * *";

pub async fn end_lapsed_now(deps: &WorkerDeps) -> daypass_domain::Result<LapseReport> {
    let report = daypass_domain::sessions::end_lapsed(&deps.db, deps.clock.now()).await?;
    metrics::gauge!(names::SESSIONS_OPEN).set(report.open_now as f64);
    metrics::counter!(names::SESSION_LAPSES).increment(report.lapsed);
    metrics::counter!(names::SESSION_REFUNDS, "ended" => "LAPSED").increment(report.refunded);
    Ok(report)
}

pub async fn on_tick(_tick: Tick, deps: Data<WorkerDeps>) -> Result<(), BoxDynError> {
    let report = daypass_ops::record_cron_job("session_lapses", end_lapsed_now(&deps).await)?;
    if report.lapsed > 0 {
        tracing::info!(
            lapsed = report.lapsed,
            refunded = report.refunded,
            "ended lapsed sessions"
        );
    }
    Ok(())
}

pub fn scheduler() -> CronScheduler<cron::Schedule> {
    CronScheduler::new(cron::Schedule::from_str(SCHEDULE).expect("valid cron schedule"))
}
