//! What every Daypass process shares to be run and watched: the configuration both
//! binaries read, logging, the shutdown signal, Prometheus metrics, readiness, and
//! the small `/healthz`, `/readyz`, `/metrics` listener of `daypass-worker`.
//!
//! Both binaries record through the `metrics` facade into one process-wide Prometheus
//! recorder, so `daypass serve` with embedded workers shows the worker series too.
//! Gauges that describe shared state (queue depth, database pools) are read at scrape
//! time, not kept up to date by the code paths that change them.

pub mod config;
mod http;
pub mod names;
mod readiness;
mod recorder;

pub use http::{metrics_response, readyz_response, router};
pub use readiness::{NotReady, QueueDepth, QueueProbe, check_ready};
pub use recorder::{
    metrics_handle, record_cron_job, record_email, record_job, record_webhook, render_metrics,
};

use std::time::Duration;

/// How long a readiness probe or a scrape-time query may wait for a backend.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Logs to stderr: human-readable lines, or with `json` one JSON object a line whose
/// `span` and `spans` fields carry the enclosing spans' fields (a request's
/// `request_id` among them). `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
