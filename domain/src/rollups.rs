//! Rule 17: the rollup job turns each closed UTC day of raw opens into daily
//! aggregates, and reports read those for rolled days and the raw opens for the rest.
//!
//! One definition of what a day's usage is ([`day_aggregates`]) serves both the job and
//! the reports' raw tail, so a report is the same before and after the job runs.

use crate::error::{DomainError, Result};
use crate::store::stmt;
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::AddAssign;

mod job;
pub use job::{CHUNK_ROWS, roll_up, roll_up_in_chunks, roll_up_stopping_after};

/// A day is rolled up only this long after it ended, so a write that read the clock
/// just before midnight and committed just after is still in it.
pub const ROLLUP_GRACE: Duration = Duration::minutes(10);

/// What a report sums. Every rollup row carries these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageSums {
    /// Tokens charged.
    pub tokens: i64,
    /// Granted opens (charged, inside a window, or through a subscription).
    pub opens: i64,
    /// Charges made.
    pub charges: i64,
    /// Denied opens.
    pub denials: i64,
    /// Money value of the tokens charged, at the unit prices of the lots they came from.
    pub cost_minor: i64,
}

impl AddAssign for UsageSums {
    fn add_assign(&mut self, o: UsageSums) {
        self.tokens += o.tokens;
        self.opens += o.opens;
        self.charges += o.charges;
        self.denials += o.denials;
        self.cost_minor += o.cost_minor;
    }
}

impl UsageSums {
    /// A user counts toward "distinct users" when they opened something (a granted
    /// open); a user who was only denied did not use a product.
    pub fn counts_user(&self) -> bool {
        self.opens > 0
    }
}

/// One user's use of one product on one UTC day, from the raw opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayAggregate {
    pub account_id: i32,
    pub user_id: i32,
    /// 0: the open named no catalog product (always a denial).
    pub product_id: i32,
    pub sums: UsageSums,
}

/// Which dimensions a daily rollup keeps; each has its own table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grain {
    pub user: bool,
    pub product: bool,
}

impl Grain {
    fn table(self) -> &'static str {
        match (self.user, self.product) {
            (true, true) => "usage_days",
            (true, false) => "usage_day_users",
            (false, true) => "usage_day_products",
            (false, false) => "usage_day_totals",
        }
    }

    /// Grains without the user dimension store their distinct-user count; with it the
    /// count is 1 or 0 and follows from the sums.
    fn stores_distinct_users(self) -> bool {
        !self.user
    }

    /// Per user and product.
    const USER_PRODUCT: Grain = Grain {
        user: true,
        product: true,
    };
    /// Per user, all products together.
    const USER: Grain = Grain {
        user: true,
        product: false,
    };
    /// Per product, all users together.
    const PRODUCT: Grain = Grain {
        user: false,
        product: true,
    };
    /// The account's totals.
    const TOTAL: Grain = Grain {
        user: false,
        product: false,
    };
}

/// A daily row at some grain: the shape both the rollup tables and the raw tail give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayRow {
    pub day: NaiveDate,
    pub user_id: Option<i32>,
    pub product_id: Option<i32>,
    pub sums: UsageSums,
    pub distinct_users: i64,
}

/// Turns one account's aggregates of one day into rows of `grain`.
pub fn coarsen<'a>(
    day: NaiveDate,
    aggregates: impl IntoIterator<Item = &'a DayAggregate>,
    grain: Grain,
) -> Vec<DayRow> {
    // (user, product) at this grain → sums and the users who opened something.
    type Groups = BTreeMap<(Option<i32>, Option<i32>), (UsageSums, HashSet<i32>)>;
    let mut groups = Groups::new();
    for a in aggregates {
        let key = (
            grain.user.then_some(a.user_id),
            grain.product.then_some(a.product_id),
        );
        let (sums, users) = groups.entry(key).or_default();
        *sums += a.sums;
        if a.sums.counts_user() {
            users.insert(a.user_id);
        }
    }
    groups
        .into_iter()
        .map(|((user_id, product_id), (sums, users))| DayRow {
            day,
            user_id,
            product_id,
            sums,
            distinct_users: users.len() as i64,
        })
        .collect()
}

