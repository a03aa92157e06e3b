//! Rules 16–19 through the domain: usage reports agree with the ledger and with an
//! independent model of the raw opens, rollups never change an answer (rule 17),
//! distinct users are exact, week and month boundaries, the rollup job, tenancy,
//! spending at the price paid, the forecast with its advice, and bad input.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use daypass_domain::{
    Actor, Db, DomainError, LedgerKind, PlanLevel, Role,
    catalog::{self, UpsertProduct},
    charging::{OpenOutcome, OpenRequest, open_product},
    entity::{charge, ledger_entry, lot, open},
    lots::{self, PurchaseInput},
    reports::{
        self, Advice, Dimension, Forecast, MAX_FORECAST_DAYS, Source, Spending, UsageQuery,
        UsageRow,
    },
    rollups::{self, ROLLUP_GRACE},
    subscriptions::{self, NewSubscription},
    users,
};
use daypass_tests::{AccountFixture, TestDb, account, actor_of, buy, t, user};
use proptest::prelude::*;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Statement};
use std::collections::{BTreeMap, BTreeSet, HashMap};

use Dimension::{Day, Month, Product, User, Week};

/// Asserts that a use-case refused with one `DomainError` variant.
macro_rules! assert_err {
    ($result:expr, $variant:ident) => {
        match $result {
            Err(DomainError::$variant(_)) => {}
            other => panic!(
                "expected {} from `{}`, got {:?}",
                stringify!($variant),
                stringify!($result),
                other
            ),
        }
    };
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn d(s: &str) -> NaiveDate {
    s.parse().expect("YYYY-MM-DD")
}

fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).unwrap().and_utc()
}

fn q(
    from: NaiveDate,
    to: NaiveDate,
    group_by: &[Dimension],
    user_id: Option<i32>,
    product_id: Option<i32>,
) -> UsageQuery {
    UsageQuery {
        from,
        to,
        group_by: group_by.to_vec(),
        user_id,
        product_id,
    }
}

async fn rows(db: &Db, account_id: i32, query: &UsageQuery, source: Source) -> Vec<UsageRow> {
    reports::usage_rows(db, account_id, query, source)
        .await
        .unwrap_or_else(|e| panic!("report {query:?} from {source:?}: {e}"))
}

/// The same report from the raw opens and through the rollups: they must be equal
/// (rule 17), whatever the watermark. Returns the raw answer.
async fn both(db: &Db, account_id: i32, query: &UsageQuery) -> Vec<UsageRow> {
    let raw = rows(db, account_id, query, Source::Raw).await;
    let rolled = rows(db, account_id, query, Source::Rollups).await;
    let watermark = rollups::rolled_through(db.conn()).await.unwrap();
    assert_eq!(
        rolled, raw,
        "rollups (rolled through {watermark:?}) differ from raw opens for {query:?}"
    );
    raw
}

async fn open_at(db: &Db, actor: &Actor, now: DateTime<Utc>, code: &str) -> OpenOutcome {
    open_product(
        db,
        actor,
        now,
        OpenRequest {
            product_code: code.into(),
            version: None,
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("open {code} at {now}: {e}"))
}

async fn granted(db: &Db, actor: &Actor, now: DateTime<Utc>, code: &str) -> OpenOutcome {
    let o = open_at(db, actor, now, code).await;
    assert!(
        o.granted,
        "open of {code} at {now} should be granted: {o:?}"
    );
    o
}

async fn make_product(db: &Db, code: &str, daily_rate: i64, annual: Option<i64>) -> i32 {
    catalog::upsert_product(
        db,
        &Actor::Operator,
        UpsertProduct {
            code: code.into(),
            name: format!("{code} product"),
            daily_rate,
            annual_subscription_minor: annual,
            active: true,
        },
    )
    .await
    .expect("upsert product")
    .id
}

/// An operator sale at an explicit unit price, recorded at `purchased_at`.
async fn buy_priced(
    db: &Db,
    account_id: i32,
    quantity: i64,
    unit_price_minor: i64,
    key: &str,
    purchased_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> i32 {
    lots::purchase(
        db,
        &Actor::Operator,
        now,
        PurchaseInput {
            quantity,
            idempotency_key: key.into(),
            account_id: Some(account_id),
            unit_price_minor: Some(unit_price_minor),
            purchased_at: Some(purchased_at),
        },
    )
    .await
    .expect("priced purchase")
    .lot
    .id
}

/// Rolls up in chunks of two user × product rows, so every day of these small
/// workloads is written in several transactions, as a big day is.
async fn roll(db: &Db, now: DateTime<Utc>) -> u32 {
    rollups::roll_up_in_chunks(db, now, 2)
        .await
        .unwrap_or_else(|e| panic!("roll_up at {now}: {e}"))
}

async fn watermark(db: &Db) -> Option<NaiveDate> {
    rollups::rolled_through(db.conn()).await.unwrap()
}

/// The rollup tables (`usage…`) and the watermark (`rollup…`), whatever their
/// columns: every row as text, sorted within its table.
async fn dump_rollups(db: &Db) -> Vec<String> {
    let list = if db.is_postgres() {
        "SELECT CAST(tablename AS TEXT) AS name FROM pg_tables \
         WHERE schemaname = current_schema() \
         AND (tablename LIKE 'usage%' OR tablename LIKE 'rollup%')"
    } else {
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND (name LIKE 'usage%' OR name LIKE 'rollup%')"
    };
    let mut tables: Vec<String> = db
        .conn()
        .query_all_raw(Statement::from_string(db.backend(), list))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("", "name").unwrap())
        .collect();
    tables.sort();
    assert!(
        tables.iter().any(|t| t == "usage_days") && tables.iter().any(|t| t == "rollup_watermark"),
        "{tables:?}"
    );
    let mut out = Vec::new();
    for table in tables {
        let conn = db.conn();
        let first = conn
            .query_one_raw(Statement::from_string(
                db.backend(),
                format!("SELECT * FROM {table}"),
            ))
            .await
            .unwrap();
        let Some(first) = first else { continue };
        let cols = first.column_names();
        let select: Vec<String> = cols
            .iter()
            .enumerate()
            // Every column as text (SQLite's `quote` also shows a blob, as hex).
            .map(|(i, c)| {
                if db.is_postgres() {
                    format!("CAST({c} AS TEXT) AS c{i}")
                } else {
                    format!("quote({c}) AS c{i}")
                }
            })
            .collect();
        let found = conn
            .query_all_raw(Statement::from_string(
                db.backend(),
                format!("SELECT {} FROM {table}", select.join(", ")),
            ))
            .await
            .unwrap();
        let mut lines: Vec<String> = found
            .iter()
            .map(|r| {
                let values: Vec<String> = cols
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let v = r
                            .try_get::<Option<String>>("", &format!("c{i}"))
                            .unwrap()
                            .unwrap_or_else(|| "NULL".into());
                        format!("{c}={v}")
                    })
                    .collect();
                format!("{table}: {}", values.join(" "))
            })
            .collect();
        lines.sort();
        out.extend(lines);
    }
    out
}

/// The days that have rows in `usage_day_totals`.
async fn rolled_days(db: &Db) -> BTreeSet<String> {
    db.conn()
        .query_all_raw(Statement::from_string(
            db.backend(),
            "SELECT DISTINCT CAST(day AS TEXT) AS day FROM usage_day_totals",
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("", "day").unwrap())
        .collect()
}

/// Removes an account's raw opens: from then on only the rollups can answer for the
/// rolled days.
async fn delete_raw_opens(db: &Db, account_id: i32) {
    open::Entity::delete_many()
        .filter(open::Column::AccountId.eq(account_id))
        .exec(db.conn())
        .await
        .unwrap();
}

async fn set_watermark_null(db: &Db) {
    db.conn()
        .execute_raw(Statement::from_string(
            db.backend(),
            "UPDATE rollup_watermark SET rolled_through = NULL WHERE id = 1",
        ))
        .await
        .unwrap();
}

/// (period, product, distinct users, opens, denials) of a row.
type Shape = (Option<NaiveDate>, Option<i32>, i64, i64, i64);

fn shape(r: &[UsageRow]) -> Vec<Shape> {
    r.iter()
        .map(|r| (r.period, r.product_id, r.distinct_users, r.opens, r.denials))
        .collect()
}

fn sorted(mut r: Vec<UsageRow>) -> Vec<UsageRow> {
    r.sort_by_key(|r| (r.period, r.user_id, r.product_id));
    r
}

// ---------------------------------------------------------------------------
// An independent model of rule 16 over the raw opens
// ---------------------------------------------------------------------------

/// One recorded open as the model reads it.
#[derive(Debug, Clone)]
struct Fact {
    at: DateTime<Utc>,
    user_id: i32,
    product_id: Option<i32>,
    granted: bool,
    charged: bool,
    tokens: i64,
    cost_minor: i64,
}

async fn facts(db: &Db, account_id: i32) -> Vec<Fact> {
    let costs: HashMap<i32, i64> = charge::Entity::find()
        .filter(charge::Column::AccountId.eq(account_id))
        .all(db.conn())
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.cost_minor))
        .collect();
    open::Entity::find()
        .filter(open::Column::AccountId.eq(account_id))
        .all(db.conn())
        .await
        .unwrap()
        .into_iter()
        .map(|o| Fact {
            at: o.at,
            user_id: o.user_id,
            product_id: o.product_id,
            granted: o.granted,
            charged: o.charge_id.is_some(),
            tokens: o.tokens,
            cost_minor: o.charge_id.map_or(0, |c| costs[&c]),
        })
        .collect()
}

