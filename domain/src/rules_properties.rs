//! Property tests of the pure rules: year-later expiry, windows, the burn order and
//! price quotes, over generated inputs. `PROPTEST_CASES=100000 cargo test
//! -p daypass-domain rules_properties` runs them longer.

use crate::catalog::{PriceList, quote_from};
use crate::rules::{
    self, Band, LIST_PRICE_TOP, SELF_SERVICE_LIMIT, SpendableLot, WINDOW, allocate_from_lots,
    band_for, expiry_of, lot_is_live, lot_is_unexpired, validate_bands, window_covers,
};
use crate::units::{LotId, MinorUnits, Tokens};
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use proptest::prelude::*;
use std::collections::HashMap;

/// Any instant from 1970 to 2199, to the microsecond (what the database keeps).
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    (0_i64..7_258_118_400_000_000).prop_map(|us| Utc.timestamp_micros(us).unwrap())
}

/// Instants on 29 February of a leap year, at any time of day.
fn leap_day() -> impl Strategy<Value = DateTime<Utc>> {
    (0_i32..57, 0_i64..86_400_000_000).prop_map(|(k, us)| {
        let year = 1972 + 4 * k;
        let year = if year % 100 == 0 && year % 400 != 0 {
            year + 4
        } else {
            year
        };
        let day = NaiveDate::from_ymd_opt(year, 2, 29).unwrap();
        Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap()) + Duration::microseconds(us)
    })
}

fn lots() -> impl Strategy<Value = Vec<SpendableLot>> {
    prop::collection::vec((0_i64..50, 1_i64..1_000, 0_i64..400, 1_i64..200), 0..12).prop_map(
        |specs| {
            let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
            specs
                .into_iter()
                .enumerate()
                .map(
                    |(i, (remaining, extra, expires_in_days, price))| SpendableLot {
                        id: LotId(i as i32 + 1),
                        remaining: Tokens(remaining),
                        quantity: Tokens(remaining + extra),
                        expires_at: base + Duration::days(expires_in_days),
                        unit_price_minor: MinorUnits(price),
                    },
                )
                .collect()
        },
    )
}

/// A valid price list: contiguous bands from 1 to the list top, one ending at the
/// self-service limit.
fn price_list() -> impl Strategy<Value = PriceList> {
    (
        prop::collection::btree_set(1_i64..LIST_PRICE_TOP, 0..8),
        prop::collection::vec(0_i64..100_000, 10),
    )
        .prop_map(|(cuts, prices)| {
            let mut ends: Vec<i64> = cuts.into_iter().collect();
            ends.push(SELF_SERVICE_LIMIT);
            ends.push(LIST_PRICE_TOP);
            ends.sort_unstable();
            ends.dedup();
            let mut min = 1;
            let bands = ends
                .into_iter()
                .enumerate()
                .map(|(i, max)| {
                    let band = Band {
                        min_quantity: min,
                        max_quantity: max,
                        unit_price_minor: prices[i % prices.len()],
                    };
                    min = max + 1;
                    band
                })
                .collect();
            PriceList {
                bands,
                currency: "EUR".into(),
            }
        })
}

