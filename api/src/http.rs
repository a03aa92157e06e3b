//! HTTP: the GraphQL endpoint and its WebSocket twin, GraphiQL, health and metrics,
//! the offline leases' public keys, and the admin console's static files.

use crate::graphql::context::{Req, limit_key};
use crate::graphql::error::gql;
use crate::graphql::error::{add_request_id, outcome_of};
use crate::graphql::loaders::Loaders;
use crate::graphql::subscription::LiveCaller;
use crate::state::AppState;
use crate::telemetry::{OperationSlot, REQUEST_ID_HEADER, RequestId, record_graphql};
use crate::ws_limits;
use async_graphql::Data;
use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource, WebSocketProtocols};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Extension;
use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State, WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use daypass_domain::{Actor, DomainError, auth};
use serde_json::Value;
use std::time::Instant;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

/// Largest request body accepted (a GraphQL document with its variables).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

pub fn router(state: AppState, cors_origins: Option<&str>) -> Router {
    let mut app = Router::new()
        .route("/", get(crate::console::index))
        .route("/console/{*path}", get(crate::console::asset))
        .route("/graphql", get(graphiql).post(graphql))
        .route("/graphql/ws", get(graphql_ws))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/reports/usage.csv", get(crate::usage_csv::usage_csv))
        .route("/.well-known/jwks.json", get(crate::jwks::jwks))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // The GraphQL extractor streams the body itself, so `DefaultBodyLimit` (which
        // only the buffering extractors read) does not bound it: this layer does, for
        // every route (413 on a larger Content-Length, an error on a longer stream).
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        // Outermost but CORS: every answer, a refused body included, has an id.
        .layer(axum::middleware::from_fn(crate::telemetry::request_context))
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
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    REQUEST_ID_HEADER.clone(),
                ])
                .expose_headers([REQUEST_ID_HEADER.clone()]),
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

/// The key in an `Authorization: Bearer <key>` value.
fn bearer_key(value: &str) -> Result<&str, DomainError> {
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(DomainError::Unauthenticated)
}

/// The key of the `Authorization` header; `None` when there is no such header.
fn header_key(headers: &HeaderMap) -> Result<Option<&str>, DomainError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| DomainError::Unauthenticated)?;
    bearer_key(value).map(Some)
}

/// The caller named by `Authorization: Bearer <key>`; `None` when there is no key.
pub(crate) async fn caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Actor>, DomainError> {
    let Some(key) = header_key(headers)? else {
        return Ok(None);
    };
    auth::authenticate_cached(&state.db, &state.operator_key, key)
        .await
        .map(Some)
}

async fn graphql(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    req: GraphQLRequest,
) -> GraphQLResponse {
    // A malformed `Authorization` header is answered like a missing one.
    let key = header_key(&headers).ok().flatten();
    let resp = execute(&state, key, req.into_inner()).await;
    match request_id {
        Some(Extension(RequestId(id))) => add_request_id(resp, &id).into(),
        None => resp.into(),
    }
}

/// Runs one GraphQL request as the holder of `key` (the bearer key of a POST;
/// `None` without one) and counts it in the request metrics. A wrong key is
/// answered like a missing one, by every resolver that needs one. The POST handler
/// and the in-process test harness both come through here, so a test sees exactly
/// what a client would.
pub async fn execute(
    state: &AppState,
    key: Option<&str>,
    request: async_graphql::Request,
) -> async_graphql::Response {
    let started = Instant::now();
    let finish = |resp: async_graphql::Response, operation: Option<String>| {
        record_graphql(operation.as_deref(), &outcome_of(&resp), started.elapsed());
        resp
    };
    let caller = match key {
        None => None,
        Some(key) => match auth::authenticate_cached(&state.db, &state.operator_key, key).await {
            Ok(actor) => Some(actor),
            Err(DomainError::Unauthenticated) => None,
            Err(e) => {
                let err = gql(e).into_server_error(async_graphql::Pos::default());
                let operation = request.operation_name.clone();
                return finish(async_graphql::Response::from_errors(vec![err]), operation);
            }
        },
    };
    let now = state.clock.now();
    let loaders = Loaders::new(&state.db, now);
    let slot = OperationSlot::default();
    let request = request
        .data(Req {
            state: state.clone(),
            caller,
            now,
        })
        .data(loaders)
        .data(slot.clone());
    let resp = state.schema.execute(request).await;
    finish(resp, slot.get())
}

