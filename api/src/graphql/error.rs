//! The one place where domain errors become GraphQL errors with `extensions.code`.

use async_graphql::{ErrorExtensions, Response};
use daypass_domain::DomainError;

/// The contract's error codes.
pub fn code_of(e: &DomainError) -> &'static str {
    match e {
        DomainError::Unauthenticated => "UNAUTHENTICATED",
        DomainError::Forbidden(_) => "FORBIDDEN",
        DomainError::NotFound(_) => "NOT_FOUND",
        DomainError::BadInput(_) => "BAD_USER_INPUT",
        DomainError::Conflict(_) => "CONFLICT",
        DomainError::Database(_) | DomainError::Internal(_) => "INTERNAL",
    }
}

/// The HTTP status of a domain error, for the endpoints that are not GraphQL.
pub fn http_status_of(e: &DomainError) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    match e {
        DomainError::Unauthenticated => StatusCode::UNAUTHORIZED,
        DomainError::Forbidden(_) => StatusCode::FORBIDDEN,
        DomainError::NotFound(_) => StatusCode::NOT_FOUND,
        DomainError::BadInput(_) => StatusCode::BAD_REQUEST,
        DomainError::Conflict(_) => StatusCode::CONFLICT,
        DomainError::Database(_) | DomainError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A domain error as an HTTP answer with a GraphQL-shaped JSON body, so clients read
/// `errors[0].extensions.code` everywhere.
pub fn http_error(e: DomainError, request_id: Option<&str>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = http_status_of(&e);
    let err = gql(e).into_server_error(async_graphql::Pos::default());
    let mut resp = Response::from_errors(vec![err]);
    if let Some(id) = request_id {
        resp = add_request_id(resp, id);
    }
    (status, axum::Json(resp)).into_response()
}

/// Converts a domain error; internal details are logged, never shown.
pub fn gql(e: DomainError) -> async_graphql::Error {
    let code = code_of(&e);
    let message = if code == "INTERNAL" {
        tracing::error!(error = %e, "internal error");
        "internal error".to_owned()
    } else {
        e.to_string()
    };
    async_graphql::Error::new(message).extend_with(|_, ext| ext.set("code", code))
}

/// `.gql()?` on a domain result, so no resolver relies on the blanket `?` conversion
/// (which would drop `extensions`).
pub trait GqlResult<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> GqlResult<T> for Result<T, DomainError> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(gql)
    }
}

pub fn bad_input(msg: impl Into<String>) -> async_graphql::Error {
    gql(DomainError::BadInput(msg.into()))
}

/// Errors raised by async-graphql itself (parse, validation, limits, argument
/// coercion) carry no code: they are the caller's input.
pub fn add_missing_codes(mut resp: Response) -> Response {
    for err in &mut resp.errors {
        let has_code = err
            .extensions
            .as_ref()
            .is_some_and(|ext| ext.get("code").is_some());
        if !has_code {
            err.extensions
                .get_or_insert_with(Default::default)
                .set("code", "BAD_USER_INPUT");
        }
    }
    resp
}

/// Puts the request's id into every error's `extensions.requestId`, so a client can
/// quote it and an operator find the request's log lines.
pub fn add_request_id(mut resp: Response, request_id: &str) -> Response {
    for err in &mut resp.errors {
        err.extensions
            .get_or_insert_with(Default::default)
            .set("requestId", request_id);
    }
    resp
}

/// The first error's `extensions.code`, or `ok` without errors (the request metrics'
/// outcome).
pub fn outcome_of(resp: &Response) -> String {
    match resp.errors.first() {
        None => "ok".to_owned(),
        Some(err) => err
            .extensions
            .as_ref()
            .and_then(|ext| ext.get("code"))
            .and_then(|code| match code {
                async_graphql::Value::String(s) => Some(s.clone()),
                async_graphql::Value::Enum(s) => Some(s.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "INTERNAL".to_owned()),
    }
}
