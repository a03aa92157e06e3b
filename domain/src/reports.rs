//! Reports (rules 16–18): usage and spending for any range of UTC days, a forecast of
//! the tokens needed, and pay-as-you-go against subscription advice.
//!
//! A report reads the rollups for days up to the watermark and the raw opens after
//! it (rule 17), so it is exact at any moment and the same before and after a rollup.
//! A usage report is planned first (which days come from where, which rows and
//! distinct users to read), without touching a row; then read; then shaped into rows.

use crate::access::Actor;
use crate::accounts::balance_at;
use crate::catalog;
use crate::conditions;
use crate::error::{DomainError, Result};
pub use crate::rollups::TimeGrain;
use crate::rollups::{
    self, DayAggregate, Grain, GroupKey, GroupRow, Grouping, RowFilter, UsageSums, UserCount,
    UserWindow, coarsen, day_aggregates, day_start, rolled_groups, window_users,
};
use crate::rules;
use crate::store::Db;
use crate::vocabulary::LedgerKind;
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use daypass_entity::{ledger_entry, lot, product};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};
use std::collections::{BTreeMap, HashMap, HashSet};

pub mod usage_csv;

/// The longest horizon a forecast looks ahead. (A report's range is unbounded: it
/// costs what the days holding data cost.)
pub const MAX_FORECAST_DAYS: i64 = 3_700;

/// What a usage report may be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Day,
    Week,
    Month,
    User,
    Product,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// First UTC day, included.
    pub from: NaiveDate,
    /// Last UTC day, included.
    pub to: NaiveDate,
    pub group_by: Vec<Dimension>,
    pub user_id: Option<i32>,
    pub product_id: Option<i32>,
}

/// One row of a usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// Start of the period of the finest time dimension asked for.
    pub period: Option<NaiveDate>,
    pub user_id: Option<i32>,
    /// `None` under PRODUCT: opens of codes that named no catalog product.
    pub product_id: Option<i32>,
    pub tokens: i64,
    pub opens: i64,
    pub charges: i64,
    pub denials: i64,
    /// Users with at least one granted open in the row, each counted once.
    pub distinct_users: i64,
    pub cost_minor: i64,
}

/// Where the days up to the watermark are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The rollups up to the watermark, the raw opens after it.
    Rollups,
    /// The raw opens only (for comparison and benchmarks).
    Raw,
}

/// The usage report the caller may see (rule 19): members get their own usage only.
pub async fn usage_report(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    query: UsageQuery,
) -> Result<Vec<UsageRow>> {
    let query = query_for_caller(actor, account_id, query)?;
    usage_rows(db, account_id, &query, Source::Rollups).await
}

/// `query` as `actor` may ask it: a user it names must be one whose usage the actor
/// may see; without one, those who do not read the account's books get their own.
fn query_for_caller(actor: &Actor, account_id: i32, mut query: UsageQuery) -> Result<UsageQuery> {
    match query.user_id {
        Some(user_id) => actor.can_see_usage_of(account_id, user_id)?,
        None => {
            actor.can_see_account(account_id)?;
            if actor.can_read_books(account_id).is_err() {
                query.user_id = actor.user().map(|u| u.user_id);
            }
        }
    }
    Ok(query)
}

/// A usage report of one account, without an access check (callers check).
pub async fn usage_rows(
    db: &Db,
    account_id: i32,
    q: &UsageQuery,
    source: Source,
) -> Result<Vec<UsageRow>> {
    usage(db, account_id, q, source, true).await
}

/// The usage report; `count_users: false` leaves `distinct_users` 0 where it would
/// need counting beyond a day (for callers that only sum). Planned from two index
/// probes, then read, then shaped into rows.
async fn usage(
    db: &Db,
    account_id: i32,
    q: &UsageQuery,
    source: Source,
    count_users: bool,
) -> Result<Vec<UsageRow>> {
    if q.from > q.to {
        return Err(DomainError::bad_input("from must not be after to"));
    }
    let conn = db.conn();
    let days_with_usage = rollups::days_with_usage(conn, account_id).await?;
    let watermark = match source {
        Source::Rollups => rollups::rolled_through(conn).await?,
        Source::Raw => None,
    };
    let plan = UsagePlan::new(q, days_with_usage, watermark, count_users);
    let (groups, tail_users) = read_groups(conn, account_id, &plan).await?;
    let users = match plan.user_count {
        Some(want) => read_window_users(conn, account_id, &plan, want, &groups, tail_users).await?,
        None => WindowUsers::new(),
    };
    Ok(shape(&plan, groups, &users))
}

