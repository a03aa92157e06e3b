//! Invariants under random concurrent work: a seeded random workload of
//! purchases (repeated idempotency keys included), opens by many users (several at
//! once for the same product, more than the balance covers), restrictions,
//! pay-as-you-go assignment, subscriptions and their seats, deactivations, sessions
//! (heartbeats active and idle, renewals past the window, closes by the user or an
//! admin, lapses, short-launch refunds), sweeps and clock moves (ten minutes, or
//! hours past windows and expiries), sent to the real binary in concurrent
//! batches on two accounts, against a reference model of PRODUCT.md written here
//! independently of `domain`.
//!
//! Every batch is sent at once and its answers are checked for linearizability: some
//! order of the batch's operations, applied one by one to the model, must give every
//! answer exactly (balances, tokens, windows, lot counts, prices, errors). After the
//! run, and every 50 batches, the stored ledger is checked (`daypass_tests::ledger`),
//! every lot and balance the API shows equals the model's, and the usage report,
//! spending and ledger totals equal the model's tallies.
//!
//! `DAYPASS_MODEL_SEED=<n>` replays a run's workload (the seed is printed; the
//! interleaving inside a batch is the server's, and the sessions a heartbeat or close
//! names depend on which opens were granted). `DAYPASS_MODEL_RUNS` (default 2) and
//! `DAYPASS_MODEL_BATCHES` (default 150) size the run; docs/testing.md, "Safety nets".

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use daypass_domain::Db;
use daypass_tests::json::{at, id, int};
use daypass_tests::ledger::{check_ledger, count};
use daypass_tests::server::OPERATOR_KEY;
use daypass_tests::{Api, TestServer};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// The catalog: code and daily rate.
const PRODUCTS: [(&str, i64); 4] = [("mdl-a", 1), ("mdl-b", 2), ("mdl-c", 3), ("mdl-e", 5)];
/// An open of this product index names a code that is not in the catalog.
const UNKNOWN: usize = PRODUCTS.len();
const ACCOUNTS: usize = 2;
/// Users per account: index 0 is the admin, the rest members.
const USERS: usize = 6;
const MAX_BATCH: usize = 7;
/// Clock moves stop adding up past this (reports cover at most ~10 years).
const MAX_ADVANCE_HOURS: i64 = 3 * 8784;
const PLANS: [&str; 4] = ["STANDARD", "PREMIUM", "ENTERPRISE", "EDUCATION"];

const OPEN: &str = "mutation($c: String!, $v: String) { openProduct(input: {productCode: $c, version: $v}) { granted source tokensCharged windowEndsAt denyReason balance planLevel session { id startedAt } } }";
const BUY: &str = "mutation($q: Int!, $k: String!) { purchaseTokens(input: {quantity: $q, idempotencyKey: $k}) { id quantity remaining used expired unitPriceMinor purchasedAt expiresAt status } }";
const OPERATOR_BUY: &str = "mutation($q: Int!, $k: String!, $a: ID!, $at: DateTime!, $p: Int!) { purchaseTokens(input: {quantity: $q, idempotencyKey: $k, accountId: $a, purchasedAt: $at, unitPriceMinor: $p}) { id quantity remaining used expired unitPriceMinor purchasedAt expiresAt status } }";
const SET_ALLOWED: &str =
    "mutation($u: ID, $p: [ID!]) { setAllowedProducts(userId: $u, productIds: $p) }";
const ASSIGN_FLEX: &str = "mutation($ids: [ID!]!, $a: Boolean!) { assignFlex(userIds: $ids, assigned: $a) { id flexAssigned } }";
const ADD_SUBSCRIPTION: &str = "mutation($p: ID!, $l: PlanLevel!, $s: Int!, $from: DateTime!, $to: DateTime!) { addSubscription(input: {productId: $p, planLevel: $l, seats: $s, startsAt: $from, endsAt: $to}) { id seats planLevel } }";
const ASSIGN_SEAT: &str = "mutation($s: ID!, $u: ID!, $a: Boolean!) { assignSubscription(subscriptionId: $s, userId: $u, assigned: $a) { id } }";
const DEACTIVATE: &str = "mutation($u: ID!) { deactivateUser(userId: $u) { id active } }";
const MAINTENANCE: &str = "mutation { runMaintenance }";
const ADVANCE: &str = "mutation($h: Int!, $m: Int!) { advanceClock(hours: $h, minutes: $m) }";

mod sessions;
use sessions::{CLOSE, ChargeM, HEARTBEAT, SessM, SessionRef, WINDOW};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------
// The workload

/// One request of a batch. Users are (account, index); subscriptions are numbered in
/// the order the workload created them.
#[derive(Debug, Clone)]
enum Op {
    Open {
        acct: usize,
        user: usize,
        product: usize,
        version: Option<String>,
    },
    /// An analyst changes nothing: FORBIDDEN.
    AnalystOpen {
        acct: usize,
    },
    Buy {
        acct: usize,
        quantity: i64,
        key: String,
    },
    /// An operator records a purchase made earlier, at its own unit price: lots
    /// bought at the same instant expire together, so the burn order's tie-breaks
    /// (smaller lot, then older) decide which price a charge pays.
    OperatorBuy {
        acct: usize,
        quantity: i64,
        key: String,
        purchased_at: DateTime<Utc>,
        unit_price: i64,
    },
    /// `user` None: the account-wide list. `products` None: no restriction; an entry
    /// `UNKNOWN` names a product id that does not exist.
    SetAllowed {
        acct: usize,
        user: Option<usize>,
        products: Option<Vec<usize>>,
    },
    /// An admin names a user of another account: FORBIDDEN.
    SetAllowedAcross {
        acct: usize,
        other_user: usize,
    },
    AssignFlex {
        acct: usize,
        users: Vec<usize>,
        assigned: bool,
    },
    AddSubscription {
        acct: usize,
        number: usize,
        product: usize,
        plan: usize,
        seats: i64,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
    },
    /// The admin of `admin_acct` gives (or takes back) a seat of subscription `sub` to
    /// user (`user_acct`, `user`).
    AssignSeat {
        admin_acct: usize,
        sub: usize,
        user_acct: usize,
        user: usize,
        assigned: bool,
    },
    Deactivate {
        acct: usize,
        user: usize,
    },
    Maintenance,
    /// The launcher of `session` (its user's key); `active`: the product is in use.
    Heartbeat {
        session: String,
        acct: usize,
        user: usize,
        active: bool,
    },
    /// Its user closes `session`, or (`by_admin`) the admin of its account.
    Close {
        session: String,
        acct: usize,
        user: usize,
        by_admin: bool,
    },
}

/// What the workload generator knows besides the random numbers: only what does not
/// depend on the server's interleaving, so a seed replays the same requests.
struct Workload {
    rng: StdRng,
    operator_purchases: usize,
    keys: Vec<Vec<(String, i64)>>,
    subscriptions: Vec<usize>,
    /// Subscriptions created in earlier batches (their ids are known).
    subscriptions_known: usize,
    deactivated: Vec<BTreeSet<usize>>,
    advanced_hours: i64,
    /// Ten-minute moves still to come in a row (a product kept running through its
    /// window's end by heartbeats, so that it renews).
    minute_moves: u32,
}

