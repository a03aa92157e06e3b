//! The year, day by day: who opens what and when, and what the rules make of each
//! open (the decisions of `charging::open_product`, the burn order of
//! `rules::allocate_from_lots`, the sweep of `lots::sweep_expired`), in memory.

use super::plan::{self, AccountPlan, BuyPolicy, Plan, Regular, UNKNOWN_CODES, normal};
use super::rows::{Batch, ChargeRow, LedgerRow, LotFinal, LotRow, OpenRow, WindowRow};
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc, Weekday};
use daypass_domain::catalog::PriceList;
use daypass_domain::rules::{self, Band};
use daypass_domain::{AccessSource, DenyReason, LedgerKind, LotStatus};
use rand::{Rng, rngs::StdRng};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The database ids of what the setup wrote, in the plan's order.
#[derive(Debug, Clone)]
pub struct SetupIds {
    pub product_ids: Vec<i32>,
    pub account_ids: Vec<i32>,
    /// Per account, per planned user.
    pub user_ids: Vec<Vec<i32>>,
}

/// The next id of each table the simulation writes.
#[derive(Debug, Clone, Copy)]
pub struct NextIds {
    pub lot: i32,
    pub charge: i32,
    pub ledger: i32,
    pub open: i32,
}

#[derive(Debug, Clone, Default)]
pub struct AccountStats {
    pub charges: u64,
    pub opens: u64,
    pub denials: u64,
    pub tokens: i64,
    pub cost_minor: i64,
    pub lots: u32,
    pub expired_tokens: i64,
    /// Charges the account's day targets asked for but no user had left to make.
    pub shortfall: u64,
    /// The user with the most charges.
    pub busiest_user_id: Option<i32>,
}

/// What is left to write once every day is simulated.
pub struct Final {
    pub lots: Vec<LotFinal>,
    pub windows: Vec<WindowRow>,
    pub stats: Vec<AccountStats>,
}

struct Product {
    id: i32,
    code: Arc<str>,
    rate: i64,
    versions: Vec<Arc<str>>,
}

struct User {
    id: i32,
    flex: bool,
    analyst: bool,
    /// The list that applies to this user (rule 8), by product index.
    allowed: Option<Arc<Vec<bool>>>,
    /// (product, starts, ends) of subscriptions the user holds a seat of.
    seats: Vec<(usize, DateTime<Utc>, DateTime<Utc>)>,
    deactivated_at: Option<DateTime<Utc>>,
    start_min: f64,
    regular: Vec<Regular>,
    /// Whether their launcher sends a version with each open.
    sends_version: bool,
}

struct LotState {
    id: i32,
    remaining: i64,
    used: i64,
    expired: i64,
    unit_price_minor: i64,
    expires_at: DateTime<Utc>,
    status: LotStatus,
}

struct Account {
    id: i32,
    policy: BuyPolicy,
    migrated_lot: bool,
    users: Vec<usize>,
    /// (user, index into their regular products, weight).
    pairs: Vec<(usize, usize, f64)>,
    day_targets: Vec<u64>,
    /// Expected tokens per charge, from the habits planned (before any charge).
    mean_rate: f64,
    /// Tokens and charges of each day so far, for buying what recent months used.
    day_tokens: Vec<(i64, u64)>,
    pack: i64,
    top_up_pack: i64,
    /// Live lots with tokens left, in burn order (rule 3).
    lots: BTreeMap<(DateTime<Utc>, i64, i32), usize>,
    lot_states: Vec<LotState>,
    balance: i64,
    carry: u64,
    stats: AccountStats,
}

#[derive(Clone, Copy)]
enum Prod {
    Known(usize),
    Unknown(usize),
}

#[derive(Clone, Copy)]
struct Ev {
    at: DateTime<Utc>,
    user: usize,
    product: Prod,
    version: Option<usize>,
}

#[derive(Clone, Copy)]
struct Window {
    charge_id: i32,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
}

enum Decision {
    Deny(DenyReason),
    Subscription,
    Reopen,
    Charge,
}

