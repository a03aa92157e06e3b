//! Unit tests of the usage report's pure plan and shaping.

use super::*;
use crate::access::UserActor;
use crate::rollups::Period;
use crate::vocabulary::Role;

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn query(from: &str, to: &str, group_by: &[Dimension]) -> UsageQuery {
    UsageQuery {
        from: d(from),
        to: d(to),
        group_by: group_by.to_vec(),
        user_id: None,
        product_id: None,
    }
}

/// Usage from 2026-02-20 to 2026-03-08.
const USAGE: Option<(&str, &str)> = Some(("2026-02-20", "2026-03-08"));

fn plan(q: &UsageQuery, usage: Option<(&str, &str)>, watermark: Option<&str>) -> UsagePlan {
    UsagePlan::new(q, usage.map(|(f, l)| (d(f), d(l))), watermark.map(d), true)
}

/// A range of days, first and last included.
type Days = Option<(NaiveDate, NaiveDate)>;

/// The days read from the rollups and from the raw opens.
fn sources(p: &UsagePlan) -> (Days, Days) {
    (
        p.rolled_end.map(|end| (p.from, end)),
        (p.tail_from <= p.to).then_some((p.tail_from, p.to)),
    )
}

#[test]
fn days_through_the_watermark_come_from_the_rollups_the_rest_from_raw_opens() {
    let q = query("2026-03-01", "2026-03-10", &[Dimension::Day]);
    let split = plan(&q, USAGE, Some("2026-03-05"));
    assert_eq!(
        sources(&split),
        (
            Some((d("2026-03-01"), d("2026-03-05"))),
            Some((d("2026-03-06"), d("2026-03-08")))
        )
    );
    // Rolled before the range begins: all raw.
    let before = plan(&q, USAGE, Some("2026-02-27"));
    assert_eq!(
        sources(&before),
        (None, Some((d("2026-03-01"), d("2026-03-08"))))
    );
    // Rolled past the last day with usage: all rolled.
    let past = plan(&q, USAGE, Some("2026-03-20"));
    assert_eq!(
        sources(&past),
        (Some((d("2026-03-01"), d("2026-03-08"))), None)
    );
    // Never rolled, or a report of the raw opens only: all raw.
    assert_eq!(
        sources(&plan(&q, USAGE, None)),
        (None, Some((d("2026-03-01"), d("2026-03-08"))))
    );
    assert_eq!(split.watermark, Some(d("2026-03-05")));
}

#[test]
fn an_all_time_range_is_read_only_where_the_account_has_usage() {
    let all_time = query("0001-01-01", "9999-12-31", &[Dimension::Month]);
    let p = plan(&all_time, USAGE, Some("2026-03-01"));
    assert_eq!((p.from, p.to), (d("2026-02-20"), d("2026-03-08")));
    assert_eq!(
        sources(&p),
        (
            Some((d("2026-02-20"), d("2026-03-01"))),
            Some((d("2026-03-02"), d("2026-03-08")))
        )
    );
    // A window of distinct users stays within the month and the range asked.
    assert_eq!(
        p.window(Some(d("2026-02-01"))),
        UserWindow {
            period: Some((Period::Month, d("2026-02-01"))),
            start: d("2026-02-01"),
            end: d("2026-02-28"),
        }
    );
    // No usage at all, or none in the range: nothing is read.
    for p in [
        plan(&all_time, None, Some("2026-03-01")),
        plan(
            &query("2025-01-01", "2025-12-31", &[]),
            USAGE,
            Some("2026-03-01"),
        ),
    ] {
        assert!(p.to < p.from);
        assert_eq!(sources(&p), (None, None));
    }
}

#[test]
fn a_window_is_the_period_within_the_range_asked_or_the_days_read() {
    let by_week = query("2026-03-04", "2026-03-10", &[Dimension::Week]);
    let p = plan(&by_week, USAGE, Some("2026-03-05"));
    // The week of Monday 2026-03-02, from the first day asked.
    assert_eq!(p.period_of(d("2026-03-06")), Some(d("2026-03-02")));
    assert_eq!(
        p.window(Some(d("2026-03-02"))),
        UserWindow {
            period: Some((Period::Week, d("2026-03-02"))),
            start: d("2026-03-04"),
            end: d("2026-03-08"),
        }
    );
    // The next week ends where the range asked does.
    assert_eq!(p.window(Some(d("2026-03-09"))).end, d("2026-03-10"));
    // Without a time dimension, the days read (the range within the usage).
    let whole = plan(&query("2026-03-04", "2026-03-10", &[]), USAGE, None);
    assert_eq!(
        whole.window(None),
        UserWindow {
            period: None,
            start: d("2026-03-04"),
            end: d("2026-03-08"),
        }
    );
}

