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