fn week_start(day: NaiveDate) -> NaiveDate {
    day - Duration::days(i64::from(day.weekday().num_days_from_monday()))
}

fn month_start(day: NaiveDate) -> NaiveDate {
    NaiveDate::from_ymd_opt(day.year(), day.month(), 1).unwrap()
}

/// What a report must say, computed directly from the opens.
fn model(facts: &[Fact], query: &UsageQuery) -> Vec<UsageRow> {
    let g = &query.group_by;
    let period = |day: NaiveDate| {
        if g.contains(&Day) {
            Some(day)
        } else if g.contains(&Week) {
            Some(week_start(day))
        } else if g.contains(&Month) {
            Some(month_start(day))
        } else {
            None
        }
    };
    type Acc = (UsageRow, BTreeSet<i32>);
    type Key = (Option<NaiveDate>, Option<i32>, Option<i32>);
    let mut groups: BTreeMap<Key, Acc> = BTreeMap::new();
    for f in facts {
        let day = f.at.date_naive();
        if day < query.from || day > query.to {
            continue;
        }
        if query.user_id.is_some_and(|u| u != f.user_id) {
            continue;
        }
        if query.product_id.is_some_and(|p| Some(p) != f.product_id) {
            continue;
        }
        let key = (
            period(day),
            g.contains(&User).then_some(f.user_id),
            if g.contains(&Product) {
                f.product_id
            } else {
                None
            },
        );
        let (row, users) = groups.entry(key).or_insert_with(|| {
            (
                UsageRow {
                    period: key.0,
                    user_id: key.1,
                    product_id: key.2,
                    tokens: 0,
                    opens: 0,
                    charges: 0,
                    denials: 0,
                    distinct_users: 0,
                    cost_minor: 0,
                },
                BTreeSet::new(),
            )
        });
        row.tokens += f.tokens;
        row.cost_minor += f.cost_minor;
        if f.granted {
            row.opens += 1;
            users.insert(f.user_id);
        } else {
            row.denials += 1;
        }
        if f.charged {
            row.charges += 1;
        }
    }
    let mut out: Vec<UsageRow> = groups
        .into_values()
        .map(|(mut row, users)| {
            row.distinct_users = users.len() as i64;
            row
        })
        .collect();
    if out.is_empty() && g.is_empty() {
        out.push(UsageRow {
            period: None,
            user_id: None,
            product_id: None,
            tokens: 0,
            opens: 0,
            charges: 0,
            denials: 0,
            distinct_users: 0,
            cost_minor: 0,
        });
    }
    out
}

/// The ungrouped report over `from..=to` equals the ledger's own records.
async fn assert_totals_match_ledger(db: &Db, account_id: i32, from: NaiveDate, to: NaiveDate) {
    let (start, end) = (day_start(from), day_start(to + Duration::days(1)));
    let report = rows(db, account_id, &q(from, to, &[], None, None), Source::Raw).await;
    assert_eq!(
        report.len(),
        1,
        "an ungrouped report has one row: {report:?}"
    );
    let r = &report[0];
    let charges = charge::Entity::find()
        .filter(charge::Column::AccountId.eq(account_id))
        .filter(charge::Column::WindowStartsAt.gte(start))
        .filter(charge::Column::WindowStartsAt.lt(end))
        .all(db.conn())
        .await
        .unwrap();
    let charge_entries: i64 = ledger_entry::Entity::find()
        .filter(ledger_entry::Column::AccountId.eq(account_id))
        .filter(ledger_entry::Column::Kind.eq(LedgerKind::Charge.as_str()))
        .filter(ledger_entry::Column::At.gte(start))
        .filter(ledger_entry::Column::At.lt(end))
        .all(db.conn())
        .await
        .unwrap()
        .iter()
        .map(|e| e.tokens)
        .sum();
    let opens = open::Entity::find()
        .filter(open::Column::AccountId.eq(account_id))
        .filter(open::Column::At.gte(start))
        .filter(open::Column::At.lt(end))
        .all(db.conn())
        .await
        .unwrap();
    let charge_tokens: i64 = charges.iter().map(|c| c.tokens).sum();
    let ctx = format!("{from}..={to}: {r:?}");
    assert_eq!(r.tokens, charge_tokens, "tokens = Σ charges.tokens, {ctx}");
    assert_eq!(
        r.tokens, -charge_entries,
        "tokens = −Σ CHARGE entries, {ctx}"
    );
    assert_eq!(
        r.cost_minor,
        charges.iter().map(|c| c.cost_minor).sum::<i64>(),
        "cost = Σ charges.cost_minor, {ctx}"
    );
    assert_eq!(r.charges, charges.len() as i64, "charges, {ctx}");
    assert_eq!(
        r.opens,
        opens.iter().filter(|o| o.granted).count() as i64,
        "opens = granted opens, {ctx}"
    );
    assert_eq!(
        r.denials,
        opens.iter().filter(|o| !o.granted).count() as i64,
        "denials = denied opens, {ctx}"
    );
    let users: BTreeSet<i32> = opens
        .iter()
        .filter(|o| o.granted)
        .map(|o| o.user_id)
        .collect();
    assert_eq!(
        r.distinct_users,
        users.len() as i64,
        "distinct users, {ctx}"
    );
}

// ---------------------------------------------------------------------------
// 1. Random workloads: the reports equal the ledger, the model, and each other
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Buy {
        quantity: i64,
        price: i64,
    },
    /// Users: 0 and 3 pay-as-you-go, 1 restricted to p1, 2 not assigned but holding a
    /// p2 subscription seat. Products: p1, p2, p3, and a code of no product.
    Open {
        user: usize,
        product: usize,
    },
    /// A user of another account opens p1 (their usage must never show here).
    OtherOpen,
    AdvanceHours(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (1i64..25, 10i64..200).prop_map(|(quantity, price)| Step::Buy { quantity, price }),
        6 => (0usize..4, 0usize..4).prop_map(|(user, product)| Step::Open { user, product }),
        1 => Just(Step::OtherOpen),
        3 => prop_oneof![
            Just(1i64), Just(5), Just(11), Just(23), Just(24), Just(25), Just(72), Just(168)
        ]
        .prop_map(Step::AdvanceHours),
    ]
}

const CODES: [&str; 4] = ["p1", "p2", "p3", "no-such-product"];

fn groupings(user_id: i32, product_id: i32) -> Vec<(Vec<Dimension>, Option<i32>, Option<i32>)> {
    vec![
        (vec![Day, User, Product], None, None),
        (vec![Week, Product], None, None),
        (vec![Month], None, None),
        (vec![Month, User], None, None),
        (vec![], Some(user_id), None),
        (vec![Day], None, Some(product_id)),
        (vec![], None, None),
        (vec![Week], None, None),
        (vec![Product], None, None),
        (vec![Month, Week, User], None, Some(product_id)),
    ]
}

/// Every grouping over every range: the raw answer equals the model of the opens and
/// the rollups' answer equals the raw one. Returns the queries with their answers.
async fn compare_everything(
    db: &Db,
    account_id: i32,
    ranges: &[(NaiveDate, NaiveDate)],
    user_id: i32,
    product_id: i32,
    phase: &str,
) -> Vec<(UsageQuery, Vec<UsageRow>)> {
    let all = facts(db, account_id).await;
    let mut answers = Vec::new();
    for &(from, to) in ranges {
        assert_totals_match_ledger(db, account_id, from, to).await;
        for (group_by, u, p) in groupings(user_id, product_id) {
            let query = q(from, to, &group_by, u, p);
            let raw = both(db, account_id, &query).await;
            assert_eq!(
                sorted(raw.clone()),
                sorted(model(&all, &query)),
                "{phase}: the report disagrees with the opens for {query:?}"
            );
            answers.push((query, raw));
        }
    }
    answers
}

/// The rollups' answers equal the (earlier) raw ones.
async fn compare_rollups(
    db: &Db,
    account_id: i32,
    answers: &[(UsageQuery, Vec<UsageRow>)],
    phase: &str,
) {
    let watermark = watermark(db).await;
    for (query, raw) in answers {
        assert_eq!(
            &rows(db, account_id, query, Source::Rollups).await,
            raw,
            "{phase} (rolled through {watermark:?}): rollups differ from raw opens for {query:?}"
        );
    }
}

