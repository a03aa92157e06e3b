//! Operations: Prometheus metrics, readiness, and the optional HTTP listener of
//! `daypass-worker` (`/metrics`, `/healthz`, `/readyz`).
//!
//! Both binaries record through the `metrics` facade into one process-wide Prometheus
//! recorder, so `daypass serve` with embedded workers shows the worker series too.
//! Gauges that describe shared state (queue depth, database pools) are read at scrape
//! time, not kept up to date by the code paths that change them.

use crate::WorkerDeps;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a readiness probe or a scrape-time query may wait for a backend.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Latency buckets, in seconds, of every `*_seconds` histogram.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Series names, in one place so producers and tests agree.
pub mod names {
    pub const GRAPHQL_REQUESTS: &str = "daypass_graphql_requests_total";
    pub const GRAPHQL_DURATION: &str = "daypass_graphql_request_duration_seconds";
    pub const CHARGES: &str = "daypass_charges_total";
    pub const DENIALS: &str = "daypass_open_denials_total";
    pub const TOKENS_CHARGED: &str = "daypass_tokens_charged_total";
    pub const QUEUE_JOBS: &str = "daypass_queue_jobs";
    pub const JOBS: &str = "daypass_jobs_total";
    pub const EMAILS: &str = "daypass_emails_total";
    pub const DB_POOL_CONNECTIONS: &str = "daypass_db_pool_connections";
    pub const DB_POOL_IDLE: &str = "daypass_db_pool_idle_connections";
}

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
    describe_counter!(names::EMAILS, "E-mails handed over (sent) or not (failed).");
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

/// Reads the scrape-time gauges (database pools, queue depth), then renders every
/// series in the Prometheus text format.
pub async fn render_metrics(deps: &WorkerDeps) -> String {
    let handle = metrics_handle();
    for pool in deps.db.pool_stats() {
        metrics::gauge!(names::DB_POOL_CONNECTIONS, "pool" => pool.name).set(pool.size as f64);
        metrics::gauge!(names::DB_POOL_IDLE, "pool" => pool.name).set(pool.idle as f64);
    }
    if let Some(queue) = &deps.queue {
        match tokio::time::timeout(PROBE_TIMEOUT, queue.depth()).await {
            Ok(Ok(depth)) => {
                metrics::gauge!(names::QUEUE_JOBS, "state" => "pending").set(depth.pending as f64);
                metrics::gauge!(names::QUEUE_JOBS, "state" => "running").set(depth.running as f64);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the queue depth"),
            Err(_) => tracing::warn!("reading the queue depth timed out"),
        }
    }
    handle.run_upkeep();
    handle.render()
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
pub async fn check_ready(deps: &WorkerDeps) -> Result<(), NotReady> {
    let database = async {
        match tokio::time::timeout(PROBE_TIMEOUT, deps.db.ping()).await {
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
        let Some(queue) = &deps.queue else {
            return true;
        };
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

/// `/readyz` as an HTTP answer: 200 `ready`, or 503 naming what failed.
pub async fn readyz_response(deps: &WorkerDeps) -> axum::response::Response {
    match check_ready(deps).await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// `/metrics` as an HTTP answer.
pub async fn metrics_response(deps: &WorkerDeps) -> axum::response::Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(deps).await,
    )
        .into_response()
}

/// The worker's own listener: `/metrics`, `/healthz`, `/readyz`.
pub fn router(deps: WorkerDeps) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(deps): State<WorkerDeps>| async move { readyz_response(&deps).await }),
        )
        .route(
            "/metrics",
            get(|State(deps): State<WorkerDeps>| async move { metrics_response(&deps).await }),
        )
        .with_state(deps)
}
