//! `GET /.well-known/jwks.json`: the public keys that verify offline leases (rule 23),
//! for anyone (no key needed), cacheable.

use crate::graphql::error::http_error;
use crate::state::AppState;
use crate::telemetry::RequestId;
use axum::{
    Extension, Json,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use daypass_domain::leases;

/// How long verifiers may keep the set: new keys are announced by a rotation that
/// verifiers meet as an unknown `kid` (they fetch the set again then), while a
/// retired key stays published for a day.
const CACHE_CONTROL: &str = "public, max-age=300";

pub async fn jwks(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
) -> Response {
    match leases::jwk_set(&state.db, state.clock.now()).await {
        Ok(set) => ([(header::CACHE_CONTROL, CACHE_CONTROL)], Json(set)).into_response(),
        Err(e) => {
            let id = request_id.map(|Extension(RequestId(id))| id);
            http_error(e, id.as_deref())
        }
    }
}