/// The start of `day` in UTC.
pub fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

/// Rule 16's measures for one account's UTC day, per user and product, from the raw
/// opens and the charges they made. The one definition of a day's usage; it reads
/// along the index on (account, time).
pub async fn day_aggregates(
    conn: &impl ConnectionTrait,
    day: NaiveDate,
    account_id: i32,
) -> Result<Vec<DayAggregate>> {
    const SQL: &str = "SELECT o.account_id AS account_id, o.user_id AS user_id, \
         COALESCE(o.product_id, 0) AS product_id, \
         CAST(COALESCE(SUM(o.tokens), 0) AS BIGINT) AS tokens, \
         CAST(SUM(CASE WHEN o.granted THEN 1 ELSE 0 END) AS BIGINT) AS opens, \
         CAST(SUM(CASE WHEN o.charge_id IS NULL THEN 0 ELSE 1 END) AS BIGINT) AS charges, \
         CAST(SUM(CASE WHEN o.granted THEN 0 ELSE 1 END) AS BIGINT) AS denials, \
         CAST(COALESCE(SUM(c.cost_minor), 0) AS BIGINT) AS cost_minor \
         FROM opens o LEFT JOIN charges c ON c.id = o.charge_id \
         WHERE o.account_id = ? AND o.at >= ? AND o.at < ? \
         GROUP BY o.account_id, o.user_id, COALESCE(o.product_id, 0)";
    let values: Vec<Value> = vec![
        account_id.into(),
        day_start(day).into(),
        day_start(day + Duration::days(1)).into(),
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
/// denied), in the raw opens or the daily totals: outside them every report is
/// empty. Index probes only, whatever the range.
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
                    (SELECT MIN(day) FROM usage_day_totals WHERE account_id = ?) AS first_day, \
                    (SELECT MAX(day) FROM usage_day_totals WHERE account_id = ?) AS last_day",
            vec![account_id.into(); 4],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let raw_first: Option<DateTime<Utc>> = row.try_get("", "first_at")?;
    let raw_last: Option<DateTime<Utc>> = row.try_get("", "last_at")?;
    let rolled_first: Option<NaiveDate> = row.try_get("", "first_day")?;
    let rolled_last: Option<NaiveDate> = row.try_get("", "last_day")?;
    let first = [raw_first.map(|t| t.date_naive()), rolled_first]
        .into_iter()
        .flatten()
        .min();
    let last = [raw_last.map(|t| t.date_naive()), rolled_last]
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

/// One user's usage of one day, as packed in `usage_day_user_blocks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct UserDay {
    user_id: i32,
    tokens: i64,
    opens: i64,
    charges: i64,
    denials: i64,
    cost_minor: i64,
}

/// The per-user rows of one account for `from..=to` from the packed daily blocks,
/// summed per `time` period, in key order.
async fn user_block_groups(
    conn: &impl ConnectionTrait,
    account_id: i32,
    time: Option<TimeGrain>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<GroupRow>> {
    let rows = conn
        .query_all_raw(stmt(
            conn.get_database_backend(),
            "SELECT day, users FROM usage_day_user_blocks \
             WHERE account_id = ? AND day >= ? AND day <= ?",
            vec![account_id.into(), from.into(), to.into()],
        ))
        .await?;
    let mut groups: Vec<GroupRow> = Vec::new();
    // By day every (day, user) is its own group; longer periods sum theirs.
    let mut index: HashMap<GroupKey, usize> = HashMap::new();
    for r in rows {
        let day: NaiveDate = r.try_get_by_index(0)?;
        let packed: Vec<u8> = r.try_get_by_index(1)?;
        let users: Vec<UserDay> = postcard::from_bytes(&packed)
            .map_err(|e| DomainError::Internal(format!("usage block of {day}: {e}")))?;
        let period = time.map(|t| t.start_of(day));
        for u in users {
            let key = (period, Some(u.user_id), None);
            let sums = UsageSums {
                tokens: u.tokens,
                opens: u.opens,
                charges: u.charges,
                denials: u.denials,
                cost_minor: u.cost_minor,
            };
            if time != Some(TimeGrain::Day) {
                if let Some(&i) = index.get(&key) {
                    groups[i].sums += sums;
                    continue;
                }
                index.insert(key, groups.len());
            }
            groups.push(GroupRow {
                key,
                sums,
                distinct_users: 0,
            });
        }
    }
    groups.sort_unstable_by_key(|g| g.key);
    Ok(groups)
}

/// A period whose distinct users are stored whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Period {
    Week,
    Month,
}

impl Period {
    fn grain(self) -> &'static str {
        match self {
            Period::Week => "WEEK",
            Period::Month => "MONTH",
        }
    }

    /// The first day of the period holding `day` (ISO weeks start on Monday).
    pub fn start_of(self, day: NaiveDate) -> NaiveDate {
        match self {
            Period::Week => day - Duration::days(day.weekday().num_days_from_monday().into()),
            Period::Month => day.with_day(1).expect("day 1 exists"),
        }
    }

    /// The last day of the period starting at `start`.
    pub fn end_of(self, start: NaiveDate) -> NaiveDate {
        match self {
            Period::Week => start + Duration::days(6),
            Period::Month => {
                let (y, m) = if start.month() == 12 {
                    (start.year() + 1, 1)
                } else {
                    (start.year(), start.month() + 1)
                };
                NaiveDate::from_ymd_opt(y, m, 1).expect("first of month") - Duration::days(1)
            }
        }
    }
}

