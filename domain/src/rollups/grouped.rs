//! Rolled daily rows of a report's range, grouped and summed by the database at the
//! grain a report asks for.

use super::{Grain, TimeGrain, UsageSums, user_blocks};
use crate::error::Result;
use crate::store::stmt;
use chrono::NaiveDate;
use sea_orm::{ConnectionTrait, DatabaseBackend, Value};

/// Filters on rolled rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowFilter {
    pub user_id: Option<i32>,
    pub product_id: Option<i32>,
}

/// What a report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouping {
    pub time: Option<TimeGrain>,
    pub user: bool,
    pub product: bool,
}

/// The key of a report row: period start, user, product (0: no catalog product).
pub type GroupKey = (Option<NaiveDate>, Option<i32>, Option<i32>);

/// One group of rolled daily rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub key: GroupKey,
    pub sums: UsageSums,
    /// By day at a grain without users: the day's stored distinct users. Otherwise 0
    /// (a longer period's users are counted by [`window_users`](super::window_users), a user's row counts
    /// its one user).
    pub distinct_users: i64,
}

/// Rolled daily rows of one account at `grain` for `from..=to`, grouped and summed
/// by the database, in key order (each key once).
pub async fn rolled_groups(
    conn: &impl ConnectionTrait,
    account_id: i32,
    grain: Grain,
    grouping: Grouping,
    from: NaiveDate,
    to: NaiveDate,
    filter: RowFilter,
) -> Result<Vec<GroupRow>> {
    let backend = conn.get_database_backend();
    if grain == Grain::USER && grouping.user && filter.user_id.is_none() {
        return user_blocks::user_block_groups(conn, account_id, grouping.time, from, to).await;
    }
    // By day at the table's own grain every row is its own group.
    let one_row_per_group = grouping.time == Some(TimeGrain::Day)
        && grouping.user == grain.user
        && grouping.product == grain.product;
    let sum = |column: &str| {
        if one_row_per_group {
            column.to_owned()
        } else {
            format!("CAST(SUM({column}) AS BIGINT)")
        }
    };
    let mut keys: Vec<&str> = Vec::new();
    if let Some(t) = grouping.time {
        keys.push(period_start_sql(t, backend));
    }
    if grouping.user {
        keys.push("user_id");
    }
    if grouping.product {
        keys.push("product_id");
    }
    let mut columns: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    columns.extend(
        ["tokens", "opens", "charges", "denials", "cost_minor"]
            .into_iter()
            .map(sum),
    );
    let daily_distinct = grouping.time == Some(TimeGrain::Day) && grain.stores_distinct_users();
    if daily_distinct {
        columns.push(sum("distinct_users"));
    }
    let mut sql = format!(
        "SELECT {} FROM {} WHERE account_id = ? AND day >= ? AND day <= ?",
        columns.join(", "),
        grain.table()
    );
    let mut values: Vec<Value> = vec![account_id.into(), from.into(), to.into()];
    if let Some(u) = filter.user_id.filter(|_| grain.user) {
        sql.push_str(" AND user_id = ?");
        values.push(u.into());
    }
    if let Some(p) = filter.product_id.filter(|_| grain.product) {
        sql.push_str(" AND product_id = ?");
        values.push(p.into());
    }
    if !keys.is_empty() && !one_row_per_group {
        let positions: Vec<String> = (1..=keys.len()).map(|i| i.to_string()).collect();
        sql.push_str(&format!(" GROUP BY {}", positions.join(", ")));
    }
    // No ORDER BY: sorting many rows in the database can spill to disk, and the
    // keys sort faster here.
    let rows = conn.query_all_raw(stmt(backend, &sql, values)).await?;
    let mut groups = rows
        .iter()
        .map(|r| {
            let mut i = 0;
            let mut next = || {
                i += 1;
                i - 1
            };
            let period = match grouping.time {
                Some(_) => Some(r.try_get_by_index::<NaiveDate>(next())?),
                None => None,
            };
            let user_id = match grouping.user {
                true => Some(r.try_get_by_index::<i32>(next())?),
                false => None,
            };
            let product_id = match grouping.product {
                true => Some(r.try_get_by_index::<i32>(next())?),
                false => None,
            };
            // A sum over no rows (an ungrouped report of an empty range) is NULL.
            let mut measure =
                || -> Result<i64> { Ok(r.try_get_by_index::<Option<i64>>(next())?.unwrap_or(0)) };
            let sums = UsageSums {
                tokens: measure()?,
                opens: measure()?,
                charges: measure()?,
                denials: measure()?,
                cost_minor: measure()?,
            };
            let distinct_users = if daily_distinct { measure()? } else { 0 };
            Ok(GroupRow {
                key: (period, user_id, product_id),
                sums,
                distinct_users,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if keys.is_empty() {
        // An ungrouped sum over no rows says nothing happened: no group.
        groups.retain(|g| g.sums != UsageSums::default());
    }
    groups.sort_unstable_by_key(|g| g.key);
    Ok(groups)
}

/// The SQL for the first day of the `time` period holding the column `day`: the same
/// answer as [`TimeGrain::start_of`], computed where the rows are.
fn period_start_sql(time: TimeGrain, backend: DatabaseBackend) -> &'static str {
    match (time, backend == DatabaseBackend::Postgres) {
        (TimeGrain::Day, _) => "day",
        // A timestamp without time zone: the session's zone plays no part.
        (TimeGrain::Week, true) => "CAST(date_trunc('week', CAST(day AS TIMESTAMP)) AS DATE)",
        (TimeGrain::Month, true) => "CAST(date_trunc('month', CAST(day AS TIMESTAMP)) AS DATE)",
        // Six days back, then forward to a Monday: the Monday on or before `day`.
        (TimeGrain::Week, false) => "date(day, '-6 days', 'weekday 1')",
        (TimeGrain::Month, false) => "date(day, 'start of month')",
    }
}