/// What a usage report reads for the range, grouping and filters asked, decided from
/// the days the account has usage and the watermark before any row is read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UsagePlan {
    /// The range asked for: a period's window of distinct users stays within it.
    asked_from: NaiveDate,
    asked_to: NaiveDate,
    /// The days read: those asked for from the account's first day with usage to its
    /// last. None (`to` before `from`) when it has no usage there.
    from: NaiveDate,
    to: NaiveDate,
    grouping: Grouping,
    /// The daily rows read: a filter reads the finer rows that have its column.
    grain: Grain,
    filter: RowFilter,
    /// Every day through this one is read from the rollups (`None`: raw opens only).
    watermark: Option<NaiveDate>,
    /// The last day read from the rollups (from `from`), if any.
    rolled_end: Option<NaiveDate>,
    /// The first day read from the raw opens, through `to`.
    tail_from: NaiveDate,
    /// Distinct users counted per window, and which: those of periods longer than a
    /// day at a grain without users (a user's row counts its one user directly).
    user_count: Option<UserCount>,
}

impl UsagePlan {
    fn new(
        q: &UsageQuery,
        days_with_usage: Option<(NaiveDate, NaiveDate)>,
        watermark: Option<NaiveDate>,
        count_users: bool,
    ) -> UsagePlan {
        // Any range is valid, all time included: it is read only where the account has
        // data, so a century with a week of use costs that week.
        let (from, to) = match days_with_usage {
            Some((first, last)) => (q.from.max(first), q.to.min(last)),
            None => (q.from, q.from - Duration::days(1)),
        };
        let time = q
            .group_by
            .iter()
            .filter_map(|d| match d {
                Dimension::Day => Some(TimeGrain::Day),
                Dimension::Week => Some(TimeGrain::Week),
                Dimension::Month => Some(TimeGrain::Month),
                _ => None,
            })
            .min();
        let grouping = Grouping {
            time,
            user: q.group_by.contains(&Dimension::User),
            product: q.group_by.contains(&Dimension::Product),
        };
        let grain = Grain {
            user: grouping.user || q.user_id.is_some(),
            product: grouping.product || q.product_id.is_some(),
        };
        let needs_user_sets = count_users && !grain.user && time != Some(TimeGrain::Day);
        let user_count = needs_user_sets.then(|| {
            if grouping.product || q.product_id.is_some() {
                UserCount::PerProduct(q.product_id)
            } else {
                UserCount::AllProducts
            }
        });
        let rolled_end = watermark.map(|w| w.min(to)).filter(|e| *e >= from);
        UsagePlan {
            asked_from: q.from,
            asked_to: q.to,
            from,
            to,
            grouping,
            grain,
            filter: RowFilter {
                user_id: q.user_id,
                product_id: q.product_id,
            },
            watermark,
            rolled_end,
            tail_from: rolled_end.map_or(from, |e| e + Duration::days(1)),
            user_count,
        }
    }

    /// The start of the report's period holding `day` (`None` without a time dimension).
    fn period_of(&self, day: NaiveDate) -> Option<NaiveDate> {
        self.grouping.time.map(|t| t.start_of(day))
    }

    /// The days whose distinct users make up the row of `period`: the period within
    /// the range asked, or the days read when the report has no time dimension.
    fn window(&self, period: Option<NaiveDate>) -> UserWindow {
        match (self.grouping.time, period) {
            (Some(t), Some(p)) => UserWindow {
                period: t.period().map(|kind| (kind, p)),
                start: p.max(self.asked_from),
                end: t.end_of(p).min(self.asked_to),
            },
            _ => UserWindow {
                period: None,
                start: self.from,
                end: self.to,
            },
        }
    }

