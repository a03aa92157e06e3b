//! RUNNING.md's scale-out: three `daypass serve` processes (workers external) and two
//! `daypass-worker` processes on one PostgreSQL database, the job queue on Redis and a
//! real SMTP server keep one truth under a mixed concurrent load, while one API and
//! one worker are SIGKILLed mid-load and started again. Afterwards the database, the
//! HTTP answers and the received mail are checked against PRODUCT.md's rules; the
//! checks are then shown to catch a duplicated charge, a lost token and a lost e-mail.

use daypass_tests::cluster::{Balancer, Cluster, Sent};
use daypass_tests::json::{id, int};
use daypass_tests::server::OPERATOR_KEY;
use daypass_tests::smtp::ReceivedMail;
use futures::future::join_all;
use sea_orm::{ConnectionTrait, Database, QueryResult, Statement, TransactionTrait};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OP: Option<&str> = Some(OPERATOR_KEY);
const PUBLIC_URL: &str = "https://daypass.test";
/// Product codes and daily rates.
const PRODUCTS: [(&str, i64); 3] = [("cad", 10), ("cam", 7), ("viz", 5)];

const BUSY_ACCOUNTS: usize = 4;
const BUSY_MEMBERS: usize = 16;
const BUSY_FIRST_LOT: i64 = 120;
const BUSY_THRESHOLD: i64 = 60;
const BUSY_TOP_UPS: usize = 6;
const BUSY_TOP_UP: i64 = 30;

const RACE_ACCOUNTS: usize = 3;
const RACE_MEMBERS: usize = 10;
/// Enough for 4 of the 10 members' `cad` (10 a day).
const RACE_LOT: i64 = 45;
const RACE_THRESHOLD: i64 = 25;
const RACE_REFILL: i64 = 100;
/// When each race starts after the load began: before the kills, just as they come
/// (its requests in flight), and after the restarts.
const RACE_AT_MS: [u64; RACE_ACCOUNTS] = [1_000, 4_990, 11_000];
const KILL_AT_MS: u64 = 5_000;
const DOWN_FOR_MS: u64 = 4_000;

const OPEN: &str = "mutation($c: String!, $v: String) {
  openProduct(input: {productCode: $c, version: $v}) { granted source tokensCharged denyReason balance }
}";
const PURCHASE: &str = "mutation($q: Int!, $k: String!) {
  purchaseTokens(input: {quantity: $q, idempotencyKey: $k}) { id quantity remaining }
}";

#[derive(Clone)]
struct Member {
    user: i64,
    key: String,
}

struct Acct {
    id: i64,
    admin: String,
    members: Vec<Member>,
}

/// An open the client got an answer to.
struct OpenAnswer {
    user: i64,
    code: String,
    granted: bool,
    tokens: i64,
    deny: Option<String>,
}

/// What the clients were told over HTTP, and what they never heard back about.
#[derive(Default)]
struct Told {
    opens: Vec<OpenAnswer>,
    /// Opens sent to an API that died before answering: (user, code).
    lost_opens: Vec<(i64, String)>,
    /// Acknowledged purchases: (account, idempotency key, quantity, lot id).
    purchases: Vec<(i64, String, i64, i64)>,
    lost_purchases: u32,
}

type Shared = Arc<Mutex<Told>>;

/// Opens `code` as `m`, sent again on another API while the answer is lost (a lost
/// attempt may have charged: the retry then finds the window). Returns the answer.
async fn open(b: &Balancer, told: &Shared, m: &Member, code: &str, version: Option<&str>) -> Value {
    loop {
        match b
            .send(Some(&m.key), OPEN, json!({"c": code, "v": version}))
            .await
        {
            Sent::Lost(_) => told.lock().unwrap().lost_opens.push((m.user, code.into())),
            Sent::Answered(resp, api) => {
                assert!(
                    resp.get("errors").is_none(),
                    "an open answers with data (API {api}): {resp:#}"
                );
                let r = resp["data"]["openProduct"].clone();
                assert!(int(&r["balance"]) >= 0, "{r:#}");
                told.lock().unwrap().opens.push(OpenAnswer {
                    user: m.user,
                    code: code.into(),
                    granted: r["granted"] == true,
                    tokens: int(&r["tokensCharged"]),
                    deny: r["denyReason"].as_str().map(str::to_owned),
                });
                return r;
            }
        }
    }
}

