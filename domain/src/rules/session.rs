//! The pure rules of sessions (rules 20–23).

use chrono::{DateTime, Duration, Utc};

/// A watched session (one that has sent a heartbeat) lapses after this long
/// without one (rule 20).
pub const HEARTBEAT_LAPSE: Duration = Duration::minutes(15);
/// A session that has never sent a heartbeat is not watched: it lapses this long
/// after its open (rule 20).
pub const UNWATCHED_LAPSE: Duration = Duration::hours(24);
/// A charged session that ends sooner than this after its charge is refunded
/// (rule 21).
pub const SHORT_LAUNCH: Duration = Duration::minutes(5);
/// An offline lease lasts at most this long (rule 23).
pub const LEASE_MAX: Duration = Duration::hours(24);

/// When a session lapses if nothing more is heard from it: 15 minutes after its last
/// heartbeat, or 24 hours after its open if it never sent one
/// ([`crate::conditions::lapsed_session`] in SQL).
pub fn session_lapses_at(
    started_at: DateTime<Utc>,
    last_heartbeat_at: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    match last_heartbeat_at {
        Some(at) => at + HEARTBEAT_LAPSE,
        None => started_at + UNWATCHED_LAPSE,
    }
}

/// Rule 20: the session has lapsed at `now` (whether or not the worker has ended it).
pub fn session_lapsed(
    started_at: DateTime<Utc>,
    last_heartbeat_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    session_lapses_at(started_at, last_heartbeat_at) <= now
}

/// Rule 20: a lapsed session's end is its last heartbeat; one never heard from ends
/// when it lapses, 24 hours after its open.
pub fn lapsed_session_end(
    started_at: DateTime<Utc>,
    last_heartbeat_at: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    last_heartbeat_at.unwrap_or(started_at + UNWATCHED_LAPSE)
}

/// The instants [`crate::conditions::lapsed_session`] compares with in SQL for
/// `now`: a last heartbeat at or before the first, or an unwatched open at or before
/// the second, has lapsed.
pub fn lapse_cutoffs(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (now - HEARTBEAT_LAPSE, now - UNWATCHED_LAPSE)
}

/// Rule 21: a session that ended at `ended_at` was a short launch of the charge made
/// at `charged_at`.
pub fn short_launch(charged_at: DateTime<Utc>, ended_at: DateTime<Utc>) -> bool {
    ended_at - charged_at < SHORT_LAUNCH
}

/// Rule 23: an offline lease issued at `issued_at` expires at the earliest of 24
/// hours later, the end of the window (pay-as-you-go) and the end of the
/// subscription.
pub fn lease_expiry(
    issued_at: DateTime<Utc>,
    window_ends_at: Option<DateTime<Utc>>,
    subscription_ends_at: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    [
        Some(issued_at + LEASE_MAX),
        window_ends_at,
        subscription_ends_at,
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(issued_at + LEASE_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 3, 1, 12, 0, 0).unwrap() + Duration::minutes(minutes)
    }

    #[test]
    fn a_watched_session_lapses_fifteen_minutes_after_its_last_heartbeat() {
        assert!(!session_lapsed(t(0), Some(t(10)), t(24)));
        assert!(session_lapsed(t(0), Some(t(10)), t(25)));
        assert_eq!(lapsed_session_end(t(0), Some(t(10))), t(10));
    }

    #[test]
    fn an_unwatched_session_lapses_a_day_after_its_open() {
        assert!(!session_lapsed(t(0), None, t(24 * 60 - 1)));
        assert!(session_lapsed(t(0), None, t(24 * 60)));
        assert_eq!(lapsed_session_end(t(0), None), t(24 * 60));
        assert!(!short_launch(t(0), lapsed_session_end(t(0), None)));
    }

    #[test]
    fn a_launch_is_short_below_five_minutes() {
        assert!(short_launch(t(0), t(0)));
        assert!(short_launch(t(0), t(5) - Duration::seconds(1)));
        assert!(!short_launch(t(0), t(5)));
    }

    #[test]
    fn a_lease_ends_at_the_earliest_of_a_day_the_window_and_the_subscription() {
        assert_eq!(lease_expiry(t(0), None, None), t(24 * 60));
        assert_eq!(lease_expiry(t(0), Some(t(60)), None), t(60));
        assert_eq!(lease_expiry(t(0), None, Some(t(90))), t(90));
        assert_eq!(lease_expiry(t(0), Some(t(3000)), Some(t(2000))), t(24 * 60));
    }
}
