//! The pure rules of an open: deciding it on its situation (rules 7–10), and
//! planning a batch of charging opens in memory (rules 3, 6, 10–12). Nothing here
//! touches the database, so unit tests call it directly.

use super::OpenRecord;
use super::situation::Situation;
use crate::error::{DomainError, Result};
use crate::rules::{self, SpendableLot};
use crate::units::{LotId, MinorUnits, Tokens};
use crate::vocabulary::{DenyReason, PlanLevel};
use chrono::{DateTime, Utc};
use daypass_entity::{account, lot, product, user};
use std::collections::{BTreeMap, HashMap};

/// What the rules decided before any tokens move.
pub(super) enum Decision {
    Denied(DenyReason),
    Subscription,
    InsideWindow(rules::Window),
    Charge,
}

/// Rules 7–10 on what one read saw, in the order an open is decided: the product and
/// the user, a subscription seat first (rule 9), then pay-as-you-go assignment (rule
/// 7), the product lists (rule 8) and the window (rule 10).
pub(super) fn decide(
    user: &user::Model,
    product: Option<&product::Model>,
    situation: &Situation,
    now: DateTime<Utc>,
) -> Decision {
    if product.is_none() {
        return Decision::Denied(DenyReason::UnknownProduct);
    }
    if !user.active {
        return Decision::Denied(DenyReason::UserDeactivated);
    }
    if situation.has_seat {
        return Decision::Subscription;
    }
    if !user.flex_assigned {
        return Decision::Denied(DenyReason::NotAssigned);
    }
    // Rule 8: a user's own list overrides the account's; no list allows everything.
    let allowed = if user.restricts_products {
        situation.user_list_has_product
    } else if situation.account_restricts_products {
        situation.account_list_has_product
    } else {
        true
    };
    if !allowed {
        return Decision::Denied(DenyReason::ProductRestricted);
    }
    if let Some(window) = situation.window.filter(|w| w.covers(now)) {
        return Decision::InsideWindow(window);
    }
    Decision::Charge
}

/// A charging open waiting for its account's next batch.
pub(super) struct ChargeRequest {
    pub(super) record: OpenRecord,
    pub(super) product: product::Model,
    /// A heartbeat's charge past the window (rule 22) of the session
    /// `record.session_id`, rather than an open's: no open is recorded and no
    /// session started.
    pub(super) renewal: bool,
}

/// What one open of a batch comes to, planned in memory under the account's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Planned {
    /// Rules 7–9 decided otherwise under the lock than before it, or (rule 11) the
    /// live lots cannot cover the daily rate.
    Denied(DenyReason),
    Subscription,
    Reopen(rules::Window),
    Charge {
        tokens: Tokens,
        draws: Vec<rules::Draw>,
        window_ends_at: DateTime<Utc>,
        balance_before: Tokens,
        threshold: Tokens,
        /// The tokens bought in unexpired lots, that rule 25's percentages are of.
        bought: Tokens,
    },
}

/// One open's plan, with its account's balance after it and the plan level to
/// answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PlannedOpen {
    pub(super) plan: Planned,
    pub(super) balance_after: Tokens,
    pub(super) plan_level: PlanLevel,
}

/// A lot a batch drew from: its remaining tokens before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DrawnLot {
    pub(super) lot_id: LotId,
    pub(super) before: Tokens,
    pub(super) after: Tokens,
}

/// An open decided again under the locks (rules 7–10), with the daily rate as the
/// catalog has it now.
pub(super) struct Decided {
    pub(super) decision: Decision,
    pub(super) rate: Tokens,
    pub(super) plan_level: PlanLevel,
}

/// What a batch holds under its accounts' locks: everything [`plan`] needs.
pub(super) struct Held {
    pub(super) accounts: HashMap<i32, account::Model>,
    /// Each account's lots, in account id order.
    pub(super) lots: BTreeMap<i32, AccountLots>,
    /// The users' windows by (user, product) as the database has them; [`plan`]
    /// moves them as the batch charges.
    pub(super) windows: HashMap<(i32, i32), rules::Window>,
    /// Each open of the batch, in order.
    pub(super) decided: Vec<Decided>,
}

