//! HTTP: the GraphQL endpoint, GraphiQL, health and metrics.

use crate::graphql::context::Req;
use crate::graphql::error::gql;
use crate::graphql::loaders::Loaders;
use crate::state::AppState;
use async_graphql::http::GraphiQLSource;
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{Html, IntoResponse},
    routing::get,
};
use daypass_domain::{Actor, DomainError, auth};
use std::sync::atomic::{AtomicU64, Ordering};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

/// Largest request body accepted (a GraphQL document with its variables).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

static GRAPHQL_REQUESTS: AtomicU64 = AtomicU64::new(0);
static GRAPHQL_ERRORS: AtomicU64 = AtomicU64::new(0);

pub fn router(state: AppState, cors_origins: Option<&str>) -> Router {
    let mut app = Router::new()
        .route("/graphql", get(graphiql).post(graphql))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // The GraphQL extractor streams the body itself, so `DefaultBodyLimit` (which
        // only the buffering extractors read) does not bound it: this layer does, for
        // every route (413 on a larger Content-Length, an error on a longer stream).
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .with_state(state);
    if let Some(origins) = cors_origins.filter(|o| !o.trim().is_empty()) {
        let origins: Vec<HeaderValue> = origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .filter_map(|o| o.parse().ok())
            .collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    app
}

async fn graphiql() -> impl IntoResponse {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .finish(),
    )
}

/// The caller named by `Authorization: Bearer <key>`; `None` when there is no key.
async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Option<Actor>, DomainError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| DomainError::Unauthenticated)?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(DomainError::Unauthenticated)?;
    auth::authenticate(&state.db, &state.operator_key, key)
        .await
        .map(Some)
}

async fn graphql(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: GraphQLRequest,
) -> GraphQLResponse {
    GRAPHQL_REQUESTS.fetch_add(1, Ordering::Relaxed);
    let caller = match caller(&state, &headers).await {
        Ok(c) => c,
        // A wrong key is answered like a missing one, by every resolver that needs one.
        Err(DomainError::Unauthenticated) => None,
        Err(e) => {
            GRAPHQL_ERRORS.fetch_add(1, Ordering::Relaxed);
            let err = gql(e).into_server_error(async_graphql::Pos::default());
            return async_graphql::Response::from_errors(vec![err]).into();
        }
    };
    let now = state.clock.now();
    let loaders = Loaders::new(&state.db, now);
    let request = req
        .into_inner()
        .data(Req {
            state: state.clone(),
            caller,
            now,
        })
        .data(loaders);
    let resp = state.schema.execute(request).await;
    if resp.is_err() {
        GRAPHQL_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    resp.into()
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.db.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = %e, "database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
        }
    }
}

async fn metrics() -> impl IntoResponse {
    let body = format!(
        "# HELP daypass_graphql_requests_total GraphQL requests received.\n\
         # TYPE daypass_graphql_requests_total counter\n\
         daypass_graphql_requests_total {}\n\
         # HELP daypass_graphql_errors_total GraphQL responses carrying errors.\n\
         # TYPE daypass_graphql_errors_total counter\n\
         daypass_graphql_errors_total {}\n",
        GRAPHQL_REQUESTS.load(Ordering::Relaxed),
        GRAPHQL_ERRORS.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