/// What a WebSocket connection refused for its key is told (a close frame's reason,
/// at most 123 bytes).
const WS_UNAUTHENTICATED: &str = "UNAUTHENTICATED: send `Authorization: Bearer <api key>` with the upgrade or in connection_init";

/// `balanceChanged` (and any other operation) over WebSocket, with the
/// graphql-transport-ws protocol or the legacy graphql-ws one. The caller's key comes
/// with the upgrade request (`Authorization: Bearer <key>`, checked before upgrading)
/// or in the `connection_init` payload, as browsers cannot set headers on a WebSocket.
/// Without a valid key the connection is closed at `connection_init`; the limits of
/// [`ws_limits`] hold for every connection.
async fn graphql_ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(protocol) = ws_protocol(&headers) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let key = match header_key(&headers) {
        Ok(key) => key.map(str::to_owned),
        Err(e) => return refuse_upgrade(e),
    };
    if let Some(key) = &key
        && let Err(e) = auth::authenticate(&state.db, &state.operator_key, key).await
    {
        return refuse_upgrade(e);
    }
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            let schema = state.schema.clone();
            let callers = state.ws_connections.clone();
            ws_limits::serve(socket, schema, protocol, callers, move |payload| {
                connection_data(state, key, payload)
            })
        })
}

/// The first GraphQL protocol the client offers in `Sec-WebSocket-Protocol`.
fn ws_protocol(headers: &HeaderMap) -> Option<WebSocketProtocols> {
    headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?
        .split(',')
        .find_map(|p| p.trim().parse().ok())
}

/// A GraphQL error answer instead of an upgrade: 401 for a wrong key.
fn refuse_upgrade(e: DomainError) -> Response {
    let status = match e {
        DomainError::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let err = gql(e).into_server_error(async_graphql::Pos::default());
    (
        status,
        Json(async_graphql::Response::from_errors(vec![err])),
    )
        .into_response()
}

/// The connection's data once `connection_init` is accepted: what a POST request gets
/// (its [`Req`] and loaders, for the operation that subscribes), and the key, which
/// every later operation and push authenticates again; and whom the connection
/// counts against ([`limit_key`]).
async fn connection_data(
    state: AppState,
    header_key: Option<String>,
    payload: Value,
) -> async_graphql::Result<(Data, i64)> {
    let unauthenticated = || async_graphql::Error::new(WS_UNAUTHENTICATED);
    let key = header_key
        .or_else(|| init_payload_key(&payload))
        .ok_or_else(unauthenticated)?;
    let actor = match auth::authenticate(&state.db, &state.operator_key, &key).await {
        Ok(actor) => actor,
        Err(DomainError::Unauthenticated) => return Err(unauthenticated()),
        Err(e) => return Err(gql(e)),
    };
    let now = state.clock.now();
    let caller = limit_key(&actor);
    let mut data = Data::default();
    data.insert(Loaders::new(&state.db, now));
    data.insert(Req {
        state,
        caller: Some(actor),
        now,
    });
    data.insert(LiveCaller::new(key));
    Ok((data, caller))
}

/// The key in a `connection_init` payload: `{"Authorization": "Bearer <key>"}` (or
/// `authorization`), or `{"token": "<key>"}`.
fn init_payload_key(payload: &Value) -> Option<String> {
    let field = |name: &str| payload.get(name).and_then(Value::as_str);
    let key = match field("Authorization").or_else(|| field("authorization")) {
        Some(value) => bearer_key(value).ok()?,
        None => {
            let token = field("token")?;
            bearer_key(token).unwrap_or(token)
        }
    };
    Some(key.trim().to_owned())
}

/// 200 when the database and the job queue both answer; 503 naming what failed.
async fn readyz(State(state): State<AppState>) -> Response {
    daypass_ops::readyz_response(&state.db, &state.queue).await
}

/// Prometheus text format: this process's series, the embedded workers' included.
async fn metrics(State(state): State<AppState>) -> Response {
    daypass_ops::metrics_response(&state.db, &state.queue).await
}
