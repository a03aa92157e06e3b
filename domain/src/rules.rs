//! The pure rules of PRODUCT.md: no I/O, `now` always passed in.

use crate::units::{LotId, MinorUnits, Tokens};
use crate::vocabulary::{LotStatus, PlanLevel};
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};

mod session;
pub use session::*;

/// Largest quantity an account admin may buy at once (rule 4).
pub const SELF_SERVICE_LIMIT: i64 = 10_000;
/// Largest quantity one purchase may carry at all, so money stays well inside i64
/// and the contract's 32-bit integers.
pub const MAX_PURCHASE_QUANTITY: i64 = 10_000_000;
/// The list price stops here: above it an operator gives the unit price (rule 4).
pub const LIST_PRICE_TOP: i64 = 50_000;
/// A charge opens a window of this length (rule 10).
pub const WINDOW: Duration = Duration::hours(24);
/// Default low-balance threshold: this percentage of the tokens in unexpired lots (rule 14).
pub const DEFAULT_THRESHOLD_PERCENT: i64 = 20;

/// Rule 1: a lot expires at the same instant of the next calendar year; 29 February
/// becomes 28 February.
pub fn expiry_of(purchased_at: DateTime<Utc>) -> DateTime<Utc> {
    let year = purchased_at.year() + 1;
    let (month, mut day) = (purchased_at.month(), purchased_at.day());
    if month == 2 && day == 29 {
        day = 28;
    }
    let date = chrono::NaiveDate::from_ymd_opt(year, month, day).expect("valid calendar date");
    Utc.from_utc_datetime(&date.and_time(purchased_at.time()))
}

/// Rule 2: a lot has not expired strictly before its expiry
/// ([`crate::conditions::unexpired_lot`] in SQL).
pub fn lot_is_unexpired(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now < expires_at
}

/// Rules 2 and 6: a live lot holds tokens and has not expired; the balance is the
/// sum of the live lots' remaining tokens ([`crate::conditions::live_lot`] in SQL).
pub fn lot_is_live(remaining: Tokens, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    remaining > 0 && lot_is_unexpired(expires_at, now)
}

/// Rule 2 before the sweep: a lot past its expiry still holding tokens
/// ([`crate::conditions::lot_holding_expired_tokens`] in SQL).
pub fn lot_holds_expired_tokens(
    remaining: i64,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    remaining > 0 && !lot_is_unexpired(expires_at, now)
}

/// A name as kept: trimmed, 1–200 characters.
pub fn clean_name(name: &str, what: &str) -> crate::error::Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(crate::error::DomainError::bad_input(format!(
            "{what} must be 1–200 characters"
        )));
    }
    Ok(name.to_owned())
}

/// Rule 10: a window covers `[starts, starts + 24 h)`.
pub fn window_covers(ends_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now < ends_at
}

/// A user's window for a product (rule 10), as an open is decided on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

impl Window {
    /// The window a charge at `now` opens.
    pub fn opened_at(now: DateTime<Utc>) -> Window {
        Window {
            starts_at: now,
            ends_at: now + WINDOW,
        }
    }

    pub fn covers(&self, now: DateTime<Utc>) -> bool {
        window_covers(self.ends_at, now)
    }

    /// When an open this window lets in free at `now` counts as granted (rule 21's
    /// "inside the window"): never before the window itself, though the open that
    /// charged for it may have read the clock after this one did.
    pub fn grants_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now.max(self.starts_at)
    }
}

/// A lot as the rules see it at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LotCounts {
    pub quantity: i64,
    pub remaining: i64,
    pub used: i64,
    pub expired: i64,
}

/// Rule 2 before the sweep: a lot past its expiry shows its remaining tokens as
/// expired, so the counts are right whether or not the sweep has run.
pub fn lot_counts_at(
    stored: LotCounts,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> LotCounts {
    if lot_is_unexpired(expires_at, now) {
        stored
    } else {
        LotCounts {
            remaining: 0,
            expired: stored.expired + stored.remaining,
            ..stored
        }
    }
}

pub fn lot_status(counts: LotCounts) -> LotStatus {
    if counts.remaining > 0 {
        LotStatus::Active
    } else if counts.expired > 0 {
        LotStatus::Expired
    } else {
        LotStatus::Depleted
    }
}

/// A lot that can give tokens to a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendableLot {
    pub id: LotId,
    pub remaining: Tokens,
    pub quantity: Tokens,
    pub expires_at: DateTime<Utc>,
    pub unit_price_minor: MinorUnits,
}

