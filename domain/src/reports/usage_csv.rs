//! The usage report grouped by day, user and product as RFC 4180 CSV: the file of
//! `GET /reports/usage.csv` and the attachment of a scheduled report (rule 27). One
//! encoder writes both, so the same range gives the same bytes. Names and codes
//! that a spreadsheet would take for a formula are written inert
//! ([`neutralise_formula`]).

use super::{Dimension, Source, UsageQuery, UsageRow, usage_report, usage_rows};
use crate::access::Actor;
use crate::error::Result;
use crate::store::Db;
use crate::{catalog, users};
use chrono::NaiveDate;
use std::borrow::Cow;
use std::collections::HashMap;

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

/// Rows written per chunk (a streamed HTTP body sends one chunk at a time).
pub const ROWS_PER_CHUNK: usize = 1_000;

/// What the export asks for: a range of UTC days (both included), optionally one
/// user or one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvQuery {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub user_id: Option<i32>,
    pub product_id: Option<i32>,
}

impl CsvQuery {
    /// The whole account's rows for the range.
    pub fn range(from: NaiveDate, to: NaiveDate) -> CsvQuery {
        CsvQuery {
            from,
            to,
            user_id: None,
            product_id: None,
        }
    }

    fn usage_query(self) -> UsageQuery {
        UsageQuery {
            from: self.from,
            to: self.to,
            group_by: vec![Dimension::Day, Dimension::User, Dimension::Product],
            user_id: self.user_id,
            product_id: self.product_id,
        }
    }
}

/// The rows of a CSV export with the names it shows, ready to encode.
#[derive(Debug, Clone)]
pub struct UsageCsv {
    rows: Vec<UsageRow>,
    names: Names,
}

/// The export as `actor` may see it (rule 19: members get their own usage only).
pub async fn usage_csv(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    query: CsvQuery,
) -> Result<UsageCsv> {
    let rows = usage_report(db, actor, account_id, query.usage_query()).await?;
    UsageCsv::with_names(db, rows).await
}

/// The whole account's export, without an access check: for what Daypass sends on
/// its own (a scheduled report), whose recipients were checked when subscribed.
pub(crate) async fn account_usage_csv(
    db: &Db,
    account_id: i32,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<UsageCsv> {
    let query = CsvQuery::range(from, to).usage_query();
    let rows = usage_rows(db, account_id, &query, Source::Rollups).await?;
    UsageCsv::with_names(db, rows).await
}

impl UsageCsv {
    async fn with_names(db: &Db, rows: Vec<UsageRow>) -> Result<UsageCsv> {
        let names = Names::load(db, &rows).await?;
        Ok(UsageCsv { rows, names })
    }

    /// The file in chunks: the header, then [`ROWS_PER_CHUNK`] rows at a time.
    pub fn into_chunks(self) -> impl Iterator<Item = Vec<u8>> + Send + 'static {
        let UsageCsv { rows, names } = self;
        let header = encode(&[], &names, true);
        let mut rest = rows.into_iter().peekable();
        std::iter::once(header).chain(std::iter::from_fn(move || {
            rest.peek()?;
            let chunk: Vec<UsageRow> = rest.by_ref().take(ROWS_PER_CHUNK).collect();
            Some(encode(&chunk, &names, false))
        }))
    }

    /// The whole file.
    pub fn into_bytes(self) -> Vec<u8> {
        self.into_chunks().flatten().collect()
    }
}

/// Users' and products' names for the rows, one query each.
#[derive(Debug, Clone, Default)]
struct Names {
    users: HashMap<i32, (String, String)>,
    products: HashMap<i32, (String, String)>,
}

impl Names {
    async fn load(db: &Db, rows: &[UsageRow]) -> Result<Names> {
        let mut user_ids: Vec<i32> = rows.iter().filter_map(|r| r.user_id).collect();
        user_ids.sort_unstable();
        user_ids.dedup();
        let mut product_ids: Vec<i32> = rows.iter().filter_map(|r| r.product_id).collect();
        product_ids.sort_unstable();
        product_ids.dedup();
        let users = users::users_by_ids(db, &user_ids)
            .await?
            .into_iter()
            .map(|u| (u.id, (u.email, u.name)))
            .collect();
        let products = catalog::products_by_ids(db, &product_ids)
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
fn encode(rows: &[UsageRow], names: &Names, header: bool) -> Vec<u8> {
    let mut w = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(rows.len() * 96 + 128));
    let result: ::csv::Result<()> = (|| {
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
    w.into_inner().unwrap_or_default()
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

    fn row(day: u32) -> UsageRow {
        UsageRow {
            period: NaiveDate::from_ymd_opt(2026, 3, day),
            user_id: Some(1),
            product_id: Some(2),
            tokens: -5,
            opens: 1,
            charges: 1,
            denials: 0,
            distinct_users: 1,
            cost_minor: -250,
        }
    }

    #[test]
    fn the_file_neutralises_text_cells_stays_rfc_4180_and_leaves_numbers_alone() {
        let names = names(
            ("-x@evil.test", "@SUM(1), \"quoted\"\nname"),
            ("-2", "=HYPERLINK(\"http://x\",\"y\")"),
        );
        let file = UsageCsv {
            rows: vec![row(1)],
            names,
        }
        .into_bytes();
        let text = String::from_utf8(file).unwrap();
        // The quote goes inside the RFC 4180 quoting, which stays as it was.
        assert!(
            text.contains("\"'@SUM(1), \"\"quoted\"\"\nname\""),
            "{text}"
        );
        assert!(text.ends_with("\r\n"), "{text}");
        let mut reader = ::csv::Reader::from_reader(text.as_bytes());
        let records: Vec<::csv::StringRecord> = reader.records().map(Result::unwrap).collect();
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

    #[test]
    fn chunks_make_the_same_file_as_one_writer() {
        let names = names(("a@x.test", "A, \"B\""), ("cad", "CAD"));
        let rows: Vec<UsageRow> = (0..2_500).map(|i| row(1 + i % 28)).collect();
        let csv = UsageCsv { rows, names };
        let chunks: Vec<Vec<u8>> = csv.clone().into_chunks().collect();
        // The header, then 1,000 + 1,000 + 500 rows.
        assert_eq!(chunks.len(), 4);
        let mut whole = ::csv::WriterBuilder::new()
            .terminator(::csv::Terminator::CRLF)
            .from_writer(Vec::new());
        whole.write_record(COLUMNS).unwrap();
        let rows = chunks[1..].concat();
        let mut reader = ::csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(&rows[..]);
        let mut n = 0;
        for record in reader.records() {
            whole.write_record(&record.unwrap()).unwrap();
            n += 1;
        }
        assert_eq!(n, 2_500);
        assert_eq!(csv.into_bytes(), whole.into_inner().unwrap());
        // Nothing but the header when there are no rows.
        let empty = UsageCsv {
            rows: vec![],
            names: Names::default(),
        };
        assert_eq!(
            empty.into_bytes(),
            format!("{}\r\n", COLUMNS.join(",")).into_bytes()
        );
    }
}
