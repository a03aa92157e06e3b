//! When scheduled reports run and which days each covers (rule 27). Pure: the
//! instant is passed in.
//!
//! A WEEKLY report runs on Mondays at 00:00 UTC and covers the ISO week before
//! (Monday to Sunday); a MONTHLY one runs on the 1st at 00:00 UTC and covers the
//! month before.

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, NaiveTime, Utc};

crate::vocabulary::vocabulary!(
    /// How often a report is sent (rule 27).
    ReportSchedule { Weekly => "WEEKLY", Monthly => "MONTHLY" }
);

/// The UTC days a report covers, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// The first day of the period `day` falls in: its ISO week's Monday, or its
/// month's 1st.
fn period_start(schedule: ReportSchedule, day: NaiveDate) -> NaiveDate {
    match schedule {
        ReportSchedule::Weekly => {
            day - Duration::days(i64::from(day.weekday().num_days_from_monday()))
        }
        // Every month has a 1st; `with_day(1)` cannot fail.
        ReportSchedule::Monthly => day.with_day(1).unwrap_or(day),
    }
}

/// The start of the period after the one that starts on `start`.
fn following_start(schedule: ReportSchedule, start: NaiveDate) -> NaiveDate {
    let next = match schedule {
        ReportSchedule::Weekly => start.checked_add_signed(Duration::days(7)),
        ReportSchedule::Monthly => start.checked_add_months(Months::new(1)),
    };
    // Past chrono's calendar (year 262,143) there is no next run; no clock gets there.
    next.unwrap_or(NaiveDate::MAX)
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

/// The latest run at or before `instant`: 00:00 UTC on the Monday of its ISO week
/// (WEEKLY) or on the 1st of its month (MONTHLY).
pub fn last_run_at_or_before(schedule: ReportSchedule, instant: DateTime<Utc>) -> DateTime<Utc> {
    midnight(period_start(schedule, instant.date_naive()))
}

/// The first run strictly after `instant`.
pub fn next_run_after(schedule: ReportSchedule, instant: DateTime<Utc>) -> DateTime<Utc> {
    let start = period_start(schedule, instant.date_naive());
    midnight(following_start(schedule, start))
}

/// The days covered by the report that runs at `run` (a run instant): the ISO week
/// or the calendar month that ended there.
pub fn period_ending_at(schedule: ReportSchedule, run: DateTime<Utc>) -> Period {
    let day = run.date_naive();
    let previous = day.pred_opt().unwrap_or(day);
    Period {
        from: period_start(schedule, previous),
        to: previous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReportSchedule::{Monthly, Weekly};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn period(from: &str, to: &str) -> Period {
        Period {
            from: day(from),
            to: day(to),
        }
    }

    #[test]
    fn weekly_runs_on_mondays_and_covers_the_iso_week_before() {
        // Wednesday 9 December 2026.
        let now = at("2026-12-09T10:30:00Z");
        assert_eq!(
            last_run_at_or_before(Weekly, now),
            at("2026-12-07T00:00:00Z")
        );
        assert_eq!(next_run_after(Weekly, now), at("2026-12-14T00:00:00Z"));
        assert_eq!(
            period_ending_at(Weekly, at("2026-12-07T00:00:00Z")),
            period("2026-11-30", "2026-12-06")
        );
        // A run instant is its own latest run; the next is strictly after it.
        let monday = at("2026-12-14T00:00:00Z");
        assert_eq!(last_run_at_or_before(Weekly, monday), monday);
        assert_eq!(next_run_after(Weekly, monday), at("2026-12-21T00:00:00Z"));
        // A Sunday's last microsecond still belongs to its week.
        let sunday = at("2026-12-13T23:59:59.999999Z");
        assert_eq!(next_run_after(Weekly, sunday), monday);
        assert_eq!(
            last_run_at_or_before(Weekly, sunday),
            at("2026-12-07T00:00:00Z")
        );
    }

    #[test]
    fn weekly_across_the_year_end_and_iso_week_53() {
        // 2026 has 53 ISO weeks: week 53 runs from Monday 28 December to Sunday 3
        // January 2027, and its report comes on Monday 4 January.
        let new_year = at("2027-01-01T12:00:00Z");
        assert_eq!(
            last_run_at_or_before(Weekly, new_year),
            at("2026-12-28T00:00:00Z")
        );
        let run = next_run_after(Weekly, new_year);
        assert_eq!(run, at("2027-01-04T00:00:00Z"));
        let week = period_ending_at(Weekly, run);
        assert_eq!(week, period("2026-12-28", "2027-01-03"));
        assert_eq!(week.from.iso_week().week(), 53);
        assert_eq!(week.to.iso_week().week(), 53);
        assert_eq!(week.to.iso_week().year(), 2026);
        // 2025 has 52: its last week ends on Sunday 28 December 2025.
        assert_eq!(
            period_ending_at(Weekly, at("2025-12-29T00:00:00Z")),
            period("2025-12-22", "2025-12-28")
        );
        assert_eq!(
            period_ending_at(Weekly, at("2026-01-05T00:00:00Z")),
            period("2025-12-29", "2026-01-04")
        );
    }

    #[test]
    fn monthly_runs_on_the_first_and_covers_the_month_before() {
        let now = at("2026-12-09T10:30:00Z");
        assert_eq!(
            last_run_at_or_before(Monthly, now),
            at("2026-12-01T00:00:00Z")
        );
        assert_eq!(next_run_after(Monthly, now), at("2027-01-01T00:00:00Z"));
        assert_eq!(
            period_ending_at(Monthly, at("2027-01-01T00:00:00Z")),
            period("2026-12-01", "2026-12-31")
        );
        let first = at("2027-01-01T00:00:00Z");
        assert_eq!(next_run_after(Monthly, first), at("2027-02-01T00:00:00Z"));
        assert_eq!(
            next_run_after(Monthly, at("2026-12-31T23:59:59.999999Z")),
            first
        );
        // A month of 30 days, and a 31st that has no counterpart next month.
        assert_eq!(
            period_ending_at(Monthly, at("2026-05-01T00:00:00Z")),
            period("2026-04-01", "2026-04-30")
        );
        assert_eq!(
            next_run_after(Monthly, at("2026-01-31T08:00:00Z")),
            at("2026-02-01T00:00:00Z")
        );
    }

    #[test]
    fn monthly_february_in_leap_and_common_years() {
        assert_eq!(
            period_ending_at(Monthly, at("2024-03-01T00:00:00Z")),
            period("2024-02-01", "2024-02-29")
        );
        assert_eq!(
            period_ending_at(Monthly, at("2026-03-01T00:00:00Z")),
            period("2026-02-01", "2026-02-28")
        );
        // 2100 is not a leap year.
        assert_eq!(
            period_ending_at(Monthly, at("2100-03-01T00:00:00Z")),
            period("2100-02-01", "2100-02-28")
        );
        assert_eq!(
            next_run_after(Monthly, at("2024-02-29T23:00:00Z")),
            at("2024-03-01T00:00:00Z")
        );
    }

    /// Over eight years, hour by hour: the next run is a run, strictly later, and
    /// the period ending there holds the instant's day and nothing after the run.
    #[test]
    fn every_instant_falls_in_the_period_of_its_next_run() {
        let mut t = at("2023-12-31T23:00:00Z");
        let end = at("2032-01-02T00:00:00Z");
        while t < end {
            for schedule in [Weekly, Monthly] {
                let run = next_run_after(schedule, t);
                assert!(run > t);
                assert_eq!(last_run_at_or_before(schedule, run), run);
                let p = period_ending_at(schedule, run);
                assert!(
                    p.from <= t.date_naive() && t.date_naive() <= p.to,
                    "{t} {p:?}"
                );
                assert_eq!(p.to.succ_opt().unwrap(), run.date_naive());
                match schedule {
                    Weekly => {
                        assert_eq!(p.from.weekday(), chrono::Weekday::Mon);
                        assert_eq!((p.to - p.from).num_days(), 6);
                    }
                    Monthly => {
                        assert_eq!(p.from.day(), 1);
                        assert_eq!(p.from.month(), p.to.month());
                    }
                }
            }
            t += Duration::hours(7);
        }
    }
}