#[test]
fn distinct_users_are_counted_per_window_only_beyond_a_day_and_without_users() {
    let counted = |group_by: &[Dimension], product_id: Option<i32>, count_users: bool| {
        let q = UsageQuery {
            product_id,
            ..query("2026-03-01", "2026-03-31", group_by)
        };
        UsagePlan::new(&q, None, None, count_users).user_count
    };
    use Dimension::*;
    assert_eq!(counted(&[Week], None, true), Some(UserCount::AllProducts));
    assert_eq!(counted(&[], None, true), Some(UserCount::AllProducts));
    assert_eq!(
        counted(&[Month, Product], None, true),
        Some(UserCount::PerProduct(None))
    );
    assert_eq!(
        counted(&[Week], Some(7), true),
        Some(UserCount::PerProduct(Some(7)))
    );
    // A day's rows carry their own count; a user's row counts its one user.
    assert_eq!(counted(&[Day, Week], None, true), None);
    assert_eq!(counted(&[Week, User], None, true), None);
    // Callers that only sum count nothing.
    assert_eq!(counted(&[Week], None, false), None);
}

#[test]
fn a_filter_reads_the_finer_rows_that_have_its_column() {
    let q = UsageQuery {
        user_id: Some(3),
        ..query("2026-03-01", "2026-03-31", &[Dimension::Product])
    };
    let p = plan(&q, USAGE, None);
    assert_eq!(
        p.grain,
        Grain {
            user: true,
            product: true
        }
    );
    assert_eq!(
        p.grouping,
        Grouping {
            time: None,
            user: false,
            product: true
        }
    );
    assert_eq!(p.user_count, None);
}

fn member(user_id: i32, role: Role) -> Actor {
    Actor::User(UserActor {
        user_id,
        account_id: 1,
        role,
        active: true,
    })
}

#[test]
fn a_member_s_own_report_is_narrowed_to_the_member() {
    let q = query("2026-03-01", "2026-03-31", &[Dimension::User]);
    let mine = query_for_caller(&member(7, Role::Member), 1, q.clone()).unwrap();
    assert_eq!(mine.user_id, Some(7));
    assert_eq!(
        UsageQuery {
            user_id: None,
            ..mine
        },
        q
    );
    // Those who read the books see everyone.
    for reader in [
        member(8, Role::Admin),
        member(9, Role::Analyst),
        Actor::Operator,
    ] {
        assert_eq!(
            query_for_caller(&reader, 1, q.clone()).unwrap().user_id,
            None
        );
    }
    // A member may name themself, not another user; no one sees another account.
    let of = |user_id| UsageQuery {
        user_id: Some(user_id),
        ..q.clone()
    };
    assert_eq!(
        query_for_caller(&member(7, Role::Member), 1, of(7)).unwrap(),
        of(7)
    );
    assert!(query_for_caller(&member(7, Role::Member), 1, of(8)).is_err());
    assert!(query_for_caller(&member(8, Role::Admin), 2, q.clone()).is_err());
}

fn agg(user_id: i32, product_id: i32, opens: i64, denials: i64) -> DayAggregate {
    DayAggregate {
        account_id: 1,
        user_id,
        product_id,
        sums: UsageSums {
            tokens: opens,
            opens,
            charges: opens,
            denials,
            cost_minor: opens * 10,
        },
    }
}

#[test]
fn a_raw_day_is_filtered_summed_per_period_and_its_openers_kept() {
    let q = UsageQuery {
        product_id: Some(7),
        ..query("2026-03-01", "2026-03-31", &[Dimension::Week])
    };
    let p = plan(&q, USAGE, None);
    let (mut tail, mut users) = (TailGroups::new(), TailUsers::new());
    for day in ["2026-03-03", "2026-03-04"] {
        let aggregates = vec![agg(1, 7, 2, 0), agg(2, 7, 0, 1), agg(1, 8, 5, 0)];
        p.add_tail_day(d(day), aggregates, &mut tail, &mut users);
    }
    let week = Some(d("2026-03-02"));
    let (sums, _) = tail[&(week, None, None)];
    assert_eq!((tail.len(), sums.opens, sums.denials), (1, 4, 2));
    // User 2 was only denied; product 8 is filtered out.
    assert_eq!(users[&week], HashSet::from([(7, 1)]));
}

#[test]
fn an_empty_ungrouped_report_has_one_zero_row_and_unknown_products_no_id() {
    let p = plan(&query("2026-03-01", "2026-03-31", &[]), None, None);
    let rows = shape(&p, vec![], &WindowUsers::from([(None, HashMap::new())]));
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].opens, rows[0].distinct_users), (0, 0));

    let by_product = plan(
        &query("2026-03-01", "2026-03-31", &[Dimension::Product]),
        None,
        None,
    );
    assert!(shape(&by_product, vec![], &WindowUsers::new()).is_empty());
    let unknown = GroupRow {
        key: (None, None, Some(0)),
        sums: UsageSums {
            denials: 3,
            ..UsageSums::default()
        },
        distinct_users: 0,
    };
    let users = WindowUsers::from([(None, HashMap::from([(0, 0)]))]);
    let rows = shape(&by_product, vec![unknown], &users);
    assert_eq!((rows[0].product_id, rows[0].denials), (None, 3));
}
