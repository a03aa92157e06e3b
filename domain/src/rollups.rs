//! Rule 17: the rollup job turns each closed UTC day of raw opens into daily
//! aggregates, and reports read those for rolled days and the raw opens for the rest.
//!
//! One definition of what a day's usage is ([`day_aggregates`]) serves both the job and
//! the reports' raw tail, so a report is the same before and after the job runs.
//!
//! This module holds the words the rest share (the sums, a day's aggregates, the
//! grains of the daily tables, weeks and months); its parts are:
//! - `day`: a day's usage from the raw opens, the days an account has usage, and the
//!   watermark up to which the rollups hold every day;
//! - `grouped`: rolled daily rows grouped and summed for a report;
//! - `user_blocks`: each account's per-user rows of a day, packed in one value;
//! - `distinct_users`: the distinct users of a report's window;
//! - `job`: the rollup job, which writes the daily rows, the user blocks and the week
//!   and month distinct users (`job::periods`).

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use std::collections::{BTreeMap, HashSet};
use std::ops::AddAssign;

mod day;
mod distinct_users;
mod grouped;
mod job;
mod user_blocks;

pub use day::{day_aggregates, days_with_usage, rolled_through};
pub use distinct_users::{UserCount, UserWindow, window_users};
pub use grouped::{GroupKey, GroupRow, Grouping, RowFilter, rolled_groups};
pub(crate) use job::after_refund;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

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
