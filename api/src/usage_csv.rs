//! `GET /reports/usage.csv?from=YYYY-MM-DD&to=YYYY-MM-DD`: the usage report grouped by
//! day, user and product as RFC 4180 CSV, with the same key and rules as GraphQL.
//! Names and codes that a spreadsheet would take for a formula are written inert
//! ([`neutralise_formula`]).

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
use std::borrow::Cow;
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

/// A text cell as a spreadsheet will show it and never run it. A cell that starts
/// with `=`, `+`, `-`, `@`, a tab or a carriage return is read as a formula by Excel,
/// LibreOffice or Google Sheets (`=HYPERLINK(…)`, `+cmd|' /C calc'!A0`), so it gets
/// a leading `'`, as OWASP's advice on CSV injection says: the spreadsheet shows the
/// text and hides the quote. Users and operators name products and users freely,
/// and an admin opens this file; every other cell is a number or a date we write.
/// Only text columns go through here: a number, even a negative one, stays a number.
fn neutralise_formula(text: &str) -> Cow<'_, str> {
    match text.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{text}")),
        _ => Cow::Borrowed(text),
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
                &neutralise_formula(email),
                &neutralise_formula(user_name),
                &opt(r.product_id),
                &neutralise_formula(code),
                &neutralise_formula(product_name),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_a_spreadsheet_would_run_gets_a_leading_quote() {
        for (text, written) in [
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "'=HYPERLINK(\"http://x\",\"y\")",
            ),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("@SUM(1)", "'@SUM(1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("=", "'="),
        ] {
            assert_eq!(neutralise_formula(text), written, "{text:?}");
        }
        // Anything else is written as it is, a formula sign further in included.
        for text in [
            "",
            "CAD Suite",
            "a=b",
            "x-1",
            "'=already",
            " =1",
            "ada@example.test",
        ] {
            assert!(
                matches!(neutralise_formula(text), Cow::Borrowed(t) if t == text),
                "{text:?}"
            );
        }
    }

    fn names(user: (&str, &str), product: (&str, &str)) -> Names {
        let owned = |(a, b): (&str, &str)| (a.to_owned(), b.to_owned());
        Names {
            users: HashMap::from([(1, owned(user))]),
            products: HashMap::from([(2, owned(product))]),
        }
    }

    #[test]
    fn the_file_neutralises_text_cells_stays_rfc_4180_and_leaves_numbers_alone() {
        let names = names(
            ("-x@evil.test", "@SUM(1), \"quoted\"\nname"),
            ("-2", "=HYPERLINK(\"http://x\",\"y\")"),
        );
        let row = UsageRow {
            period: chrono::NaiveDate::from_ymd_opt(2026, 3, 1),
            user_id: Some(1),
            product_id: Some(2),
            tokens: -5,
            opens: 1,
            charges: 1,
            denials: 0,
            distinct_users: 1,
            cost_minor: -250,
        };
        let mut file = encode(&[], &names, true).to_vec();
        file.extend_from_slice(&encode(&[row], &names, false));
        let text = String::from_utf8(file).unwrap();
        // The quote goes inside the RFC 4180 quoting, which stays as it was.
        assert!(
            text.contains("\"'@SUM(1), \"\"quoted\"\"\nname\""),
            "{text}"
        );
        assert!(text.ends_with("\r\n"), "{text}");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].iter().collect::<Vec<_>>(),
            [
                "2026-03-01",
                "1",
                "'-x@evil.test",
                "'@SUM(1), \"quoted\"\nname",
                "2",
                "'-2",
                "'=HYPERLINK(\"http://x\",\"y\")",
                "-5",
                "1",
                "1",
                "0",
                "1",
                "-250",
            ]
        );
    }
}