    /// Adds one raw day's aggregates to the tail: their rows summed per key, and the
    /// (product, user) pairs of those who opened something, per period, when users are
    /// counted per window.
    fn add_tail_day(
        &self,
        day: NaiveDate,
        aggregates: Vec<DayAggregate>,
        tail: &mut TailGroups,
        tail_users: &mut TailUsers,
    ) {
        let filter = self.filter;
        let aggregates: Vec<_> = aggregates
            .into_iter()
            .filter(|a| filter.user_id.is_none_or(|u| a.user_id == u))
            .filter(|a| filter.product_id.is_none_or(|p| a.product_id == p))
            .collect();
        if self.user_count.is_some() {
            let set = tail_users.entry(self.period_of(day)).or_default();
            set.extend(
                aggregates
                    .iter()
                    .filter(|a| a.sums.counts_user())
                    .map(|a| (a.product_id, a.user_id)),
            );
        }
        for r in coarsen(day, &aggregates, self.grain) {
            let key = (
                self.period_of(r.day),
                r.user_id.filter(|_| self.grouping.user),
                r.product_id.filter(|_| self.grouping.product),
            );
            let (sums, distinct) = tail.entry(key).or_default();
            *sums += r.sums;
            // By day, each key has one row per day, so the row's own count is exact;
            // longer periods are counted per window.
            *distinct += r.distinct_users;
        }
    }
}

/// The raw tail's rows per key: sums and the distinct users of one day.
type TailGroups = BTreeMap<GroupKey, (UsageSums, i64)>;

/// The raw tail's (product, user) pairs of users who opened something, per period.
type TailUsers = HashMap<Option<NaiveDate>, HashSet<(i32, i32)>>;

/// Distinct users per period, keyed by product (0: any product).
type WindowUsers = HashMap<Option<NaiveDate>, HashMap<i32, i64>>;

/// The report's groups in key order: the rolled days' from the rollups, the others'
/// from the raw opens one day at a time; and the tail's users per period.
async fn read_groups(
    conn: &impl ConnectionTrait,
    account_id: i32,
    plan: &UsagePlan,
) -> Result<(Vec<GroupRow>, TailUsers)> {
    let rolled = match plan.rolled_end {
        Some(end) => {
            rolled_groups(
                conn,
                account_id,
                plan.grain,
                plan.grouping,
                plan.from,
                end,
                plan.filter,
            )
            .await?
        }
        None => Vec::new(),
    };
    let mut tail = TailGroups::new();
    let mut tail_users = TailUsers::new();
    let mut day = plan.tail_from;
    while day <= plan.to {
        let aggregates = day_aggregates(conn, day, account_id).await?;
        plan.add_tail_day(day, aggregates, &mut tail, &mut tail_users);
        day += Duration::days(1);
    }
    Ok((merge_sorted(rolled, tail), tail_users))
}

/// The distinct users (`want`) of the window of each period among `groups`.
async fn read_window_users(
    conn: &impl ConnectionTrait,
    account_id: i32,
    plan: &UsagePlan,
    want: UserCount,
    groups: &[GroupRow],
    mut tail_users: TailUsers,
) -> Result<WindowUsers> {
    // Groups are in key order, so each period's groups are together.
    let mut periods: Vec<Option<NaiveDate>> = groups.iter().map(|g| g.key.0).collect();
    periods.dedup();
    let mut counts = WindowUsers::new();
    for period in periods {
        let tail = tail_users.remove(&period).unwrap_or_default();
        let window = plan.window(period);
        counts.insert(
            period,
            window_users(conn, account_id, window, plan.watermark, &tail, want).await?,
        );
    }
    Ok(counts)
}