impl Workload {
    fn new(seed: u64) -> Workload {
        Workload {
            rng: StdRng::seed_from_u64(seed),
            operator_purchases: 0,
            keys: vec![Vec::new(); ACCOUNTS],
            subscriptions: Vec::new(),
            subscriptions_known: 0,
            deactivated: vec![BTreeSet::new(); ACCOUNTS],
            advanced_hours: 0,
            minute_moves: 0,
        }
    }

    fn batch(&mut self, server_now: DateTime<Utc>, sessions: &[SessionRef]) -> Vec<Op> {
        self.subscriptions_known = self.subscriptions.len();
        let n = self.rng.random_range(1..=MAX_BATCH);
        let mut ops = Vec::with_capacity(n);
        while ops.len() < n {
            let op = self.op(server_now, sessions);
            match &op {
                // Rule 12: the same user opening the same product several times at once.
                Op::Open { .. } if self.rng.random_bool(0.15) => ops.push(op.clone()),
                // Rule 21: an open racing the refund of a close.
                Op::Close { .. } if self.rng.random_bool(0.4) => {
                    ops.extend(sessions::reopen_racing(&op, sessions))
                }
                // Rule 3's tie-breaks: another lot bought at the same instant.
                Op::OperatorBuy {
                    acct, purchased_at, ..
                } => {
                    self.operator_purchases += 1;
                    ops.push(Op::OperatorBuy {
                        acct: *acct,
                        quantity: self.rng.random_range(4..30),
                        key: format!("op{acct}-{}", self.operator_purchases),
                        purchased_at: *purchased_at,
                        unit_price: [90, 150, 400][self.rng.random_range(0..3)],
                    })
                }
                _ => {}
            }
            ops.push(op);
        }
        ops
    }

    fn op(&mut self, server_now: DateTime<Utc>, sessions: &[SessionRef]) -> Op {
        let acct = self.rng.random_range(0..ACCOUNTS);
        // While the clock moves by ten minutes, more heartbeats: they keep products
        // running through their window's end, where they renew.
        let chasing = self.minute_moves > 0;
        let roll = self.rng.random_range(0..if chasing { 150 } else { 120 });
        if roll >= 100
            && let Some(op) = sessions::session_op(&mut self.rng, sessions, roll, chasing)
        {
            return op;
        }
        let rng = &mut self.rng;
        let open = |rng: &mut StdRng| Op::Open {
            acct,
            // The admin and the first members open the most.
            user: [0, 1, 1, 2, 2, 3, 4, 5][rng.random_range(0..8)],
            product: if rng.random_bool(0.03) {
                UNKNOWN
            } else {
                [0, 0, 1, 1, 2, 3][rng.random_range(0..6)]
            },
            version: rng
                .random_bool(0.3)
                .then(|| format!("{}.{}", rng.random_range(1..4), rng.random_range(0..10))),
        };
        match roll {
            60..61 => Op::AnalystOpen { acct },
            61..70 => {
                let keys = &mut self.keys[acct];
                if !keys.is_empty() && rng.random_bool(0.25) {
                    let (key, quantity) = keys[rng.random_range(0..keys.len())].clone();
                    // Mostly the same purchase again; sometimes the key with another quantity.
                    let quantity = if rng.random_bool(0.2) {
                        quantity + 1
                    } else {
                        quantity
                    };
                    Op::Buy {
                        acct,
                        quantity,
                        key,
                    }
                } else {
                    let quantity = match rng.random_range(0..20) {
                        0 => 10_001,
                        1..3 => rng.random_range(100..400),
                        _ => rng.random_range(1..40),
                    };
                    let key = format!("k{acct}-{}", keys.len());
                    keys.push((key.clone(), quantity));
                    Op::Buy {
                        acct,
                        quantity,
                        key,
                    }
                }
            }
            70..72 => {
                self.operator_purchases += 1;
                Op::OperatorBuy {
                    acct,
                    quantity: rng.random_range(4..30),
                    key: format!("op{acct}-{}", self.operator_purchases),
                    // Half an hour off the whole hours the clock moves by (see `Span`).
                    purchased_at: server_now
                        - Duration::days([1, 3, 40][rng.random_range(0..3)])
                        - Duration::minutes(30),
                    unit_price: [90, 150, 400][rng.random_range(0..3)],
                }
            }
            72..78 => {
                let user = rng.random_bool(0.6).then(|| rng.random_range(0..USERS));
                let products = rng.random_bool(0.5).then(|| {
                    let mut list: Vec<usize> = (0..PRODUCTS.len())
                        .filter(|_| rng.random_bool(0.75))
                        .collect();
                    if rng.random_bool(0.05) {
                        list.push(UNKNOWN);
                    }
                    list
                });
                Op::SetAllowed {
                    acct,
                    user,
                    products,
                }
            }
            78..79 => Op::SetAllowedAcross {
                acct,
                other_user: rng.random_range(0..USERS),
            },
            79..84 => Op::AssignFlex {
                acct,
                users: (0..USERS).filter(|_| rng.random_bool(0.4)).collect(),
                assigned: rng.random_bool(0.75),
            },
            84..87 if self.subscriptions.len() < 16 => {
                let number = self.subscriptions.len();
                self.subscriptions.push(acct);
                // Bounds half an hour off the whole hours the clock moves by, so that
                // every batch is unambiguously before or after them.
                let starts_at = server_now - Duration::minutes(30)
                    + Duration::hours([0, 0, 2, 30][rng.random_range(0..4)]);
                let ends_at =
                    starts_at + Duration::hours([1, 24, 24 * 30, 24 * 400][rng.random_range(0..4)]);
                Op::AddSubscription {
                    acct,
                    number,
                    product: rng.random_range(0..PRODUCTS.len()),
                    plan: rng.random_range(0..PLANS.len()),
                    seats: rng.random_range(1..=3),
                    starts_at,
                    ends_at,
                }
            }
            84..94 if self.subscriptions_known > 0 => {
                let sub = rng.random_range(0..self.subscriptions_known);
                let owner = self.subscriptions[sub];
                let user_acct = if rng.random_bool(0.05) {
                    (owner + 1) % ACCOUNTS
                } else {
                    owner
                };
                let admin_acct = if rng.random_bool(0.05) {
                    (owner + 1) % ACCOUNTS
                } else {
                    owner
                };
                Op::AssignSeat {
                    admin_acct,
                    sub,
                    user_acct,
                    user: rng.random_range(0..USERS),
                    assigned: rng.random_bool(0.8),
                }
            }
            94..95 if self.deactivated[acct].is_empty() => {
                // One of the members who open least, so the others keep working.
                let user = rng.random_range(USERS - 2..USERS);
                self.deactivated[acct].insert(user);
                Op::Deactivate { acct, user }
            }
            95..98 => Op::Maintenance,
            _ => open(rng),
        }
    }

