//! Who is in the generated year, before any row is written: the catalog, the
//! accounts, their users and habits, their subscriptions and how they buy tokens.

use super::YearSpec;
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc, Weekday};
use daypass_domain::{PlanLevel, Role};
use rand::{Rng, rngs::StdRng};
use std::sync::Arc;

const FAMILIES: [&str; 26] = [
    "atlas", "borealis", "cobalt", "delta", "ember", "fjord", "granite", "helix", "iris",
    "juniper", "kestrel", "lumen", "meridian", "nimbus", "onyx", "prism", "quartz", "raven",
    "sierra", "tundra", "umber", "vertex", "willow", "xenon", "yarrow", "zephyr",
];
const KINDS: [&str; 10] = [
    "cad", "cam", "render", "sim", "paint", "audio", "video", "gis", "bim", "pdf",
];
const FIRST: [&str; 24] = [
    "ada", "ben", "chloe", "dev", "emma", "farid", "grace", "hugo", "ines", "jon", "kai", "lena",
    "malik", "nora", "omar", "priya", "quinn", "rosa", "sam", "tara", "uma", "victor", "wen",
    "yusuf",
];
const LAST: [&str; 20] = [
    "abbott", "baker", "castro", "dubois", "evans", "fischer", "garcia", "haddad", "ito", "jensen",
    "kowalski", "lopez", "moreau", "nakamura", "okafor", "petrov", "rossi", "silva", "tanaka",
    "weber",
];

/// Codes opened by old launchers that name no catalog product.
pub const UNKNOWN_CODES: [&str; 3] = ["legacy-viewer", "beta-sketch", "cad-classic"];

/// A catalog product; its index in [`Plan::products`] is its popularity rank.
#[derive(Debug, Clone)]
pub struct ProductPlan {
    pub code: String,
    pub name: String,
    pub daily_rate: i64,
    pub annual_subscription_minor: i64,
    pub versions: Vec<Arc<str>>,
}

/// How an account buys its tokens.
#[derive(Debug, Clone, Copy)]
pub enum BuyPolicy {
    /// On the first day of each month, `cover` times the month's expected tokens; with
    /// `top_up`, more (self-service) packs on a morning the balance cannot cover the day.
    Monthly { cover: f64, top_up: bool },
    /// Packs on a morning the balance is under `margin` times the day's need.
    AsNeeded { margin: f64 },
}

#[derive(Debug, Clone)]
pub struct Regular {
    pub product: usize,
    /// How likely this user opens this product on a given day, against their others.
    pub weight: f64,
    /// Minutes after the start of the user's day they usually first open it.
    pub habit_min: f64,
    /// Index into the product's versions.
    pub version: usize,
}