async fn run_workload(steps: Vec<Step>, mid_roll: Option<usize>) {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let start = t("2026-12-26T20:00:00Z"); // a Saturday, before a week, month and year end
    let mut now = start;
    let acct = account(db, "Work", now).await;
    let other = account(db, "Other", now).await;
    let mut product_ids = Vec::new();
    for (code, rate) in CODES[..3].iter().zip([3i64, 5, 2]) {
        product_ids.push(make_product(db, code, rate, Some(rate * 20_000)).await);
    }
    let mut members = Vec::new();
    let mut member_ids = Vec::new();
    for (i, flex) in [true, true, false, true].into_iter().enumerate() {
        let (id, actor) = user(
            db,
            &acct,
            &format!("u{i}@work.test"),
            Role::Member,
            flex,
            now,
        )
        .await;
        members.push(actor);
        member_ids.push(id);
    }
    users::set_allowed_products(
        db,
        &acct.admin,
        Some(member_ids[1]),
        None,
        Some(vec![product_ids[0]]),
    )
    .await
    .unwrap();
    let sub = subscriptions::add_subscription(
        db,
        &Actor::Operator,
        NewSubscription {
            product_id: product_ids[1],
            plan_level: PlanLevel::Premium,
            seats: 1,
            starts_at: start - Duration::days(1),
            ends_at: start + Duration::days(400),
            account_id: Some(acct.account_id),
        },
    )
    .await
    .unwrap();
    subscriptions::assign_subscription(db, &acct.admin, sub.id, member_ids[2], true)
        .await
        .unwrap();
    let (_, outsider) = user(db, &other, "o@other.test", Role::Member, true, now).await;
    buy_priced(db, other.account_id, 5_000, 7, "other", now, now).await;
    buy_priced(db, acct.account_id, 12, 100, "first", now, now).await;

    for (n, s) in steps.iter().enumerate() {
        if mid_roll == Some(n) {
            roll(db, now).await;
        }
        match *s {
            Step::Buy { quantity, price } => {
                buy_priced(
                    db,
                    acct.account_id,
                    quantity,
                    price,
                    &format!("k{n}"),
                    now,
                    now,
                )
                .await;
            }
            Step::Open { user, product } => {
                let o = open_at(db, &members[user], now, CODES[product]).await;
                assert!(o.balance >= 0);
            }
            Step::OtherOpen => {
                granted(db, &outsider, now, "p1").await;
            }
            Step::AdvanceHours(h) => now += Duration::hours(h),
        }
    }
    let (first, last) = (start.date_naive(), now.date_naive());
    let mut ranges = vec![(first - Duration::days(1), last + Duration::days(1))];
    // An inner range: partial weeks and months at both edges.
    if last - first >= Duration::days(4) {
        ranges.push((first + Duration::days(2), last - Duration::days(1)));
    }
    let phase = match mid_roll {
        Some(n) => format!("rolled at step {n}"),
        None => "never rolled".to_owned(),
    };
    let answers = compare_everything(
        db,
        acct.account_id,
        &ranges,
        member_ids[0],
        product_ids[0],
        &phase,
    )
    .await;

    // Everything rolled: the same answers, now from the rollup tables.
    roll(db, day_start(last + Duration::days(3))).await;
    assert_eq!(
        watermark(db).await,
        Some(last + Duration::days(1)),
        "the watermark is the last closed day"
    );
    compare_rollups(db, acct.account_id, &answers, "fully rolled").await;

    // The rollups alone answer for rolled days: without the raw opens, the same.
    delete_raw_opens(db, acct.account_id).await;
    compare_rollups(db, acct.account_id, &answers, "raw opens deleted").await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, max_shrink_iters: 64, ..ProptestConfig::default() })]
    #[test]
    fn random_workloads_report_what_the_ledger_holds(
        steps in proptest::collection::vec(step(), 1..50),
        mid_roll in proptest::option::weighted(0.7, 0usize..100),
    ) {
        // Rolled up at a point inside the workload (a percentage of its steps), or never.
        let mid_roll = mid_roll.map(|pct| pct * steps.len() / 100);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_workload(steps, mid_roll));
    }
}

// ---------------------------------------------------------------------------
// 2. Distinct users are exact
// ---------------------------------------------------------------------------

struct DistinctScenario {
    account_id: i32,
    x: i32,
    y: i32,
    c: i32,
}

async fn check_distinct(db: &Db, s: &DistinctScenario, sources: &[Source], phase: &str) {
    let (a, x, y) = (s.account_id, s.x, s.y);
    let (mar1, mar2, mar9) = (d("2026-03-01"), d("2026-03-02"), d("2026-03-09"));
    let expect = |query: UsageQuery, want: Vec<Shape>| (query, want);
    let cases = vec![
        // E Mon, A Tue, B Thu, A Fri (two products): three users in the week; C was
        // only denied.
        expect(
            q(mar2, d("2026-03-08"), &[Week], None, None),
            vec![(Some(mar2), None, 3, 5, 1)],
        ),
        expect(
            q(mar2, d("2026-03-08"), &[Day], None, None),
            vec![
                (Some(mar2), None, 1, 1, 0),
                (Some(d("2026-03-03")), None, 1, 1, 0),
                (Some(d("2026-03-04")), None, 0, 0, 1),
                (Some(d("2026-03-05")), None, 1, 1, 0),
                (Some(d("2026-03-06")), None, 1, 2, 0),
            ],
        ),
        expect(
            q(mar2, d("2026-03-08"), &[Week, Product], None, None),
            vec![
                (Some(mar2), Some(x), 3, 4, 1),
                (Some(mar2), Some(y), 1, 1, 0),
            ],
        ),
        // A partial week at the range's start: Wednesday on, B and A.
        expect(
            q(d("2026-03-04"), d("2026-03-08"), &[Week], None, None),
            vec![(Some(mar2), None, 2, 3, 1)],
        ),
        expect(
            q(d("2026-03-04"), d("2026-03-15"), &[Week], None, None),
            vec![(Some(mar2), None, 2, 3, 1), (Some(mar9), None, 1, 1, 0)],
        ),
        expect(
            q(
                d("2026-03-04"),
                d("2026-03-15"),
                &[Week, Product],
                None,
                None,
            ),
            vec![
                (Some(mar2), Some(x), 2, 2, 1),
                (Some(mar2), Some(y), 1, 1, 0),
                (Some(mar9), Some(y), 1, 1, 0),
            ],
        ),
        // A partial week at the range's end.
        expect(
            q(mar2, d("2026-03-05"), &[Week], None, None),
            vec![(Some(mar2), None, 3, 3, 1)],
        ),
        expect(
            q(d("2026-03-03"), d("2026-03-05"), &[Week], None, None),
            vec![(Some(mar2), None, 2, 2, 1)],
        ),
        // The month: E, A, B, D; A counts once though active on two days and products.
        expect(
            q(mar1, d("2026-03-31"), &[Month], None, None),
            vec![(Some(mar1), None, 4, 6, 1)],
        ),
        expect(
            q(mar1, d("2026-03-31"), &[Month, Product], None, None),
            vec![
                (Some(mar1), Some(x), 3, 4, 1),
                (Some(mar1), Some(y), 2, 2, 0),
            ],
        ),
        expect(
            q(mar1, d("2026-03-31"), &[Month], None, Some(y)),
            vec![(Some(mar1), None, 2, 2, 0)],
        ),
        expect(
            q(d("2026-03-04"), d("2026-03-31"), &[Month], None, None),
            vec![(Some(mar1), None, 3, 4, 1)],
        ),
        expect(
            q(mar1, d("2026-03-31"), &[], None, None),
            vec![(None, None, 4, 6, 1)],
        ),
        expect(
            q(d("2026-03-04"), d("2026-03-31"), &[], None, None),
            vec![(None, None, 3, 4, 1)],
        ),
        expect(
            q(mar1, d("2026-03-31"), &[], None, Some(x)),
            vec![(None, None, 3, 4, 1)],
        ),
        expect(
            q(mar1, d("2026-03-31"), &[Product], None, None),
            vec![(None, Some(x), 3, 4, 1), (None, Some(y), 2, 2, 0)],
        ),
    ];
    for (query, want) in cases {
        for &source in sources {
            let got = rows(db, a, &query, source).await;
            assert_eq!(
                shape(&got),
                want,
                "{phase}, {source:?}: distinct users of {query:?}: {got:?}"
            );
        }
    }
    // Per user, a row counts its one user when they opened something, C's denials zero.
    for (group_by, len) in [
        (vec![Day, User], 6),
        (vec![Week, User], 5),
        (vec![Month, User, Product], 6),
    ] {
        let query = q(mar1, d("2026-03-31"), &group_by, None, None);
        for &source in sources {
            let got = rows(db, a, &query, source).await;
            assert_eq!(got.len(), len, "{phase}: {got:?}");
            for r in &got {
                let want = if r.user_id == Some(s.c) { 0 } else { 1 };
                assert_eq!(r.distinct_users, want, "{phase}: {query:?}: {r:?}");
                assert_eq!(r.opens > 0, want == 1, "{phase}: {r:?}");
            }
            assert!(
                got.iter().any(|r| r.user_id == Some(s.c) && r.denials == 1),
                "{phase}: C's denial has its row: {got:?}"
            );
        }
    }
}