    /// Minutes to move the clock by before the next batch, if at all: ten minutes
    /// (past a short launch, towards a lapse) or whole hours. Every bound the model
    /// compares with is a multiple of five minutes from an instant of an earlier
    /// answer, so it stays at least five minutes from every later batch.
    fn clock_move(&mut self) -> Option<i64> {
        if self.minute_moves > 0 {
            if !self.rng.random_bool(0.5) {
                return None;
            }
            self.minute_moves -= 1;
            return Some(10);
        }
        if !self.rng.random_bool(0.25) {
            return None;
        }
        if self.rng.random_bool(0.3) {
            self.minute_moves = self.rng.random_range(0..10);
            return Some(10);
        }
        let choices: &[i64] = &[
            1,
            3,
            12,
            23,
            24,
            25,
            48,
            24 * 7,
            24 * 30,
            24 * 90,
            24 * 200,
            8760,
            8784,
        ];
        let hours = choices[self.rng.random_range(0..choices.len())];
        let hours = if self.advanced_hours + hours > MAX_ADVANCE_HOURS {
            1
        } else {
            hours
        };
        self.advanced_hours += hours;
        Some(hours * 60)
    }
}

// ---------------------------------------------------------------------------
// The reference model

/// The server instants a batch's requests may have been decided at. Clock moves are
/// ten minutes or whole hours, and bounds sit five minutes or more off the instants of
/// earlier answers (or half an hour off whole hours), so every bound the model
/// compares with is before or after the whole batch: a bound inside it is a flaw of
/// the workload, reported as such.
#[derive(Debug, Clone, Copy)]
struct Span {
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
}

impl Span {
    /// `bound <= now` for the whole batch.
    fn reached(&self, bound: DateTime<Utc>) -> bool {
        if bound <= self.lo {
            true
        } else if bound > self.hi {
            false
        } else {
            panic!(
                "workload flaw: {bound} falls inside the batch's span {}..{}",
                self.lo, self.hi
            )
        }
    }

    fn contains(&self, t: DateTime<Utc>) -> bool {
        self.lo <= t && t <= self.hi
    }
}

/// Rule 1, written again here: same instant next calendar year, 29 Feb → 28 Feb.
fn year_later(t: DateTime<Utc>) -> DateTime<Utc> {
    let (month, day) = match (t.month(), t.day()) {
        (2, 29) => (2, 28),
        md => md,
    };
    let date = NaiveDate::from_ymd_opt(t.year() + 1, month, day).unwrap();
    Utc.from_utc_datetime(&date.and_time(t.time()))
}

#[derive(Debug, Clone, PartialEq)]
struct LotM {
    id: i32,
    quantity: i64,
    remaining: i64,
    used: i64,
    unit_price: i64,
    expires_at: DateTime<Utc>,
}

impl LotM {
    /// (remaining, used, expired, status) as the API shows the lot.
    fn shown(&self, span: &Span) -> (i64, i64, i64, &'static str) {
        let (remaining, expired) = if span.reached(self.expires_at) {
            (0, self.quantity - self.used)
        } else {
            (self.remaining, self.quantity - self.used - self.remaining)
        };
        let status = if remaining > 0 {
            "ACTIVE"
        } else if expired > 0 {
            "EXPIRED"
        } else {
            "DEPLETED"
        };
        (remaining, self.used, expired, status)
    }
}

#[derive(Debug, Clone, PartialEq)]
struct UserM {
    id: i32,
    key: String,
    flex: bool,
    active: bool,
    allowed: Option<BTreeSet<usize>>,
    /// Product → end of the last window.
    windows: BTreeMap<usize, DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
struct SubM {
    id: i32,
    acct: usize,
    product: usize,
    plan: usize,
    seats: usize,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    holders: BTreeSet<usize>,
}

/// Per (user, product or unknown code): what the usage report must show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    tokens: i64,
    opens: i64,
    charges: i64,
    denials: i64,
    cost: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct AcctM {
    id: i32,
    admin_key: String,
    analyst_key: String,
    allowed: Option<BTreeSet<usize>>,
    users: Vec<UserM>,
    /// By id: the order purchases of one batch took does not matter.
    lots: BTreeMap<i32, LotM>,
    keys: BTreeMap<String, i32>,
    tally: BTreeMap<(usize, Option<usize>), Tally>,
}

impl AcctM {
    fn balance(&self, span: &Span) -> i64 {
        self.lots
            .values()
            .filter(|l| !span.reached(l.expires_at))
            .map(|l| l.remaining)
            .sum()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Model {
    accounts: Vec<AcctM>,
    subs: Vec<Option<SubM>>,
    product_ids: Vec<i32>,
    /// (min, max, unit price) of the price list.
    bands: Vec<(i64, Option<i64>, i64)>,
    /// Sessions by id (rule 20).
    sessions: BTreeMap<String, SessM>,
    /// How the opens came out, for the figures.
    outcomes: BTreeMap<&'static str, usize>,
}

/// An answer: `data`, or the first error's code.
type Answer = Result<Value, String>;

fn expect_error(answer: &Answer, code: &str) -> Result<(), String> {
    match answer {
        Err(c) if c == code => Ok(()),
        other => Err(format!("expected {code}, got {other:?}")),
    }
}

fn data<'a>(answer: &'a Answer, field: &str) -> Result<&'a Value, String> {
    match answer {
        Ok(d) => Ok(&d[field]),
        Err(c) => Err(format!("expected {field}, got error {c}")),
    }
}

fn same<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, model says {want:?}"))
    }
}