/// How many tokens of a charge one lot gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    pub lot_id: LotId,
    pub tokens: Tokens,
    pub cost_minor: MinorUnits,
}

/// Rule 3 burn order: earliest expiry first, then the smaller lot, then the one
/// recorded first.
pub fn sort_in_burn_order(lots: &mut [SpendableLot]) {
    lots.sort_by_key(|l| (l.expires_at, l.quantity, l.id));
}

/// Rule 3 and 11: draws `tokens` from the live lots in burn order, or `None` when
/// they cannot cover it (nothing is drawn then).
pub fn allocate_from_lots(
    lots: &[SpendableLot],
    tokens: Tokens,
    now: DateTime<Utc>,
) -> Option<Vec<Draw>> {
    let mut live: Vec<SpendableLot> = lots
        .iter()
        .copied()
        .filter(|l| lot_is_live(l.remaining, l.expires_at, now))
        .collect();
    sort_in_burn_order(&mut live);
    let mut left = tokens;
    let mut draws = Vec::new();
    for lot in live {
        if left == 0 {
            break;
        }
        let take = left.min(lot.remaining);
        draws.push(Draw {
            lot_id: lot.id,
            tokens: take,
            cost_minor: take.cost_at(lot.unit_price_minor),
        });
        left -= take;
    }
    (left == 0).then_some(draws)
}

/// Rule 13: the highest plan among active subscriptions; EDUCATION only alone;
/// STANDARD without any.
pub fn plan_level_of(active_plans: impl IntoIterator<Item = PlanLevel>) -> PlanLevel {
    let mut best: Option<PlanLevel> = None;
    let mut education = false;
    for plan in active_plans {
        match plan {
            PlanLevel::Education => education = true,
            p => best = Some(best.map_or(p, |b| b.max(p))),
        }
    }
    match (best, education) {
        (Some(p), _) => p,
        (None, true) => PlanLevel::Education,
        (None, false) => PlanLevel::Standard,
    }
}

/// Rule 9: a subscription is active in `[starts_at, ends_at)`
/// ([`crate::conditions::active_subscription`] in SQL).
pub fn subscription_active(
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    starts_at <= now && now < ends_at
}

/// Rule 14: an explicit threshold, or 20% of the tokens in unexpired lots.
pub fn low_balance_threshold(explicit: Option<Tokens>, tokens_in_unexpired_lots: Tokens) -> Tokens {
    explicit.unwrap_or(Tokens(
        tokens_in_unexpired_lots.0 * DEFAULT_THRESHOLD_PERCENT / 100,
    ))
}

/// Rule 18: the tokens an account is expected to need, extrapolated linearly from
/// what it used over a trailing window of whole days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenNeed {
    pub trailing_tokens: i64,
    pub trailing_days: i64,
}

impl TokenNeed {
    /// Tokens expected over the next `days`, rounded up.
    pub fn expected_by(&self, days: i64) -> i64 {
        if days <= 0 || self.trailing_days <= 0 {
            return 0;
        }
        ceil_div(self.trailing_tokens * days, self.trailing_days)
    }

    /// How much of the expected need over `horizon_days` the lots can meet, given as
    /// (remaining, whole days until expiry): lots burn earliest expiry first, and a
    /// lot's tokens count only as far as the need arises before it expires.
    pub fn covered_by_lots(&self, lots: &[(i64, i64)], horizon_days: i64) -> i64 {
        let mut lots = lots.to_vec();
        lots.sort_by_key(|&(_, expires_in)| expires_in);
        let mut covered = 0;
        for (remaining, expires_in) in lots {
            let need_until = self.expected_by(expires_in.min(horizon_days));
            covered += (need_until - covered).clamp(0, remaining.max(0));
        }
        covered.min(self.expected_by(horizon_days))
    }
}