#[tokio::test]
async fn distinct_users_are_counted_once_per_period_and_product() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let setup = t("2026-03-01T00:00:00Z");
    let acct = account(db, "Distinct", setup).await;
    let x = make_product(db, "x", 1, None).await;
    let y = make_product(db, "y", 1, None).await;
    let mut who = HashMap::new();
    for name in ["a", "b", "c", "d", "e"] {
        who.insert(
            name,
            user(
                db,
                &acct,
                &format!("{name}@d.test"),
                Role::Member,
                true,
                setup,
            )
            .await,
        );
    }
    users::set_allowed_products(db, &acct.admin, Some(who["c"].0), None, Some(vec![]))
        .await
        .unwrap();
    buy(db, acct.account_id, 100, "k", setup, setup).await;
    let s = DistinctScenario {
        account_id: acct.account_id,
        x,
        y,
        c: who["c"].0,
    };

    granted(db, &who["e"].1, t("2026-03-02T09:00:00Z"), "x").await; // Monday
    granted(db, &who["a"].1, t("2026-03-03T10:00:00Z"), "x").await; // Tuesday
    let denied = open_at(db, &who["c"].1, t("2026-03-04T11:00:00Z"), "x").await;
    assert!(!denied.granted, "{denied:?}");
    granted(db, &who["b"].1, t("2026-03-05T10:00:00Z"), "x").await; // Thursday
    // Rolled through Wednesday: the week and the month are now half rolled.
    assert_eq!(roll(db, t("2026-03-05T12:00:00Z")).await, 3);
    assert_eq!(watermark(db).await, Some(d("2026-03-04")));
    granted(db, &who["a"].1, t("2026-03-06T12:00:00Z"), "x").await; // Friday
    granted(db, &who["a"].1, t("2026-03-06T12:05:00Z"), "y").await;
    granted(db, &who["d"].1, t("2026-03-10T08:00:00Z"), "y").await; // next week
    check_distinct(
        db,
        &s,
        &[Source::Raw, Source::Rollups],
        "rolled through 03-04",
    )
    .await;

    // Rolled through April 1st: whole weeks and March come from the stored counts.
    roll(db, t("2026-04-02T01:00:00Z")).await;
    assert_eq!(watermark(db).await, Some(d("2026-04-01")));
    check_distinct(
        db,
        &s,
        &[Source::Raw, Source::Rollups],
        "rolled through 04-01",
    )
    .await;
    // Whole weeks and March from what the rollups stored, without the raw opens.
    delete_raw_opens(db, acct.account_id).await;
    check_distinct(db, &s, &[Source::Rollups], "rollups alone").await;
}

// ---------------------------------------------------------------------------
// 3. Week and month boundaries, inclusive ranges, the period of the finest dimension
// ---------------------------------------------------------------------------

fn periods(r: &[UsageRow]) -> Vec<(Option<NaiveDate>, i64)> {
    r.iter().map(|r| (r.period, r.opens)).collect()
}

async fn check_year_end(db: &Db, a: i32, phase: &str) {
    let (dec1, jan1) = (d("2026-12-01"), d("2027-01-01"));
    type Case = (UsageQuery, Vec<(Option<NaiveDate>, i64)>);
    let cases: Vec<Case> = vec![
        (
            q(dec1, d("2027-01-31"), &[Month], None, None),
            vec![(Some(dec1), 2), (Some(jan1), 3)],
        ),
        (
            q(d("2026-12-31"), jan1, &[Day], None, None),
            vec![(Some(d("2026-12-31")), 1), (Some(jan1), 1)],
        ),
        // 12-31 and 01-01 share the ISO week of Monday 12-28; Sunday 23:59:59 and
        // Monday 00:00 do not.
        (
            q(d("2026-12-21"), d("2027-01-10"), &[Week], None, None),
            vec![
                (Some(d("2026-12-21")), 1),
                (Some(d("2026-12-28")), 3),
                (Some(d("2027-01-04")), 1),
            ],
        ),
        // The finest time dimension names the period.
        (
            q(d("2026-12-28"), d("2027-01-03"), &[Month, Week], None, None),
            vec![(Some(d("2026-12-28")), 3)],
        ),
        (
            q(d("2026-12-28"), d("2027-01-03"), &[Week, Month], None, None),
            vec![(Some(d("2026-12-28")), 3)],
        ),
        (
            q(
                d("2026-12-28"),
                d("2027-01-03"),
                &[Month, Week, Day],
                None,
                None,
            ),
            vec![
                (Some(d("2026-12-31")), 1),
                (Some(jan1), 1),
                (Some(d("2027-01-03")), 1),
            ],
        ),
        (
            q(d("2026-12-28"), d("2027-01-03"), &[Month, Day], None, None),
            vec![
                (Some(d("2026-12-31")), 1),
                (Some(jan1), 1),
                (Some(d("2027-01-03")), 1),
            ],
        ),
        // A partial week keeps its Monday as the period, even before `from`.
        (
            q(jan1, d("2027-01-10"), &[Week], None, None),
            vec![(Some(d("2026-12-28")), 2), (Some(d("2027-01-04")), 1)],
        ),
        // `from` and `to` are both included, to the last second of `to`.
        (q(jan1, d("2027-01-03"), &[], None, None), vec![(None, 2)]),
        (
            q(d("2027-01-04"), d("2027-01-04"), &[], None, None),
            vec![(None, 1)],
        ),
        (
            q(d("2026-12-28"), d("2026-12-30"), &[], None, None),
            vec![(None, 0)],
        ),
    ];
    for (query, want) in cases {
        for source in [Source::Raw, Source::Rollups] {
            let got = rows(db, a, &query, source).await;
            assert_eq!(
                periods(&got),
                want,
                "{phase}, {source:?}: {query:?}: {got:?}"
            );
        }
    }
    // The two users in the year-end week.
    let week = both(
        db,
        a,
        &q(d("2026-12-28"), d("2027-01-03"), &[Week], None, None),
    )
    .await;
    assert_eq!(week[0].distinct_users, 2, "{phase}: {week:?}");
    assert_eq!(week[0].tokens, 3, "{phase}: {week:?}");
}

#[tokio::test]
async fn year_end_week_and_day_boundaries() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let setup = t("2026-12-20T00:00:00Z");
    let acct = account(db, "Bounds", setup).await;
    for code in ["x", "y", "z"] {
        make_product(db, code, 1, None).await;
    }
    let (_, u1) = user(db, &acct, "u1@b.test", Role::Member, true, setup).await;
    let (_, u2) = user(db, &acct, "u2@b.test", Role::Member, true, setup).await;
    buy(db, acct.account_id, 100, "k", setup, setup).await;

    granted(db, &u2, t("2026-12-27T23:59:59Z"), "y").await; // Sunday
    granted(db, &u1, t("2026-12-31T23:59:59Z"), "x").await;
    granted(db, &u2, t("2027-01-01T00:00:00Z"), "x").await;
    granted(db, &u1, t("2027-01-03T23:59:59Z"), "y").await; // Sunday, last second
    granted(db, &u1, t("2027-01-04T00:00:00Z"), "z").await; // Monday, first second

    check_year_end(db, acct.account_id, "not rolled").await;
    roll(db, t("2027-01-02T12:00:00Z")).await;
    assert_eq!(watermark(db).await, Some(d("2027-01-01")));
    check_year_end(db, acct.account_id, "rolled through 01-01").await;
    roll(db, t("2027-01-12T00:00:00Z")).await;
    assert_eq!(watermark(db).await, Some(d("2027-01-10")));
    check_year_end(db, acct.account_id, "rolled through 01-10").await;
}