impl Model {
    fn plan_level(&self, acct: usize, span: &Span) -> &'static str {
        let mut best: Option<usize> = None;
        let mut education = false;
        for s in self.subs.iter().flatten() {
            if s.acct != acct || !span.reached(s.starts_at) || span.reached(s.ends_at) {
                continue;
            }
            match PLANS[s.plan] {
                "EDUCATION" => education = true,
                _ => best = Some(best.map_or(s.plan, |b| b.max(s.plan))),
            }
        }
        match (best, education) {
            (Some(p), _) => PLANS[p],
            (None, true) => "EDUCATION",
            (None, false) => "STANDARD",
        }
    }

    fn unit_price(&self, quantity: i64) -> i64 {
        self.bands
            .iter()
            .find(|(min, max, _)| *min <= quantity && max.is_none_or(|m| quantity <= m))
            .map(|b| b.2)
            .expect("a band for every self-service quantity")
    }

    /// Applies `op` as if it ran alone now, checking `answer` against the model; on a
    /// mismatch nothing is changed and the difference is returned.
    fn apply(&mut self, op: &Op, answer: &Answer, span: &Span) -> Result<(), String> {
        match op {
            Op::Open {
                acct,
                user,
                product,
                ..
            } => self.open(*acct, *user, *product, answer, span),
            Op::AnalystOpen { .. } | Op::SetAllowedAcross { .. } => {
                expect_error(answer, "FORBIDDEN")
            }
            Op::Buy {
                acct,
                quantity,
                key,
            } => self.buy(*acct, *quantity, key, None, answer, span),
            Op::OperatorBuy {
                acct,
                quantity,
                key,
                purchased_at,
                unit_price,
            } => self.buy(
                *acct,
                *quantity,
                key,
                Some((*purchased_at, *unit_price)),
                answer,
                span,
            ),
            Op::SetAllowed {
                acct,
                user,
                products,
            } => {
                if products.as_ref().is_some_and(|p| p.contains(&UNKNOWN)) {
                    return expect_error(answer, "NOT_FOUND");
                }
                same(
                    "setAllowedProducts",
                    data(answer, "setAllowedProducts")?,
                    &json!(true),
                )?;
                let list = products.as_ref().map(|p| p.iter().copied().collect());
                let a = &mut self.accounts[*acct];
                match user {
                    Some(u) => a.users[*u].allowed = list,
                    None => a.allowed = list,
                }
                Ok(())
            }
            Op::AssignFlex {
                acct,
                users,
                assigned,
            } => {
                let got = data(answer, "assignFlex")?
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                same("assignFlex users", got.len(), users.len())?;
                for u in &got {
                    same("flexAssigned", u["flexAssigned"].as_bool(), Some(*assigned))?;
                }
                for &u in users {
                    self.accounts[*acct].users[u].flex = *assigned;
                }
                Ok(())
            }
            Op::AddSubscription {
                acct,
                number,
                product,
                plan,
                seats,
                starts_at,
                ends_at,
            } => {
                let d = data(answer, "addSubscription")?;
                same("seats", int(&d["seats"]), *seats)?;
                same("planLevel", d["planLevel"].as_str(), Some(PLANS[*plan]))?;
                if self.subs.len() <= *number {
                    self.subs.resize(number + 1, None);
                }
                self.subs[*number] = Some(SubM {
                    id: id(&d["id"]).parse().unwrap(),
                    acct: *acct,
                    product: *product,
                    plan: *plan,
                    seats: *seats as usize,
                    starts_at: *starts_at,
                    ends_at: *ends_at,
                    holders: BTreeSet::new(),
                });
                Ok(())
            }
            Op::AssignSeat {
                admin_acct,
                sub,
                user_acct,
                user,
                assigned,
            } => {
                let s = self.subs[*sub]
                    .as_mut()
                    .expect("a subscription of an earlier batch");
                if s.acct != *admin_acct {
                    return expect_error(answer, "FORBIDDEN");
                }
                if s.acct != *user_acct {
                    return expect_error(answer, "NOT_FOUND");
                }
                if *assigned && !s.holders.contains(user) && s.holders.len() >= s.seats {
                    return expect_error(answer, "CONFLICT");
                }
                same(
                    "assignSubscription",
                    id(&data(answer, "assignSubscription")?["id"]),
                    s.id.to_string(),
                )?;
                if *assigned {
                    s.holders.insert(*user);
                } else {
                    s.holders.remove(user);
                }
                Ok(())
            }
            Op::Deactivate { acct, user } => {
                let d = data(answer, "deactivateUser")?;
                same("active", d["active"].as_bool(), Some(false))?;
                self.accounts[*acct].users[*user].active = false;
                Ok(())
            }
            Op::Maintenance => {
                same(
                    "runMaintenance",
                    data(answer, "runMaintenance")?,
                    &json!(true),
                )?;
                self.end_lapsed(span);
                Ok(())
            }
            Op::Heartbeat {
                session, active, ..
            } => self.heartbeat(session, *active, answer, span),
            Op::Close {
                session,
                acct,
                user,
                by_admin,
            } => {
                let closer = if *by_admin { 0 } else { *user };
                let active = self.accounts[*acct].users[closer].active;
                self.close(session, active, answer, span)
            }
        }
    }

    /// Rules 7–12 in PRODUCT.md's order.
    fn open(
        &mut self,
        acct: usize,
        user: usize,
        product: usize,
        answer: &Answer,
        span: &Span,
    ) -> Result<(), String> {
        let d = data(answer, "openProduct")?;
        let balance = self.accounts[acct].balance(span);
        let plan = self.plan_level(acct, span);
        same("planLevel", d["planLevel"].as_str(), Some(plan))?;
        let seat = product != UNKNOWN && self.holds_seat(acct, user, product, span);
        let u = &self.accounts[acct].users[user];
        let denial = if product == UNKNOWN {
            Some("UNKNOWN_PRODUCT")
        } else if !u.active {
            Some("USER_DEACTIVATED")
        } else if seat {
            None
        } else {
            self.flex_denial(acct, user, product)
        };
        let window = u
            .windows
            .get(&product)
            .copied()
            .filter(|&e| !span.reached(e));
        let key = (user, (product != UNKNOWN).then_some(product));
        let deny = |m: &mut Model, reason: &'static str| -> Result<(), String> {
            same("granted", d["granted"].as_bool(), Some(false))?;
            same("denyReason", d["denyReason"].as_str(), Some(reason))?;
            same("source", &d["source"], &Value::Null)?;
            same("tokensCharged", int(&d["tokensCharged"]), 0)?;
            same("windowEndsAt", &d["windowEndsAt"], &Value::Null)?;
            same("balance", int(&d["balance"]), balance)?;
            same("session", &d["session"], &Value::Null)?;
            m.accounts[acct].tally.entry(key).or_default().denials += 1;
            *m.outcomes.entry(reason).or_default() += 1;
            Ok(())
        };
        if let Some(reason) = denial {
            return deny(self, reason);
        }
        if seat {
            same("granted", d["granted"].as_bool(), Some(true))?;
            same("source", d["source"].as_str(), Some("SUBSCRIPTION"))?;
            same("tokensCharged", int(&d["tokensCharged"]), 0)?;
            same("windowEndsAt", &d["windowEndsAt"], &Value::Null)?;
            same("balance", int(&d["balance"]), balance)?;
            self.start_session((acct, user, product), d, span, true, None)?;
            self.accounts[acct].tally.entry(key).or_default().opens += 1;
            *self.outcomes.entry("SUBSCRIPTION").or_default() += 1;
            return Ok(());
        }
        if let Some(ends) = window {
            same("granted", d["granted"].as_bool(), Some(true))?;
            same("source", d["source"].as_str(), Some("FLEX"))?;
            same("tokensCharged", int(&d["tokensCharged"]), 0)?;
            same("windowEndsAt", Some(at(&d["windowEndsAt"])), Some(ends))?;
            same("balance", int(&d["balance"]), balance)?;
            // Granted inside the window: never before it (rule 21 counts it).
            if at(&d["session"]["startedAt"]) < ends - WINDOW {
                return Err(format!(
                    "a reopen's session started before its window {ends}"
                ));
            }
            self.start_session((acct, user, product), d, span, false, None)?;
            self.accounts[acct].tally.entry(key).or_default().opens += 1;
            *self.outcomes.entry("REOPEN").or_default() += 1;
            return Ok(());
        }
        let rate = PRODUCTS[product].1;
        if balance < rate {
            return deny(self, "INSUFFICIENT_TOKENS");
        }
        same("granted", d["granted"].as_bool(), Some(true))?;
        same("source", d["source"].as_str(), Some("FLEX"))?;
        same("tokensCharged", int(&d["tokensCharged"]), rate)?;
        same("balance", int(&d["balance"]), balance - rate)?;
        let ends = at(&d["windowEndsAt"]);
        let starts = ends - Duration::hours(24);
        if !span.contains(starts) {
            return Err(format!(
                "window {starts}..{ends} does not start inside the batch {}..{}",
                span.lo, span.hi
            ));
        }
        // For the figures: charges where the burn order's tie-breaks chose the lot.
        let mut live: Vec<&LotM> = self.accounts[acct]
            .lots
            .values()
            .filter(|l| l.remaining > 0 && !span.reached(l.expires_at))
            .collect();
        live.sort_by_key(|l| (l.expires_at, l.quantity, l.id));
        let tie = live.len() > 1 && live[0].expires_at == live[1].expires_at;
        let (cost, draws) = self.draw(acct, rate, span);
        let charge = ChargeM {
            window_starts_at: starts,
            tokens: rate,
            cost,
            draws,
            refunded: false,
        };
        self.start_session((acct, user, product), d, span, false, Some(charge))?;
        let a = &mut self.accounts[acct];
        a.users[user].windows.insert(product, ends);
        let t = a.tally.entry(key).or_default();
        t.opens += 1;
        t.charges += 1;
        t.tokens += rate;
        t.cost += cost;
        *self.outcomes.entry("CHARGE").or_default() += 1;
        if tie {
            *self.outcomes.entry("CHARGE_ON_TIED_LOTS").or_default() += 1;
        }
        Ok(())
    }

    /// Rules 1, 4 and 5; `earlier`: an operator's purchase made then, at that price.
    fn buy(
        &mut self,
        acct: usize,
        quantity: i64,
        key: &str,
        earlier: Option<(DateTime<Utc>, i64)>,
        answer: &Answer,
        span: &Span,
    ) -> Result<(), String> {
        if quantity > 10_000 && earlier.is_none() {
            return expect_error(answer, "FORBIDDEN");
        }
        let a = &self.accounts[acct];
        if let Some(i) = a.keys.get(key) {
            let lot = &a.lots[i];
            if lot.quantity != quantity {
                return expect_error(answer, "CONFLICT");
            }
            let d = data(answer, "purchaseTokens")?;
            let (remaining, used, expired, status) = lot.shown(span);
            same("repeated purchase: lot", id(&d["id"]), lot.id.to_string())?;
            same(
                "repeated purchase: remaining, used, expired, status",
                (
                    int(&d["remaining"]),
                    int(&d["used"]),
                    int(&d["expired"]),
                    d["status"].as_str(),
                ),
                (remaining, used, expired, Some(status)),
            )?;
            return Ok(());
        }
        let d = data(answer, "purchaseTokens")?;
        let lot_id: i32 = id(&d["id"]).parse().unwrap();
        if self.accounts.iter().any(|a| a.lots.contains_key(&lot_id)) {
            return Err(format!(
                "a new purchase answered lot {lot_id}, which exists"
            ));
        }
        let purchased_at = at(&d["purchasedAt"]);
        let unit_price = match earlier {
            Some((when, price)) => {
                same("purchasedAt", purchased_at, when)?;
                price
            }
            None => {
                if !span.contains(purchased_at) {
                    return Err(format!("purchasedAt {purchased_at} outside the batch"));
                }
                self.unit_price(quantity)
            }
        };
        same("expiresAt", at(&d["expiresAt"]), year_later(purchased_at))?;
        let lot = LotM {
            id: lot_id,
            quantity,
            remaining: quantity,
            used: 0,
            unit_price,
            expires_at: year_later(purchased_at),
        };
        let (remaining, used, expired, status) = lot.shown(span);
        same(
            "new lot: quantity, remaining, used, expired, unit price, status",
            (
                int(&d["quantity"]),
                int(&d["remaining"]),
                int(&d["used"]),
                int(&d["expired"]),
                int(&d["unitPriceMinor"]),
                d["status"].as_str(),
            ),
            (quantity, remaining, used, expired, unit_price, Some(status)),
        )?;
        let a = &mut self.accounts[acct];
        a.keys.insert(key.to_owned(), lot_id);
        a.lots.insert(lot_id, lot);
        Ok(())
    }
}