impl Held {
    /// The lots the batch drew from, account by account.
    pub(super) fn drawn(&self) -> Vec<DrawnLot> {
        self.lots.values().flat_map(AccountLots::drawn).collect()
    }
}

/// Rules 3, 6 and 10–12 over a batch, in memory and in arrival order, each open
/// exactly as if alone: its window checked again (an open earlier in the batch may
/// have charged), the daily rate drawn from its account's lots in burn order, or the
/// open denied for lack of tokens.
pub(super) fn plan(items: &[&ChargeRequest], held: &mut Held) -> Result<Vec<PlannedOpen>> {
    let mut planned = Vec::with_capacity(items.len());
    for (item, decided) in items.iter().zip(&held.decided) {
        let ChargeRequest {
            record, product, ..
        } = *item;
        let now = record.now;
        let key = (record.user_id, product.id);
        let account = held
            .accounts
            .get(&record.account_id)
            .ok_or_else(|| DomainError::Internal("an open of a missing account".into()))?;
        let lots = held
            .lots
            .get_mut(&record.account_id)
            .ok_or_else(|| DomainError::Internal("an account without its lots".into()))?;
        let balance_before = lots.live_tokens(now);
        let covering = held.windows.get(&key).copied().filter(|w| w.covers(now));
        let plan = match (&decided.decision, covering) {
            (Decision::Denied(reason), _) => Planned::Denied(*reason),
            (Decision::Subscription, _) => Planned::Subscription,
            (Decision::InsideWindow(window), _) => Planned::Reopen(*window),
            (Decision::Charge, Some(window)) => Planned::Reopen(window),
            (Decision::Charge, None) => match lots.draw(decided.rate, now)? {
                None => Planned::Denied(DenyReason::InsufficientTokens),
                Some(draws) => {
                    let window = rules::Window::opened_at(now);
                    held.windows.insert(key, window);
                    Planned::Charge {
                        tokens: decided.rate,
                        draws,
                        window_ends_at: window.ends_at,
                        balance_before,
                        threshold: lots.threshold(account, now),
                        bought: lots.bought(now),
                    }
                }
            },
        };
        planned.push(PlannedOpen {
            plan,
            balance_after: lots.live_tokens(now),
            plan_level: decided.plan_level,
        });
    }
    Ok(planned)
}

/// One account's lots as a batch draws on them.
pub(super) struct AccountLots {
    /// Every lot not expired at the batch's first instant: those it may draw on,
    /// and the quantities the default low-balance threshold is a share of.
    lots: Vec<lot::Model>,
    /// The same lots as the batch draws them down.
    spendable: Vec<SpendableLot>,
}

impl AccountLots {
    pub(super) fn new(lots: Vec<lot::Model>) -> AccountLots {
        let spendable = lots
            .iter()
            .map(|l| SpendableLot {
                id: LotId(l.id),
                remaining: Tokens(l.remaining),
                quantity: Tokens(l.quantity),
                expires_at: l.expires_at,
                unit_price_minor: MinorUnits(l.unit_price_minor),
            })
            .collect();
        AccountLots { lots, spendable }
    }

    /// Rule 6: the tokens in live lots at `now`, as this batch has drawn them.
    fn live_tokens(&self, now: DateTime<Utc>) -> Tokens {
        self.spendable
            .iter()
            .filter(|l| rules::lot_is_live(l.remaining, l.expires_at, now))
            .map(|l| l.remaining)
            .sum()
    }

    /// Rule 14's threshold for the account at `now`.
    fn threshold(&self, account: &account::Model, now: DateTime<Utc>) -> Tokens {
        rules::low_balance_threshold(account.low_balance_threshold.map(Tokens), self.bought(now))
    }

    /// The tokens bought in lots unexpired at `now` (their quantities).
    fn bought(&self, now: DateTime<Utc>) -> Tokens {
        self.spendable
            .iter()
            .filter(|l| rules::lot_is_unexpired(l.expires_at, now))
            .map(|l| l.quantity)
            .sum()
    }