#[tokio::test]
async fn a_leap_day_is_in_february() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let setup = t("2028-02-01T00:00:00Z");
    let acct = account(db, "Leap", setup).await;
    make_product(db, "x", 1, None).await;
    make_product(db, "y", 1, None).await;
    let (_, u1) = user(db, &acct, "u1@l.test", Role::Member, true, setup).await;
    let (_, u2) = user(db, &acct, "u2@l.test", Role::Member, true, setup).await;
    buy(db, acct.account_id, 100, "k", setup, setup).await;
    granted(db, &u2, t("2028-02-28T23:59:59Z"), "x").await;
    granted(db, &u1, t("2028-02-29T12:00:00Z"), "x").await;
    granted(db, &u1, t("2028-03-01T00:00:00Z"), "y").await;
    let a = acct.account_id;
    for phase in ["not rolled", "rolled"] {
        if phase == "rolled" {
            roll(db, t("2028-03-06T00:00:00Z")).await;
            assert_eq!(watermark(db).await, Some(d("2028-03-04")));
        }
        let month = both(
            db,
            a,
            &q(d("2028-02-01"), d("2028-03-31"), &[Month], None, None),
        )
        .await;
        assert_eq!(
            periods(&month),
            vec![(Some(d("2028-02-01")), 2), (Some(d("2028-03-01")), 1)],
            "{phase}"
        );
        assert_eq!(month[0].distinct_users, 2, "{phase}: {month:?}");
        let day = both(
            db,
            a,
            &q(d("2028-02-28"), d("2028-03-01"), &[Day], None, None),
        )
        .await;
        assert_eq!(
            periods(&day),
            vec![
                (Some(d("2028-02-28")), 1),
                (Some(d("2028-02-29")), 1),
                (Some(d("2028-03-01")), 1)
            ],
            "{phase}"
        );
        // Monday 2028-02-28 starts the week of the leap day and of March 1st.
        let week = both(
            db,
            a,
            &q(d("2028-02-21"), d("2028-03-12"), &[Week], None, None),
        )
        .await;
        assert_eq!(periods(&week), vec![(Some(d("2028-02-28")), 3)], "{phase}");
        assert_eq!(week[0].distinct_users, 2, "{phase}: {week:?}");
        let leap = both(db, a, &q(d("2028-02-29"), d("2028-02-29"), &[], None, None)).await;
        assert_eq!(periods(&leap), vec![(None, 1)], "{phase}");
    }
}

// ---------------------------------------------------------------------------
// 4. The rollup job
// ---------------------------------------------------------------------------

async fn assert_reports_agree(db: &Db, a: i32, from: NaiveDate, to: NaiveDate) {
    for group_by in [
        vec![Day, User, Product],
        vec![Week, Product],
        vec![Month],
        vec![],
        vec![User],
    ] {
        both(db, a, &q(from, to, &group_by, None, None)).await;
    }
}

/// A rollup stopped between two of a day's transactions (a crash, or a report read
/// meanwhile) changes no report: week and month distinct users included, whose
/// members the job writes a chunk at a time before it moves the watermark. The next
/// run finishes the day.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_day_half_rolled_up_changes_no_report() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let setup = t("2026-03-01T00:00:00Z");
    let acct = account(db, "Half", setup).await;
    let a = acct.account_id;
    make_product(db, "x", 1, None).await;
    make_product(db, "y", 2, None).await;
    let mut users = Vec::new();
    for i in 0..6 {
        let (_, u) = user(
            db,
            &acct,
            &format!("h{i}@h.test"),
            Role::Member,
            true,
            setup,
        )
        .await;
        users.push(u);
    }
    buy(db, a, 5_000, "k", setup, setup).await;
    // Mon 2 – Thu 5 March: some users every day, others new on the 4th; some who
    // used the week before come back.
    for (day, who) in [
        ("2026-03-02", vec![0, 1]),
        ("2026-03-03", vec![1, 2]),
        ("2026-03-04", vec![0, 3, 4, 5]),
        ("2026-03-05", vec![2, 5]),
    ] {
        for (k, i) in who.into_iter().enumerate() {
            let at = t(&format!("{day}T{:02}:00:00Z", 8 + k));
            granted(db, &users[i], at, if i % 2 == 0 { "x" } else { "y" }).await;
        }
    }
    let (from, to) = (d("2026-03-01"), d("2026-03-31"));
    assert_eq!(roll(db, t("2026-03-04T01:00:00Z")).await, 2);
    assert_eq!(watermark(db).await, Some(d("2026-03-03")));

    // Roll the 4th one row per transaction, and stop as a crash would after its
    // first transaction and two chunks: part of the day written, not the watermark.
    rollups::roll_up_stopping_after(db, t("2026-03-05T01:00:00Z"), 1, 3)
        .await
        .unwrap();
    assert_eq!(
        watermark(db).await,
        Some(d("2026-03-03")),
        "stopped mid-day"
    );
    let written = db
        .conn()
        .query_one_raw(daypass_domain::store::stmt(
            db.backend(),
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM usage_days WHERE day = ?",
            vec![d("2026-03-04").into()],
        ))
        .await
        .unwrap()
        .map(|r| r.try_get::<i64>("", "n").unwrap())
        .unwrap_or(0);
    assert_eq!(written, 2, "two users of the 4th written, two not");
    assert_reports_agree(db, a, from, to).await;
    for group_by in [
        vec![Week],
        vec![Month],
        vec![Week, Product],
        vec![Month, Product],
    ] {
        for start in [d("2026-03-02"), d("2026-03-03"), d("2026-03-04")] {
            both(db, a, &q(start, to, &group_by, None, None)).await;
        }
    }

    // The next run finishes the day, and the reports still agree.
    assert_eq!(roll(db, t("2026-03-06T01:00:00Z")).await, 2);
    assert_eq!(watermark(db).await, Some(d("2026-03-05")));
    assert_reports_agree(db, a, from, to).await;
    for group_by in [
        vec![Week],
        vec![Month],
        vec![Week, Product],
        vec![Month, Product],
    ] {
        for start in [d("2026-03-02"), d("2026-03-04"), d("2026-03-05")] {
            both(db, a, &q(start, to, &group_by, None, None)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rollup_job_is_idempotent_and_leaves_open_days_alone() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let setup = t("2026-03-01T00:00:00Z");
    let acct = account(db, "Rollup", setup).await;
    let a = acct.account_id;
    make_product(db, "x", 1, None).await;
    make_product(db, "y", 2, None).await;
    let (_, u1) = user(db, &acct, "u1@r.test", Role::Member, true, setup).await;
    let (_, u2) = user(db, &acct, "u2@r.test", Role::Member, true, setup).await;
    buy(db, a, 500, "k", setup, setup).await;
    let (from, to) = (d("2026-03-01"), d("2026-03-31"));

    assert_eq!(
        watermark(db).await,
        None,
        "nothing rolled before the first run"
    );
    granted(db, &u1, t("2026-03-02T10:00:00Z"), "x").await;
    granted(db, &u2, t("2026-03-02T11:00:00Z"), "y").await;
    assert!(
        !open_at(db, &u2, t("2026-03-02T12:00:00Z"), "nope")
            .await
            .granted
    );
    granted(db, &u1, t("2026-03-03T23:59:59Z"), "y").await;

    // The current day is not rolled.
    assert_eq!(roll(db, t("2026-03-03T15:00:00Z")).await, 1);
    assert_eq!(watermark(db).await, Some(d("2026-03-02")));
    assert_eq!(
        rolled_days(db).await,
        BTreeSet::from(["2026-03-02".to_owned()])
    );
    assert_reports_agree(db, a, from, to).await;

    // Nor a day that closed less than ROLLUP_GRACE ago.
    let grace_end = day_start(d("2026-03-04")) + ROLLUP_GRACE;
    assert_eq!(roll(db, grace_end - Duration::seconds(1)).await, 0);
    assert_eq!(watermark(db).await, Some(d("2026-03-02")));
    assert_eq!(
        rolled_days(db).await,
        BTreeSet::from(["2026-03-02".to_owned()])
    );
    assert_reports_agree(db, a, from, to).await;

    assert_eq!(roll(db, grace_end).await, 1);
    assert_eq!(watermark(db).await, Some(d("2026-03-03")));
    assert_eq!(
        rolled_days(db).await,
        BTreeSet::from(["2026-03-02".to_owned(), "2026-03-03".to_owned()])
    );
    let first = dump_rollups(db).await;
    assert!(
        first
            .iter()
            .any(|l| l.starts_with("usage_day_totals: ") && l.contains("2026-03-03")),
        "{first:#?}"
    );
    let reports_first = rows(
        db,
        a,
        &q(from, to, &[Day, User, Product], None, None),
        Source::Rollups,
    )
    .await;

    // Running again changes nothing; rebuilding from scratch gives the same tables.
    assert_eq!(roll(db, grace_end).await, 0);
    assert_eq!(roll(db, t("2026-03-04T05:00:00Z")).await, 0);
    assert_eq!(
        dump_rollups(db).await,
        first,
        "a second run changed the rollups"
    );
    set_watermark_null(db).await;
    assert_eq!(
        roll(db, grace_end).await,
        2,
        "a rebuild rolls both days again"
    );
    assert_eq!(
        dump_rollups(db).await,
        first,
        "a rebuild changed the rollups"
    );
    assert_eq!(
        rows(
            db,
            a,
            &q(from, to, &[Day, User, Product], None, None),
            Source::Rollups
        )
        .await,
        reports_first
    );
    assert_reports_agree(db, a, from, to).await;

    // A week of usage, then two rollups at once: each day is rolled exactly once and
    // the tables equal a sequential rebuild.
    for day in 4..=12 {
        let base = day_start(NaiveDate::from_ymd_opt(2026, 3, day).unwrap());
        granted(db, &u1, base + Duration::hours(9), "x").await;
        if day % 2 == 0 {
            granted(db, &u2, base + Duration::hours(13), "x").await;
            granted(db, &u2, base + Duration::hours(14), "y").await;
        }
        if day % 3 == 0 {
            assert!(
                !open_at(db, &u1, base + Duration::hours(15), "gone")
                    .await
                    .granted
            );
        }
    }
    let at = t("2026-03-14T00:30:00Z");
    let (db1, db2) = (db.clone(), db.clone());
    // One user × product row per transaction: the two interleave within each day.
    let t1 = tokio::spawn(async move { rollups::roll_up_in_chunks(&db1, at, 1).await });
    let t2 = tokio::spawn(async move { rollups::roll_up_in_chunks(&db2, at, 1).await });
    let (r1, r2) = (t1.await.unwrap().unwrap(), t2.await.unwrap().unwrap());
    assert_eq!(r1 + r2, 10, "03-04..=03-13 rolled once each ({r1} + {r2})");
    assert_eq!(watermark(db).await, Some(d("2026-03-13")));
    let concurrent = dump_rollups(db).await;
    let reports_concurrent = rows(
        db,
        a,
        &q(from, to, &[Day, User, Product], None, None),
        Source::Rollups,
    )
    .await;
    assert_reports_agree(db, a, from, to).await;
    set_watermark_null(db).await;
    assert_eq!(roll(db, at).await, 12);
    assert_eq!(
        dump_rollups(db).await,
        concurrent,
        "concurrent rollups differ from a sequential rebuild"
    );
    assert_eq!(
        rows(
            db,
            a,
            &q(from, to, &[Day, User, Product], None, None),
            Source::Rollups
        )
        .await,
        reports_concurrent
    );
    // The rollups alone give the same answers once the raw opens are gone.
    let queries: Vec<UsageQuery> = [
        vec![Day, User, Product],
        vec![Week],
        vec![Week, Product],
        vec![Month],
        vec![],
    ]
    .iter()
    .map(|g| q(from, d("2026-03-13"), g, None, None))
    .collect();
    let mut before = Vec::new();
    for query in &queries {
        before.push(both(db, a, query).await);
    }
    assert_eq!(
        shape(&before[1]),
        vec![
            (Some(d("2026-03-02")), None, 2, 14, 2),
            (Some(d("2026-03-09")), None, 2, 8, 2)
        ],
        "two users in each week"
    );
    delete_raw_opens(db, a).await;
    for (query, want) in queries.iter().zip(before) {
        assert_eq!(rows(db, a, query, Source::Rollups).await, want, "{query:?}");
    }
}

/// Rolling a day again rebuilds it (rollups.rs: "Rebuilds that day's part if it runs
/// again"): after moving the watermark back into a week, rolling on gives the same
/// tables and the same distinct users, whether or not the week had ended.
#[tokio::test]
async fn rolling_days_again_from_inside_a_week_rebuilds_them() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let setup = t("2026-03-01T00:00:00Z");
    let acct = account(db, "Reroll", setup).await;
    let a = acct.account_id;
    make_product(db, "x", 1, None).await;
    let (_, u1) = user(db, &acct, "u1@rr.test", Role::Member, true, setup).await;
    let (_, u2) = user(db, &acct, "u2@rr.test", Role::Member, true, setup).await;
    buy(db, a, 100, "k", setup, setup).await;
    // u1 on Tuesday and Thursday, u2 on Thursday.
    granted(db, &u1, t("2026-03-03T10:00:00Z"), "x").await;
    granted(db, &u1, t("2026-03-05T10:00:00Z"), "x").await;
    granted(db, &u2, t("2026-03-05T11:00:00Z"), "x").await;
    let week = q(d("2026-03-02"), d("2026-03-08"), &[Week], None, None);
    let month = q(d("2026-03-01"), d("2026-03-31"), &[Month], None, None);
    let rewind = |day: &'static str| async move {
        db.conn()
            .execute_raw(Statement::from_sql_and_values(
                db.backend(),
                if db.is_postgres() {
                    "UPDATE rollup_watermark SET rolled_through = $1 WHERE id = 1"
                } else {
                    "UPDATE rollup_watermark SET rolled_through = ? WHERE id = 1"
                },
                [d(day).into()],
            ))
            .await
            .unwrap();
    };

    // The week still open: rolled through Friday, rewound to Wednesday.
    roll(db, t("2026-03-07T01:00:00Z")).await;
    assert_eq!(watermark(db).await, Some(d("2026-03-06")));
    let open_week = dump_rollups(db).await;
    assert_eq!(
        shape(&both(db, a, &week).await),
        vec![(Some(d("2026-03-02")), None, 2, 3, 0)]
    );
    rewind("2026-03-04").await;
    assert_eq!(roll(db, t("2026-03-07T01:00:00Z")).await, 2);
    assert_eq!(
        dump_rollups(db).await,
        open_week,
        "re-rolling 03-05..=03-06 of an open week"
    );
    assert_eq!(
        shape(&both(db, a, &week).await),
        vec![(Some(d("2026-03-02")), None, 2, 3, 0)]
    );

    // The week over: rolled through 03-10, rewound to Wednesday again.
    roll(db, t("2026-03-11T01:00:00Z")).await;
    assert_eq!(watermark(db).await, Some(d("2026-03-10")));
    let ended_week = dump_rollups(db).await;
    rewind("2026-03-04").await;
    assert_eq!(roll(db, t("2026-03-11T01:00:00Z")).await, 6);
    assert_eq!(
        shape(&both(db, a, &week).await),
        vec![(Some(d("2026-03-02")), None, 2, 3, 0)],
        "re-rolling days of a week that had ended"
    );
    assert_eq!(
        shape(&both(db, a, &month).await),
        vec![(Some(d("2026-03-01")), None, 2, 3, 0)],
        "re-rolling days of the month"
    );
    assert_eq!(
        dump_rollups(db).await,
        ended_week,
        "re-rolling 03-05..=03-10"
    );
}