/// Every state the model may be in after the batch: the states reached by some order
/// of the batch's operations, applied one by one to one of the states it may have been
/// in before, that gives every answer. Empty: no order explains the answers.
///
/// Operations that answer alike in either order but leave different states (two
/// admins replacing one list at once) leave several candidates; a later answer tells
/// them apart. The search runs over subsets of the batch (at most 2^7), keeping each
/// distinct state once.
fn linearize(before: &[Model], batch: &[(Op, Answer)], span: &Span) -> Vec<Model> {
    let n = batch.len();
    let mut reached: Vec<Vec<Model>> = vec![Vec::new(); 1 << n];
    reached[0] = before.to_vec();
    for done in 0..(1usize << n) - 1 {
        for model in std::mem::take(&mut reached[done]) {
            for (i, (op, answer)) in batch.iter().enumerate() {
                if done & (1 << i) != 0 {
                    continue;
                }
                let mut next = model.clone();
                if next.apply(op, answer, span).is_ok() && !reached[done | 1 << i].contains(&next) {
                    reached[done | 1 << i].push(next);
                }
            }
        }
    }
    reached.pop().unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The run

struct Run {
    server: TestServer,
    db: Db,
    /// The test clock's offset from this machine's clock.
    offset: Duration,
    /// The states the model may be in (see [`linearize`]); ids are the same in all.
    models: Vec<Model>,
    /// The most candidate states seen at once, for the figures.
    most_candidates: usize,
}

impl Run {
    /// The server's now as this process reckons it, to the microsecond the server keeps.
    fn server_now(&self) -> DateTime<Utc> {
        daypass_domain::clock::to_stored_precision(Utc::now() + self.offset)
    }

    async fn send(&self, key: &str, query: &str, vars: Value) -> Answer {
        let resp = self.server.gql(Some(key), query, vars).await;
        match resp.get("errors") {
            Some(errors) => Err(errors[0]["extensions"]["code"]
                .as_str()
                .unwrap_or("NO CODE")
                .to_owned()),
            None => Ok(resp["data"].clone()),
        }
    }

    fn request(&self, op: &Op) -> (String, &'static str, Value) {
        let m = &self.models[0];
        let acct = |a: usize| &m.accounts[a];
        let user_id = |a: usize, u: usize| m.accounts[a].users[u].id.to_string();
        let product_id = |p: usize| {
            if p == UNKNOWN {
                "999999".to_owned()
            } else {
                m.product_ids[p].to_string()
            }
        };
        match op {
            Op::Open {
                acct: a,
                user,
                product,
                version,
            } => (
                acct(*a).users[*user].key.clone(),
                OPEN,
                json!({"c": PRODUCTS.get(*product).map_or("mdl-none", |p| p.0), "v": version}),
            ),
            Op::AnalystOpen { acct: a } => (
                acct(*a).analyst_key.clone(),
                OPEN,
                json!({"c": PRODUCTS[0].0}),
            ),
            Op::Buy {
                acct: a,
                quantity,
                key,
            } => (
                acct(*a).admin_key.clone(),
                BUY,
                json!({"q": quantity, "k": key}),
            ),
            Op::OperatorBuy {
                acct: a,
                quantity,
                key,
                purchased_at,
                unit_price,
            } => (
                OPERATOR_KEY.to_owned(),
                OPERATOR_BUY,
                json!({"q": quantity, "k": key, "a": acct(*a).id.to_string(),
                       "at": purchased_at.to_rfc3339(), "p": unit_price}),
            ),
            Op::SetAllowed {
                acct: a,
                user,
                products,
            } => (
                acct(*a).admin_key.clone(),
                SET_ALLOWED,
                json!({
                    "u": user.map(|u| user_id(*a, u)),
                    "p": products.as_ref().map(|p| p.iter().map(|&p| product_id(p)).collect::<Vec<_>>()),
                }),
            ),
            Op::SetAllowedAcross {
                acct: a,
                other_user,
            } => (
                acct(*a).admin_key.clone(),
                SET_ALLOWED,
                json!({"u": user_id((a + 1) % ACCOUNTS, *other_user), "p": []}),
            ),
            Op::AssignFlex {
                acct: a,
                users,
                assigned,
            } => (
                acct(*a).admin_key.clone(),
                ASSIGN_FLEX,
                json!({"ids": users.iter().map(|&u| user_id(*a, u)).collect::<Vec<_>>(), "a": assigned}),
            ),
            Op::AddSubscription {
                acct: a,
                product,
                plan,
                seats,
                starts_at,
                ends_at,
                ..
            } => (
                acct(*a).admin_key.clone(),
                ADD_SUBSCRIPTION,
                json!({"p": product_id(*product), "l": PLANS[*plan], "s": seats,
                       "from": starts_at.to_rfc3339(), "to": ends_at.to_rfc3339()}),
            ),
            Op::AssignSeat {
                admin_acct,
                sub,
                user_acct,
                user,
                assigned,
            } => (
                acct(*admin_acct).admin_key.clone(),
                ASSIGN_SEAT,
                json!({"s": m.subs[*sub].as_ref().unwrap().id.to_string(),
                       "u": user_id(*user_acct, *user), "a": assigned}),
            ),
            Op::Deactivate { acct: a, user } => (
                acct(*a).admin_key.clone(),
                DEACTIVATE,
                json!({"u": user_id(*a, *user)}),
            ),
            Op::Maintenance => (OPERATOR_KEY.to_owned(), MAINTENANCE, json!({})),
            Op::Heartbeat {
                session,
                acct: a,
                user,
                active,
            } => (
                acct(*a).users[*user].key.clone(),
                HEARTBEAT,
                json!({"s": session, "a": active}),
            ),
            Op::Close {
                session,
                acct: a,
                user,
                by_admin,
            } => (
                if *by_admin {
                    acct(*a).admin_key.clone()
                } else {
                    acct(*a).users[*user].key.clone()
                },
                CLOSE,
                json!({"s": session}),
            ),
        }
    }

    /// Sends a batch at once; checks the answers against the model.
    async fn batch(&mut self, number: usize, ops: Vec<Op>, seed: u64) {
        let requests: Vec<_> = ops.iter().map(|op| self.request(op)).collect();
        let lo = self.server_now();
        let answers = futures::future::join_all(
            requests
                .iter()
                .map(|(key, query, vars)| self.send(key, query, vars.clone())),
        )
        .await;
        let span = Span {
            lo,
            hi: self.server_now(),
        };
        let batch: Vec<(Op, Answer)> = ops.into_iter().zip(answers).collect();
        let next = linearize(&self.models, &batch, &span);
        assert!(
            next.len() <= 256,
            "seed {seed}, batch {number}: the workload leaves {} candidate states; make it less ambiguous",
            next.len()
        );
        self.most_candidates = self.most_candidates.max(next.len());
        match next.is_empty() {
            false => self.models = next,
            true => {
                let mut report = format!(
                    "seed {seed} (DAYPASS_MODEL_SEED={seed} replays it), batch {number}: no order of the batch gives its answers\n"
                );
                for (op, answer) in &batch {
                    let alone = self.models[0].clone().apply(op, answer, &span);
                    let _ = writeln!(
                        report,
                        "  {op:?}\n    → {answer:?}\n    alone on the model: {alone:?}"
                    );
                }
                panic!("{report}");
            }
        }
    }

    async fn advance(&mut self, minutes: i64) {
        let d = self
            .send(
                OPERATOR_KEY,
                ADVANCE,
                json!({"h": minutes / 60, "m": minutes % 60}),
            )
            .await
            .expect("advanceClock");
        self.offset += Duration::minutes(minutes);
        let now = at(&d["advanceClock"]);
        let expected = self.server_now();
        assert!(
            (now - expected).num_seconds().abs() < 5,
            "the test clock moved to {now}, the model expected about {expected}"
        );
    }

    /// Every session of the admin's account: id → state, page by page.
    async fn sessions_shown(&self, admin_key: &str) -> BTreeMap<String, String> {
        let mut shown = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .send(
                    admin_key,
                    "query($after: String) { account { sessions(first: 500, after: $after) { edges { node { id state } } pageInfo { hasNextPage endCursor } } } }",
                    json!({"after": after}),
                )
                .await
                .expect("sessions");
            let sessions = &page["account"]["sessions"];
            for e in sessions["edges"].as_array().unwrap() {
                shown.insert(
                    id(&e["node"]["id"]),
                    e["node"]["state"].as_str().unwrap().to_owned(),
                );
            }
            if sessions["pageInfo"]["hasNextPage"] != json!(true) {
                return shown;
            }
            after = sessions["pageInfo"]["endCursor"]
                .as_str()
                .map(str::to_owned);
        }
    }

    /// The stored ledger, and what the API shows of lots, balances and reports,
    /// against the model (one of its candidate states must show exactly that).
    async fn check(&self, seed: u64, first_day: NaiveDate) {
        check_ledger(&self.db).await;
        let lo = self.server_now();
        let mut observed = Vec::new();
        let model = &self.models[0];
        for (i, a) in model.accounts.iter().enumerate() {
            let ctx = format!("seed {seed}, account {i}");
            let shown = self
                .send(
                    &a.admin_key,
                    "{ account { balance lots(first: 500) { edges { node { id quantity remaining used expired status } } } } }",
                    json!({}),
                )
                .await
                .expect("account");
            let lots = shown["account"]["lots"]["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let n = &e["node"];
                    (
                        id(&n["id"]).parse().unwrap(),
                        (
                            int(&n["quantity"]),
                            int(&n["remaining"]),
                            int(&n["used"]),
                            int(&n["expired"]),
                            n["status"].as_str().unwrap().to_owned(),
                        ),
                    )
                })
                .collect();

            // Rules 16 and 17: the report (rollups and the raw tail).
            let to = (self.server_now() + Duration::days(1)).date_naive();
            let range = json!({"from": first_day.to_string(), "to": to.to_string()});
            let report = self
                .send(
                    &a.analyst_key,
                    "query($from: Date!, $to: Date!) { account { \
                     usageReport(from: $from, to: $to, groupBy: [USER, PRODUCT]) { user { id } product { id } tokens opens charges denials costMinor } \
                     byDay: usageReport(from: $from, to: $to, groupBy: [DAY]) { tokens opens charges denials costMinor } \
                     spending(from: $from, to: $to) { tokens costMinor purchasedTokens purchasedMinor } } }",
                    range,
                )
                .await
                .expect("usage report");
            let report = &report["account"];
            let user_index: BTreeMap<String, usize> = a
                .users
                .iter()
                .enumerate()
                .map(|(i, u)| (u.id.to_string(), i))
                .collect();
            let product_index: BTreeMap<String, usize> = model
                .product_ids
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_string(), i))
                .collect();
            let usage: BTreeMap<(usize, Option<usize>), Tally> = report["usageReport"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| {
                    let user = user_index[&id(&row["user"]["id"])];
                    let product = row["product"]["id"].as_str().map(|p| product_index[p]);
                    ((user, product), Tally::of(row))
                })
                .filter(|(_, t)| *t != Tally::default())
                .collect();
            let total = Tally::sum(
                report["usageReport"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(Tally::of),
            );
            let by_day = Tally::sum(report["byDay"].as_array().unwrap().iter().map(Tally::of));
            assert_eq!(
                by_day, total,
                "{ctx}: usage by day = usage by user and product"
            );
            let charged_in_ledger = count(
                &self.db,
                &format!("SELECT CAST(COALESCE(-SUM(tokens), 0) AS BIGINT) FROM ledger_entries WHERE account_id = {} AND kind IN ('CHARGE', 'REFUND')", a.id),
            )
            .await;
            assert_eq!(
                total.tokens, charged_in_ledger,
                "{ctx}: report tokens = ledger charges net of refunds"
            );
            let spending = &report["spending"];
            let sessions = self.sessions_shown(&a.admin_key).await;
            observed.push(Shown {
                balance: int(&shown["account"]["balance"]),
                lots,
                usage,
                spending: (
                    int(&spending["tokens"]),
                    int(&spending["costMinor"]),
                    int(&spending["purchasedTokens"]),
                    int(&spending["purchasedMinor"]),
                ),
                sessions,
            });
        }
        let span = Span {
            lo,
            hi: self.server_now(),
        };
        let expected = |m: &Model| -> Vec<Shown> {
            (0..m.accounts.len())
                .map(|a| Shown::of(m, a, &span))
                .collect()
        };
        if !self.models.iter().any(|m| expected(m) == observed) {
            // Show the difference from the first candidate, account by account.
            for (i, (want, got)) in expected(model).iter().zip(&observed).enumerate() {
                let ctx =
                    format!("seed {seed} (DAYPASS_MODEL_SEED={seed} replays it), account {i}");
                assert_eq!(got.balance, want.balance, "{ctx}: balance");
                assert_eq!(
                    got.lots, want.lots,
                    "{ctx}: lots (quantity, remaining, used, expired, status)"
                );
                assert_eq!(got.usage, want.usage, "{ctx}: usage by user and product");
                assert_eq!(
                    got.spending, want.spending,
                    "{ctx}: spending (tokens, cost, purchased tokens, purchased money)"
                );
                assert_eq!(got.sessions, want.sessions, "{ctx}: sessions' states");
            }
        }
    }
}

