//! The distinct users of a report's window: a user counts once however many days and
//! products they opened, so a longer period's count is not the sum of its days'.
//!
//! The rollup job stores, for each week and month, the users from its first day
//! through each rolled day and the users since each of its days; a window that starts
//! or ends where a stored count does reads it, any other counts the daily rows. Users
//! of the raw tail after the watermark are added when no rolled day of the window has
//! them.

use super::Period;
use crate::error::Result;
use crate::store::stmt;
use chrono::NaiveDate;
use sea_orm::{ConnectionTrait, Value};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Which distinct users a report needs of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserCount {
    /// Per product (keyed by product id), optionally of one product only.
    PerProduct(Option<i32>),
    /// Over all products together (keyed by 0).
    AllProducts,
}

impl UserCount {
    /// Whether a count stored or read under `product` (0: any product) is one wanted.
    fn keeps(self, product: i32) -> bool {
        match self {
            UserCount::PerProduct(only) => product != 0 && only.is_none_or(|p| p == product),
            UserCount::AllProducts => product == 0,
        }
    }
}

/// One window of a report whose distinct users are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserWindow {
    /// The week or month the window lies in (kind and first day), if any.
    pub period: Option<(Period, NaiveDate)>,
    pub start: NaiveDate,
    pub end: NaiveDate,
}

/// Distinct users of one account in `window`: from the rollups for days through
/// `watermark`, plus the users of the raw tail after it (`tail`: (product, user) pairs)
/// the rolled days had not seen.
///
/// A window from its period's first day reads the stored period-to-date count; one
/// reaching its period's last rolled day reads the stored count since its first day;
/// any other window (no period, or one inside a period) counts the daily rollups.
pub async fn window_users(
    conn: &impl ConnectionTrait,
    account_id: i32,
    window: UserWindow,
    watermark: Option<NaiveDate>,
    tail: &HashSet<(i32, i32)>,
    want: UserCount,
) -> Result<HashMap<i32, i64>> {
    let UserWindow { start, end, .. } = window;
    let mut fresh: HashSet<(i32, i32)> = match want {
        UserCount::PerProduct(_) => tail.clone(),
        UserCount::AllProducts => tail.iter().map(|(_, u)| (0, *u)).collect(),
    };
    let mut counts: HashMap<i32, i64> = HashMap::new();
    if let Some(through) = watermark.filter(|w| *w >= start).map(|w| w.min(end)) {
        let stored = match stored_count(window, watermark, through) {
            Some(stored) => stored_users(conn, account_id, stored, watermark, want).await?,
            None => None,
        };
        counts = match stored {
            Some(found) => found,
            // No stored count fits the window (or a day was rolled meanwhile): count
            // the daily rows.
            None => daily_users(conn, account_id, start, through, want).await?,
        };
        // Tail users seen on a rolled day of the window are counted already. Read from
        // the daily rows through the watermark, not from the period's members: the
        // rollup job writes those a chunk at a time before it moves the watermark.
        let sql = "SELECT DISTINCT product_id, user_id FROM usage_days \
                   WHERE account_id = ? AND day >= ? AND day <= ? AND opens > 0 \
                   AND user_id IN";
        let values = vec![account_id.into(), start.into(), through.into()];
        forget_seen(conn, sql, values, &mut fresh).await?;
    }
    for (product, _) in fresh {
        *counts.entry(product).or_default() += 1;
    }
    Ok(counts)
}

/// A stored count of a period's distinct users: the row of `table` whose `column` is
/// `at`, in the period of `kind` starting on `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoredCount {
    table: &'static str,
    column: &'static str,
    at: NaiveDate,
    kind: Period,
    first: NaiveDate,
}

/// The stored count that answers the rolled days of `window` (`window.start` through
/// `through`), if one does.
fn stored_count(
    window: UserWindow,
    watermark: Option<NaiveDate>,
    through: NaiveDate,
) -> Option<StoredCount> {
    let stored = |table, column, at, kind, first| StoredCount {
        table,
        column,
        at,
        kind,
        first,
    };
    match window.period {
        Some((kind, first)) if window.start == first => Some(stored(
            "usage_period_users",
            "through_day",
            through,
            kind,
            first,
        )),
        Some((kind, first)) if watermark.map(|w| w.min(kind.end_of(first))) == Some(through) => {
            Some(stored(
                "usage_period_users_since",
                "from_day",
                window.start,
                kind,
                first,
            ))
        }
        _ => None,
    }
}

/// The `stored` count, read in one statement with the watermark: the counts since
/// each day are rewritten as each day is rolled, so they answer only while the
/// watermark is the one this report started from (`None` otherwise).
async fn stored_users(
    conn: &impl ConnectionTrait,
    account_id: i32,
    stored: StoredCount,
    watermark: Option<NaiveDate>,
    want: UserCount,
) -> Result<Option<HashMap<i32, i64>>> {
    let StoredCount {
        table,
        column,
        at,
        kind,
        first,
    } = stored;
    let rows = conn
        .query_all_raw(stmt(
            conn.get_database_backend(),
            &format!(
                "SELECT w.rolled_through AS rolled_through, s.product_id AS product_id, \
                 s.distinct_users AS distinct_users FROM rollup_watermark w \
                 LEFT JOIN {table} s ON s.account_id = ? AND s.grain = ? \
                 AND s.period = ? AND s.{column} = ? WHERE w.id = 1"
            ),
            vec![
                account_id.into(),
                kind.grain().into(),
                first.into(),
                at.into(),
            ],
        ))
        .await?;
    let current = match rows.first() {
        Some(r) => r.try_get::<Option<NaiveDate>>("", "rolled_through")?,
        None => None,
    };
    if current != watermark {
        return Ok(None);
    }
    let mut found = HashMap::new();
    for r in rows {
        if let Some(product) = r.try_get::<Option<i32>>("", "product_id")?
            && want.keeps(product)
        {
            found.insert(product, r.try_get("", "distinct_users")?);
        }
    }
    Ok(Some(found))
}