// ---------------------------------------------------------------------------
// 5. Tenancy (rule 19)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reports_respect_tenancy() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let setup = t("2026-03-01T00:00:00Z");
    let now = t("2026-03-10T12:00:00Z");
    let acct = account(db, "Tenant", setup).await;
    let other = account(db, "Stranger", setup).await;
    let a = acct.account_id;
    make_product(db, "x", 1, Some(1_000)).await;
    make_product(db, "y", 2, Some(1_000)).await;
    let (m1_id, m1) = user(db, &acct, "m1@t.test", Role::Member, true, setup).await;
    let (m2_id, m2) = user(db, &acct, "m2@t.test", Role::Member, true, setup).await;
    let (_, analyst) = user(db, &acct, "an@t.test", Role::Analyst, false, setup).await;
    let (_, _) = user(db, &other, "o@s.test", Role::Member, true, setup).await;
    buy(db, a, 100, "k", setup, setup).await;
    buy(db, other.account_id, 100, "k", setup, setup).await;

    granted(db, &m1, t("2026-03-02T09:00:00Z"), "x").await;
    granted(db, &m1, t("2026-03-02T10:00:00Z"), "y").await;
    granted(db, &m2, t("2026-03-02T11:00:00Z"), "x").await;
    assert!(
        !open_at(db, &m2, t("2026-03-03T11:00:00Z"), "nope")
            .await
            .granted
    );

    let (from, to) = (d("2026-03-01"), d("2026-03-31"));
    let by_user = q(from, to, &[User, Product], None, None);
    let everything = rows(db, a, &by_user, Source::Raw).await;
    assert_eq!(everything.len(), 4, "{everything:?}");
    let of = |id: i32| -> Vec<UsageRow> {
        everything
            .iter()
            .filter(|r| r.user_id == Some(id))
            .cloned()
            .collect()
    };

    // A member asking for the whole account gets their own rows only.
    let mine = reports::usage_report(db, &m1, a, by_user.clone())
        .await
        .unwrap();
    assert_eq!(mine, of(m1_id));
    assert_eq!(mine.len(), 2);
    let mine_total = reports::usage_report(db, &m1, a, q(from, to, &[], None, None))
        .await
        .unwrap();
    assert_eq!(
        mine_total
            .iter()
            .map(|r| (r.opens, r.tokens, r.distinct_users, r.denials))
            .collect::<Vec<_>>(),
        vec![(2, 3, 1, 0)]
    );
    let m2_total = reports::usage_report(db, &m2, a, q(from, to, &[Day], None, None))
        .await
        .unwrap();
    assert_eq!(
        m2_total
            .iter()
            .map(|r| (r.period, r.opens, r.denials))
            .collect::<Vec<_>>(),
        vec![(Some(d("2026-03-02")), 1, 0), (Some(d("2026-03-03")), 0, 1)]
    );
    let named_self =
        reports::usage_report(db, &m1, a, q(from, to, &[User, Product], Some(m1_id), None))
            .await
            .unwrap();
    assert_eq!(named_self, of(m1_id));
    assert_err!(
        reports::usage_report(db, &m1, a, q(from, to, &[User], Some(m2_id), None)).await,
        Forbidden
    );

    // Analysts, admins and the operator see every row of the account.
    for (who, actor) in [
        ("analyst", &analyst),
        ("admin", &acct.admin),
        ("operator", &Actor::Operator),
    ] {
        let seen = reports::usage_report(db, actor, a, by_user.clone())
            .await
            .unwrap();
        assert_eq!(seen, everything, "{who}");
        let of_m2 = reports::usage_report(
            db,
            actor,
            a,
            q(from, to, &[User, Product], Some(m2_id), None),
        )
        .await
        .unwrap();
        assert_eq!(of_m2, of(m2_id), "{who}");
        reports::spending(db, actor, a, from, to)
            .await
            .unwrap_or_else(|e| panic!("{who} reads spending: {e}"));
        reports::forecast(db, actor, a, 90, now)
            .await
            .unwrap_or_else(|e| panic!("{who} reads the forecast: {e}"));
    }
    assert_eq!(
        reports::spending(db, &analyst, a, from, to).await.unwrap(),
        reports::spending(db, &acct.admin, a, from, to)
            .await
            .unwrap()
    );

    // Members do not read spending or the forecast.
    assert_err!(reports::spending(db, &m1, a, from, to).await, Forbidden);
    assert_err!(reports::forecast(db, &m1, a, 90, now).await, Forbidden);

    // Another account's admin sees nothing of this one, nor do its members.
    let stranger = &other.admin;
    assert_err!(
        reports::usage_report(db, stranger, a, by_user.clone()).await,
        Forbidden
    );
    assert_err!(
        reports::usage_report(db, stranger, a, q(from, to, &[], Some(m1_id), None)).await,
        Forbidden
    );
    assert_err!(
        reports::spending(db, stranger, a, from, to).await,
        Forbidden
    );
    assert_err!(reports::forecast(db, stranger, a, 90, now).await, Forbidden);
    assert_err!(
        reports::usage_report(db, &m1, other.account_id, q(from, to, &[], None, None)).await,
        Forbidden
    );
    // And their own report does not contain this account's usage.
    let theirs = reports::usage_report(db, stranger, other.account_id, by_user.clone())
        .await
        .unwrap();
    assert!(theirs.is_empty(), "{theirs:?}");

    // A deactivated member's key reads nothing, not even their own usage.
    let gone = users::deactivate_user(db, &acct.admin, m2_id)
        .await
        .unwrap();
    let gone = actor_of(&gone);
    assert_err!(
        reports::usage_report(db, &gone, a, by_user.clone()).await,
        Forbidden
    );
    assert_err!(
        reports::usage_report(db, &gone, a, q(from, to, &[], Some(m2_id), None)).await,
        Forbidden
    );
}