/// What the API shows of an account, or what the model says it must show.
#[derive(Debug, PartialEq)]
struct Shown {
    balance: i64,
    /// Lot id → (quantity, remaining, used, expired, status).
    lots: BTreeMap<i32, (i64, i64, i64, i64, String)>,
    usage: BTreeMap<(usize, Option<usize>), Tally>,
    /// (tokens, cost, purchased tokens, purchased money).
    spending: (i64, i64, i64, i64),
    /// Session id → its state as shown (rule 20).
    sessions: BTreeMap<String, String>,
}

impl Shown {
    fn of(m: &Model, acct: usize, span: &Span) -> Shown {
        let a = &m.accounts[acct];
        let usage = a
            .tally
            .iter()
            .filter(|(_, t)| **t != Tally::default())
            .map(|(k, t)| (*k, *t))
            .collect();
        let total = Tally::sum(a.tally.values().copied());
        Shown {
            balance: a.balance(span),
            lots: a
                .lots
                .values()
                .map(|l| {
                    let (remaining, used, expired, status) = l.shown(span);
                    (
                        l.id,
                        (l.quantity, remaining, used, expired, status.to_owned()),
                    )
                })
                .collect(),
            usage,
            spending: (
                total.tokens,
                total.cost,
                a.lots.values().map(|l| l.quantity).sum(),
                a.lots.values().map(|l| l.quantity * l.unit_price).sum(),
            ),
            sessions: m
                .sessions
                .iter()
                .filter(|(_, s)| s.acct == acct)
                .map(|(id, s)| (id.clone(), s.shown_state(span).name().to_owned()))
                .collect(),
        }
    }
}

