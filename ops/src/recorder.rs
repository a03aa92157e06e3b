//! The process-wide Prometheus recorder, what the jobs record in it, and rendering.

use crate::PROBE_TIMEOUT;
use crate::names;
use crate::readiness::QueueProbe;
use daypass_domain::Db;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Latency buckets, in seconds, of every `*_seconds` histogram.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only ours");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::GRAPHQL_REQUESTS,
        "GraphQL requests by operation and outcome (ok or the first error's code)."
    );
    describe_histogram!(
        names::GRAPHQL_DURATION,
        Unit::Seconds,
        "GraphQL request latency by operation."
    );
    describe_counter!(names::CHARGES, "Opens that made a charge.");
    describe_counter!(names::DENIALS, "Opens denied, by reason.");
    describe_counter!(names::TOKENS_CHARGED, "Tokens charged by opens.");
    describe_gauge!(
        names::QUEUE_JOBS,
        "Jobs in the notification queue by state, read at scrape time."
    );
    describe_counter!(
        names::JOBS,
        "Job runs by kind and outcome (succeeded, failed, retried)."
    );
    describe_gauge!(
        names::SESSIONS_OPEN,
        "Sessions open now (not ended, not lapsed), as the last lapse sweep counted them."
    );
    describe_counter!(
        names::HEARTBEATS,
        "Heartbeats by outcome (granted, or the deny reason)."
    );
    describe_counter!(
        names::SESSION_RENEWALS,
        "Heartbeats that charged again past the window."
    );
    describe_counter!(
        names::SESSION_REFUNDS,
        "Short launches refunded, by how the session ended (closed or lapsed)."
    );
    describe_counter!(
        names::SESSION_LAPSES,
        "Sessions ended as lapsed by the sweep."
    );
    describe_counter!(
        names::SESSIONS_ENDED,
        "Sessions ended by a close or a heartbeat, by how they ended."
    );
    describe_counter!(names::EMAILS, "E-mails handed over (sent) or not (failed).");
    describe_counter!(
        names::WEBHOOK_ATTEMPTS,
        "Webhook attempts by outcome: delivered, failed (retried) or dead (endpoint disabled)."
    );
    describe_gauge!(
        names::DB_POOL_CONNECTIONS,
        "Open connections of each database pool, read at scrape time."
    );
    describe_gauge!(
        names::DB_POOL_IDLE,
        "Idle connections of each database pool, read at scrape time."
    );
}

/// Counts one run of a job: `outcome` is `succeeded`, `failed` (given up) or
/// `retried` (failed, will run again).
pub fn record_job(kind: &'static str, outcome: &'static str) {
    metrics::counter!(names::JOBS, "job" => kind, "outcome" => outcome).increment(1);
}

/// Counts one run of a scheduled job (no retries: the next tick is the next try)
/// and hands its result back.
pub fn record_cron_job<T, E>(kind: &'static str, result: Result<T, E>) -> Result<T, E> {
    record_job(
        kind,
        if result.is_ok() {
            "succeeded"
        } else {
            "failed"
        },
    );
    result
}

/// Counts one e-mail: `sent` or `failed`.
pub fn record_email(outcome: &'static str) {
    metrics::counter!(names::EMAILS, "outcome" => outcome).increment(1);
}

/// One webhook attempt: `delivered`, `failed` or `dead`.
pub fn record_webhook(outcome: &'static str) {
    metrics::counter!(names::WEBHOOK_ATTEMPTS, "outcome" => outcome).increment(1);
}

/// Reads the scrape-time gauges (database pools, queue depth), then renders every
/// series in the Prometheus text format.
pub async fn render_metrics(db: &Db, queue: &dyn QueueProbe) -> String {
    let handle = metrics_handle();
    for pool in db.pool_stats() {
        metrics::gauge!(names::DB_POOL_CONNECTIONS, "pool" => pool.name).set(pool.size as f64);
        metrics::gauge!(names::DB_POOL_IDLE, "pool" => pool.name).set(pool.idle as f64);
    }
    match tokio::time::timeout(PROBE_TIMEOUT, queue.depth()).await {
        Ok(Ok(depth)) => {
            metrics::gauge!(names::QUEUE_JOBS, "state" => "pending").set(depth.pending as f64);
            metrics::gauge!(names::QUEUE_JOBS, "state" => "running").set(depth.running as f64);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the queue depth"),
        Err(_) => tracing::warn!("reading the queue depth timed out"),
    }
    handle.run_upkeep();
    handle.render()
}