// ---------------------------------------------------------------------------
// 6. Spending
// ---------------------------------------------------------------------------

async fn spend(db: &Db, acct: &AccountFixture, from: &str, to: &str) -> Spending {
    reports::spending(db, &acct.admin, acct.account_id, d(from), d(to))
        .await
        .unwrap()
}

#[tokio::test]
async fn spending_values_tokens_at_the_price_of_their_lots() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let setup = t("2026-03-01T00:00:00Z");
    let acct = account(db, "Spend", setup).await;
    let a = acct.account_id;
    make_product(db, "p", 3, None).await;
    let (_, u1) = user(db, &acct, "u1@s.test", Role::Member, true, setup).await;
    let (_, u2) = user(db, &acct, "u2@s.test", Role::Member, true, setup).await;
    let clock = t("2026-03-01T12:00:00Z");
    // L1 expires an hour before L2, so it is drawn first.
    let l1 = buy_priced(db, a, 5, 100, "l1", t("2026-03-01T08:00:00Z"), clock).await;
    let l2 = buy_priced(db, a, 20, 40, "l2", t("2026-03-01T09:00:00Z"), clock).await;
    let l3 = buy_priced(
        db,
        a,
        10,
        70,
        "l3",
        t("2026-03-10T00:00:00Z"),
        t("2026-03-10T00:00:00Z"),
    )
    .await;

    let c1 = granted(db, &u1, t("2026-03-02T10:00:00Z"), "p").await; // 3 from L1: 300
    let c2 = granted(db, &u2, t("2026-03-02T11:00:00Z"), "p").await; // 2 L1 + 1 L2: 240
    let c3 = granted(db, &u1, t("2026-03-03T12:00:00Z"), "p").await; // 3 from L2: 120
    let spanning = charge::Entity::find_by_id(c2.charge_id.unwrap())
        .one(db.conn())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(spanning.cost_minor, 2 * 100 + 40, "{spanning:?}");
    let mut splits: Vec<(i32, i64)> = ledger_entry::Entity::find()
        .filter(ledger_entry::Column::ChargeId.eq(spanning.id))
        .all(db.conn())
        .await
        .unwrap()
        .iter()
        .map(|e| (e.lot_id, e.tokens))
        .collect();
    splits.sort();
    assert_eq!(
        splits,
        vec![(l1, -2), (l2, -1)],
        "the charge spans two lots"
    );
    assert!(c1.charge_id.is_some() && c3.charge_id.is_some());

    let currency = lot::Entity::find_by_id(l1)
        .one(db.conn())
        .await
        .unwrap()
        .unwrap()
        .currency;
    let want = |tokens, cost_minor, purchased_tokens, purchased_minor, expired_tokens| Spending {
        tokens,
        cost_minor,
        currency: currency.clone(),
        purchased_tokens,
        purchased_minor,
        expired_tokens,
    };
    let march = want(9, 300 + 240 + 120, 35, 5 * 100 + 20 * 40 + 10 * 70, 0);
    assert_eq!(spend(db, &acct, "2026-03-01", "2026-03-31").await, march);
    assert_eq!(
        spend(db, &acct, "2026-03-02", "2026-03-02").await,
        want(6, 540, 0, 0, 0)
    );
    assert_eq!(
        spend(db, &acct, "2026-03-03", "2026-03-09").await,
        want(3, 120, 0, 0, 0)
    );
    assert_eq!(
        spend(db, &acct, "2026-03-01", "2026-03-01").await,
        want(0, 0, 25, 1_300, 0)
    );
    assert_eq!(
        spend(db, &acct, "2026-03-10", "2026-03-10").await,
        want(0, 0, 10, 700, 0)
    );
    // The usage report's cost agrees, per user.
    let per_user = both(
        db,
        a,
        &q(d("2026-03-01"), d("2026-03-31"), &[User], None, None),
    )
    .await;
    let mut costs: Vec<i64> = per_user.iter().map(|r| r.cost_minor).collect();
    costs.sort();
    assert_eq!(costs, vec![240, 420]);

    // Rolled up, the same.
    roll(db, t("2026-03-20T00:00:00Z")).await;
    assert_eq!(spend(db, &acct, "2026-03-01", "2026-03-31").await, march);
    assert_eq!(
        spend(db, &acct, "2026-03-02", "2026-03-02").await,
        want(6, 540, 0, 0, 0)
    );

    // A year on, what was left expires: L2's 16 at its expiry instant, L3's 10.
    assert_eq!(
        lots::sweep_expired(db, t("2027-03-11T00:00:00Z"))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        spend(db, &acct, "2027-03-01", "2027-03-01").await,
        want(0, 0, 0, 0, 16)
    );
    assert_eq!(
        spend(db, &acct, "2027-03-01", "2027-03-31").await,
        want(0, 0, 0, 0, 26)
    );
    assert_eq!(
        spend(db, &acct, "2027-03-02", "2027-03-09").await,
        want(0, 0, 0, 0, 0)
    );
    assert_eq!(
        spend(db, &acct, "2027-03-10", "2027-03-10").await,
        want(0, 0, 0, 0, 10)
    );
    assert_eq!(
        spend(db, &acct, "2027-02-01", "2027-02-28").await,
        want(0, 0, 0, 0, 0)
    );
    assert_eq!(spend(db, &acct, "2026-03-01", "2026-03-31").await, march);
    for (id, expired) in [(l1, 0), (l2, 16), (l3, 10)] {
        let l = lot::Entity::find_by_id(id)
            .one(db.conn())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((l.expired, l.remaining), (expired, 0), "{l:?}");
    }
}

// ---------------------------------------------------------------------------
// 7. Forecast and advice
// ---------------------------------------------------------------------------