/// The report's rows from its groups and, where the plan counts them per window, the
/// distinct users of each period.
fn shape(plan: &UsagePlan, mut groups: Vec<GroupRow>, users: &WindowUsers) -> Vec<UsageRow> {
    if let Some(want) = plan.user_count {
        for g in &mut groups {
            let (period, _, product) = g.key;
            let key = match want {
                UserCount::PerProduct(only) => product.or(only).unwrap_or(0),
                UserCount::AllProducts => 0,
            };
            g.distinct_users = users[&period].get(&key).copied().unwrap_or(0);
        }
    }
    let grouping = plan.grouping;
    if groups.is_empty() && grouping.time.is_none() && !grouping.user && !grouping.product {
        // An ungrouped report always has its one row, zero when nothing happened.
        groups.push(GroupRow {
            key: (None, None, None),
            sums: UsageSums::default(),
            distinct_users: 0,
        });
    }
    groups
        .into_iter()
        .map(
            |GroupRow {
                 key: (period, user_id, product_id),
                 sums: s,
                 distinct_users,
             }| UsageRow {
                period,
                user_id,
                product_id: product_id.filter(|p| *p != 0),
                tokens: s.tokens,
                opens: s.opens,
                charges: s.charges,
                denials: s.denials,
                distinct_users: if plan.grain.user {
                    i64::from(s.counts_user())
                } else {
                    distinct_users
                },
                cost_minor: s.cost_minor,
            },
        )
        .collect()
}

/// The rolled groups (in key order) and the tail's, one row per key.
fn merge_sorted(rolled: Vec<GroupRow>, tail: TailGroups) -> Vec<GroupRow> {
    if tail.is_empty() {
        return rolled;
    }
    let mut out = Vec::with_capacity(rolled.len() + tail.len());
    let mut tail = tail.into_iter().peekable();
    for mut g in rolled {
        while let Some((key, _)) = tail.peek() {
            if *key > g.key {
                break;
            }
            let (key, (sums, distinct)) = tail.next().expect("peeked");
            if key == g.key {
                g.sums += sums;
                g.distinct_users += distinct;
            } else {
                out.push(GroupRow {
                    key,
                    sums,
                    distinct_users: distinct,
                });
            }
        }
        out.push(g);
    }
    out.extend(tail.map(|(key, (sums, distinct))| GroupRow {
        key,
        sums,
        distinct_users: distinct,
    }));
    out
}

/// The end of UTC day `to` (exclusive), kept within year 9999: a later instant is
/// written with a sign on SQLite ("+10000-…") and would sort before every other.
fn day_end(to: NaiveDate) -> DateTime<Utc> {
    match to.succ_opt().filter(|next| next.year() <= 9999) {
        Some(next) => day_start(next),
        None => day_start(to) + Duration::days(1) - Duration::microseconds(1),
    }
}

/// Where the money went in a range of UTC days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spending {
    /// Tokens charged.
    pub tokens: i64,
    /// Their value at the unit prices of the lots they came from.
    pub cost_minor: i64,
    pub currency: String,
    pub purchased_tokens: i64,
    pub purchased_minor: i64,
    pub expired_tokens: i64,
}