/// A self-service purchase with idempotency key `key`, repeated while lost. Returns
/// the lot's id.
async fn purchase(
    b: &Balancer,
    told: &Shared,
    account: i64,
    admin: &str,
    quantity: i64,
    key: &str,
) -> i64 {
    let (resp, lost) = b
        .send_until_answered(Some(admin), PURCHASE, json!({"q": quantity, "k": key}))
        .await;
    assert!(resp.get("errors").is_none(), "purchase {key}: {resp:#}");
    let lot = &resp["data"]["purchaseTokens"];
    assert_eq!(int(&lot["quantity"]), quantity, "{lot:#}");
    let lot_id: i64 = id(&lot["id"]).parse().unwrap();
    let mut t = told.lock().unwrap();
    t.lost_purchases += lost;
    t.purchases.push((account, key.into(), quantity, lot_id));
    lot_id
}

/// The same purchase sent `n` times at once (through different APIs): one lot.
async fn purchase_n(
    b: &Balancer,
    told: &Shared,
    acct: (i64, &str),
    quantity: i64,
    key: &str,
    n: usize,
) -> i64 {
    let lots = join_all((0..n).map(|_| purchase(b, told, acct.0, acct.1, quantity, key))).await;
    assert!(
        lots.iter().all(|l| *l == lots[0]),
        "one key, one lot: {lots:?}"
    );
    lots[0]
}

async fn create_account(b: &Balancer, name: String, members: usize, threshold: i64) -> Acct {
    let tag = name.to_lowercase().replace(' ', "-");
    let d = b
        .ok(
            OP,
            "mutation($n: String!, $e: String!) {
               createAccount(input: {name: $n, adminEmail: $e, adminName: \"First Admin\"}) {
                 account { id } adminApiKey
               }
             }",
            json!({"n": name, "e": format!("first-admin@{tag}.test")}),
        )
        .await;
    let account: i64 = id(&d["createAccount"]["account"]["id"]).parse().unwrap();
    let admin = id(&d["createAccount"]["adminApiKey"]);
    let create_user = |email: String, role: &'static str| {
        let admin = admin.clone();
        async move {
            let d = b
                .ok(
                    Some(&admin),
                    "mutation($e: String!, $r: Role!) {
                       createUser(input: {email: $e, name: $e, role: $r}) { user { id } apiKey }
                     }",
                    json!({"e": email, "r": role}),
                )
                .await;
            (
                id(&d["createUser"]["user"]["id"]),
                id(&d["createUser"]["apiKey"]),
            )
        }
    };
    // A second admin: every e-mail goes to both.
    create_user(format!("second-admin@{tag}.test"), "ADMIN").await;
    let created =
        join_all((0..members).map(|i| create_user(format!("m{i}@{tag}.test"), "MEMBER"))).await;
    let ids: Vec<&String> = created.iter().map(|(u, _)| u).collect();
    b.ok(
        Some(&admin),
        "mutation($ids: [ID!]!) { assignFlex(userIds: $ids, assigned: true) { id } }",
        json!({"ids": ids}),
    )
    .await;
    let d = b
        .ok(
            Some(&admin),
            "mutation($t: Int!) { setLowBalanceThreshold(tokens: $t) { lowBalanceThreshold } }",
            json!({"t": threshold}),
        )
        .await;
    assert_eq!(
        int(&d["setLowBalanceThreshold"]["lowBalanceThreshold"]),
        threshold
    );
    Acct {
        id: account,
        admin,
        members: created
            .into_iter()
            .map(|(u, key)| Member {
                user: u.parse().unwrap(),
                key,
            })
            .collect(),
    }
}

fn jitter(max_ms: u64) -> Duration {
    Duration::from_millis(rand::random_range(0..max_ms))
}

/// A member of a busy account: each product once, sometimes double-clicked (the same
/// open sent 2 or 3 times at once through different APIs), then reopened in another
/// version inside the window.
async fn busy_member(b: Balancer, told: Shared, m: Member) {
    let mut order = [0, 1, 2];
    for i in (1..order.len()).rev() {
        order.swap(i, rand::random_range(0..=i));
    }
    for p in order {
        let code = PRODUCTS[p].0;
        tokio::time::sleep(jitter(4_500)).await;
        let clicks = rand::random_range(1..=3);
        let answers = join_all((0..clicks).map(|_| open(&b, &told, &m, code, None))).await;
        let charged: i64 = answers.iter().map(|r| int(&r["tokensCharged"])).sum();
        assert!(
            charged == 0 || charged == PRODUCTS[p].1,
            "concurrent opens of one user and product charge once: {answers:#?}"
        );
        if answers.iter().any(|r| r["granted"] == true) {
            tokio::time::sleep(jitter(1_500)).await;
            let again = open(&b, &told, &m, code, Some("2.0")).await;
            assert_eq!(again["granted"], true, "{again:#}");
            assert_eq!(
                again["tokensCharged"], 0,
                "inside the window (another process): {again:#}"
            );
        }
    }
}