impl Tally {
    fn of(row: &Value) -> Tally {
        Tally {
            tokens: int(&row["tokens"]),
            opens: int(&row["opens"]),
            charges: int(&row["charges"]),
            denials: int(&row["denials"]),
            cost: int(&row["costMinor"]),
        }
    }

    fn sum(rows: impl Iterator<Item = Tally>) -> Tally {
        rows.fold(Tally::default(), |s, t| Tally {
            tokens: s.tokens + t.tokens,
            opens: s.opens + t.opens,
            charges: s.charges + t.charges,
            denials: s.denials + t.denials,
            cost: s.cost + t.cost,
        })
    }
}

/// What one run did, for the figures.
#[derive(Debug, Default, Clone)]
struct Figures {
    batches: usize,
    requests: usize,
    charges: i64,
    opens: i64,
    denials: i64,
    lots: usize,
    clock_moves: usize,
    /// Opens by outcome: CHARGE, REOPEN, SUBSCRIPTION or the denial's reason.
    outcomes: BTreeMap<&'static str, usize>,
    /// The most states the model was unsure between at once.
    most_candidates: usize,
}

async fn setup(seed: u64) -> Run {
    // No workers in the server: the lapse sweep (a refund moves balances) runs only
    // when the workload's runMaintenance asks for it.
    let server = TestServer::start_with(&[
        ("DAYPASS_TEST_CLOCK", "1"),
        ("DAYPASS_MUTATION_RATE", "1000000"),
        ("DAYPASS_WORKERS", "external"),
    ])
    .await;
    let op = Some(OPERATOR_KEY);
    let mut product_ids = Vec::new();
    for (code, rate) in PRODUCTS {
        let d = server
            .ok(
                op,
                "mutation($c: String!, $r: Int!) { upsertProduct(input: {code: $c, name: $c, dailyRate: $r, annualSubscriptionMinor: 90000}) { id } }",
                json!({"c": code, "r": rate}),
            )
            .await;
        product_ids.push(id(&d["upsertProduct"]["id"]).parse().unwrap());
    }
    let bands = server
        .ok(
            op,
            "{ priceList { minQuantity maxQuantity unitPriceMinor } }",
            json!({}),
        )
        .await["priceList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                int(&b["minQuantity"]),
                b["maxQuantity"].as_i64(),
                int(&b["unitPriceMinor"]),
            )
        })
        .collect();
    let mut accounts = Vec::new();
    for a in 0..ACCOUNTS {
        let d = server
            .ok(
                op,
                "mutation($n: String!, $e: String!) { createAccount(input: {name: $n, adminEmail: $e, adminName: \"Admin\"}) { account { id } admin { id flexAssigned } adminApiKey } }",
                json!({"n": format!("Model {seed} {a}"), "e": format!("admin{a}@model.test")}),
            )
            .await["createAccount"]
            .clone();
        let admin_key = id(&d["adminApiKey"]);
        let mut users = vec![UserM {
            id: id(&d["admin"]["id"]).parse().unwrap(),
            key: admin_key.clone(),
            flex: d["admin"]["flexAssigned"].as_bool().unwrap(),
            active: true,
            allowed: None,
            windows: BTreeMap::new(),
        }];
        let create = "mutation($e: String!, $r: Role!) { createUser(input: {email: $e, name: $e, role: $r}) { user { id flexAssigned } apiKey } }";
        for u in 1..USERS {
            let d = server
                .ok(
                    Some(&admin_key),
                    create,
                    json!({"e": format!("m{u}.{a}@model.test"), "r": "MEMBER"}),
                )
                .await["createUser"]
                .clone();
            users.push(UserM {
                id: id(&d["user"]["id"]).parse().unwrap(),
                key: id(&d["apiKey"]),
                flex: d["user"]["flexAssigned"].as_bool().unwrap(),
                active: true,
                allowed: None,
                windows: BTreeMap::new(),
            });
        }
        // Most start on pay-as-you-go; the workload moves them on and off it.
        let flex: Vec<String> = users[..USERS - 1]
            .iter()
            .map(|u| u.id.to_string())
            .collect();
        server
            .ok(
                Some(&admin_key),
                "mutation($ids: [ID!]!) { assignFlex(userIds: $ids, assigned: true) { id } }",
                json!({"ids": flex}),
            )
            .await;
        for u in &mut users[..USERS - 1] {
            u.flex = true;
        }
        let analyst = server
            .ok(
                Some(&admin_key),
                create,
                json!({"e": format!("analyst{a}@model.test"), "r": "ANALYST"}),
            )
            .await;
        accounts.push(AcctM {
            id: id(&d["account"]["id"]).parse().unwrap(),
            admin_key,
            analyst_key: id(&analyst["createUser"]["apiKey"]),
            allowed: None,
            users,
            lots: BTreeMap::new(),
            keys: BTreeMap::new(),
            tally: BTreeMap::new(),
        });
    }
    let db = Db::connect(&server.database_url)
        .await
        .expect("connect to check");
    Run {
        server,
        db,
        offset: Duration::zero(),
        most_candidates: 1,
        models: vec![Model {
            accounts,
            subs: Vec::new(),
            product_ids,
            bands,
            sessions: BTreeMap::new(),
            outcomes: BTreeMap::new(),
        }],
    }
}