pub struct Sim {
    products: Vec<Product>,
    users: Vec<User>,
    accounts: Vec<Account>,
    unknown_codes: Vec<Arc<str>>,
    windows: Vec<Option<Window>>,
    ids: NextIds,
    bands: Vec<Band>,
    currency: Arc<str>,
    start: NaiveDate,
    days: u32,
    seed: u64,
    rng: StdRng,
    batch: Batch,
    jitter: Vec<(u32, f64)>,
    user_charges: Vec<u32>,
}

fn round_to_thousand(x: f64) -> i64 {
    ((x / 1000.0).round().max(1.0) as i64) * 1000
}

impl Sim {
    pub fn new(
        plan: &Plan,
        ids: &SetupIds,
        next: NextIds,
        prices: PriceList,
        seed: u64,
        rng: StdRng,
    ) -> Sim {
        let products: Vec<Product> = plan
            .products
            .iter()
            .zip(&ids.product_ids)
            .map(|(p, &id)| Product {
                id,
                code: Arc::from(p.code.as_str()),
                rate: p.daily_rate,
                versions: p.versions.clone(),
            })
            .collect();
        let p = products.len();
        let days = plan.day_weights.len() as u32;
        let total_weight: f64 = plan.day_weights.iter().sum();
        let mut users = Vec::new();
        let mut accounts = Vec::new();
        for (ai, a) in plan.accounts.iter().enumerate() {
            let account_list = a.account_list.as_ref().map(|l| Arc::new(mask(l, p)));
            let first_user = users.len();
            for (ui, u) in a.users.iter().enumerate() {
                let seats = seats_of(a, ui);
                users.push(User {
                    id: ids.user_ids[ai][ui],
                    flex: u.flex,
                    analyst: u.role == daypass_domain::Role::Analyst,
                    allowed: match &u.own_list {
                        Some(l) => Some(Arc::new(mask(l, p))),
                        None => account_list.clone(),
                    },
                    seats,
                    deactivated_at: u.deactivated_at,
                    start_min: u.start_min,
                    regular: u.regular.clone(),
                    sends_version: ui % 10 != 3,
                });
            }
            let members: Vec<usize> = (first_user..users.len()).collect();
            let pairs: Vec<(usize, usize, f64)> = members
                .iter()
                .flat_map(|&gi| {
                    users[gi]
                        .regular
                        .iter()
                        .enumerate()
                        .map(move |(ri, r)| (gi, ri, r.weight))
                })
                .collect();
            let weight: f64 = pairs.iter().map(|p| p.2).sum();
            let mean_rate = if weight > 0.0 {
                pairs
                    .iter()
                    .map(|&(gi, ri, w)| w * products[users[gi].regular[ri].product].rate as f64)
                    .sum::<f64>()
                    / weight
            } else {
                1.0
            };
            let mut cum = 0.0;
            let mut assigned = 0u64;
            let day_targets = plan
                .day_weights
                .iter()
                .map(|w| {
                    cum += w;
                    let upto = (a.target as f64 * cum / total_weight).round() as u64;
                    let t = upto.saturating_sub(assigned);
                    assigned = upto;
                    t
                })
                .collect();
            let month_need = a.target as f64 * mean_rate * 30.4 / f64::from(days.max(1));
            let pack = match a.policy {
                BuyPolicy::Monthly { .. } => round_to_thousand(month_need).min(50_000),
                BuyPolicy::AsNeeded { .. } => round_to_thousand(month_need / 2.0).min(50_000),
            };
            accounts.push(Account {
                id: ids.account_ids[ai],
                policy: a.policy,
                migrated_lot: a.migrated_lot,
                users: members,
                pairs,
                day_targets,
                mean_rate,
                day_tokens: vec![(0, 0); days as usize],
                pack,
                top_up_pack: pack.min(10_000),
                lots: BTreeMap::new(),
                lot_states: Vec::new(),
                balance: 0,
                carry: 0,
                stats: AccountStats::default(),
            });
        }
        let n_users = users.len();
        Sim {
            products,
            users,
            accounts,
            unknown_codes: UNKNOWN_CODES.iter().map(|c| Arc::from(*c)).collect(),
            windows: vec![None; n_users * p],
            ids: next,
            bands: prices.bands,
            currency: Arc::from(prices.currency.as_str()),
            start: plan.start,
            days,
            seed,
            rng,
            batch: Batch::default(),
            jitter: vec![(u32::MAX, 0.0); n_users],
            user_charges: vec![0; n_users],
        }
    }

