//! Reports (rules 16–18): usage and spending for any range of UTC days, a forecast of
//! the tokens needed, and pay-as-you-go against subscription advice.
//!
//! A report reads the rollups for days up to the watermark and the raw opens after
//! it (rule 17), so it is exact at any moment and the same before and after a rollup.

use crate::access::Actor;
use crate::accounts::balance_at;
use crate::catalog;
use crate::db::Db;
use crate::error::{DomainError, Result};
use crate::kinds::LedgerKind;
use crate::rollups::{
    self, DayRow, Grain, Period, RowFilter, UsageSums, coarsen, day_aggregates, day_start,
    distinct_users, rolled_rows, rolled_user_pairs,
};
use crate::rules;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use daypass_entity::{ledger_entry, lot, product};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The longest range a report covers.
pub const MAX_REPORT_DAYS: i64 = 3_700;

/// What a usage report may be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Day,
    Week,
    Month,
    User,
    Product,
}

/// The time dimensions, finest first.
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

    /// Weeks and months, whose distinct users the rollups keep period to date.
    fn period(self) -> Option<Period> {
        match self {
            TimeGrain::Day => None,
            TimeGrain::Week => Some(Period::Week),
            TimeGrain::Month => Some(Period::Month),
        }
    }
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
    if q.from > q.to {
        return Err(DomainError::bad_input("from must not be after to"));
    }
    if (q.to - q.from).num_days() >= MAX_REPORT_DAYS {
        return Err(DomainError::bad_input(format!(
            "a report covers at most {MAX_REPORT_DAYS} days"
        )));
    }
    let conn = db.conn();
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
    let by_user = q.group_by.contains(&Dimension::User);
    let by_product = q.group_by.contains(&Dimension::Product);
    let grain = Grain {
        user: by_user || q.user_id.is_some(),
        product: by_product || q.product_id.is_some(),
    };
    let filter = RowFilter {
        user_id: q.user_id,
        product_id: q.product_id,
    };
    // Distinct users of a longer period than a day are counted from user sets; a
    // grain with the user dimension counts each row's one user directly.
    let needs_user_sets = !grain.user && time != Some(TimeGrain::Day);
    let period_of = |day: NaiveDate| time.map(|t| t.start_of(day));

    let rolled_end = match source {
        Source::Rollups => rollups::rolled_through(conn)
            .await?
            .map(|w| w.min(q.to))
            .filter(|e| *e >= q.from),
        Source::Raw => None,
    };
    let tail_from = rolled_end.map_or(q.from, |e| e + Duration::days(1));

    type Key = (Option<NaiveDate>, Option<i32>, Option<i32>);
    let mut groups: BTreeMap<Key, (UsageSums, i64)> = BTreeMap::new();
    let mut add = |r: DayRow| {
        let key = (
            period_of(r.day),
            r.user_id.filter(|_| by_user),
            r.product_id.filter(|_| by_product),
        );
        let (sums, distinct) = groups.entry(key).or_default();
        *sums += r.sums;
        // With a user grain or by day, each key has one row per day and user, so the
        // row's own count is exact; longer periods are recounted below.
        *distinct += r.distinct_users;
    };
    if let Some(end) = rolled_end {
        for r in rolled_rows(conn, account_id, grain, q.from, end, filter).await? {
            add(r);
        }
    }
    // The raw tail, one day at a time; user sets kept per period for distinct users.
    let mut tail_users: HashMap<Option<NaiveDate>, HashSet<(i32, i32)>> = HashMap::new();
    let mut day = tail_from;
    while day <= q.to {
        let aggregates: Vec<_> = day_aggregates(conn, day, Some(account_id))
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
            add(r);
        }
        day += Duration::days(1);
    }

    if needs_user_sets {
        let periods: Vec<Option<NaiveDate>> = {
            let mut p: Vec<_> = groups.keys().map(|k| k.0).collect();
            p.dedup();
            p
        };
        let mut counts: HashMap<Option<NaiveDate>, (HashMap<i32, i64>, i64)> = HashMap::new();
        for period in periods {
            let (start, end) = match (time, period) {
                (Some(t), Some(p)) => (p.max(q.from), t.end_of(p).min(q.to)),
                _ => (q.from, q.to),
            };
            let tail = tail_users.remove(&period).unwrap_or_default();
            // A window from the first day of its week or month: the rollups keep its
            // users period to date.
            if let (Some(kind), Some(p)) = (time.and_then(TimeGrain::period), period)
                && start == p
            {
                let mut stored = rollups::period_to_date_users(
                    conn, account_id, kind, p, end, rolled_end, &tail,
                )
                .await?;
                let all = stored.remove(&0).unwrap_or(0);
                counts.insert(period, (stored, all));
                continue;
            }
            // Any other window (a range starting mid-period, or no time dimension):
            // the users of its rolled days, with the tail's.
            let mut pairs = tail;
            if let Some(r) = rolled_end.filter(|r| start <= *r) {
                let rolled =
                    rolled_user_pairs(conn, Some(account_id), start, end.min(r), q.product_id)
                        .await?;
                pairs.extend(rolled.into_values().flatten());
            }
            counts.insert(period, distinct_users(&pairs));
        }
        for ((period, _, product), (_, distinct)) in groups.iter_mut() {
            let (per_product, all) = &counts[period];
            *distinct = match (by_product, product) {
                (true, Some(p)) => per_product.get(p).copied().unwrap_or(0),
                (true, None) => 0,
                // Pairs and stored counts per product also answer a product filter.
                (false, _) => match q.product_id {
                    Some(p) => per_product.get(&p).copied().unwrap_or(0),
                    None => *all,
                },
            };
        }
    }

    if groups.is_empty() && time.is_none() && !by_user && !by_product {
        // An ungrouped report always has its one row, zero when nothing happened.
        groups.insert((None, None, None), Default::default());
    }
    Ok(groups
        .into_iter()
        .map(|((period, user_id, product_id), (s, distinct))| UsageRow {
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
                distinct
            },
            cost_minor: s.cost_minor,
        })
        .collect())
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
    let used = usage_rows(
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
    )
    .await?;
    let (start, end) = (day_start(from), day_start(to + Duration::days(1)));
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
    if !(1..=MAX_REPORT_DAYS).contains(&horizon_days) {
        return Err(DomainError::bad_input(format!(
            "horizonDays must be between 1 and {MAX_REPORT_DAYS}"
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
        .filter(lot::Column::ExpiresAt.gt(now))
        .filter(lot::Column::Remaining.gt(0))
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
    let balance = balance_at(db.conn(), account_id, now).await?;

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