async fn run(seed: u64, batches: usize) -> Figures {
    let mut run = setup(seed).await;
    let mut workload = Workload::new(seed);
    // From before the earliest backdated purchase to after the last clock move.
    let first_day = run.server_now().date_naive() - Duration::days(41);
    let mut figures = Figures::default();
    for number in 0..batches {
        if let Some(minutes) = workload.clock_move() {
            run.advance(minutes).await;
            figures.clock_moves += 1;
        }
        let known = sessions::known_sessions(&run.models[0], run.server_now());
        let ops = workload.batch(run.server_now(), &known);
        figures.batches += 1;
        figures.requests += ops.len();
        run.batch(number, ops, seed).await;
        if number % 50 == 49 {
            run.check(seed, first_day).await;
        }
    }
    // The sweep stores what the model already shows (and ends lapsed sessions,
    // refunding short ones); then everything again.
    let lo = run.server_now();
    run.send(OPERATOR_KEY, MAINTENANCE, json!({}))
        .await
        .expect("runMaintenance");
    let span = Span {
        lo,
        hi: run.server_now(),
    };
    for m in &mut run.models {
        m.end_lapsed(&span);
    }
    run.check(seed, first_day).await;
    let span = Span {
        lo: run.server_now(),
        hi: run.server_now(),
    };
    let mut expired_in_ledger = Vec::new();
    for a in &run.models[0].accounts {
        expired_in_ledger.push(
            count(
                &run.db,
                &format!("SELECT CAST(COALESCE(-SUM(tokens), 0) AS BIGINT) FROM ledger_entries WHERE account_id = {} AND kind = 'EXPIRY'", a.id),
            )
            .await,
        );
    }
    let expired = |m: &Model| -> Vec<i64> {
        m.accounts
            .iter()
            .map(|a| a.lots.values().map(|l| l.shown(&span).2).sum())
            .collect()
    };
    assert!(
        run.models.iter().any(|m| expired(m) == expired_in_ledger),
        "seed {seed}: the sweep recorded every expired token: ledger {expired_in_ledger:?}, model {:?}",
        expired(&run.models[0])
    );
    let model = &run.models[0];
    for a in &model.accounts {
        figures.lots += a.lots.len();
        for t in a.tally.values() {
            figures.charges += t.charges;
            figures.opens += t.opens;
            figures.denials += t.denials;
        }
    }
    figures.outcomes = model.outcomes.clone();
    figures.most_candidates = run.most_candidates;
    assert!(
        figures.charges > 0 && figures.denials > 0 && figures.lots > 0,
        "seed {seed}: the workload did real work: {figures:?}"
    );
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_random_concurrent_workload_matches_the_reference_model() {
    let batches = env_number("DAYPASS_MODEL_BATCHES", 150) as usize;
    let seeds: Vec<u64> = match std::env::var("DAYPASS_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("DAYPASS_MODEL_SEED is a number")],
        Err(_) => (0..env_number("DAYPASS_MODEL_RUNS", 2))
            .map(|_| rand::random())
            .collect(),
    };
    let started = std::time::Instant::now();
    let mut total = Figures::default();
    for seed in seeds.iter().copied() {
        println!("model workload: seed {seed} (DAYPASS_MODEL_SEED={seed} replays it)");
        let f = match tokio::spawn(run(seed, batches)).await {
            Ok(f) => f,
            Err(e) => panic!("seed {seed} failed; DAYPASS_MODEL_SEED={seed} replays it: {e}"),
        };
        println!("  {f:?}");
        total.batches += f.batches;
        total.requests += f.requests;
        total.charges += f.charges;
        total.opens += f.opens;
        total.denials += f.denials;
        total.lots += f.lots;
        total.clock_moves += f.clock_moves;
        total.most_candidates = total.most_candidates.max(f.most_candidates);
        for (k, v) in f.outcomes {
            *total.outcomes.entry(k).or_default() += v;
        }
    }
    println!(
        "model workload: {} runs, {total:?}, {:.1} s",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
}
