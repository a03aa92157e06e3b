//! Request ids, the request's tracing span, and the API's metrics.

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute};
use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use daypass_domain::charging::OpenOutcome;
use daypass_ops::names;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The header a request id comes in and goes back in.
pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current HTTP request (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// An incoming id is kept when it is sane: 1 to 128 visible ASCII letters, digits or
/// `-_.:`, so it can go into logs and headers as it is.
fn sane_request_id(value: &HeaderValue) -> Option<&str> {
    let id = value.to_str().ok()?;
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then_some(id)
}

/// Gives every request an id (the caller's `x-request-id` when sane, else a fresh
/// UUID v4), runs it inside a `request` span carrying that id (so every log line of
/// the request has it), logs its end, and echoes the id in the response.
pub async fn request_context(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(sane_request_id)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = resp.status().as_u16(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER.clone(), value);
    }
    resp
}

/// Where the [`OperationNames`] extension leaves the name of the operation a request
/// executed (request data; absent on the WebSocket transport).
#[derive(Clone, Default)]
pub struct OperationSlot(Arc<Mutex<Option<String>>>);

impl OperationSlot {
    pub fn get(&self) -> Option<String> {
        self.0.lock().expect("operation slot").clone()
    }
}

/// Notes the executed operation's name, as the document names it (an anonymous one is
/// `anonymous`), for the request metrics.
pub struct OperationNames;

impl ExtensionFactory for OperationNames {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(OperationNames)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for OperationNames {
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> async_graphql::Response {
        if let Some(slot) = ctx.data_opt::<OperationSlot>() {
            *slot.0.lock().expect("operation slot") =
                Some(operation_name.unwrap_or("anonymous").to_owned());
        }
        next.run(ctx, operation_name).await
    }
}

/// The operation label: a GraphQL name of reasonable length, else `other`.
fn operation_label(name: Option<&str>) -> String {
    match name {
        None => "unknown".to_owned(),
        Some(n)
            if !n.is_empty()
                && n.len() <= 64
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            n.to_owned()
        }
        Some(_) => "other".to_owned(),
    }
}

/// Counts one GraphQL request and its latency. `outcome` is `ok` or the code of the
/// first error; `operation` the executed operation's name (`anonymous` for an unnamed
/// one, `unknown` when none was reached, e.g. a document that does not parse).
pub fn record_graphql(operation: Option<&str>, outcome: &str, elapsed: Duration) {
    let operation = operation_label(operation);
    metrics::counter!(
        names::GRAPHQL_REQUESTS,
        "operation" => operation.clone(),
        "outcome" => outcome.to_owned()
    )
    .increment(1);
    metrics::histogram!(names::GRAPHQL_DURATION, "operation" => operation)
        .record(elapsed.as_secs_f64());
}

/// Counts what an open did: a charge and its tokens, or a denial and its reason.
pub fn record_open(outcome: &OpenOutcome) {
    if outcome.charge_id.is_some() {
        metrics::counter!(names::CHARGES).increment(1);
        metrics::counter!(names::TOKENS_CHARGED)
            .increment(u64::try_from(outcome.tokens_charged.get()).unwrap_or(0));
    }
    if let Some(reason) = outcome.deny_reason {
        metrics::counter!(names::DENIALS, "reason" => reason.as_str()).increment(1);
    }
}

/// Counts a heartbeat: its outcome, and a renewal's charge.
pub fn record_heartbeat(outcome: &daypass_domain::sessions::HeartbeatOutcome) {
    let label = outcome.deny_reason.map_or("granted", |r| r.as_str());
    metrics::counter!(names::HEARTBEATS, "outcome" => label).increment(1);
    if outcome.tokens_charged.get() > 0 {
        metrics::counter!(names::SESSION_RENEWALS).increment(1);
        metrics::counter!(names::CHARGES).increment(1);
        metrics::counter!(names::TOKENS_CHARGED)
            .increment(u64::try_from(outcome.tokens_charged.get()).unwrap_or(0));
    }
    if !outcome.granted && outcome.deny_reason != Some(daypass_domain::DenyReason::SessionEnded) {
        metrics::counter!(names::SESSIONS_ENDED, "state" => "DENIED").increment(1);
    }
}

/// Counts a close that ended a session, and its refund.
pub fn record_close(outcome: &daypass_domain::sessions::CloseOutcome) {
    if outcome.ended {
        let state = outcome.session.state.as_str();
        metrics::counter!(names::SESSIONS_ENDED, "state" => state).increment(1);
        if outcome.refunded {
            metrics::counter!(names::SESSION_REFUNDS, "ended" => state).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_sane_request_ids() {
        let sane = |s: &str| sane_request_id(&HeaderValue::from_str(s).unwrap()).is_some();
        assert!(sane("abc-123_x.y:z"));
        assert!(!sane(""));
        assert!(!sane("has space"));
        assert!(!sane("semi;colon"));
        assert!(!sane(&"a".repeat(129)));
        assert!(sane(&"a".repeat(128)));
    }

    #[test]
    fn operation_labels_are_bounded() {
        assert_eq!(operation_label(Some("OpenIt")), "OpenIt");
        assert_eq!(operation_label(None), "unknown");
        assert_eq!(operation_label(Some("bad-name")), "other");
        assert_eq!(operation_label(Some(&"a".repeat(65))), "other");
    }
}