/// A busy account's admin tops up now and then; each purchase is sent twice at once,
/// and every other one once more a little later (a client retrying).
async fn busy_admin(b: Balancer, told: Shared, account: i64, admin: String) {
    for n in 0..BUSY_TOP_UPS {
        tokio::time::sleep(Duration::from_millis(1_800) + jitter(800)).await;
        let key = format!("top-up-{account}-{n}");
        let lot = purchase_n(&b, &told, (account, &admin), BUSY_TOP_UP, &key, 2).await;
        if n % 2 == 0 {
            tokio::time::sleep(jitter(1_000)).await;
            let again = purchase(&b, &told, account, &admin, BUSY_TOP_UP, &key).await;
            assert_eq!(again, lot, "a retried purchase returns the first lot");
        }
    }
}

/// All members of a race account open `cad` at once with tokens for 4 of them: 4 are
/// charged, 6 denied. After a purchase every denied one gets in.
async fn race(b: Balancer, told: Shared, acct: Arc<Acct>, at: Duration) -> (usize, usize) {
    tokio::time::sleep(at).await;
    let answers = join_all(acct.members.iter().map(|m| open(&b, &told, m, "cad", None))).await;
    let granted = answers.iter().filter(|r| r["granted"] == true).count();
    let denied: Vec<&Member> = acct
        .members
        .iter()
        .zip(&answers)
        .filter(|(_, r)| r["granted"] == false)
        .map(|(m, _)| m)
        .collect();
    assert_eq!(
        (granted, denied.len()),
        (
            (RACE_LOT / 10) as usize,
            RACE_MEMBERS - (RACE_LOT / 10) as usize
        ),
        "opens that together exceed the balance are granted as far as it goes: {answers:#?}"
    );
    for r in &answers {
        if r["granted"] == false {
            assert_eq!(r["denyReason"], "INSUFFICIENT_TOKENS", "{r:#}");
            assert_eq!(r["tokensCharged"], 0, "{r:#}");
        }
    }
    let key = format!("refill-{}", acct.id);
    purchase_n(&b, &told, (acct.id, &acct.admin), RACE_REFILL, &key, 2).await;
    let again = join_all(denied.iter().map(|m| open(&b, &told, m, "cad", None))).await;
    for r in &again {
        assert_eq!(
            r["granted"], true,
            "access returns once tokens are bought: {r:#}"
        );
    }
    (granted, denied.len())
}

// ---------------------------------------------------------------------------------
// The checks, on any connection (the database, or a transaction that breaks it).
// ---------------------------------------------------------------------------------