/// The time dimension of a report, finest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimeGrain {
    Day,
    Week,
    Month,
}

impl TimeGrain {
    /// The first day of the period holding `day` (ISO weeks start on Monday).
    pub fn start_of(self, day: NaiveDate) -> NaiveDate {
        self.period().map_or(day, |p| p.start_of(day))
    }

    /// The last day of the period starting at `start`.
    pub fn end_of(self, start: NaiveDate) -> NaiveDate {
        self.period().map_or(start, |p| p.end_of(start))
    }

    /// Weeks and months, whose distinct users the rollups keep.
    pub fn period(self) -> Option<Period> {
        match self {
            TimeGrain::Day => None,
            TimeGrain::Week => Some(Period::Week),
            TimeGrain::Month => Some(Period::Month),
        }
    }

    /// The SQL for the first day of the period holding the column `day`: the same
    /// answer as [`TimeGrain::start_of`], computed where the rows are.
    fn start_sql(self, backend: DatabaseBackend) -> &'static str {
        match (self, backend == DatabaseBackend::Postgres) {
            (TimeGrain::Day, _) => "day",
            // A timestamp without time zone: the session's zone plays no part.
            (TimeGrain::Week, true) => "CAST(date_trunc('week', CAST(day AS TIMESTAMP)) AS DATE)",
            (TimeGrain::Month, true) => "CAST(date_trunc('month', CAST(day AS TIMESTAMP)) AS DATE)",
            // Six days back, then forward to a Monday: the Monday on or before `day`.
            (TimeGrain::Week, false) => "date(day, '-6 days', 'weekday 1')",
            (TimeGrain::Month, false) => "date(day, 'start of month')",
        }
    }
}

/// Which distinct users a report needs of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserCount {
    /// Per product (keyed by product id), optionally of one product only.
    PerProduct(Option<i32>),
    /// Over all products together (keyed by 0).
    AllProducts,
}