#[derive(Debug, Clone)]
pub struct UserPlan {
    pub email: String,
    pub name: String,
    pub role: Role,
    pub flex: bool,
    /// The user's own allowed-product list (rule 8), overriding the account's.
    pub own_list: Option<Vec<usize>>,
    pub deactivated_at: Option<DateTime<Utc>>,
    /// When their working day starts, minutes after midnight UTC.
    pub start_min: f64,
    pub activity: f64,
    pub regular: Vec<Regular>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct SubscriptionPlan {
    pub product: usize,
    pub plan: PlanLevel,
    pub seats: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Indexes into the account's users.
    pub holders: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct AccountPlan {
    pub name: &'static str,
    pub target: u64,
    pub policy: BuyPolicy,
    pub created_at: DateTime<Utc>,
    /// `users[0]` is the admin created with the account.
    pub users: Vec<UserPlan>,
    /// The account-wide allowed-product list (rule 8).
    pub account_list: Option<Vec<usize>>,
    pub subscriptions: Vec<SubscriptionPlan>,
    /// A lot recorded from a previous system, expiring about a month into the year
    /// with tokens left (an EXPIRY entry).
    pub migrated_lot: bool,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub products: Vec<ProductPlan>,
    pub accounts: Vec<AccountPlan>,
    /// Relative charge volume of each day of the range.
    pub day_weights: Vec<f64>,
    pub start: NaiveDate,
}

/// A standard normal variate (Box–Muller).
pub fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `k` of `items` drawn without replacement with probability proportional to their
/// weights (Efraimidis–Spirakis), in the order drawn.
pub fn sample_weighted(rng: &mut StdRng, items: &[(usize, f64)], k: usize) -> Vec<usize> {
    let mut keyed: Vec<(f64, usize)> = items
        .iter()
        .map(|&(i, w)| (rng.random::<f64>().max(1e-300).ln() / w.max(1e-12), i))
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().take(k).map(|(_, i)| i).collect()
}

pub fn at(day: NaiveDate, minutes: f64) -> DateTime<Utc> {
    let micros = (minutes * 60e6).clamp(0.0, 86_400e6 - 1.0) as i64;
    day.and_hms_opt(0, 0, 0).expect("midnight").and_utc() + Duration::microseconds(micros)
}

fn day_weights(start: NaiveDate, days: u32, rng: &mut StdRng) -> Vec<f64> {
    (0..days)
        .map(|i| {
            let d = start + Duration::days(i.into());
            let base = match d.weekday() {
                Weekday::Mon => 1.04,
                Weekday::Tue => 1.02,
                Weekday::Wed => 1.0,
                Weekday::Thu => 0.99,
                Weekday::Fri => 0.9,
                Weekday::Sat => 0.16,
                Weekday::Sun => 0.14,
            };
            let holiday = matches!((d.month(), d.day()), (12, 24..=26) | (12, 31) | (1, 1));
            let season = if d.month() == 8 { 0.85 } else { 1.0 };
            let noise = (1.0 + 0.05 * normal(rng)).clamp(0.85, 1.15);
            base * season * noise * if holiday { 0.25 } else { 1.0 }
        })
        .collect()
}

struct Shape {
    name: &'static str,
    users: u32,
    target: u64,
    policy: BuyPolicy,
    /// Mean start of the working day, minutes after midnight UTC.
    start_min: f64,
    restricts_account: bool,
    own_lists: bool,
    subscriptions: bool,
    migrated_lot: bool,
}

pub fn plan(spec: &YearSpec, rng: &mut StdRng) -> Plan {
    let start = spec.end - Duration::days(i64::from(spec.days) - 1);
    let products = plan_products(spec, rng);
    let day_weights = day_weights(start, spec.days, rng);
    let n = spec.charges;
    let u = spec.users;
    let shapes = [
        Shape {
            name: "Globex",
            users: u,
            target: n,
            policy: BuyPolicy::Monthly {
                cover: 0.9,
                top_up: true,
            },
            start_min: 510.0,
            restricts_account: false,
            own_lists: true,
            subscriptions: true,
            migrated_lot: false,
        },
        // Under-buys: runs out before some month ends (INSUFFICIENT_TOKENS).
        Shape {
            name: "Initech",
            users: (u / 160).max(6),
            target: (n * 4 / 1000).max(60),
            policy: BuyPolicy::Monthly {
                cover: 0.85,
                top_up: false,
            },
            start_min: 780.0,
            restricts_account: false,
            own_lists: true,
            subscriptions: false,
            migrated_lot: true,
        },
        Shape {
            name: "Umbrella",
            users: (u / 40).max(8),
            target: (n / 100).max(100),
            policy: BuyPolicy::AsNeeded { margin: 3.0 },
            start_min: 480.0,
            restricts_account: true,
            own_lists: false,
            subscriptions: false,
            migrated_lot: false,
        },
        Shape {
            name: "Hooli",
            users: (u / 500).max(4),
            target: (n / 1000).max(20),
            policy: BuyPolicy::AsNeeded { margin: 4.0 },
            start_min: 840.0,
            restricts_account: false,
            own_lists: false,
            subscriptions: false,
            migrated_lot: false,
        },
    ];
    let total_weight: f64 = day_weights.iter().sum();
    let peak_weight = day_weights.iter().copied().fold(0.0, f64::max);
    let accounts = shapes
        .iter()
        .map(|s| {
            // Each (user, product) pair charges at most once a UTC day: give the account
            // enough pairs for its busiest day, with room for days the 24-hour window
            // has not ended by the time the product is opened.
            let peak_day = s.target as f64 * peak_weight / total_weight;
            plan_account(s, start, spec.days, &products, peak_day * 2.4, rng)
        })
        .collect();
    Plan {
        products,
        accounts,
        day_weights,
        start,
    }
}

fn plan_products(spec: &YearSpec, rng: &mut StdRng) -> Vec<ProductPlan> {
    let y = spec.end.year();
    let versions: Vec<Arc<str>> = [
        format!("{}.1", y - 1),
        format!("{}.2", y - 1),
        format!("{y}.1"),
    ]
    .into_iter()
    .map(Arc::from)
    .collect();
    (0..spec.products as usize)
        .map(|i| {
            let family = FAMILIES[i % FAMILIES.len()];
            let kind = KINDS[(i / FAMILIES.len() + 3 * (i % FAMILIES.len())) % KINDS.len()];
            let round = i / (FAMILIES.len() * KINDS.len());
            let (code, name) = if round == 0 {
                (
                    format!("{family}-{kind}"),
                    format!("{} {}", title(family), kind.to_uppercase()),
                )
            } else {
                (
                    format!("{family}-{kind}-{round}"),
                    format!("{} {} {round}", title(family), kind.to_uppercase()),
                )
            };
            let daily_rate = rng.random_range(1..=20);
            ProductPlan {
                code,
                name,
                daily_rate,
                // A year of subscription costs about 200 working days at 1.10 a token.
                annual_subscription_minor: daily_rate * 200 * 110,
                versions: versions.clone(),
            }
        })
        .collect()
}

fn title(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Zipf-like popularity of the product of rank `rank`.
pub fn popularity(rank: usize) -> f64 {
    1.0 / (rank as f64 + 1.0).powf(0.9)
}

fn plan_account(
    s: &Shape,
    start: NaiveDate,
    days: u32,
    products: &[ProductPlan],
    pairs_needed: f64,
    rng: &mut StdRng,
) -> AccountPlan {
    let domain = format!("{}.test", s.name.to_lowercase());
    let created_at = at(
        start - Duration::days(45),
        600.0 + rng.random_range(0.0..240.0),
    );
    let p = products.len();
    let n = s.users.max(2) as usize;
    let admins = (n / 1500).max(1);
    let analysts = (n / 600).max(1);
    let end = start + Duration::days(i64::from(days) - 1);

    let account_list: Option<Vec<usize>> = s.restricts_account.then(|| {
        let items: Vec<(usize, f64)> = (0..p).map(|i| (i, popularity(i))).collect();
        let mut list = sample_weighted(rng, &items, (p * 3 / 5).max(1));
        list.sort_unstable();
        list
    });
    let pool: Vec<usize> = account_list.clone().unwrap_or_else(|| (0..p).collect());

    let mut users: Vec<UserPlan> = Vec::with_capacity(n);
    for i in 0..n {
        let (role, flex) = if i == 0 {
            (Role::Admin, false)
        } else if i <= admins {
            (Role::Admin, true)
        } else if i <= admins + analysts {
            (Role::Analyst, false)
        } else {
            // A few members are not on pay-as-you-go (some hold a subscription seat).
            (Role::Member, rng.random_bool(0.97))
        };
        let (first, last) = (FIRST[i % FIRST.len()], LAST[(i / FIRST.len()) % LAST.len()]);
        let email = if i == 0 {
            format!("admin@{domain}")
        } else {
            format!("{first}.{last}.{i}@{domain}")
        };
        let deactivated_at = (role == Role::Member && i > 0 && rng.random_bool(0.01)).then(|| {
            let from = i64::from(days) / 3;
            let d = start + Duration::days(rng.random_range(from..i64::from(days).max(from + 1)));
            at(d.min(end), 660.0 + rng.random_range(0.0..300.0))
        });
        users.push(UserPlan {
            email,
            name: format!("{} {}", title(first), title(last)),
            role,
            flex,
            own_list: None,
            deactivated_at,
            start_min: (s.start_min + 40.0 * normal(rng)).clamp(s.start_min - 120.0, 860.0),
            activity: (0.5 * normal(rng)).exp(),
            regular: Vec::new(),
            created_at: created_at + Duration::minutes(rng.random_range(1..60 * 24 * 30)),
        });
    }
    users[0].created_at = created_at;

    // Subscriptions: a permanent one on the most popular product (with members who
    // use only that), and one on the second ending mid-year (its holders then pay
    // as they go).
    let mut subscriptions = Vec::new();
    if s.subscriptions && p >= 2 {
        let members: Vec<usize> = (1..n)
            .filter(|&i| users[i].role == Role::Member && users[i].deactivated_at.is_none())
            .collect();
        let seats0 = (n / 125).max(2);
        let mut holders0: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| !users[i].flex)
            .collect();
        holders0.truncate(seats0);
        for &i in members.iter().filter(|&&i| users[i].flex) {
            if holders0.len() >= seats0 {
                break;
            }
            if rng.random_bool(0.3) {
                holders0.push(i);
            }
        }
        let seats1 = (n / 250).max(2);
        let holders1: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| users[i].flex && !holders0.contains(&i))
            .rev()
            .take(seats1)
            .collect();
        subscriptions.push(SubscriptionPlan {
            product: 0,
            plan: PlanLevel::Enterprise,
            seats: seats0 as i32,
            starts_at: at(start - Duration::days(120), 0.0),
            ends_at: at(start + Duration::days(365 + 245), 0.0),
            holders: holders0,
        });
        subscriptions.push(SubscriptionPlan {
            product: 1,
            plan: PlanLevel::Premium,
            seats: seats1 as i32,
            starts_at: at(start - Duration::days(200), 0.0),
            ends_at: at(start + Duration::days(i64::from(days) / 2), 0.0),
            holders: holders1,
        });
    }
    let seat_of = |i: usize| -> Vec<usize> {
        subscriptions
            .iter()
            .filter(|s| s.holders.contains(&i))
            .map(|s| s.product)
            .collect()
    };

    // Regular products: members and admins on pay-as-you-go, and seat holders.
    let workers: Vec<usize> = (1..n)
        .filter(|&i| users[i].flex || !seat_of(i).is_empty())
        .collect();
    let share: f64 = workers.iter().map(|&i| users[i].activity.sqrt()).sum();
    let items: Vec<(usize, f64)> = pool.iter().map(|&i| (i, popularity(i))).collect();
    for &i in &workers {
        let seats = seat_of(i);
        let chosen: Vec<usize> = if users[i].flex {
            let raw = pairs_needed * users[i].activity.sqrt() / share.max(1e-9);
            let k = (raw.floor() as usize + usize::from(rng.random_bool(raw.fract())))
                .clamp(1, pool.len());
            let mut chosen = sample_weighted(rng, &items, k);
            for s in seats {
                if !chosen.contains(&s) {
                    chosen.insert(0, s);
                }
            }
            chosen
        } else {
            seats
        };
        users[i].regular = chosen
            .into_iter()
            .enumerate()
            .map(|(r, product)| Regular {
                product,
                weight: users[i].activity / (r as f64 + 1.0).powf(0.6),
                habit_min: if r == 0 {
                    rng.random_range(0.0..30.0)
                } else {
                    rng.random_range(0.0..300.0)
                },
                version: rng.random_range(0..products[product].versions.len()),
            })
            .collect();
        // Some users on pay-as-you-go have their own list: what they use, and a little more.
        if s.own_lists && users[i].flex && rng.random_bool(0.05) {
            let mut list: Vec<usize> = users[i].regular.iter().map(|r| r.product).collect();
            for _ in 0..2 {
                let extra = rng.random_range(0..p);
                if !list.contains(&extra) {
                    list.push(extra);
                }
            }
            list.sort_unstable();
            users[i].own_list = Some(list);
        }
    }
    AccountPlan {
        name: s.name,
        target: s.target,
        policy: s.policy,
        created_at,
        users,
        account_list,
        subscriptions,
        migrated_lot: s.migrated_lot,
    }
}
