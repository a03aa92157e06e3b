//! A day's usage read from the raw opens, the first and last day an account has
//! usage, and the watermark: the day through which the rollups hold every day.

use super::{DayAggregate, UsageSums, day_start};
use crate::error::Result;
use crate::store::stmt;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use sea_orm::{ConnectionTrait, Value};

/// Rule 16's measures for one account's UTC day, per user and product: the opens
/// and denials from the raw opens, the tokens, charges and their cost from the
/// charges made that day (an open's, or a heartbeat's past its window) that were not
/// refunded (rule 21). The one definition of a day's usage; it reads along the
/// indexes on (account, time).
pub async fn day_aggregates(
    conn: &impl ConnectionTrait,
    day: NaiveDate,
    account_id: i32,
) -> Result<Vec<DayAggregate>> {
    const SQL: &str = "SELECT account_id, user_id, product_id, \
         CAST(SUM(tokens) AS BIGINT) AS tokens, CAST(SUM(opens) AS BIGINT) AS opens, \
         CAST(SUM(charges) AS BIGINT) AS charges, CAST(SUM(denials) AS BIGINT) AS denials, \
         CAST(SUM(cost_minor) AS BIGINT) AS cost_minor FROM ( \
         SELECT o.account_id AS account_id, o.user_id AS user_id, \
          COALESCE(o.product_id, 0) AS product_id, 0 AS tokens, \
          CASE WHEN o.granted THEN 1 ELSE 0 END AS opens, 0 AS charges, \
          CASE WHEN o.granted THEN 0 ELSE 1 END AS denials, 0 AS cost_minor \
          FROM opens o WHERE o.account_id = ? AND o.at >= ? AND o.at < ? \
         UNION ALL \
         SELECT c.account_id, c.user_id, c.product_id, c.tokens, 0, 1, 0, c.cost_minor \
          FROM charges c WHERE c.account_id = ? AND c.window_starts_at >= ? \
          AND c.window_starts_at < ? AND c.refunded_at IS NULL \
         ) usage GROUP BY account_id, user_id, product_id";
    let (start, end) = (day_start(day), day_start(day + Duration::days(1)));
    let values: Vec<Value> = vec![
        account_id.into(),
        start.into(),
        end.into(),
        account_id.into(),
        start.into(),
        end.into(),
    ];
    let rows = conn
        .query_all_raw(stmt(conn.get_database_backend(), SQL, values))
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DayAggregate {
                account_id: r.try_get("", "account_id")?,
                user_id: r.try_get("", "user_id")?,
                product_id: r.try_get("", "product_id")?,
                sums: UsageSums {
                    tokens: r.try_get("", "tokens")?,
                    opens: r.try_get("", "opens")?,
                    charges: r.try_get("", "charges")?,
                    denials: r.try_get("", "denials")?,
                    cost_minor: r.try_get("", "cost_minor")?,
                },
            })
        })
        .collect()
}

/// The first and last UTC day on which the account has usage (any open, granted or
/// denied, or a charge: a heartbeat's renewal may fall on a day without opens), in
/// the raw rows or the daily totals: outside them every report is empty. Index
/// probes only, whatever the range.
pub async fn days_with_usage(
    conn: &impl ConnectionTrait,
    account_id: i32,
) -> Result<Option<(NaiveDate, NaiveDate)>> {
    // One subquery each: SQLite reads MIN or MAX from an index only when it is alone.
    let row = conn
        .query_one_raw(stmt(
            conn.get_database_backend(),
            "SELECT (SELECT MIN(at) FROM opens WHERE account_id = ?) AS first_at, \
                    (SELECT MAX(at) FROM opens WHERE account_id = ?) AS last_at, \
                    (SELECT MAX(window_starts_at) FROM charges WHERE account_id = ?) \
                     AS last_charge_at, \
                    (SELECT MIN(day) FROM usage_day_totals WHERE account_id = ?) AS first_day, \
                    (SELECT MAX(day) FROM usage_day_totals WHERE account_id = ?) AS last_day",
            vec![account_id.into(); 5],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let raw_first: Option<DateTime<Utc>> = row.try_get("", "first_at")?;
    let raw_last: Option<DateTime<Utc>> = row.try_get("", "last_at")?;
    let last_charge: Option<DateTime<Utc>> = row.try_get("", "last_charge_at")?;
    let rolled_first: Option<NaiveDate> = row.try_get("", "first_day")?;
    let rolled_last: Option<NaiveDate> = row.try_get("", "last_day")?;
    // Every charge follows its session's open: the first open is the first usage.
    let first = [raw_first.map(|t| t.date_naive()), rolled_first]
        .into_iter()
        .flatten()
        .min();
    let last = [
        raw_last.map(|t| t.date_naive()),
        last_charge.map(|t| t.date_naive()),
        rolled_last,
    ]
    .into_iter()
    .flatten()
    .max();
    Ok(first.zip(last))
}

/// Every UTC day up to this one is in the rollups; `None` before the first run.
pub async fn rolled_through(conn: &impl ConnectionTrait) -> Result<Option<NaiveDate>> {
    let row = conn
        .query_one_raw(stmt(
            conn.get_database_backend(),
            "SELECT rolled_through FROM rollup_watermark WHERE id = 1",
            vec![],
        ))
        .await?;
    Ok(match row {
        Some(r) => r.try_get::<Option<NaiveDate>>("", "rolled_through")?,
        None => None,
    })
}