#[tokio::test]
async fn forecast_projects_trailing_usage_and_advises_subscriptions() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let setup = t("2026-03-01T00:00:00Z");
    let now = t("2026-04-01T12:00:00Z");
    let acct = account(db, "Forecast", setup).await;
    let a = acct.account_id;
    let p = make_product(db, "p", 28, Some(100_000)).await;
    let qp = make_product(db, "q", 5, Some(1_956)).await;
    make_product(db, "r", 4, None).await;
    let (u1_id, u1) = user(db, &acct, "u1@f.test", Role::Member, true, setup).await;
    let (u2_id, u2) = user(db, &acct, "u2@f.test", Role::Member, true, setup).await;
    let (_, u3) = user(db, &acct, "u3@f.test", Role::Member, true, setup).await;
    // L1 expires 2026-04-20T00:00, 18½ days after now: inside a 90-day horizon.
    buy_priced(db, a, 1_600, 10, "l1", t("2025-04-20T00:00:00Z"), setup).await;
    buy_priced(db, a, 1_000, 10, "l2", setup, setup).await;

    // u1 opens p every day from 03-03 to 04-01; the trailing window is 03-04..=03-31.
    let mut day = d("2026-03-03");
    let mut i = 0;
    while day <= d("2026-04-01") {
        granted(
            db,
            &u1,
            day_start(day) + Duration::hours(10) + Duration::minutes(i),
            "p",
        )
        .await;
        day += Duration::days(1);
        i += 1;
    }
    for day in ["2026-03-10", "2026-03-17", "2026-03-24"] {
        granted(db, &u2, day_start(d(day)) + Duration::hours(9), "q").await;
    }
    granted(db, &u3, t("2026-03-20T09:00:00Z"), "r").await;

    // trailing = 28 × 28 + 3 × 5 + 4 = 803 tokens over 28 days.
    let trailing = 28 * 28 + 15 + 4;
    let ceil = |a: i64, b: i64| (a + b - 1) / b;
    let expected = |h: i64| ceil(trailing * h, 28);
    assert_eq!(expected(90), 2_582);
    // L1 had 1,600 − 28 (03-03) − 803 − 28 (04-01) = 741 left; it covers only the need
    // of its 18 whole days (517), L2 its 1,000.
    let balance = 741 + 1_000;
    let advice = vec![
        // 784 tokens at 10 = 7,840 in 28 days: 102,200 a year > 100,000.
        Advice {
            user_id: u1_id,
            product_id: p,
            flex_cost_minor: 102_200,
            subscription_cost_minor: 100_000,
            recommend_subscription: true,
        },
        // 150 in 28 days: 1,956 a year, the same as the subscription: not recommended.
        Advice {
            user_id: u2_id,
            product_id: qp,
            flex_cost_minor: 1_956,
            subscription_cost_minor: 1_956,
            recommend_subscription: false,
        },
    ];
    let want = |horizon_days: i64, expected_tokens: i64, shortfall: i64| Forecast {
        horizon_days,
        expected_tokens,
        balance,
        shortfall,
        advice: advice.clone(),
    };
    for phase in ["raw", "rolled"] {
        if phase == "rolled" {
            roll(db, now).await;
            assert_eq!(watermark(db).await, Some(d("2026-03-31")));
        }
        let f = reports::forecast(db, &acct.admin, a, 90, now)
            .await
            .unwrap();
        assert_eq!(f, want(90, 2_582, 2_582 - (517 + 1_000)), "{phase}");
        assert_eq!(
            f.balance,
            daypass_domain::accounts::balance_at(db.conn(), a, now)
                .await
                .unwrap()
                .get()
        );
        assert_eq!(
            reports::forecast(db, &acct.admin, a, 1, now).await.unwrap(),
            want(1, 29, 0),
            "{phase}"
        );
        assert_eq!(
            reports::forecast(db, &acct.admin, a, 28, now)
                .await
                .unwrap(),
            want(28, 803, 0),
            "{phase}"
        );
        assert_eq!(expected(1), 29);
        assert_eq!(expected(28), 803);
        assert_eq!(ceil(trailing * 18, 28), 517);
    }
    for bad in [0, -1, -90, MAX_FORECAST_DAYS + 1] {
        assert_err!(
            reports::forecast(db, &acct.admin, a, bad, now).await,
            BadInput
        );
    }
    assert!(
        reports::forecast(db, &acct.admin, a, MAX_FORECAST_DAYS, now)
            .await
            .is_ok()
    );
}

// ---------------------------------------------------------------------------
// 8. Bad input
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bad_ranges_are_refused() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let setup = t("2030-01-01T12:00:00Z");
    let acct = account(db, "Bad", setup).await;
    let a = acct.account_id;
    let (from, to) = (d("2029-03-02"), d("2029-03-01"));
    for source in [Source::Raw, Source::Rollups] {
        assert_err!(
            reports::usage_rows(db, a, &q(from, to, &[Day], None, None), source).await,
            BadInput
        );
    }
    assert_err!(
        reports::usage_report(db, &acct.admin, a, q(from, to, &[], None, None)).await,
        BadInput
    );
    assert_err!(
        reports::spending(db, &acct.admin, a, from, to).await,
        BadInput
    );

    // With nothing to roll, the job marks every closed day rolled at once.
    assert_eq!(roll(db, setup).await, 0);
    let last = d("2029-12-31");
    assert_eq!(watermark(db).await, Some(last));
    // Any range is valid, all time included; with no opens every report is empty.
    // A purchase (no usage) shows in the spending of every range that holds it.
    buy_priced(db, a, 7, 100, "bad-ranges", setup, setup).await;
    for (from, to) in [
        (last - Duration::days(3_699), last),
        (d("2000-01-01"), d("2100-12-31")),
        (d("0000-01-01"), d("9999-12-31")),
    ] {
        for source in [Source::Raw, Source::Rollups] {
            let ok = reports::usage_rows(db, a, &q(from, to, &[], None, None), source)
                .await
                .unwrap();
            assert_eq!(
                ok.len(),
                1,
                "an empty ungrouped report has its one zero row: {ok:?}"
            );
            assert_eq!((ok[0].opens, ok[0].tokens, ok[0].distinct_users), (0, 0, 0));
            let by_day = reports::usage_rows(db, a, &q(from, to, &[Day], None, None), source)
                .await
                .unwrap();
            assert!(by_day.is_empty(), "{by_day:?}");
        }
        let spent = reports::spending(db, &acct.admin, a, from, to)
            .await
            .unwrap();
        assert_eq!(spent.tokens, 0);
        let holds_it = from <= setup.date_naive() && setup.date_naive() <= to;
        assert_eq!(
            (spent.purchased_tokens, spent.purchased_minor),
            if holds_it { (7, 700) } else { (0, 0) },
            "{from} – {to}"
        );
    }
    // One day is a valid range.
    let one = reports::usage_rows(db, a, &q(last, last, &[Day], None, None), Source::Raw)
        .await
        .unwrap();
    assert!(one.is_empty(), "{one:?}");
}

/// Upgrading a database rolled by the first rollup schema: the new migration empties
/// the derived tables and rewinds the watermark, so the job rebuilds everything with
/// the since-counts and no stale row survives to answer a report.
#[tokio::test]
async fn upgrading_the_rollup_schema_rebuilds_the_rollups() {
    use daypass_migration::{Migrator, MigratorTrait};
    let (url, _dir) = TestDb::fresh_url().await;
    let db = &Db::connect(&url).await.unwrap();
    // The schema as `m20261128_000003_usage_rollups` left it, with rollups in it.
    Migrator::up(db.conn(), Some(3)).await.unwrap();
    for sql in [
        "INSERT INTO rollup_watermark (id, rolled_through) VALUES (1, '2026-03-05')",
        "INSERT INTO usage_day_totals (account_id, day, tokens, opens, charges, denials, \
         cost_minor, distinct_users) VALUES (1, '2026-03-03', 999, 999, 999, 0, 999, 9)",
        "INSERT INTO usage_period_members (account_id, grain, period, product_id, user_id, \
         first_day) VALUES (1, 'WEEK', '2026-03-02', 0, 1, '2026-03-03')",
    ] {
        db.conn().execute_unprepared(sql).await.unwrap();
    }
    db.migrate().await.unwrap();
    assert_eq!(watermark(db).await, None, "the watermark is rewound");
    assert_eq!(
        dump_rollups(db).await,
        vec!["rollup_watermark: id=1 rolled_through=NULL".to_owned()],
        "no rollup row survives the upgrade"
    );

    // The job then rebuilds from the raw opens; reports are the same either way.
    let setup = t("2026-03-01T00:00:00Z");
    let acct = account(db, "Upgraded", setup).await;
    make_product(db, "x", 2, None).await;
    let (_, u) = user(db, &acct, "u@up.test", Role::Member, true, setup).await;
    buy(db, acct.account_id, 100, "k", setup, setup).await;
    granted(db, &u, t("2026-03-03T10:00:00Z"), "x").await;
    granted(db, &u, t("2026-03-05T10:00:00Z"), "x").await;
    let month = q(d("2026-03-04"), d("2026-03-31"), &[Month], None, None);
    let before = both(db, acct.account_id, &month).await;
    assert_eq!(roll(db, t("2026-03-06T01:00:00Z")).await, 3);
    assert_eq!(both(db, acct.account_id, &month).await, before);
    assert_eq!(shape(&before), vec![(Some(d("2026-03-01")), None, 1, 1, 0)]);
}
