//! `GET /reports/usage.csv?from=YYYY-MM-DD&to=YYYY-MM-DD`: the usage export, with the
//! same key and rules as GraphQL. The file is written by the domain
//! (`reports::usage_csv`), the same bytes a scheduled report attaches; here only the
//! request is read and the answer's headers set.

use crate::graphql::error::http_error;
use crate::graphql::reports::parse_date;
use crate::state::AppState;
use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use daypass_domain::{
    DomainError,
    reports::usage_csv::{self, CsvQuery},
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CsvParams {
    from: Option<String>,
    to: Option<String>,
    user_id: Option<String>,
    product_id: Option<String>,
    /// Operators name the account; everyone else gets their own.
    account_id: Option<String>,
}

pub async fn usage_csv(
    State(state): State<AppState>,
    request_id: Option<axum::Extension<crate::telemetry::RequestId>>,
    headers: HeaderMap,
    params: Result<Query<CsvParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match answer(&state, &headers, params).await {
        Ok(r) => r,
        Err(e) => http_error(e, request_id.as_ref().map(|id| id.0.0.as_str())),
    }
}

fn id_param(value: Option<&str>, name: &str) -> Result<Option<i32>, DomainError> {
    value
        .map(|v| {
            v.parse::<i32>()
                .map_err(|_| DomainError::bad_input(format!("{name} is not an id")))
        })
        .transpose()
}

fn date_param(value: Option<&str>, name: &str) -> Result<chrono::NaiveDate, DomainError> {
    let value = value.ok_or_else(|| DomainError::bad_input(format!("{name} is required")))?;
    parse_date(value)
        .ok_or_else(|| DomainError::bad_input(format!("{name} must be a YYYY-MM-DD date")))
}

async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    params: Result<Query<CsvParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DomainError> {
    let actor = crate::http::caller(state, headers)
        .await?
        .ok_or(DomainError::Unauthenticated)?;
    let Query(p) = params.map_err(|e| DomainError::bad_input(e.body_text()))?;
    let account_id = actor.target_account(id_param(p.account_id.as_deref(), "accountId")?)?;
    let query = CsvQuery {
        from: date_param(p.from.as_deref(), "from")?,
        to: date_param(p.to.as_deref(), "to")?,
        user_id: id_param(p.user_id.as_deref(), "userId")?,
        product_id: id_param(p.product_id.as_deref(), "productId")?,
    };
    let csv = usage_csv::usage_csv(&state.db, &actor, account_id, query).await?;
    let filename = format!("usage-{}-{}.csv", query.from, query.to);
    let body = futures::stream::iter(
        csv.into_chunks()
            .map(|chunk| Ok::<Bytes, std::io::Error>(Bytes::from(chunk))),
    );
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8; header=present"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
