//! Reports (rules 16–18): usage and spending for any range of UTC days, a forecast of
//! the tokens needed, and pay-as-you-go against subscription advice.
//!
//! A report reads the rollups for days up to the watermark and the raw opens after
//! it (rule 17), so it is exact at any moment and the same before and after a rollup.

use crate::access::Actor;
use crate::accounts::balance_at;
use crate::catalog;
use crate::conditions;
use crate::error::{DomainError, Result};
use crate::kinds::LedgerKind;
pub use crate::rollups::TimeGrain;
use crate::rollups::{
    self, Grain, GroupKey, GroupRow, Grouping, RowFilter, UsageSums, UserCount, UserWindow,
    coarsen, day_aggregates, day_start, rolled_groups, window_users,
};
use crate::rules;
use crate::store::Db;
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use daypass_entity::{ledger_entry, lot, product};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use std::collections::{BTreeMap, HashMap, HashSet};

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
    mut query: UsageQuery,
) -> Result<Vec<UsageRow>> {
    match query.user_id {
        Some(user_id) => actor.can_see_usage_of(account_id, user_id)?,
        None => {
            actor.can_see_account(account_id)?;
            if actor.can_read_books(account_id).is_err() {
                query.user_id = actor.user().map(|u| u.user_id);
            }
        }
    }
    usage_rows(db, account_id, &query, Source::Rollups).await
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
/// need counting beyond a day (for callers that only sum).
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
    // Any range is valid, all time included: it is read only where the account has
    // data, so a century with a week of use costs that week.
    let (from, to) = match rollups::days_with_usage(conn, account_id).await? {
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
    // A filter reads the finer table that has its column.
    let grain = Grain {
        user: grouping.user || q.user_id.is_some(),
        product: grouping.product || q.product_id.is_some(),
    };
    let filter = RowFilter {
        user_id: q.user_id,
        product_id: q.product_id,
    };
    // Distinct users of a longer period than a day are counted per window; a grain
    // with the user dimension counts each row's one user directly.
    let needs_user_sets = count_users && !grain.user && time != Some(TimeGrain::Day);
    let period_of = |day: NaiveDate| time.map(|t| t.start_of(day));

    let watermark = match source {
        Source::Rollups => rollups::rolled_through(conn).await?,
        Source::Raw => None,
    };
    let rolled_end = watermark.map(|w| w.min(to)).filter(|e| *e >= from);
    let tail_from = rolled_end.map_or(from, |e| e + Duration::days(1));

    let rolled = match rolled_end {
        Some(end) => rolled_groups(conn, account_id, grain, grouping, from, end, filter).await?,
        None => Vec::new(),
    };
    // The raw tail, one day at a time; user sets kept per period for distinct users.
    let mut tail: BTreeMap<GroupKey, (UsageSums, i64)> = BTreeMap::new();
    let mut tail_users: HashMap<Option<NaiveDate>, HashSet<(i32, i32)>> = HashMap::new();
    let mut day = tail_from;
    while day <= to {
        let aggregates: Vec<_> = day_aggregates(conn, day, account_id)
            .await?
            .into_iter()
            .filter(|a| filter.user_id.is_none_or(|u| a.user_id == u))
            .filter(|a| filter.product_id.is_none_or(|p| a.product_id == p))
            .collect();
        if needs_user_sets {
            let set = tail_users.entry(period_of(day)).or_default();
            set.extend(
                aggregates
                    .iter()
                    .filter(|a| a.sums.counts_user())
                    .map(|a| (a.product_id, a.user_id)),
            );
        }
        for r in coarsen(day, &aggregates, grain) {
            let key = (
                period_of(r.day),
                r.user_id.filter(|_| grouping.user),
                r.product_id.filter(|_| grouping.product),
            );
            let (sums, distinct) = tail.entry(key).or_default();
            *sums += r.sums;
            // By day, each key has one row per day, so the row's own count is exact;
            // longer periods are counted below.
            *distinct += r.distinct_users;
        }
        day += Duration::days(1);
    }
    let mut groups = merge_sorted(rolled, tail);

    if needs_user_sets {
        let want = if grouping.product || q.product_id.is_some() {
            UserCount::PerProduct(q.product_id)
        } else {
            UserCount::AllProducts
        };
        // Groups are in key order, so each period's groups are together.
        let mut periods: Vec<Option<NaiveDate>> = groups.iter().map(|g| g.key.0).collect();
        periods.dedup();
        let mut counts: HashMap<Option<NaiveDate>, HashMap<i32, i64>> = HashMap::new();
        for period in periods {
            let window = match (time, period) {
                (Some(t), Some(p)) => UserWindow {
                    period: t.period().map(|kind| (kind, p)),
                    start: p.max(q.from),
                    end: t.end_of(p).min(q.to),
                },
                _ => UserWindow {
                    period: None,
                    start: from,
                    end: to,
                },
            };
            let tail = tail_users.remove(&period).unwrap_or_default();
            counts.insert(
                period,
                window_users(conn, account_id, window, watermark, &tail, want).await?,
            );
        }
        for g in &mut groups {
            let (period, _, product) = g.key;
            let key = match want {
                UserCount::PerProduct(only) => product.or(only).unwrap_or(0),
                UserCount::AllProducts => 0,
            };
            g.distinct_users = counts[&period].get(&key).copied().unwrap_or(0);
        }
    }

    if groups.is_empty() && time.is_none() && !grouping.user && !grouping.product {
        // An ungrouped report always has its one row, zero when nothing happened.
        groups.push(GroupRow {
            key: (None, None, None),
            sums: UsageSums::default(),
            distinct_users: 0,
        });
    }
    Ok(groups
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
                distinct_users: if grain.user {
                    i64::from(s.counts_user())
                } else {
                    distinct_users
                },
                cost_minor: s.cost_minor,
            },
        )
        .collect())
}

/// The rolled groups (in key order) and the tail's, one row per key.
fn merge_sorted(
    rolled: Vec<GroupRow>,
    tail: BTreeMap<GroupKey, (UsageSums, i64)>,
) -> Vec<GroupRow> {
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
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn iso_weeks_start_on_monday_and_months_on_the_first() {
        // 2026-01-01 is a Thursday; its ISO week starts Monday 2025-12-29.
        assert_eq!(TimeGrain::Week.start_of(d("2026-01-01")), d("2025-12-29"));
        assert_eq!(TimeGrain::Week.start_of(d("2026-01-04")), d("2025-12-29"));
        assert_eq!(TimeGrain::Week.start_of(d("2026-01-05")), d("2026-01-05"));
        assert_eq!(TimeGrain::Week.end_of(d("2025-12-29")), d("2026-01-04"));
        assert_eq!(TimeGrain::Month.start_of(d("2028-02-29")), d("2028-02-01"));
        assert_eq!(TimeGrain::Month.end_of(d("2028-02-01")), d("2028-02-29"));
        assert_eq!(TimeGrain::Month.end_of(d("2026-12-01")), d("2026-12-31"));
        assert_eq!(TimeGrain::Day.start_of(d("2026-12-31")), d("2026-12-31"));
    }
}