proptest! {
    /// Rule 1: the same instant of the next calendar year, 29 February → 28 February;
    /// a lot is live strictly before that instant.
    #[test]
    fn a_lot_expires_at_the_same_instant_a_year_later(at in instant()) {
        let expires = expiry_of(at);
        prop_assert_eq!(expires.year(), at.year() + 1);
        prop_assert_eq!(expires.month(), at.month());
        prop_assert_eq!(expires.time(), at.time());
        if at.month() == 2 && at.day() == 29 {
            prop_assert_eq!(expires.day(), 28);
        } else {
            prop_assert_eq!(expires.day(), at.day());
        }
        let days = (expires - at).num_days();
        prop_assert!(days == 365 || days == 366, "{} days", days);
        prop_assert!(lot_is_unexpired(expires, expires - Duration::microseconds(1)));
        prop_assert!(!lot_is_unexpired(expires, expires));
    }

    #[test]
    fn a_lot_bought_on_29_february_expires_on_28_february(at in leap_day()) {
        let expires = expiry_of(at);
        prop_assert_eq!((expires.year(), expires.month(), expires.day()), (at.year() + 1, 2, 28));
        prop_assert_eq!(expires.nanosecond(), at.nanosecond());
        // 1 March to 1 March of a common year is 365 days; both ends are one day earlier.
        prop_assert_eq!((expires - at).num_days(), 365);
    }

    /// Rule 10: a window charged at `t` covers exactly [t, t + 24 h).
    #[test]
    fn a_window_covers_exactly_24_hours(t in instant(), offset_us in 0_i64..172_800_000_000) {
        let ends = t + WINDOW;
        let now = t + Duration::microseconds(offset_us);
        prop_assert_eq!(window_covers(ends, now), offset_us < 86_400_000_000);
    }

    /// Rule 3: a charge draws exactly its tokens from live lots in burn order (earliest
    /// expiry, then the smaller lot, then the older), emptying every lot it moves past;
    /// it is refused, drawing nothing, only when the live lots hold too little.
    #[test]
    fn a_charge_burns_live_lots_in_order(lots in lots(), tokens in (1_i64..120).prop_map(Tokens), day in 0_i64..420) {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::days(day)
            + Duration::hours(7);
        let live: Tokens = lots.iter().filter(|l| lot_is_live(l.remaining, l.expires_at, now)).map(|l| l.remaining).sum();
        match allocate_from_lots(&lots, tokens, now) {
            None => prop_assert!(live < tokens),
            Some(draws) => {
                prop_assert!(live >= tokens);
                prop_assert_eq!(draws.iter().map(|d| d.tokens).sum::<Tokens>(), tokens);
                let by_id: HashMap<LotId, &SpendableLot> = lots.iter().map(|l| (l.id, l)).collect();
                let mut order = Vec::new();
                for (k, d) in draws.iter().enumerate() {
                    let lot = by_id[&d.lot_id];
                    prop_assert!(d.tokens > 0 && d.tokens <= lot.remaining);
                    prop_assert!(lot_is_live(lot.remaining, lot.expires_at, now));
                    prop_assert_eq!(d.cost_minor, MinorUnits(d.tokens.get() * lot.unit_price_minor.get()));
                    if k + 1 < draws.len() {
                        prop_assert_eq!(d.tokens, lot.remaining, "a lot passed over is emptied");
                    }
                    order.push((lot.expires_at, lot.quantity, lot.id));
                }
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "burn order");
                // No live lot earlier in burn order than the last one drawn was skipped.
                let last = *order.last().unwrap();
                for l in &lots {
                    let key = (l.expires_at, l.quantity, l.id);
                    if lot_is_live(l.remaining, l.expires_at, now) && key < last {
                        prop_assert!(draws.iter().any(|d| d.lot_id == l.id), "lot {} skipped", l.id);
                    }
                }
            }
        }
    }

    /// Rule 4: a quote is the quantity times its band's unit price, self-service up to
    /// the limit, and refused above the list's top or below 1.
    #[test]
    fn a_quote_is_the_quantity_at_its_bands_price(list in price_list(), quantity in -5_i64..60_000) {
        prop_assert!(validate_bands(&list.bands).is_ok());
        match quote_from(&list, quantity) {
            Ok(q) => {
                prop_assert!((1..=LIST_PRICE_TOP).contains(&quantity));
                let band = band_for(&list.bands, quantity).unwrap();
                prop_assert!(band.min_quantity <= quantity && quantity <= band.max_quantity);
                prop_assert_eq!(q.unit_price_minor, band.unit_price_minor);
                prop_assert_eq!(q.total_minor, quantity * band.unit_price_minor);
                prop_assert_eq!(q.self_service, quantity <= SELF_SERVICE_LIMIT);
                prop_assert_eq!(q.self_service, band.self_service());
            }
            Err(_) => prop_assert!(!(1..=LIST_PRICE_TOP).contains(&quantity)),
        }
    }
}

#[test]
fn the_demo_price_list_is_valid() {
    assert!(validate_bands(&rules::demo_bands()).is_ok());
}