/// Distinct users of one account in `start..=through`, counted from the daily rows.
async fn daily_users(
    conn: &impl ConnectionTrait,
    account_id: i32,
    start: NaiveDate,
    through: NaiveDate,
    want: UserCount,
) -> Result<HashMap<i32, i64>> {
    let (sql, mut values) = match want {
        UserCount::PerProduct(_) => (
            "SELECT product_id, COUNT(DISTINCT user_id) AS n FROM usage_days \
             WHERE account_id = ? AND day >= ? AND day <= ? AND opens > 0",
            vec![account_id.into(), start.into(), through.into()],
        ),
        UserCount::AllProducts => (
            "SELECT 0 AS product_id, COUNT(DISTINCT user_id) AS n FROM usage_day_users \
             WHERE account_id = ? AND day >= ? AND day <= ? AND opens > 0",
            vec![account_id.into(), start.into(), through.into()],
        ),
    };
    let mut sql = sql.to_owned();
    if let UserCount::PerProduct(only) = want {
        if let Some(p) = only {
            sql.push_str(" AND product_id = ?");
            values.push(p.into());
        }
        sql.push_str(" GROUP BY product_id");
    }
    let mut counts = HashMap::new();
    for r in conn
        .query_all_raw(stmt(conn.get_database_backend(), &sql, values))
        .await?
    {
        let product: i32 = r.try_get("", "product_id")?;
        if want.keeps(product) {
            counts.insert(product, r.try_get("", "n")?);
        }
    }
    Ok(counts)
}

/// Removes from `fresh` the (product, user) pairs, and the (0, user) "any product"
/// pairs, of the rows `sql` (ending in `user_id IN`) finds for fresh users.
async fn forget_seen(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: Vec<Value>,
    fresh: &mut HashSet<(i32, i32)>,
) -> Result<()> {
    let users: Vec<i32> = fresh
        .iter()
        .map(|(_, u)| *u)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for chunk in users.chunks(1_000) {
        let sql = format!("{sql} ({})", vec!["?"; chunk.len()].join(", "));
        let mut values = values.clone();
        values.extend(chunk.iter().map(|u| Value::from(*u)));
        for r in conn
            .query_all_raw(stmt(conn.get_database_backend(), &sql, values))
            .await?
        {
            let (product, user): (i32, i32) =
                (r.try_get("", "product_id")?, r.try_get("", "user_id")?);
            fresh.remove(&(product, user));
            fresh.remove(&(0, user));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn week(start: &str, end: &str) -> UserWindow {
        UserWindow {
            period: Some((Period::Week, d("2026-03-02"))),
            start: d(start),
            end: d(end),
        }
    }

    #[test]
    fn a_window_reads_the_stored_count_that_starts_or_ends_where_it_does() {
        // The week of Monday 2026-03-02, rolled through Thursday.
        let watermark = Some(d("2026-03-05"));
        // From the week's first day: the count from it through the last rolled day.
        assert_eq!(
            stored_count(week("2026-03-02", "2026-03-08"), watermark, d("2026-03-05")),
            Some(StoredCount {
                table: "usage_period_users",
                column: "through_day",
                at: d("2026-03-05"),
                kind: Period::Week,
                first: d("2026-03-02"),
            })
        );
        // From Wednesday on, reaching the last rolled day: the count since Wednesday.
        assert_eq!(
            stored_count(week("2026-03-04", "2026-03-08"), watermark, d("2026-03-05")),
            Some(StoredCount {
                table: "usage_period_users_since",
                column: "from_day",
                at: d("2026-03-04"),
                kind: Period::Week,
                first: d("2026-03-02"),
            })
        );
        // Tuesday to Wednesday neither starts nor ends where a count does.
        assert_eq!(
            stored_count(week("2026-03-03", "2026-03-04"), watermark, d("2026-03-04")),
            None
        );
        // A window of no period (an ungrouped report) counts the daily rows.
        let range = UserWindow {
            period: None,
            ..week("2026-03-02", "2026-03-08")
        };
        assert_eq!(stored_count(range, watermark, d("2026-03-05")), None);
    }

    #[test]
    fn counts_are_kept_per_product_or_for_any_product() {
        assert!(UserCount::AllProducts.keeps(0));
        assert!(!UserCount::AllProducts.keeps(7));
        assert!(UserCount::PerProduct(None).keeps(7));
        assert!(!UserCount::PerProduct(None).keeps(0));
        assert!(UserCount::PerProduct(Some(7)).keeps(7));
        assert!(!UserCount::PerProduct(Some(7)).keeps(8));
    }
}