    /// The daily rate drawn in burn order, or `None` if the live lots hold too little.
    pub(super) fn draw(
        &mut self,
        tokens: Tokens,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<rules::Draw>>> {
        let Some(draws) = rules::allocate_from_lots(&self.spendable, tokens, now) else {
            return Ok(None);
        };
        for draw in &draws {
            let lot = self
                .spendable
                .iter_mut()
                .find(|l| l.id == draw.lot_id)
                .ok_or_else(|| DomainError::Internal("a draw from an unknown lot".into()))?;
            lot.remaining -= draw.tokens;
        }
        Ok(Some(draws))
    }

    /// The lots this batch drew from.
    fn drawn(&self) -> impl Iterator<Item = DrawnLot> + '_ {
        self.lots.iter().filter_map(|before| {
            let after = self.spendable.iter().find(|l| l.id == before.id)?;
            (after.remaining != before.remaining).then_some(DrawnLot {
                lot_id: after.id,
                before: Tokens(before.remaining),
                after: after.remaining,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn at(hour: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 1, 10, 0, 0, 0).unwrap() + Duration::hours(hour)
    }

    fn request(user_id: i32, product_id: i32, hour: i64) -> ChargeRequest {
        ChargeRequest {
            record: OpenRecord {
                account_id: 1,
                user_id,
                product_id: Some(product_id),
                code: format!("P{product_id}"),
                version: None,
                now: at(hour),
                session_id: format!("s-{user_id}-{product_id}-{hour}"),
                device_id: "default".into(),
            },
            product: product::Model {
                id: product_id,
                code: format!("P{product_id}"),
                name: "Product".into(),
                daily_rate: 10,
                annual_subscription_minor: None,
                active: true,
            },
            renewal: false,
        }
    }

    fn lot(id: i32, remaining: i64, quantity: i64, expires_at: DateTime<Utc>) -> lot::Model {
        lot::Model {
            id,
            account_id: 1,
            quantity,
            remaining,
            used: quantity - remaining,
            expired: 0,
            unit_price_minor: 100 + i64::from(id),
            currency: "EUR".into(),
            purchased_at: at(-1000),
            expires_at,
            status: "ACTIVE".into(),
            idempotency_key: format!("lot-{id}"),
            created_at: at(-1000),
        }
    }

    fn held(lots: Vec<lot::Model>, decided: Vec<Decision>) -> Held {
        let account = account::Model {
            id: 1,
            name: "Acme".into(),
            low_balance_threshold: None,
            restricts_products: false,
            created_at: at(-2000),
            alert_rules: 0,
        };
        Held {
            accounts: HashMap::from([(1, account)]),
            lots: BTreeMap::from([(1, AccountLots::new(lots))]),
            windows: HashMap::new(),
            decided: decided
                .into_iter()
                .map(|decision| Decided {
                    decision,
                    rate: Tokens(10),
                    plan_level: PlanLevel::Standard,
                })
                .collect(),
        }
    }

    #[test]
    fn a_second_open_of_the_same_product_in_a_batch_reopens_the_first_ones_window() {
        let (first, again) = (request(7, 3, 0), request(7, 3, 1));
        let mut held = held(
            vec![lot(1, 100, 100, at(5000))],
            vec![Decision::Charge, Decision::Charge],
        );
        let planned = plan(&[&first, &again], &mut held).unwrap();
        let Planned::Charge {
            tokens,
            window_ends_at,
            balance_before,
            ..
        } = &planned[0].plan
        else {
            panic!("the first open charges: {:?}", planned[0]);
        };
        assert_eq!((*tokens, *balance_before), (Tokens(10), Tokens(100)));
        assert_eq!(*window_ends_at, at(24));
        assert_eq!(planned[0].balance_after, 90);
        assert_eq!(
            planned[1].plan,
            Planned::Reopen(rules::Window::opened_at(at(0)))
        );
        assert_eq!(planned[1].balance_after, 90);
        assert_eq!(
            held.drawn(),
            vec![DrawnLot {
                lot_id: LotId(1),
                before: Tokens(100),
                after: Tokens(90)
            }]
        );
    }

    #[test]
    fn opens_of_a_batch_draw_in_burn_order_and_the_one_left_short_is_denied() {
        // Lot 2 expires first, so it is drawn first; 15 tokens in all cover one open.
        let lots = vec![lot(1, 10, 10, at(5000)), lot(2, 5, 5, at(3000))];
        let (a, b) = (request(7, 3, 0), request(8, 3, 0));
        let mut held = held(lots, vec![Decision::Charge, Decision::Charge]);
        let planned = plan(&[&a, &b], &mut held).unwrap();
        let Planned::Charge { draws, .. } = &planned[0].plan else {
            panic!("the first open charges: {:?}", planned[0]);
        };
        let order: Vec<(i32, i64)> = draws
            .iter()
            .map(|d| (d.lot_id.get(), d.tokens.get()))
            .collect();
        assert_eq!(order, vec![(2, 5), (1, 5)]);
        assert_eq!(
            draws.iter().map(|d| d.cost_minor).sum::<MinorUnits>(),
            5 * 102 + 5 * 101
        );
        assert_eq!(
            planned[1].plan,
            Planned::Denied(DenyReason::InsufficientTokens)
        );
        assert_eq!(planned[1].balance_after, 5);
    }

    #[test]
    fn a_lot_that_expires_between_two_opens_of_a_batch_no_longer_counts() {
        let lots = vec![lot(1, 10, 10, at(2)), lot(2, 10, 10, at(5000))];
        let (before, after) = (request(7, 3, 1), request(8, 3, 3));
        let mut held = held(lots, vec![Decision::Charge, Decision::Charge]);
        let planned = plan(&[&before, &after], &mut held).unwrap();
        assert_eq!(planned[0].balance_after, 10, "lot 1 drawn empty at hour 1");
        let Planned::Charge {
            balance_before,
            draws,
            ..
        } = &planned[1].plan
        else {
            panic!("the second open charges: {:?}", planned[1]);
        };
        assert_eq!(*balance_before, 10, "only lot 2 is live at hour 3");
        assert_eq!(draws[0].lot_id, 2);
        assert_eq!(planned[1].balance_after, 0);
    }

    #[test]
    fn decisions_taken_under_the_lock_stand() {
        let (denied, seat, window) = (request(7, 3, 0), request(8, 3, 0), request(9, 3, 0));
        let mut held = held(
            vec![lot(1, 100, 100, at(5000))],
            vec![
                Decision::Denied(DenyReason::ProductRestricted),
                Decision::Subscription,
                Decision::InsideWindow(rules::Window {
                    starts_at: at(-19),
                    ends_at: at(5),
                }),
            ],
        );
        let planned = plan(&[&denied, &seat, &window], &mut held).unwrap();
        let plans: Vec<Planned> = planned.iter().map(|p| p.plan.clone()).collect();
        assert_eq!(
            plans,
            vec![
                Planned::Denied(DenyReason::ProductRestricted),
                Planned::Subscription,
                Planned::Reopen(rules::Window {
                    starts_at: at(-19),
                    ends_at: at(5),
                }),
            ]
        );
        assert!(planned.iter().all(|p| p.balance_after == 100));
        assert!(held.drawn().is_empty());
    }

    #[test]
    fn the_default_threshold_is_a_share_of_the_unexpired_lots_bought() {
        // Lot 2 is spent but unexpired: its quantity counts toward the default.
        let lots = vec![lot(1, 100, 100, at(5000)), lot(2, 0, 50, at(5000))];
        let open = request(7, 3, 0);
        let mut held = held(lots, vec![Decision::Charge]);
        let planned = plan(&[&open], &mut held).unwrap();
        let Planned::Charge { threshold, .. } = planned[0].plan else {
            panic!("the open charges: {:?}", planned[0]);
        };
        assert_eq!(threshold, rules::low_balance_threshold(None, Tokens(150)));
    }
}
