//! `/readyz` and `/metrics` as HTTP answers, for the API's router and for the
//! worker's own listener.

use crate::readiness::{QueueProbe, check_ready};
use crate::recorder::render_metrics;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use daypass_domain::Db;
use std::sync::Arc;

/// `/readyz` as an HTTP answer: 200 `ready`, or 503 naming what failed.
pub async fn readyz_response(db: &Db, queue: &dyn QueueProbe) -> axum::response::Response {
    match check_ready(db, queue).await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// `/metrics` as an HTTP answer.
pub async fn metrics_response(db: &Db, queue: &dyn QueueProbe) -> axum::response::Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(db, queue).await,
    )
        .into_response()
}

/// What the worker's listener probes.
#[derive(Clone)]
struct Probed {
    db: Db,
    queue: Arc<dyn QueueProbe>,
}

/// The worker's own listener: `/metrics`, `/healthz`, `/readyz`.
pub fn router(db: Db, queue: Arc<dyn QueueProbe>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(p): State<Probed>| async move { readyz_response(&p.db, &*p.queue).await }),
        )
        .route(
            "/metrics",
            get(|State(p): State<Probed>| async move { metrics_response(&p.db, &*p.queue).await }),
        )
        .with_state(Probed { db, queue })
}