/// One window of a report whose distinct users are wanted.
#[derive(Debug, Clone, Copy)]
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
    let backend = conn.get_database_backend();
    let UserWindow { period, start, end } = window;
    let mut fresh: HashSet<(i32, i32)> = match want {
        UserCount::PerProduct(_) => tail.clone(),
        UserCount::AllProducts => tail.iter().map(|(_, u)| (0, *u)).collect(),
    };
    let mut counts: HashMap<i32, i64> = HashMap::new();
    let keep = |product: i32| match want {
        UserCount::PerProduct(only) => product != 0 && only.is_none_or(|p| p == product),
        UserCount::AllProducts => product == 0,
    };
    if let Some(through) = watermark.filter(|w| *w >= start).map(|w| w.min(end)) {
        let stored = match period {
            Some((kind, first)) if start == first => {
                Some(("usage_period_users", "through_day", through, kind, first))
            }
            Some((kind, first))
                if watermark.map(|w| w.min(kind.end_of(first))) == Some(through) =>
            {
                Some(("usage_period_users_since", "from_day", start, kind, first))
            }
            _ => None,
        };
        // The stored counts, read in one statement with the watermark: the counts
        // since each day are rewritten as each day is rolled, so they answer only while
        // the watermark is the one this report started from.
        let mut stored_counts = None;
        if let Some((table, column, at, kind, first)) = stored {
            let rows = conn
                .query_all_raw(stmt(
                    backend,
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
            if current == watermark {
                let mut found = HashMap::new();
                for r in rows {
                    if let Some(product) = r.try_get::<Option<i32>>("", "product_id")?
                        && keep(product)
                    {
                        found.insert(product, r.try_get("", "distinct_users")?);
                    }
                }
                stored_counts = Some(found);
            }
        }
        match stored_counts {
            Some(found) => counts = found,
            // No stored count fits the window (or a day was rolled meanwhile): count
            // the daily rows.
            None => {
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
                for r in conn.query_all_raw(stmt(backend, &sql, values)).await? {
                    let product: i32 = r.try_get("", "product_id")?;
                    if keep(product) {
                        counts.insert(product, r.try_get("", "n")?);
                    }
                }
            }
        }
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

/// Filters on rolled rows.
#[derive(Debug, Clone, Copy, Default)]
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
    /// (a longer period's users are counted by [`window_users`], a user's row counts
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
        return user_block_groups(conn, account_id, grouping.time, from, to).await;
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
        keys.push(t.start_sql(backend));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(user_id: i32, product_id: i32, opens: i64, denials: i64) -> DayAggregate {
        DayAggregate {
            account_id: 1,
            user_id,
            product_id,
            sums: UsageSums {
                tokens: opens * 2,
                opens,
                charges: opens,
                denials,
                cost_minor: opens * 20,
            },
        }
    }

    #[test]
    fn coarsening_sums_and_counts_only_users_who_opened() {
        let day = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
        let aggs = [
            agg(1, 7, 1, 0),
            agg(2, 7, 2, 0),
            agg(1, 8, 1, 0),
            agg(3, 8, 0, 4),
        ];
        let total = coarsen(day, &aggs, Grain::TOTAL);
        assert_eq!(total.len(), 1);
        assert_eq!(total[0].sums.opens, 4);
        assert_eq!(total[0].sums.denials, 4);
        assert_eq!(total[0].distinct_users, 2, "user 3 was only denied");
        let by_product = coarsen(day, &aggs, Grain::PRODUCT);
        let counts: Vec<(Option<i32>, i64)> = by_product
            .iter()
            .map(|r| (r.product_id, r.distinct_users))
            .collect();
        assert_eq!(counts, [(Some(7), 2), (Some(8), 1)]);
    }

    #[test]
    fn postgres_placeholders_are_numbered() {
        let s = stmt(
            DatabaseBackend::Postgres,
            "a = ? AND b = ?",
            vec![1.into(), 2.into()],
        );
        assert_eq!(s.sql, "a = $1 AND b = $2");
        let s = stmt(DatabaseBackend::Sqlite, "a = ?", vec![1.into()]);
        assert_eq!(s.sql, "a = ?");
    }
}
