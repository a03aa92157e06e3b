//! `GET /reports/usage.csv?from=YYYY-MM-DD&to=YYYY-MM-DD`: the usage report grouped by
//! day, user and product as RFC 4180 CSV, with the same key and rules as GraphQL.

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
    DomainError, catalog,
    reports::{self, Dimension, UsageQuery, UsageRow},
    users,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

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

pub const COLUMNS: [&str; 13] = [
    "day",
    "user_id",
    "user_email",
    "user_name",
    "product_id",
    "product_code",
    "product_name",
    "tokens",
    "opens",
    "charges",
    "denials",
    "distinct_users",
    "cost_minor",
];

/// Rows written per chunk of the streamed body.
const ROWS_PER_CHUNK: usize = 1_000;

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
    let query = UsageQuery {
        from: date_param(p.from.as_deref(), "from")?,
        to: date_param(p.to.as_deref(), "to")?,
        group_by: vec![Dimension::Day, Dimension::User, Dimension::Product],
        user_id: id_param(p.user_id.as_deref(), "userId")?,
        product_id: id_param(p.product_id.as_deref(), "productId")?,
    };
    let rows = reports::usage_report(&state.db, &actor, account_id, query.clone()).await?;
    let names = Names::load(state, &rows).await?;
    let filename = format!("usage-{}-{}.csv", query.from, query.to);
    let chunks: Vec<Vec<UsageRow>> = rows
        .chunks(ROWS_PER_CHUNK)
        .map(<[UsageRow]>::to_vec)
        .collect();
    let names = Arc::new(names);
    let header_chunk = std::iter::once(encode(&[], &names, true));
    let body = futures::stream::iter(
        header_chunk
            .chain(chunks.into_iter().map({
                let names = names.clone();
                move |c| encode(&c, &names, false)
            }))
            .map(Ok::<Bytes, std::io::Error>),
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

/// Users' and products' names for the rows, one query each.
struct Names {
    users: HashMap<i32, (String, String)>,
    products: HashMap<i32, (String, String)>,
}

impl Names {
    async fn load(state: &AppState, rows: &[UsageRow]) -> Result<Names, DomainError> {
        let mut user_ids: Vec<i32> = rows.iter().filter_map(|r| r.user_id).collect();
        user_ids.sort_unstable();
        user_ids.dedup();
        let mut product_ids: Vec<i32> = rows.iter().filter_map(|r| r.product_id).collect();
        product_ids.sort_unstable();
        product_ids.dedup();
        let users = users::users_by_ids(&state.db, &user_ids)
            .await?
            .into_iter()
            .map(|u| (u.id, (u.email, u.name)))
            .collect();
        let products = catalog::products_by_ids(&state.db, &product_ids)
            .await?
            .into_iter()
            .map(|p| (p.id, (p.code, p.name)))
            .collect();
        Ok(Names { users, products })
    }
}

/// RFC 4180: CRLF line ends, fields quoted when they hold a comma, quote or line break.
fn encode(rows: &[UsageRow], names: &Names, header: bool) -> Bytes {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(rows.len() * 96 + 128));
    let result: csv::Result<()> = (|| {
        if header {
            w.write_record(COLUMNS)?;
        }
        for r in rows {
            let (email, user_name) = r
                .user_id
                .and_then(|id| names.users.get(&id))
                .map(|(e, n)| (e.as_str(), n.as_str()))
                .unwrap_or(("", ""));
            let (code, product_name) = r
                .product_id
                .and_then(|id| names.products.get(&id))
                .map(|(c, n)| (c.as_str(), n.as_str()))
                .unwrap_or(("", ""));
            let opt = |v: Option<i32>| v.map(|v| v.to_string()).unwrap_or_default();
            w.write_record([
                r.period.map(|d| d.to_string()).unwrap_or_default().as_str(),
                &opt(r.user_id),
                email,
                user_name,
                &opt(r.product_id),
                code,
                product_name,
                &r.tokens.to_string(),
                &r.opens.to_string(),
                &r.charges.to_string(),
                &r.denials.to_string(),
                &r.distinct_users.to_string(),
                &r.cost_minor.to_string(),
            ])?;
        }
        Ok(())
    })();
    // Writing to a Vec cannot fail; if it somehow did, the chunk ends where it failed.
    if let Err(e) = result {
        tracing::error!(error = %e, "CSV encoding failed");
    }
    Bytes::from(w.into_inner().unwrap_or_default())
}