/// `a / b` rounded up, for non-negative `a` and positive `b`.
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// A cost over `days` days, scaled to a year of 365 days and rounded up.
pub fn annualized(amount: i64, days: i64) -> i64 {
    if days <= 0 {
        return 0;
    }
    ceil_div(amount * 365, days)
}

/// One band of the price list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Band {
    pub min_quantity: i64,
    pub max_quantity: i64,
    pub unit_price_minor: i64,
}

impl Band {
    /// A band an admin may buy from by themselves.
    pub fn self_service(&self) -> bool {
        self.max_quantity <= SELF_SERVICE_LIMIT
    }
}

/// Rule 4: bands are contiguous from 1, each non-empty, and priced at zero or more.
pub fn validate_bands(bands: &[Band]) -> Result<(), String> {
    if bands.is_empty() {
        return Err("the price list needs at least one band".into());
    }
    let mut expected_min = 1;
    for b in bands {
        if b.min_quantity != expected_min {
            return Err(format!(
                "bands must be contiguous from 1: expected a band starting at {expected_min}"
            ));
        }
        if b.max_quantity < b.min_quantity {
            return Err(format!(
                "band starting at {} ends before it starts",
                b.min_quantity
            ));
        }
        if b.unit_price_minor < 0 {
            return Err("a unit price cannot be negative".into());
        }
        expected_min = b.max_quantity + 1;
    }
    let top = expected_min - 1;
    if top != LIST_PRICE_TOP {
        return Err(format!(
            "the bands must end at {LIST_PRICE_TOP} tokens, not {top}"
        ));
    }
    if bands
        .iter()
        .any(|b| b.min_quantity <= SELF_SERVICE_LIMIT && b.max_quantity > SELF_SERVICE_LIMIT)
    {
        return Err(format!(
            "a band must end at the self-service limit of {SELF_SERVICE_LIMIT}"
        ));
    }
    Ok(())
}

/// Rule 4: the band's unit price for `quantity`, or `None` above the top band.
pub fn band_for(bands: &[Band], quantity: i64) -> Option<&Band> {
    bands
        .iter()
        .find(|b| b.min_quantity <= quantity && quantity <= b.max_quantity)
}