    /// Simulates every day, handing rows to `send` in batches of about
    /// `batch_charges` charges.
    pub fn run(
        mut self,
        batch_charges: usize,
        send: &mut dyn FnMut(Batch) -> anyhow::Result<()>,
    ) -> anyhow::Result<Final> {
        for di in 0..self.days {
            let day = self.start + Duration::days(di.into());
            for a in 0..self.accounts.len() {
                self.simulate_day(a, di, day);
                if self.batch.charges.len() >= batch_charges {
                    self.batch.through = Some(day);
                    send(std::mem::take(&mut self.batch))?;
                }
            }
        }
        let end = plan::at(self.start + Duration::days(self.days.into()), 0.0);
        for a in 0..self.accounts.len() {
            self.expire_due(a, end);
        }
        self.batch.through = Some(self.start + Duration::days(i64::from(self.days) - 1));
        if !self.batch.is_empty() {
            send(std::mem::take(&mut self.batch))?;
        }
        let p = self.products.len();
        let windows = self
            .windows
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                w.map(|w| WindowRow {
                    user_id: self.users[i / p].id,
                    product_id: self.products[i % p].id,
                    charge_id: w.charge_id,
                    starts_at: w.starts_at,
                    ends_at: w.ends_at,
                })
            })
            .collect();
        let lots = self
            .accounts
            .iter()
            .flat_map(|a| &a.lot_states)
            .map(|l| LotFinal {
                id: l.id,
                remaining: l.remaining,
                used: l.used,
                expired: l.expired,
                status: l.status.as_str(),
            })
            .collect();
        let user_charges = self.user_charges;
        let users = self.users;
        let stats = self
            .accounts
            .into_iter()
            .map(|a| {
                let busiest = a
                    .users
                    .iter()
                    .copied()
                    .max_by_key(|&u| (user_charges[u], u));
                AccountStats {
                    busiest_user_id: busiest
                        .filter(|&u| user_charges[u] > 0)
                        .map(|u| users[u].id),
                    ..a.stats
                }
            })
            .collect();
        Ok(Final {
            lots,
            windows,
            stats,
        })
    }

    fn simulate_day(&mut self, a: usize, di: u32, day: NaiveDate) {
        let day_start = plan::at(day, 0.0);
        self.expire_due(a, day_start);
        self.buy_for_month(a, di, day);
        let target = self.accounts[a].day_targets[di as usize] + self.accounts[a].carry;
        let (mut events, made, need) = self.plan_opens(a, day, target);
        let acct = &mut self.accounts[a];
        acct.carry = target - made;
        self.top_up(a, day, need);
        self.stray_opens(a, day, &mut events);
        // Ties keep the order the opens were planned in.
        events.sort_by_key(|e| e.at);
        for e in events {
            self.open(a, e);
        }
        let acct = &mut self.accounts[a];
        if di + 1 == self.days {
            acct.stats.shortfall = acct.carry;
        }
    }

    fn jitter(&mut self, user: usize, di: u32) -> f64 {
        let (d, j) = self.jitter[user];
        if d == di {
            return j;
        }
        let j = 20.0 * normal(&mut self.rng);
        self.jitter[user] = (di, j);
        j
    }

    fn user_day_over(&self, user: usize, day: NaiveDate) -> bool {
        self.users[user]
            .deactivated_at
            .is_some_and(|d| d.date_naive() < day)
    }

    /// The day's opens of the account's regular products, pair by pair in a weighted
    /// random order until the pairs that would charge reach `target`. Returns the
    /// opens, how many would charge, and the tokens those charges would take.
    fn plan_opens(&mut self, a: usize, day: NaiveDate, target: u64) -> (Vec<Ev>, u64, i64) {
        let di = (day - self.start).num_days() as u32;
        let mut order: Vec<(f64, usize)> = Vec::with_capacity(self.accounts[a].pairs.len());
        for (i, &(user, _, w)) in self.accounts[a].pairs.iter().enumerate() {
            if self.user_day_over(user, day) {
                continue;
            }
            let u: f64 = self.rng.random::<f64>().max(1e-300);
            order.push((u.ln() / w, i));
        }
        order.sort_by(|x, y| y.0.total_cmp(&x.0));
        let mut events = Vec::new();
        let (mut made, mut need) = (0u64, 0i64);
        let p = self.products.len();
        for (_, pi) in order {
            if made >= target {
                break;
            }
            let (user, ri, _) = self.accounts[a].pairs[pi];
            let reg = self.users[user].regular[ri].clone();
            let base = self.users[user].start_min + self.jitter(user, di);
            // Purchases happen before 06:00 UTC; opens after.
            let first = (base + reg.habit_min + 12.0 * normal(&mut self.rng)).max(361.0);
            let k = match self.rng.random::<f64>() {
                x if x < 0.55 => 1,
                x if x < 0.83 => 2,
                x if x < 0.95 => 3,
                _ => 4,
            };
            let mut times = vec![first];
            let last = (base + 570.0).max(first + 30.0);
            for _ in 1..k {
                times.push(self.rng.random_range(first..last));
            }
            times.sort_by(f64::total_cmp);
            let window_end = self.windows[user * p + reg.product].map(|w| w.ends_at);
            let mut charges = false;
            for t in times {
                let at = plan::at(day, t);
                if !charges
                    && window_end.is_none_or(|e| at >= e)
                    && self.pays_as_it_goes(user, reg.product, at)
                {
                    charges = true;
                }
                let version = if !self.users[user].sends_version {
                    None
                } else if self.rng.random_bool(0.03) {
                    Some(self.products[reg.product].versions.len() - 1)
                } else {
                    Some(reg.version)
                };
                events.push(Ev {
                    at,
                    user,
                    product: Prod::Known(reg.product),
                    version,
                });
            }
            if charges {
                made += 1;
                need += self.products[reg.product].rate;
            }
        }
        (events, made, need)
    }

    /// Opens that end in a denial: products outside a user's list, products of users
    /// not on pay-as-you-go, codes no catalog product has, deactivated users.
    fn stray_opens(&mut self, a: usize, day: NaiveDate, events: &mut Vec<Ev>) {
        let weekday = !matches!(day.weekday(), Weekday::Sat | Weekday::Sun);
        let di = (day - self.start).num_days() as u32;
        let p = self.products.len();
        for k in 0..self.accounts[a].users.len() {
            let user = self.accounts[a].users[k];
            let u = &self.users[user];
            let product = if u.deactivated_at.is_some_and(|d| {
                let since = (day - d.date_naive()).num_days();
                (1..=10).contains(&since)
            }) {
                if !self.rng.random_bool(0.3) || u.regular.is_empty() {
                    continue;
                }
                Prod::Known(u.regular[0].product)
            } else if self.user_day_over(user, day) || !weekday {
                continue;
            } else if self.rng.random_bool(0.002) {
                Prod::Unknown(self.rng.random_range(0..self.unknown_codes.len()))
            } else if u.analyst || !u.flex {
                if !self.rng.random_bool(if u.analyst { 0.02 } else { 0.01 }) {
                    continue;
                }
                Prod::Known(self.rng.random_range(0..p))
            } else if let Some(list) = u.allowed.clone() {
                if !self.rng.random_bool(0.02) {
                    continue;
                }
                let outside: Vec<usize> = (0..p).filter(|&i| !list[i]).collect();
                if outside.is_empty() {
                    continue;
                }
                Prod::Known(outside[self.rng.random_range(0..outside.len())])
            } else {
                continue;
            };
            let base = self.users[user].start_min + self.jitter(user, di);
            let t = (base + self.rng.random_range(0.0..540.0)).max(361.0);
            events.push(Ev {
                at: plan::at(day, t),
                user,
                product,
                version: None,
            });
        }
    }

    /// Rules 7–9 for a known product: would an open at `at` go through pay-as-you-go?
    fn pays_as_it_goes(&self, user: usize, product: usize, at: DateTime<Utc>) -> bool {
        let u = &self.users[user];
        u.deactivated_at.is_none_or(|d| at < d)
            && !u.seat_active(product, at)
            && u.flex
            && u.allowed.as_ref().is_none_or(|l| l[product])
    }

    /// `charging::open_product`'s decision, in its order.
    fn decide(&self, e: &Ev) -> Decision {
        let Prod::Known(product) = e.product else {
            return Decision::Deny(DenyReason::UnknownProduct);
        };
        let u = &self.users[e.user];
        if u.deactivated_at.is_some_and(|d| e.at >= d) {
            return Decision::Deny(DenyReason::UserDeactivated);
        }
        if u.seat_active(product, e.at) {
            return Decision::Subscription;
        }
        if !u.flex {
            return Decision::Deny(DenyReason::NotAssigned);
        }
        if u.allowed.as_ref().is_some_and(|l| !l[product]) {
            return Decision::Deny(DenyReason::ProductRestricted);
        }
        let p = self.products.len();
        if self.windows[e.user * p + product].is_some_and(|w| rules::window_covers(w.ends_at, e.at))
        {
            return Decision::Reopen;
        }
        Decision::Charge
    }

    fn open(&mut self, a: usize, e: Ev) {
        let decision = self.decide(&e);
        let (product_id, code, version) = match e.product {
            Prod::Known(p) => {
                let prod = &self.products[p];
                (
                    Some(prod.id),
                    prod.code.clone(),
                    e.version.map(|v| prod.versions[v].clone()),
                )
            }
            Prod::Unknown(i) => (None, self.unknown_codes[i].clone(), None),
        };
        let user_id = self.users[e.user].id;
        let account_id = self.accounts[a].id;
        let mut row = OpenRow {
            id: 0,
            account_id,
            user_id,
            product_id,
            product_code: code,
            version: version.clone(),
            at: e.at,
            granted: true,
            source: Some(AccessSource::Flex.as_str()),
            deny_reason: None,
            charge_id: None,
            tokens: 0,
        };
        match decision {
            Decision::Deny(reason) => {
                row.granted = false;
                row.source = None;
                row.deny_reason = Some(reason.as_str());
            }
            Decision::Subscription => row.source = Some(AccessSource::Subscription.as_str()),
            Decision::Reopen => {}
            Decision::Charge => {
                let Prod::Known(p) = e.product else {
                    unreachable!("a charge needs a product")
                };
                match self.charge(a, e.user, p, version, e.at) {
                    Some((charge_id, tokens)) => {
                        row.charge_id = Some(charge_id);
                        row.tokens = tokens;
                    }
                    None => {
                        row.granted = false;
                        row.source = None;
                        row.deny_reason = Some(DenyReason::InsufficientTokens.as_str());
                    }
                }
            }
        }
        let stats = &mut self.accounts[a].stats;
        if row.granted {
            stats.opens += 1;
        } else {
            stats.denials += 1;
        }
        row.id = self.ids.open;
        self.ids.open += 1;
        self.batch.opens.push(row);
    }

    /// Rules 3, 6, 10, 11: draws the daily rate from the live lots in burn order, or
    /// `None` when they cannot cover it.
    fn charge(
        &mut self,
        a: usize,
        user: usize,
        product: usize,
        version: Option<Arc<str>>,
        at: DateTime<Utc>,
    ) -> Option<(i32, i64)> {
        self.expire_due(a, at);
        let rate = self.products[product].rate;
        let acct = &mut self.accounts[a];
        if acct.balance < rate {
            return None;
        }
        let charge_id = self.ids.charge;
        self.ids.charge += 1;
        let mut left = rate;
        let mut cost = 0;
        let mut emptied = Vec::new();
        for (key, &li) in &acct.lots {
            if left == 0 {
                break;
            }
            let lot = &mut acct.lot_states[li];
            let take = left.min(lot.remaining);
            lot.status = if lot.remaining == take {
                LotStatus::Depleted
            } else {
                LotStatus::Active
            };
            lot.remaining -= take;
            lot.used += take;
            cost += take * lot.unit_price_minor;
            left -= take;
            if lot.remaining == 0 {
                emptied.push(*key);
            }
            self.batch.ledger.push(LedgerRow {
                id: self.ids.ledger,
                account_id: acct.id,
                kind: LedgerKind::Charge.as_str(),
                tokens: -take,
                lot_id: lot.id,
                charge_id: Some(charge_id),
                at,
            });
            self.ids.ledger += 1;
        }
        for key in emptied {
            acct.lots.remove(&key);
        }
        acct.balance -= rate;
        let ends_at = at + rules::WINDOW;
        self.batch.charges.push(ChargeRow {
            id: charge_id,
            account_id: acct.id,
            user_id: self.users[user].id,
            product_id: self.products[product].id,
            version,
            tokens: rate,
            cost_minor: cost,
            window_starts_at: at,
            window_ends_at: ends_at,
        });
        acct.stats.charges += 1;
        let di = (at.date_naive() - self.start).num_days() as usize;
        acct.day_tokens[di].0 += rate;
        acct.day_tokens[di].1 += 1;
        self.user_charges[user] += 1;
        acct.stats.tokens += rate;
        acct.stats.cost_minor += cost;
        let p = self.products.len();
        self.windows[user * p + product] = Some(Window {
            charge_id,
            starts_at: at,
            ends_at,
        });
        Some((charge_id, rate))
    }

    /// Rule 2, as the sweep does it: each lot past its expiry with tokens left loses
    /// them, recorded as one EXPIRY entry at its expiry.
    fn expire_due(&mut self, a: usize, now: DateTime<Utc>) {
        let acct = &mut self.accounts[a];
        while let Some((&key, &li)) = acct.lots.first_key_value() {
            if rules::lot_is_unexpired(key.0, now) {
                break;
            }
            acct.lots.remove(&key);
            let lot = &mut acct.lot_states[li];
            let left = lot.remaining;
            lot.expired += left;
            lot.remaining = 0;
            lot.status = LotStatus::Expired;
            acct.balance -= left;
            acct.stats.expired_tokens += left;
            self.batch.ledger.push(LedgerRow {
                id: self.ids.ledger,
                account_id: acct.id,
                kind: LedgerKind::Expiry.as_str(),
                tokens: -left,
                lot_id: lot.id,
                charge_id: None,
                at: lot.expires_at,
            });
            self.ids.ledger += 1;
        }
    }

    /// `lots::purchase` by the operator (or an admin, for self-service quantities).
    fn buy(
        &mut self,
        a: usize,
        quantity: i64,
        purchased_at: DateTime<Utc>,
        created_at: DateTime<Utc>,
    ) {
        let unit_price_minor = rules::band_for(&self.bands, quantity)
            .expect("packs stay within the price list")
            .unit_price_minor;
        let id = self.ids.lot;
        self.ids.lot += 1;
        let expires_at = rules::expiry_of(purchased_at);
        let acct = &mut self.accounts[a];
        acct.stats.lots += 1;
        self.batch.lots.push(LotRow {
            id,
            account_id: acct.id,
            quantity,
            unit_price_minor,
            currency: self.currency.clone(),
            purchased_at,
            expires_at,
            idempotency_key: format!("gen-{}-{}-{}", self.seed, acct.id, acct.stats.lots),
            created_at,
        });
        self.batch.ledger.push(LedgerRow {
            id: self.ids.ledger,
            account_id: acct.id,
            kind: LedgerKind::Purchase.as_str(),
            tokens: quantity,
            lot_id: id,
            charge_id: None,
            at: purchased_at,
        });
        self.ids.ledger += 1;
        acct.lot_states.push(LotState {
            id,
            remaining: quantity,
            used: 0,
            expired: 0,
            unit_price_minor,
            expires_at,
            status: LotStatus::Active,
        });
        acct.lots
            .insert((expires_at, quantity, id), acct.lot_states.len() - 1);
        acct.balance += quantity;
    }

    /// `total` tokens (rounded up to a hundred) in packs of at most `pack`.
    fn buy_packs(&mut self, a: usize, total: f64, pack: i64, first_at: DateTime<Utc>) {
        let mut left = ((total / 100.0).ceil().max(1.0) as i64) * 100;
        let mut k = 0;
        while left > 0 {
            let quantity = left.min(pack);
            let at = first_at + Duration::seconds(7 * k);
            self.buy(a, quantity, at, at);
            left -= quantity;
            k += 1;
        }
    }

    /// The first morning of the range and of each month: the month's purchase (and a
    /// lot moved from a previous system, the first morning).
    fn buy_for_month(&mut self, a: usize, di: u32, day: NaiveDate) {
        if di == 0 && self.accounts[a].migrated_lot {
            let acct = &self.accounts[a];
            let first_month: u64 = acct.day_targets.iter().take(30).sum();
            let quantity = round_to_thousand(first_month as f64 * acct.mean_rate * 1.3).min(50_000);
            let purchased_at = plan::at(day - Duration::days(335), 600.0);
            let recorded_at = plan::at(day, 240.0);
            self.buy(a, quantity, purchased_at, recorded_at);
        }
        let BuyPolicy::Monthly { cover, .. } = self.accounts[a].policy else {
            return;
        };
        if di != 0 && day.day() != 1 {
            return;
        }
        let acct = &self.accounts[a];
        let month_days = acct
            .day_targets
            .iter()
            .enumerate()
            .skip(di as usize)
            .take_while(|(i, _)| {
                let d = self.start + Duration::days(*i as i64);
                d.month() == day.month() && d.year() == day.year()
            })
            .map(|(_, t)| *t)
            .sum::<u64>();
        // What a charge cost over the last four weeks, once there are four weeks.
        let recent = &acct.day_tokens[(di as usize).saturating_sub(28)..di as usize];
        let (tokens, charges) = recent
            .iter()
            .fold((0, 0), |(t, c), &(dt, dc)| (t + dt, c + dc));
        let rate = if di >= 28 && charges > 0 {
            tokens as f64 / charges as f64
        } else {
            acct.mean_rate
        };
        let total = month_days as f64 * rate * cover;
        let pack = acct.pack;
        let at = plan::at(day, 300.0 + self.rng.random_range(0.0..20.0));
        self.buy_packs(a, total, pack, at);
    }

    /// A morning's top-up when the live balance will not cover the day planned.
    fn top_up(&mut self, a: usize, day: NaiveDate, need: i64) {
        let day_end = plan::at(day + Duration::days(1), 0.0);
        let acct = &self.accounts[a];
        let available: i64 = acct
            .lots
            .iter()
            .filter(|(k, _)| rules::lot_is_unexpired(k.0, day_end))
            .map(|(_, &li)| acct.lot_states[li].remaining)
            .sum();
        let (margin, pack) = match acct.policy {
            BuyPolicy::Monthly { top_up: true, .. } => (1.3, acct.top_up_pack),
            BuyPolicy::Monthly { top_up: false, .. } => return,
            BuyPolicy::AsNeeded { margin } => (margin, acct.pack),
        };
        let wanted = need as f64 * margin;
        if (available as f64) < wanted {
            let at = plan::at(day, 340.0 + self.rng.random_range(0.0..10.0));
            // Whole packs.
            let packs = ((wanted - available as f64) / pack as f64).ceil();
            self.buy_packs(a, packs * pack as f64, pack, at);
        }
    }
}

impl User {
    fn seat_active(&self, product: usize, at: DateTime<Utc>) -> bool {
        self.seats
            .iter()
            .any(|&(p, s, e)| p == product && rules::subscription_active(s, e, at))
    }
}

fn mask(list: &[usize], p: usize) -> Vec<bool> {
    let mut m = vec![false; p];
    for &i in list {
        m[i] = true;
    }
    m
}

fn seats_of(a: &AccountPlan, user: usize) -> Vec<(usize, DateTime<Utc>, DateTime<Utc>)> {
    a.subscriptions
        .iter()
        .filter(|s| s.holders.contains(&user))
        .map(|s| (s.product, s.starts_at, s.ends_at))
        .collect()
}