/// Spending of an account (rule 16); for those who read its books.
pub async fn spending(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Spending> {
    actor.can_read_books(account_id)?;
    // Sums only: spending has no distinct users to count.
    let used = usage(
        db,
        account_id,
        &UsageQuery {
            from,
            to,
            group_by: vec![],
            user_id: None,
            product_id: None,
        },
        Source::Rollups,
        false,
    )
    .await?;
    let (start, end) = (day_start(from), day_end(to));
    let lots: Vec<(i64, i64)> = lot::Entity::find()
        .select_only()
        .column(lot::Column::Quantity)
        .column(lot::Column::UnitPriceMinor)
        .filter(lot::Column::AccountId.eq(account_id))
        .filter(lot::Column::PurchasedAt.gte(start))
        .filter(lot::Column::PurchasedAt.lt(end))
        .into_tuple()
        .all(db.conn())
        .await?;
    let expired: Vec<i64> = ledger_entry::Entity::find()
        .select_only()
        .column(ledger_entry::Column::Tokens)
        .filter(ledger_entry::Column::AccountId.eq(account_id))
        .filter(ledger_entry::Column::Kind.eq(LedgerKind::Expiry.as_str()))
        .filter(ledger_entry::Column::At.gte(start))
        .filter(ledger_entry::Column::At.lt(end))
        .into_tuple()
        .all(db.conn())
        .await?;
    let currency = catalog::load_price_list(db.conn()).await?.currency;
    Ok(Spending {
        tokens: used.iter().map(|r| r.tokens).sum(),
        cost_minor: used.iter().map(|r| r.cost_minor).sum(),
        currency,
        purchased_tokens: lots.iter().map(|(q, _)| q).sum(),
        purchased_minor: lots.iter().map(|(q, p)| q * p).sum(),
        expired_tokens: -expired.iter().sum::<i64>(),
    })
}

/// The trailing window a forecast and the advice learn from: four whole weeks, so
/// every weekday weighs the same, ending with yesterday (today is not over).
pub const TRAILING_DAYS: i64 = 28;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forecast {
    pub horizon_days: i64,
    pub expected_tokens: i64,
    pub balance: i64,
    pub shortfall: i64,
    pub advice: Vec<Advice>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    pub user_id: i32,
    pub product_id: i32,
    /// Pay-as-you-go cost of a year at the trailing rate.
    pub flex_cost_minor: i64,
    pub subscription_cost_minor: i64,
    pub recommend_subscription: bool,
}

/// Rule 18: tokens needed over the next `horizon_days`, and who should move to a
/// subscription. For those who read the account's books.
pub async fn forecast(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    horizon_days: i64,
    now: DateTime<Utc>,
) -> Result<Forecast> {
    actor.can_read_books(account_id)?;
    if !(1..=MAX_FORECAST_DAYS).contains(&horizon_days) {
        return Err(DomainError::bad_input(format!(
            "horizonDays must be between 1 and {MAX_FORECAST_DAYS}"
        )));
    }
    let to = now.date_naive() - Duration::days(1);
    let from = to - Duration::days(TRAILING_DAYS - 1);
    let rows = usage_rows(
        db,
        account_id,
        &UsageQuery {
            from,
            to,
            group_by: vec![Dimension::User, Dimension::Product],
            user_id: None,
            product_id: None,
        },
        Source::Rollups,
    )
    .await?;
    let trailing_tokens: i64 = rows.iter().map(|r| r.tokens).sum();
    let lots: Vec<(i64, DateTime<Utc>)> = lot::Entity::find()
        .select_only()
        .column(lot::Column::Remaining)
        .column(lot::Column::ExpiresAt)
        .filter(lot::Column::AccountId.eq(account_id))
        .filter(conditions::live_lot(lot::Entity, now))
        .into_tuple()
        .all(db.conn())
        .await?;
    let need = rules::TokenNeed {
        trailing_tokens,
        trailing_days: TRAILING_DAYS,
    };
    let expected_tokens = need.expected_by(horizon_days);
    let lots: Vec<(i64, i64)> = lots
        .into_iter()
        .map(|(remaining, expires_at)| {
            (
                remaining,
                (expires_at - now).num_seconds().div_euclid(86_400),
            )
        })
        .collect();
    let shortfall = expected_tokens - need.covered_by_lots(&lots, horizon_days);
    let balance = balance_at(db.conn(), account_id, now).await?.get();

    let prices: HashMap<i32, i64> = product::Entity::find()
        .select_only()
        .column(product::Column::Id)
        .column(product::Column::AnnualSubscriptionMinor)
        .filter(product::Column::AnnualSubscriptionMinor.is_not_null())
        .into_tuple::<(i32, Option<i64>)>()
        .all(db.conn())
        .await?
        .into_iter()
        .filter_map(|(id, price)| price.map(|p| (id, p)))
        .collect();
    let mut advice: Vec<Advice> = rows
        .iter()
        .filter(|r| r.cost_minor > 0)
        .filter_map(|r| {
            let (user_id, product_id) = (r.user_id?, r.product_id?);
            let subscription_cost_minor = *prices.get(&product_id)?;
            let flex_cost_minor = rules::annualized(r.cost_minor, TRAILING_DAYS);
            Some(Advice {
                user_id,
                product_id,
                flex_cost_minor,
                subscription_cost_minor,
                recommend_subscription: flex_cost_minor > subscription_cost_minor,
            })
        })
        .collect();
    // The largest savings first.
    advice.sort_by_key(|a| {
        (
            std::cmp::Reverse(a.flex_cost_minor - a.subscription_cost_minor),
            a.user_id,
            a.product_id,
        )
    });
    Ok(Forecast {
        horizon_days,
        expected_tokens,
        balance,
        shortfall,
        advice,
    })
}

#[cfg(test)]
mod tests;