/// The shipped demo price list (an example, not any vendor's prices), in cents.
pub fn demo_bands() -> Vec<Band> {
    [
        (1, 999, 120),
        (1_000, 4_999, 110),
        (5_000, 10_000, 100),
        (10_001, 15_000, 95),
        (15_001, 25_000, 90),
        (25_001, 50_000, 85),
    ]
    .into_iter()
    .map(|(min_quantity, max_quantity, unit_price_minor)| Band {
        min_quantity,
        max_quantity,
        unit_price_minor,
    })
    .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn expected_need_scales_the_trailing_window_and_rounds_up() {
        let need = TokenNeed {
            trailing_tokens: 100,
            trailing_days: 28,
        };
        assert_eq!(need.expected_by(28), 100);
        assert_eq!(need.expected_by(1), 4);
        assert_eq!(need.expected_by(90), 322);
        assert_eq!(need.expected_by(0), 0);
        let idle = TokenNeed {
            trailing_tokens: 0,
            trailing_days: 28,
        };
        assert_eq!(idle.expected_by(90), 0);
    }

    #[test]
    fn tokens_expiring_before_they_are_needed_cover_nothing() {
        let need = TokenNeed {
            trailing_tokens: 28,
            trailing_days: 28,
        }; // 1 a day
        // 50 tokens expiring in 10 days cover only the first 10 days' need.
        assert_eq!(need.covered_by_lots(&[(50, 10)], 30), 10);
        // Plus a lot lasting past the horizon: it covers the rest.
        assert_eq!(need.covered_by_lots(&[(50, 10), (100, 400)], 30), 30);
        // A small late lot covers only what it has.
        assert_eq!(need.covered_by_lots(&[(5, 400)], 30), 5);
        assert_eq!(need.covered_by_lots(&[], 30), 0);
    }

    #[test]
    fn annualizing_scales_to_365_days() {
        assert_eq!(annualized(2_800, 28), 36_500);
        assert_eq!(annualized(1, 28), 14);
        assert_eq!(annualized(5, 0), 0);
    }

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn expiry_is_same_instant_next_year() {
        assert_eq!(
            expiry_of(t("2026-03-15T10:11:12.345678Z")),
            t("2027-03-15T10:11:12.345678Z")
        );
        assert_eq!(
            expiry_of(t("2027-03-01T00:00:00Z")),
            t("2028-03-01T00:00:00Z")
        );
    }

    #[test]
    fn leap_day_expires_on_28_february() {
        assert_eq!(
            expiry_of(t("2028-02-29T23:30:00Z")),
            t("2029-02-28T23:30:00Z")
        );
    }

    #[test]
    fn a_year_across_a_leap_day_is_366_days() {
        let p = t("2027-06-01T00:00:00Z");
        assert_eq!(expiry_of(p) - p, Duration::days(366));
        let p = t("2026-06-01T00:00:00Z");
        assert_eq!(expiry_of(p) - p, Duration::days(365));
    }

    #[test]
    fn lot_is_dead_at_its_expiry_instant() {
        let e = t("2027-01-01T00:00:00Z");
        assert!(lot_is_unexpired(e, e - Duration::microseconds(1)));
        assert!(!lot_is_unexpired(e, e));
    }

    #[test]
    fn window_boundary_23h59_free_24h_charges() {
        let start = t("2026-01-01T09:00:00Z");
        let end = start + WINDOW;
        assert!(window_covers(end, start + Duration::minutes(23 * 60 + 59)));
        assert!(!window_covers(end, start + Duration::hours(24)));
    }

    #[test]
    fn an_open_a_window_lets_in_counts_from_the_window_on() {
        let start = t("2026-01-01T09:00:00Z");
        let window = Window::opened_at(start);
        assert_eq!(window.ends_at, start + WINDOW);
        assert!(window.covers(start + Duration::hours(23)));
        assert!(!window.covers(start + WINDOW));
        // An open that read the clock just before the charge that made the window.
        let earlier = start - Duration::milliseconds(3);
        assert_eq!(window.grants_at(earlier), start);
        let later = start + Duration::minutes(2);
        assert_eq!(window.grants_at(later), later);
    }

    fn lot(id: i32, remaining: i64, quantity: i64, expires: &str) -> SpendableLot {
        SpendableLot {
            id: LotId(id),
            remaining: Tokens(remaining),
            quantity: Tokens(quantity),
            expires_at: t(expires),
            unit_price_minor: MinorUnits(100 + id as i64),
        }
    }

    #[test]
    fn burns_earliest_expiry_then_smaller_then_older() {
        let now = t("2026-06-01T00:00:00Z");
        let lots = [
            lot(1, 10, 100, "2027-01-01T00:00:00Z"),
            lot(2, 10, 50, "2027-01-01T00:00:00Z"),
            lot(3, 10, 50, "2027-01-01T00:00:00Z"),
            lot(4, 10, 10, "2026-12-01T00:00:00Z"),
        ];
        let draws = allocate_from_lots(&lots, Tokens(35), now).unwrap();
        let order: Vec<(i32, i64)> = draws
            .iter()
            .map(|d| (d.lot_id.get(), d.tokens.get()))
            .collect();
        assert_eq!(order, vec![(4, 10), (2, 10), (3, 10), (1, 5)]);
        assert_eq!(draws[0].cost_minor, 10 * 104);
    }

    #[test]
    fn a_charge_spanning_three_lots_records_each_draw() {
        let now = t("2026-06-01T00:00:00Z");
        let lots = [
            lot(1, 3, 3, "2026-07-01T00:00:00Z"),
            lot(2, 4, 4, "2026-08-01T00:00:00Z"),
            lot(3, 10, 10, "2026-09-01T00:00:00Z"),
        ];
        let draws = allocate_from_lots(&lots, Tokens(9), now).unwrap();
        assert_eq!(
            draws.iter().map(|d| d.tokens).collect::<Vec<_>>(),
            vec![3, 4, 2]
        );
    }

    #[test]
    fn expired_lots_are_never_drawn_and_shortfall_draws_nothing() {
        let now = t("2026-06-01T00:00:00Z");
        let lots = [
            lot(1, 100, 100, "2026-06-01T00:00:00Z"),
            lot(2, 4, 4, "2026-08-01T00:00:00Z"),
        ];
        assert_eq!(allocate_from_lots(&lots, Tokens(5), now), None);
        assert_eq!(allocate_from_lots(&lots, Tokens(4), now).unwrap().len(), 1);
    }

    #[test]
    fn plan_level_is_highest_and_education_only_alone() {
        use PlanLevel::*;
        assert_eq!(plan_level_of([]), Standard);
        assert_eq!(plan_level_of([Education]), Education);
        assert_eq!(plan_level_of([Education, Standard]), Standard);
        assert_eq!(plan_level_of([Premium, Enterprise, Standard]), Enterprise);
        assert_eq!(plan_level_of([Education, Premium]), Premium);
    }

    #[test]
    fn counts_of_an_unswept_expired_lot_move_remaining_to_expired() {
        let c = LotCounts {
            quantity: 10,
            remaining: 4,
            used: 6,
            expired: 0,
        };
        let e = t("2026-01-01T00:00:00Z");
        let after = lot_counts_at(c, e, e);
        assert_eq!(
            after,
            LotCounts {
                quantity: 10,
                remaining: 0,
                used: 6,
                expired: 4
            }
        );
        assert_eq!(lot_status(after), LotStatus::Expired);
        assert_eq!(
            lot_status(lot_counts_at(c, e, e - Duration::seconds(1))),
            LotStatus::Active
        );
        let used_up = LotCounts {
            quantity: 10,
            remaining: 0,
            used: 10,
            expired: 0,
        };
        assert_eq!(
            lot_status(lot_counts_at(used_up, e, e)),
            LotStatus::Depleted
        );
    }

    #[test]
    fn demo_bands_are_valid_and_contiguous_to_50000() {
        let bands = demo_bands();
        validate_bands(&bands).unwrap();
        assert_eq!(bands.last().unwrap().max_quantity, 50_000);
        assert_eq!(band_for(&bands, 15_000).unwrap().unit_price_minor, 95);
        assert!(band_for(&bands, 50_001).is_none());
        assert!(band_for(&bands, 10_000).unwrap().self_service());
        assert!(!band_for(&bands, 10_001).unwrap().self_service());
    }

    #[test]
    fn band_validation_rejects_gaps_and_straddling_the_limit() {
        let gap = vec![
            Band {
                min_quantity: 1,
                max_quantity: 10,
                unit_price_minor: 1,
            },
            Band {
                min_quantity: 12,
                max_quantity: 10_000,
                unit_price_minor: 1,
            },
        ];
        assert!(validate_bands(&gap).is_err());
        let band = |min_quantity, max_quantity| Band {
            min_quantity,
            max_quantity,
            unit_price_minor: 1,
        };
        let straddle = vec![band(1, 12_000), band(12_001, 50_000)];
        assert!(
            validate_bands(&straddle)
                .unwrap_err()
                .contains("self-service")
        );
        let short = vec![band(1, 10_000), band(10_001, 40_000)];
        assert!(validate_bands(&short).unwrap_err().contains("50000"));
        let long = vec![band(1, 10_000), band(10_001, 60_000)];
        assert!(validate_bands(&long).is_err());
        assert!(validate_bands(&[band(1, 10_000), band(10_001, 50_000)]).is_ok());
    }

    #[test]
    fn default_threshold_is_twenty_percent() {
        assert_eq!(low_balance_threshold(None, Tokens(1000)), 200);
        assert_eq!(low_balance_threshold(Some(Tokens(7)), Tokens(1000)), 7);
    }
}