async fn rows(conn: &impl ConnectionTrait, sql: &str) -> Vec<QueryResult> {
    conn.query_all_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn i(r: &QueryResult, col: &str) -> i64 {
    r.try_get::<i64>("", col)
        .unwrap_or_else(|e| panic!("{col}: {e}"))
}

fn s(r: &QueryResult, col: &str) -> String {
    r.try_get::<String>("", col)
        .unwrap_or_else(|e| panic!("{col}: {e}"))
}

fn message_id(notification: i64) -> String {
    format!("<notification-{notification}@daypass.test>")
}

/// What the checks counted.
#[derive(Debug, Default)]
struct Counts {
    lots: usize,
    ledger_entries: usize,
    charges: usize,
    charging_answers: usize,
    opens: usize,
    denials: usize,
    denial_answers: usize,
    notifications: BTreeMap<String, usize>,
    mails: usize,
    distinct_mails: usize,
}

/// Every rule the scale-out must keep, checked on the database behind `conn`, the
/// answers in `told` and the mail in `inbox`. Returns the counts and each violation.
async fn violations(
    conn: &impl ConnectionTrait,
    told: &Told,
    inbox: &[ReceivedMail],
) -> (Counts, Vec<String>) {
    let mut bad = Vec::new();
    let mut counts = Counts::default();

    // Rule 6, lot by lot, and each lot's ledger.
    let lots = rows(
        conn,
        "SELECT CAST(l.id AS BIGINT) AS id, CAST(l.account_id AS BIGINT) AS account_id, \
         l.quantity, l.used, l.expired, l.remaining, l.idempotency_key, \
         CAST(COALESCE(SUM(CASE WHEN e.kind = 'PURCHASE' THEN e.tokens END), 0) AS BIGINT) AS bought, \
         CAST(COALESCE(SUM(CASE WHEN e.kind = 'CHARGE' THEN -e.tokens END), 0) AS BIGINT) AS charged, \
         CAST(COALESCE(SUM(CASE WHEN e.kind = 'EXPIRY' THEN -e.tokens END), 0) AS BIGINT) AS lost \
         FROM lots l LEFT JOIN ledger_entries e ON e.lot_id = l.id \
         GROUP BY l.id, l.account_id, l.quantity, l.used, l.expired, l.remaining, l.idempotency_key",
    )
    .await;
    counts.lots = lots.len();
    let mut remaining_of: BTreeMap<i64, i64> = BTreeMap::new();
    let mut lot_of_key: BTreeMap<(i64, String), Vec<(i64, i64)>> = BTreeMap::new();
    for l in &lots {
        let (id, q, used, exp, rem) = (
            i(l, "id"),
            i(l, "quantity"),
            i(l, "used"),
            i(l, "expired"),
            i(l, "remaining"),
        );
        if q != used + exp + rem || rem < 0 || used < 0 || exp < 0 {
            bad.push(format!(
                "lot {id}: quantity {q} ≠ used {used} + expired {exp} + remaining {rem}"
            ));
        }
        let ledger = (i(l, "bought"), i(l, "charged"), i(l, "lost"));
        if ledger != (q, used, exp) {
            bad.push(format!(
                "lot {id}: ledger (bought, charged, expired) {ledger:?} ≠ lot ({q}, {used}, {exp})"
            ));
        }
        *remaining_of.entry(i(l, "account_id")).or_default() += rem;
        lot_of_key
            .entry((i(l, "account_id"), s(l, "idempotency_key")))
            .or_default()
            .push((id, q));
    }

    // The balance is what the ledger sums to, and never below zero.
    let ledger = rows(
        conn,
        "SELECT CAST(account_id AS BIGINT) AS account_id, CAST(SUM(tokens) AS BIGINT) AS n, \
         CAST(COUNT(*) AS BIGINT) AS entries FROM ledger_entries GROUP BY account_id",
    )
    .await;
    let mut ledger_of: BTreeMap<i64, i64> = BTreeMap::new();
    for r in &ledger {
        ledger_of.insert(i(r, "account_id"), i(r, "n"));
        counts.ledger_entries += i(r, "entries") as usize;
    }
    for a in remaining_of.keys().chain(ledger_of.keys()) {
        let (l, r) = (ledger_of.get(a).copied(), remaining_of.get(a).copied());
        if l != r {
            bad.push(format!(
                "account {a}: ledger sums to {l:?}, its lots hold {r:?}"
            ));
        }
        if r.unwrap_or(0) < 0 {
            bad.push(format!("account {a}: balance {r:?} below zero"));
        }
    }

    // Every acknowledged purchase exists, once per key; no lot was bought unasked.
    let mut keys_told: BTreeSet<(i64, String)> = BTreeSet::new();
    for (account, key, q, lot) in &told.purchases {
        keys_told.insert((*account, key.clone()));
        match lot_of_key.get(&(*account, key.clone())) {
            Some(found) if found == &vec![(*lot, *q)] => {}
            found => bad.push(format!(
                "purchase {key} of account {account} acknowledged as lot {lot} of {q}: \
                 the database has {found:?}"
            )),
        }
    }
    for (k, found) in &lot_of_key {
        if !keys_told.contains(k) {
            bad.push(format!("lot(s) {found:?} for {k:?}, never acknowledged"));
        }
    }

    // Rules 10 and 12: at most one charge per user, product and window; each charge
    // is what its ledger entries drew and has its granted open.
    let overlaps = rows(
        conn,
        "SELECT CAST(a.id AS BIGINT) AS a, CAST(b.id AS BIGINT) AS b FROM charges a \
         JOIN charges b ON a.user_id = b.user_id AND a.product_id = b.product_id AND a.id < b.id \
         AND a.window_starts_at < b.window_ends_at AND b.window_starts_at < a.window_ends_at",
    )
    .await;
    for r in &overlaps {
        bad.push(format!(
            "charges {} and {} overlap for one user and product",
            i(r, "a"),
            i(r, "b")
        ));
    }
    let mismatched = rows(
        conn,
        "SELECT CAST(c.id AS BIGINT) AS id FROM charges c WHERE c.tokens <> \
         COALESCE((SELECT -SUM(e.tokens) FROM ledger_entries e WHERE e.charge_id = c.id), 0) \
         OR 1 <> (SELECT COUNT(*) FROM opens o WHERE o.charge_id = c.id AND o.granted \
         AND o.tokens = c.tokens)",
    )
    .await;
    for r in &mismatched {
        bad.push(format!(
            "charge {}: its ledger entries or its open do not match it",
            i(r, "id")
        ));
    }
    let stale_windows = rows(
        conn,
        "SELECT CAST(w.user_id AS BIGINT) AS u FROM windows w WHERE w.charge_id <> \
         (SELECT MAX(c.id) FROM charges c WHERE c.user_id = w.user_id AND c.product_id = w.product_id)",
    )
    .await;
    for r in &stale_windows {
        bad.push(format!(
            "user {}: a window that is not its last charge",
            i(r, "u")
        ));
    }

    // The HTTP answers agree with the database, per user and product: every charging
    // answer is a charge, and a charge without one had its answer lost.
    let charges = rows(
        conn,
        "SELECT CAST(c.user_id AS BIGINT) AS user_id, p.code, CAST(COUNT(*) AS BIGINT) AS n \
         FROM charges c JOIN products p ON p.id = c.product_id GROUP BY c.user_id, p.code",
    )
    .await;
    let mut charged_db: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for r in &charges {
        charged_db.insert((i(r, "user_id"), s(r, "code")), i(r, "n"));
        counts.charges += i(r, "n") as usize;
    }
    let mut charged_told: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
    for o in &told.opens {
        let e = charged_told.entry((o.user, o.code.clone())).or_default();
        if o.granted && o.tokens > 0 {
            e.0 += 1;
            counts.charging_answers += 1;
        }
    }
    for (u, code) in &told.lost_opens {
        charged_told.entry((*u, code.clone())).or_default().1 += 1;
    }
    for k in charged_db.keys().chain(charged_told.keys()) {
        let db = charged_db.get(k).copied().unwrap_or(0);
        let (answers, lost) = charged_told.get(k).copied().unwrap_or((0, 0));
        if db < answers || db > answers + lost {
            bad.push(format!(
                "user {} product {}: {db} charge(s) in the database, {answers} charging \
                 answer(s) and {lost} lost request(s)",
                k.0, k.1
            ));
        }
    }
    // Denials (rule 11) and opens, per user.
    let opens = rows(
        conn,
        "SELECT CAST(user_id AS BIGINT) AS user_id, CAST(COUNT(*) AS BIGINT) AS n, \
         CAST(SUM(CASE WHEN deny_reason = 'INSUFFICIENT_TOKENS' THEN 1 ELSE 0 END) AS BIGINT) AS denied, \
         CAST(SUM(CASE WHEN granted THEN 0 ELSE 1 END) AS BIGINT) AS not_granted \
         FROM opens GROUP BY user_id",
    )
    .await;
    let mut opens_db: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for r in &opens {
        opens_db.insert(i(r, "user_id"), (i(r, "n"), i(r, "denied")));
        counts.opens += i(r, "n") as usize;
        counts.denials += i(r, "denied") as usize;
        if i(r, "not_granted") != i(r, "denied") {
            bad.push(format!(
                "user {}: denials for another reason than INSUFFICIENT_TOKENS",
                i(r, "user_id")
            ));
        }
    }
    let mut opens_told: BTreeMap<i64, (i64, i64, i64)> = BTreeMap::new();
    for o in &told.opens {
        let e = opens_told.entry(o.user).or_default();
        e.0 += 1;
        if !o.granted {
            assert_eq!(o.deny.as_deref(), Some("INSUFFICIENT_TOKENS"));
            e.1 += 1;
            counts.denial_answers += 1;
        }
    }
    for (u, _) in &told.lost_opens {
        opens_told.entry(*u).or_default().2 += 1;
    }
    for u in opens_db.keys().chain(opens_told.keys()) {
        let (n, denied) = opens_db.get(u).copied().unwrap_or((0, 0));
        let (answers, denials, lost) = opens_told.get(u).copied().unwrap_or((0, 0, 0));
        if n < answers || n > answers + lost || denied < denials || denied > denials + lost {
            bad.push(format!(
                "user {u}: {n} opens ({denied} denied) recorded, {answers} answered \
                 ({denials} denied), {lost} lost"
            ));
        }
    }

    // Rule 14: a low-balance notification for exactly the charges that crossed the
    // threshold (replaying each account's ledger in the order it was written, under
    // the account's lock), and one "tokens exhausted" per account and UTC day of
    // denials.
    let thresholds: BTreeMap<i64, i64> = rows(
        conn,
        "SELECT CAST(id AS BIGINT) AS id, low_balance_threshold AS t FROM accounts",
    )
    .await
    .iter()
    .filter_map(|r| Some((i(r, "id"), r.try_get::<Option<i64>>("", "t").ok()??)))
    .collect();
    let entries = rows(
        conn,
        "SELECT CAST(account_id AS BIGINT) AS account_id, tokens, \
         CAST(COALESCE(charge_id, 0) AS BIGINT) AS charge_id FROM ledger_entries \
         ORDER BY account_id, id",
    )
    .await;
    let mut charge_total: BTreeMap<i64, i64> = BTreeMap::new();
    for e in &entries {
        if i(e, "charge_id") != 0 {
            *charge_total.entry(i(e, "charge_id")).or_default() += i(e, "tokens");
        }
    }
    let mut expected_low: BTreeSet<String> = BTreeSet::new();
    let (mut account, mut balance, mut seen) = (0, 0, BTreeSet::new());
    for e in &entries {
        if i(e, "account_id") != account {
            (account, balance) = (i(e, "account_id"), 0);
        }
        let charge = i(e, "charge_id");
        if charge != 0 && seen.insert(charge) {
            let after = balance + charge_total[&charge];
            let t = thresholds.get(&account).copied().unwrap_or(i64::MIN);
            if balance >= t && after < t {
                expected_low.insert(format!("LOW_BALANCE low-balance:charge:{charge}"));
            }
        }
        balance += i(e, "tokens");
    }
    let mut expected_exhausted: BTreeSet<String> = rows(
        conn,
        "SELECT DISTINCT CAST(account_id AS BIGINT) AS account_id, \
         to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day FROM opens \
         WHERE deny_reason = 'INSUFFICIENT_TOKENS'",
    )
    .await
    .iter()
    .map(|r| {
        format!(
            "TOKENS_EXHAUSTED exhausted:{}:{}",
            i(r, "account_id"),
            s(r, "day")
        )
    })
    .collect();
    expected_low.append(&mut expected_exhausted);
    let notifications = rows(
        conn,
        "SELECT CAST(id AS BIGINT) AS id, kind, dedupe_key, state, recipients, \
         CAST(attempts AS BIGINT) AS attempts, sent_at IS NOT NULL AS sent FROM notifications",
    )
    .await;
    let made: BTreeSet<String> = notifications
        .iter()
        .map(|n| format!("{} {}", s(n, "kind"), s(n, "dedupe_key")))
        .collect();
    if made != expected_low {
        bad.push(format!(
            "notifications expected but missing: {:?}; made but not expected: {:?}",
            expected_low.difference(&made).collect::<Vec<_>>(),
            made.difference(&expected_low).collect::<Vec<_>>()
        ));
    }

    // Rule 15: every notification sent, received by the SMTP server by its admins,
    // and nothing received twice but the same message (same Message-ID) again.
    let mut by_id: BTreeMap<String, Vec<&ReceivedMail>> = BTreeMap::new();
    for m in inbox {
        by_id.entry(m.message_id()).or_default().push(m);
    }
    counts.mails = inbox.len();
    counts.distinct_mails = by_id.len();
    let mut known = BTreeSet::new();
    for n in &notifications {
        let id = i(n, "id");
        *counts.notifications.entry(s(n, "kind")).or_default() += 1;
        let sent = n.try_get::<bool>("", "sent").unwrap();
        if s(n, "state") != "SENT" || !sent {
            bad.push(format!(
                "notification {id} is {} after {} attempt(s)",
                s(n, "state"),
                i(n, "attempts")
            ));
        }
        let mid = message_id(id);
        let recipients: BTreeSet<String> = serde_json::from_str(&s(n, "recipients")).unwrap();
        match by_id.get(&mid) {
            None => bad.push(format!("notification {id}: no e-mail {mid} received")),
            Some(copies) => {
                for m in copies {
                    let to: BTreeSet<String> = m.to.iter().cloned().collect();
                    if to != recipients || recipients.len() != 2 {
                        bad.push(format!(
                            "{mid} went to {to:?}, the notification names {recipients:?}"
                        ));
                    }
                    if m.subject() != copies[0].subject() || m.text() != copies[0].text() {
                        bad.push(format!("{mid} received twice with different content"));
                    }
                }
            }
        }
        known.insert(mid);
    }
    for mid in by_id.keys() {
        if !known.contains(mid) {
            bad.push(format!("e-mail {mid:?} received for no notification"));
        }
    }
    (counts, bad)
}

// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_apis_and_two_workers_keep_one_truth_through_kill_9() {
    let needed = daypass_tests::cluster::services_reachable().await;
    if daypass_tests::require("PostgreSQL and Redis for the scale-out test", needed).is_none() {
        return;
    }
    let started = Instant::now();
    let mut cluster = Cluster::start(3, 2, PUBLIC_URL).await;
    let b = cluster.balancer.clone();
    println!(
        "scale-out: {} APIs {:?}, 2 workers, queue {} on Redis, database {} (up in {:?})",
        cluster.api_count(),
        b.urls(),
        cluster.queue_name,
        cluster.database_url,
        started.elapsed()
    );
    let told: Shared = Arc::default();

    // The catalog and the accounts, through the balancer.
    for (code, rate) in PRODUCTS {
        b.ok(
            OP,
            "mutation($c: String!, $r: Int!) {
               upsertProduct(input: {code: $c, name: $c, dailyRate: $r}) { id }
             }",
            json!({"c": code, "r": rate}),
        )
        .await;
    }
    let busy: Vec<Acct> = join_all(
        (0..BUSY_ACCOUNTS)
            .map(|n| create_account(&b, format!("Busy {n}"), BUSY_MEMBERS, BUSY_THRESHOLD)),
    )
    .await;
    let races: Vec<Arc<Acct>> = join_all(
        (0..RACE_ACCOUNTS)
            .map(|n| create_account(&b, format!("Race {n}"), RACE_MEMBERS, RACE_THRESHOLD)),
    )
    .await
    .into_iter()
    .map(Arc::new)
    .collect();
    for a in &busy {
        purchase(
            &b,
            &told,
            a.id,
            &a.admin,
            BUSY_FIRST_LOT,
            &format!("first-{}", a.id),
        )
        .await;
    }
    for a in &races {
        purchase(
            &b,
            &told,
            a.id,
            &a.admin,
            RACE_LOT,
            &format!("first-{}", a.id),
        )
        .await;
    }
    println!("set up in {:?}", started.elapsed());

    // The load, on every API at once.
    let load_started = Instant::now();
    let mut load = Vec::new();
    for a in &busy {
        for m in &a.members {
            load.push(tokio::spawn(busy_member(
                b.clone(),
                told.clone(),
                m.clone(),
            )));
        }
        load.push(tokio::spawn(busy_admin(
            b.clone(),
            told.clone(),
            a.id,
            a.admin.clone(),
        )));
    }
    let race_tasks: Vec<_> = races
        .iter()
        .zip(RACE_AT_MS)
        .map(|(a, at)| {
            tokio::spawn(race(
                b.clone(),
                told.clone(),
                a.clone(),
                Duration::from_millis(at),
            ))
        })
        .collect();

    // Mid-load: kill -9 one API and one worker, then start them again.
    tokio::time::sleep(Duration::from_millis(KILL_AT_MS)).await;
    let api_pid = cluster.kill_api(1);
    let worker_pid = cluster.kill_worker(0);
    println!(
        "{:?} into the load: kill -9 API 1 (pid {api_pid}) and worker 0 (pid {worker_pid})",
        load_started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(DOWN_FOR_MS)).await;
    cluster.restart_api(1).await;
    cluster.restart_worker(0).await;
    println!(
        "{:?} into the load: API 1 and worker 0 run again",
        load_started.elapsed()
    );
    for t in load {
        t.await.expect("a client task failed");
    }
    let mut races_told = Vec::new();
    for t in race_tasks {
        races_told.push(t.await.expect("a race failed"));
    }
    let load_took = load_started.elapsed();

    // Every API answers every account's balance alike.
    let db = Database::connect(&cluster.database_url)
        .await
        .expect("connect to the test database");
    for a in busy
        .iter()
        .map(|a| (a.id, &a.admin))
        .chain(races.iter().map(|a| (a.id, &a.admin)))
    {
        let sql = rows(
            &db,
            &format!(
                "SELECT CAST(COALESCE(SUM(remaining), 0) AS BIGINT) AS n FROM lots WHERE account_id = {}",
                a.0
            ),
        )
        .await;
        let expected = i(&sql[0], "n");
        for api in 0..cluster.api_count() {
            let d = b
                .ok_at(api, Some(a.1), "{ account { id balance } }", json!({}))
                .await;
            assert_eq!(
                int(&d["account"]["balance"]),
                expected,
                "API {api}'s balance of account {}",
                a.0
            );
        }
    }

    // The workers deliver everything (a send cut off by the kill waits for its lease
    // to run out), within a bound.
    let waited = Instant::now();
    loop {
        let pending = rows(
            &db,
            "SELECT CAST(id AS BIGINT) AS id FROM notifications WHERE state <> 'SENT'",
        )
        .await;
        let all = rows(&db, "SELECT CAST(id AS BIGINT) AS id FROM notifications").await;
        let received: BTreeSet<String> = cluster
            .smtp
            .messages()
            .iter()
            .map(ReceivedMail::message_id)
            .collect();
        if pending.is_empty()
            && all
                .iter()
                .all(|n| received.contains(&message_id(i(n, "id"))))
        {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(100),
            "{} notification(s) still not sent after {:?}",
            pending.len(),
            waited.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let delivery_took = waited.elapsed();
    // A little longer, for any late duplicate to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let inbox = cluster.smtp.messages();

    let told = std::mem::take(&mut *told.lock().unwrap());
    let (counts, bad) = violations(&db, &told, &inbox).await;
    println!(
        "load {load_took:?}, delivery {delivery_took:?}; {} requests answered, {} lost in \
         flight, {} moved to another API (connection refused); processes killed {}, restarted {}",
        b.answered.load(std::sync::atomic::Ordering::Relaxed),
        b.lost.load(std::sync::atomic::Ordering::Relaxed),
        b.failovers.load(std::sync::atomic::Ordering::Relaxed),
        cluster.killed,
        cluster.restarted
    );
    println!(
        "checked: lots {} (quantity = used + expired + remaining, ledger per lot), ledger \
         entries {} (sum per account = balance ≥ 0), purchases acknowledged {} ({} keys, \
         {} lost and retried), charges {} (= {} charging answers + lost; no overlapping \
         windows), opens {} ({} answered, {} lost), denials {} ({} denial answers), races \
         {:?} (granted, denied)",
        counts.lots,
        counts.ledger_entries,
        told.purchases.len(),
        told.purchases
            .iter()
            .map(|p| (p.0, &p.1))
            .collect::<BTreeSet<_>>()
            .len(),
        told.lost_purchases,
        counts.charges,
        counts.charging_answers,
        counts.opens,
        told.opens.len(),
        told.lost_opens.len(),
        counts.denials,
        counts.denial_answers,
        races_told,
    );
    println!(
        "checked: notifications {:?} (each = a crossing or a day of denials, all SENT), \
         mails received {} ({} distinct Message-IDs, {} duplicates of the same message)",
        counts.notifications,
        counts.mails,
        counts.distinct_mails,
        counts.mails - counts.distinct_mails
    );
    assert!(
        bad.is_empty(),
        "{} violation(s):\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(counts.charges > 100 && counts.denials >= 18, "{counts:?}");
    assert!(
        counts
            .notifications
            .get("LOW_BALANCE")
            .copied()
            .unwrap_or(0)
            >= BUSY_ACCOUNTS + RACE_ACCOUNTS,
        "every account crossed its threshold at least once: {counts:?}"
    );
    assert!(
        counts
            .notifications
            .get("TOKENS_EXHAUSTED")
            .copied()
            .unwrap_or(0)
            >= RACE_ACCOUNTS,
        "every race account was told it ran out: {counts:?}"
    );

    // The checks catch what they are for: a duplicated charge, a lost token, a lost
    // e-mail (each made in a transaction that is rolled back).
    let tx = db.begin().await.unwrap();
    tx.execute_unprepared(
        "INSERT INTO charges (account_id, user_id, product_id, version, tokens, cost_minor, \
         window_starts_at, window_ends_at) SELECT account_id, user_id, product_id, version, \
         tokens, cost_minor, window_starts_at + interval '1 second', \
         window_ends_at + interval '1 second' FROM charges WHERE id = (SELECT MIN(id) FROM charges)",
    )
    .await
    .unwrap();
    let (_, caught) = violations(&tx, &told, &inbox).await;
    tx.rollback().await.unwrap();
    assert!(
        caught.iter().any(|v| v.contains("overlap"))
            && caught.iter().any(|v| v.contains("charging answer")),
        "a duplicated charge goes unnoticed: {caught:?}"
    );
    let tx = db.begin().await.unwrap();
    tx.execute_unprepared(
        "UPDATE lots SET remaining = remaining - 1, used = used + 1 WHERE id = \
         (SELECT MIN(id) FROM lots WHERE remaining > 0)",
    )
    .await
    .unwrap();
    let (_, caught) = violations(&tx, &told, &inbox).await;
    tx.rollback().await.unwrap();
    assert!(
        caught.iter().any(|v| v.contains("ledger (bought"))
            && caught.iter().any(|v| v.contains("ledger sums")),
        "a lost token goes unnoticed: {caught:?}"
    );
    let (_, caught) = violations(&db, &told, &inbox[1..]).await;
    assert!(
        !caught.is_empty()
            || inbox
                .iter()
                .skip(1)
                .any(|m| m.message_id() == inbox[0].message_id()),
        "a lost e-mail goes unnoticed"
    );
    println!(
        "the checks catch a duplicated charge, a lost token and a lost e-mail; whole test {:?}",
        started.elapsed()
    );
    db.close().await.ok();
    cluster.shut_down().await;
}
