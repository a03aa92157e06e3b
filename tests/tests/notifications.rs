//! Rules 14 and 15 over GraphQL. In process ([`TestApp`], the jobs run by
//! `runMaintenance`, the e-mails on a real SMTP server): what causes a low-balance,
//! tokens-exhausted or expiry-reminder e-mail and what does not, retries and dead
//! letters. On the real binaries: the job queue's consumers on each backend, `.eml`
//! files, a worker killed mid-send, graceful shutdown, and two sweepers at once.

use chrono::{DateTime, Duration as Hours, Timelike, Utc};
use daypass_tests::cluster::{REDIS_ADDR, redis_delete_prefix, redis_ping};
use daypass_tests::server::{OPERATOR_KEY, TestWorker, unique_queue_name};
use daypass_tests::smtp::{ReceivedMail, SmtpServer, mail_files};
use daypass_tests::{Api, TestApp, TestServer, create_postgres_database, require, target_database};
use futures::future::join_all;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const OP: Option<&str> = Some(OPERATOR_KEY);
const PUBLIC_URL: &str = "https://daypass.test";

use daypass_tests::json::{at, id, int};

fn nodes(conn: &Value) -> Vec<Value> {
    conn["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("not a connection: {conn}"))
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

/// An account made by the operator, with its first admin.
struct Acct {
    id: String,
    admin: String,
    admin_email: String,
}

async fn create_account(s: &impl Api, name: &str) -> Acct {
    let email = format!("first-admin@{}.test", name.to_lowercase().replace(' ', "-"));
    let d = s
        .ok(
            OP,
            "mutation($n: String!, $e: String!) {
               createAccount(input: {name: $n, adminEmail: $e, adminName: \"First Admin\"}) {
                 account { id } adminApiKey
               }
             }",
            json!({"n": name, "e": email}),
        )
        .await;
    Acct {
        id: id(&d["createAccount"]["account"]["id"]),
        admin: id(&d["createAccount"]["adminApiKey"]),
        admin_email: email,
    }
}

/// `n` pay-as-you-go members of the account; returns their keys.
async fn members(s: &impl Api, acct: &Acct, tag: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    for i in 0..n {
        let email = format!("m{i}@{tag}.test");
        let (uid, key) = s.create_user(&acct.admin, &email, &email, "MEMBER").await;
        ids.push(uid);
        keys.push(key);
    }
    s.ok(
        Some(&acct.admin),
        "mutation($ids: [ID!]!) { assignFlex(userIds: $ids, assigned: true) { id } }",
        json!({"ids": ids}),
    )
    .await;
    keys
}

/// A self-service purchase by the account's admin.
async fn buy(s: &impl Api, admin: &str, quantity: i64) {
    s.ok(
        Some(admin),
        "mutation($q: Int!, $k: String!) {
           purchaseTokens(input: {quantity: $q, idempotencyKey: $k}) { id }
         }",
        json!({"q": quantity, "k": format!("buy-{:016x}", rand::random::<u64>())}),
    )
    .await;
}

/// An operator purchase for `account`, possibly recorded in the past; returns the lot
/// (id quantity expiresAt).
async fn op_buy(
    s: &impl Api,
    account: &str,
    quantity: i64,
    purchased_at: Option<DateTime<Utc>>,
) -> Value {
    let d = s
        .ok(
            OP,
            "mutation($a: ID!, $q: Int!, $k: String!, $p: DateTime) {
               purchaseTokens(input: {quantity: $q, idempotencyKey: $k, accountId: $a, purchasedAt: $p}) {
                 id quantity expiresAt
               }
             }",
            json!({
                "a": account,
                "q": quantity,
                "k": format!("op-buy-{:016x}", rand::random::<u64>()),
                "p": purchased_at.map(|t| t.to_rfc3339()),
            }),
        )
        .await;
    d["purchaseTokens"].clone()
}

async fn set_threshold(s: &impl Api, admin: &str, tokens: i64) {
    let d = s
        .ok(
            Some(admin),
            "mutation($t: Int!) { setLowBalanceThreshold(tokens: $t) { lowBalanceThreshold } }",
            json!({"t": tokens}),
        )
        .await;
    assert_eq!(
        int(&d["setLowBalanceThreshold"]["lowBalanceThreshold"]),
        tokens
    );
}

/// Opens `code` as the holder of `key`; the answer is data, never an error.
async fn open(s: &impl Api, key: &str, code: &str) -> Value {
    let resp = s
        .gql(
            Some(key),
            "mutation($c: String!) {
               openProduct(input: {productCode: $c}) { granted tokensCharged denyReason balance }
             }",
            json!({"c": code}),
        )
        .await;
    assert!(resp.get("errors").is_none(), "open failed: {resp:#}");
    resp["data"]["openProduct"].clone()
}

/// Opens and expects a charge; returns the balance after it.
async fn charge(s: &impl Api, key: &str, code: &str) -> i64 {
    let r = open(s, key, code).await;
    assert_eq!(r["granted"], true, "{r:#}");
    assert!(int(&r["tokensCharged"]) > 0, "{r:#}");
    int(&r["balance"])
}

async fn deny(s: &impl Api, key: &str, code: &str) {
    let r = open(s, key, code).await;
    assert_eq!(r["granted"], false, "{r:#}");
    assert_eq!(r["denyReason"], "INSUFFICIENT_TOKENS", "{r:#}");
}

/// The account's notifications, oldest first.
async fn notifications(s: &impl Api, account: &str) -> Vec<Value> {
    let d = s
        .ok(
            OP,
            "query($a: ID!) { account(id: $a) { notifications(first: 500) { edges { node {
               id kind createdAt sentAt recipients state attempts lastError
             } } } } }",
            json!({"a": account}),
        )
        .await;
    let mut list = nodes(&d["account"]["notifications"]);
    list.reverse();
    list
}

async fn of_kind(s: &impl Api, account: &str, kind: &str) -> Vec<Value> {
    notifications(s, account)
        .await
        .into_iter()
        .filter(|n| n["kind"] == kind)
        .collect()
}

async fn run_maintenance(s: &impl Api) {
    let d = s.ok(OP, "mutation { runMaintenance }", json!({})).await;
    assert_eq!(d["runMaintenance"], true);
}

async fn advance(s: &impl Api, hours: i64) -> DateTime<Utc> {
    let d = s
        .ok(
            OP,
            "mutation($h: Int!) { advanceClock(hours: $h) }",
            json!({"h": hours}),
        )
        .await;
    at(&d["advanceClock"])
}

/// Polls until every notification of `accounts` is SENT (panics after `timeout`).
async fn wait_all_sent(s: &impl Api, accounts: &[&str], timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = Vec::new();
        for a in accounts {
            all.extend(notifications(s, a).await);
        }
        if !all.is_empty() && all.iter().all(|n| n["state"] == "SENT") {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "not every notification was sent within {timeout:?}: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message_id_of(notification: &Value) -> String {
    format!("<notification-{}@daypass.test>", id(&notification["id"]))
}

fn recipients(n: &Value) -> BTreeSet<String> {
    n["recipients"]
        .as_array()
        .unwrap_or_else(|| panic!("recipients: {n}"))
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2
    }
}

// ---------------------------------------------------------------------------------
// 1. The low-balance e-mail over SMTP, and how fast the queue delivers it, per backend.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_balance_email_over_smtp_queue_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let queue_url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("queue.db").display()
    );
    low_balance_email_over_smtp("sqlite", &queue_url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_balance_email_over_smtp_queue_on_postgres() {
    let server =
        target_database().unwrap_or_else(|| "postgres://root@127.0.0.1:5432/postgres".to_owned());
    let created = create_postgres_database(&server, "daypass_test_queue").await;
    if let Some(queue_url) = require("PostgreSQL for the job queue", created) {
        low_balance_email_over_smtp("postgres", &queue_url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_balance_email_over_smtp_queue_on_redis() {
    let url = "redis://127.0.0.1:6379";
    if require("Redis for the job queue", redis_ping(REDIS_ADDR).await).is_some() {
        let queue_name = low_balance_email_over_smtp("redis", url).await;
        // The queue's keys are this test's own; leave the shared server as it was.
        redis_delete_prefix(REDIS_ADDR, &format!("{queue_name}:")).await;
    }
}

/// Rule 14 end to end, through the embedded workers consuming the job queue at
/// `queue_url` (never `runMaintenance`): one e-mail per crossing, to the active admins.
/// Returns the queue's name.
async fn low_balance_email_over_smtp(backend: &str, queue_url: &str) -> String {
    let smtp = SmtpServer::start().await;
    let queue_name = unique_queue_name(backend);
    let smtp_url = smtp.url();
    let s = TestServer::start_with(&[
        ("DAYPASS_SMTP_URL", smtp_url.as_str()),
        ("DAYPASS_PUBLIC_URL", PUBLIC_URL),
        ("DAYPASS_QUEUE_URL", queue_url),
        ("DAYPASS_QUEUE_NAME", queue_name.as_str()),
    ])
    .await;
    s.upsert_product("cad", 10).await;
    let name = format!("Northwind {backend}");
    let acct = create_account(&s, &name).await;
    let tag = format!("northwind-{backend}");
    // Three admins; the third leaves, so only two receive the e-mail.
    let second = format!("second-admin@{tag}.test");
    let third = format!("third-admin@{tag}.test");
    s.create_user(&acct.admin, &second, &second, "ADMIN").await;
    let (third_id, _) = s.create_user(&acct.admin, &third, &third, "ADMIN").await;
    s.ok(
        Some(&acct.admin),
        "mutation($u: ID!) { deactivateUser(userId: $u) { active } }",
        json!({"u": third_id}),
    )
    .await;
    const CROSSINGS: usize = 20;
    let keys = members(&s, &acct, &tag, 7 + CROSSINGS).await;
    buy(&s, &acct.admin, 100).await;
    let threshold = 55;
    set_threshold(&s, &acct.admin, threshold).await;

    // 100 → 90 → 80 → 70 → 60: at or above 55, no e-mail. 60 → 50 crosses.
    let mut latencies = Vec::new();
    for key in &keys[..4] {
        assert!(charge(&s, key, "cad").await >= threshold);
    }
    let started = Instant::now();
    assert_eq!(charge(&s, &keys[4], "cad").await, 50);
    // Charges below the threshold send nothing more.
    assert_eq!(charge(&s, &keys[5], "cad").await, 40);
    assert_eq!(charge(&s, &keys[6], "cad").await, 30);
    let got = smtp.wait_for(1, Duration::from_secs(30)).await;
    latencies.push(got[0].received_at - started);
    let sent = wait_all_sent(&s, &[&acct.id], Duration::from_secs(30)).await;
    assert_eq!(
        sent.len(),
        1,
        "one notification for one crossing: {sent:#?}"
    );
    let n = &sent[0];
    assert_eq!(n["kind"], "LOW_BALANCE");
    assert_eq!(n["attempts"], 1, "{n:#}");
    assert!(n["lastError"].is_null(), "{n:#}");
    assert!(at(&n["sentAt"]) >= at(&n["createdAt"]), "{n:#}");
    let admins: BTreeSet<String> = [acct.admin_email.clone(), second.clone()].into();
    assert_eq!(recipients(n), admins, "only active admins receive it");

    let inbox = smtp.messages();
    assert_eq!(inbox.len(), 1, "exactly one e-mail for one crossing");
    let mail = &inbox[0];
    assert_eq!(
        mail.to.iter().cloned().collect::<BTreeSet<_>>(),
        admins,
        "SMTP recipients are the active admins"
    );
    assert!(!mail.to.contains(&third));
    assert_eq!(mail.message_id(), message_id_of(n));
    assert!(
        mail.subject().contains(&name),
        "subject names the account: {}",
        mail.subject()
    );
    for (part, body) in [("text", mail.text()), ("html", mail.html())] {
        assert!(body.contains(&name), "{part} names the account: {body}");
        assert!(
            body.contains("50 tokens"),
            "{part} gives the balance: {body}"
        );
        assert!(
            body.contains(&format!("{threshold} tokens")),
            "{part} gives the threshold: {body}"
        );
        assert!(
            body.contains(&format!("{PUBLIC_URL}/")),
            "{part} links to {PUBLIC_URL}: {body}"
        );
    }
    let link = mail
        .html()
        .split("href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .map(str::to_owned)
        .expect("the HTML part has a link");
    assert!(link.starts_with(PUBLIC_URL), "{link}");

    // Re-arm by purchase and cross again, at random moments (the consumers poll on a
    // fixed tick; waiting for each e-mail before the next crossing would lock onto it),
    // then time each e-mail from its open's request.
    let mut balance = 30;
    let mut starts = Vec::new();
    for key in &keys[7..] {
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..400))).await;
        buy(&s, &acct.admin, threshold - balance).await;
        starts.push(Instant::now());
        balance = charge(&s, key, "cad").await;
        assert!(balance < threshold);
    }
    smtp.wait_for(1 + CROSSINGS, Duration::from_secs(35)).await;
    let all = wait_all_sent(&s, &[&acct.id], Duration::from_secs(30)).await;
    assert_eq!(all.len(), 1 + CROSSINGS, "one notification per crossing");
    let inbox = smtp.messages();
    assert_eq!(inbox.len(), 1 + CROSSINGS, "one e-mail per crossing");
    let ids: BTreeSet<String> = inbox.iter().map(ReceivedMail::message_id).collect();
    let expected: BTreeSet<String> = all.iter().map(message_id_of).collect();
    assert_eq!(ids, expected, "each notification's e-mail, once");
    assert!(all.iter().all(|n| n["attempts"] == 1), "{all:#?}");
    // Notifications are numbered in the order of the crossings that made them.
    let mut crossings = all.clone();
    crossings.sort_by_key(|n| id(&n["id"]).parse::<i64>().unwrap());
    for (n, started) in crossings[1..].iter().zip(&starts) {
        let mail = inbox
            .iter()
            .find(|m| m.message_id() == message_id_of(n))
            .unwrap();
        let latency = mail.received_at - *started;
        assert!(
            latency < Duration::from_secs(30),
            "notification {} took {latency:?} without runMaintenance",
            n["id"]
        );
        latencies.push(latency);
    }
    println!(
        "queue on {backend}: median openProduct → SMTP {:?} over {} crossings (min {:?}, max {:?})",
        median(latencies.clone()),
        latencies.len(),
        latencies.iter().min().unwrap(),
        latencies.iter().max().unwrap()
    );
    drop(s);
    queue_name
}

// ---------------------------------------------------------------------------------
// 2. What causes an e-mail, and what does not (in process, runMaintenance delivers).
// ---------------------------------------------------------------------------------

/// The application in process with the test clock: only `runMaintenance` delivers.
async fn mail_app() -> TestApp {
    TestApp::start_with(&[
        ("DAYPASS_TEST_CLOCK", "1"),
        ("DAYPASS_PUBLIC_URL", PUBLIC_URL),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_low_balance_email_per_crossing_rearmed_by_purchase() {
    let s = mail_app().await;
    s.upsert_product("cad", 10).await;
    let acct = create_account(&s, "Crossings").await;
    let keys = members(&s, &acct, "crossings", 12).await;
    buy(&s, &acct.admin, 100).await;

    // Setting a threshold sends nothing, even one above the balance.
    set_threshold(&s, &acct.admin, 200).await;
    run_maintenance(&s).await;
    assert!(notifications(&s, &acct.id).await.is_empty());
    set_threshold(&s, &acct.admin, 50).await;
    run_maintenance(&s).await;
    assert!(notifications(&s, &acct.id).await.is_empty());

    // 100 → 50 in five charges: landing on the threshold is not below it.
    for (i, key) in keys[..5].iter().enumerate() {
        assert_eq!(charge(&s, key, "cad").await, 90 - 10 * i as i64);
    }
    assert!(notifications(&s, &acct.id).await.is_empty());
    // 50 → 40 crosses; 30 and 20 follow below it: one notification.
    assert_eq!(charge(&s, &keys[5], "cad").await, 40);
    assert_eq!(charge(&s, &keys[6], "cad").await, 30);
    assert_eq!(charge(&s, &keys[7], "cad").await, 20);
    let low = of_kind(&s, &acct.id, "LOW_BALANCE").await;
    assert_eq!(low.len(), 1, "{low:#?}");
    assert_eq!(low[0]["state"], "PENDING");
    run_maintenance(&s).await;
    let low = of_kind(&s, &acct.id, "LOW_BALANCE").await;
    assert_eq!(low[0]["state"], "SENT", "{low:#?}");
    let inbox = s.mail();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].message_id(), message_id_of(&low[0]));
    assert!(inbox[0].text().contains("Balance now: 40 tokens"));

    // A purchase that leaves the balance below the threshold does not re-arm it.
    buy(&s, &acct.admin, 20).await; // 40
    assert_eq!(charge(&s, &keys[8], "cad").await, 30);
    assert_eq!(of_kind(&s, &acct.id, "LOW_BALANCE").await.len(), 1);
    // One that brings it back to the threshold does: the next crossing e-mails again.
    buy(&s, &acct.admin, 20).await; // 50
    assert_eq!(charge(&s, &keys[9], "cad").await, 40);
    assert_eq!(charge(&s, &keys[10], "cad").await, 30);
    let low = of_kind(&s, &acct.id, "LOW_BALANCE").await;
    assert_eq!(low.len(), 2, "{low:#?}");
    run_maintenance(&s).await;
    run_maintenance(&s).await;
    let low = of_kind(&s, &acct.id, "LOW_BALANCE").await;
    assert!(low.iter().all(|n| n["state"] == "SENT"), "{low:#?}");
    let inbox = s.mail();
    assert_eq!(inbox.len(), 2, "one e-mail per crossing");
    let ids: BTreeSet<String> = inbox.iter().map(ReceivedMail::message_id).collect();
    assert_eq!(ids, low.iter().map(message_id_of).collect());
    assert!(
        inbox.iter().all(|m| m.to == [acct.admin_email.clone()]),
        "to the admin"
    );
    // The threshold counts as it is when the charge happens.
    set_threshold(&s, &acct.admin, 25).await; // balance 30: above, nothing sent
    run_maintenance(&s).await;
    assert_eq!(s.mail().len(), 2);
    assert_eq!(charge(&s, &keys[11], "cad").await, 20);
    assert_eq!(of_kind(&s, &acct.id, "LOW_BALANCE").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_exhausted_at_most_once_per_account_and_utc_day() {
    let s = mail_app().await;
    // Two denials must fall on one UTC day.
    let now = advance(&s, 0).await;
    if now.hour() == 23 && now.minute() >= 50 {
        advance(&s, 1).await;
    }
    s.upsert_product("cad", 10).await;
    let dry = create_account(&s, "Dry").await;
    let keys = members(&s, &dry, "dry", 3).await;
    let other = create_account(&s, "Arid").await;
    let other_keys = members(&s, &other, "arid", 1).await;
    buy(&s, &dry.admin, 5).await; // not enough for one day

    deny(&s, &keys[0], "cad").await;
    deny(&s, &keys[1], "cad").await;
    deny(&s, &keys[0], "cad").await;
    let exhausted = of_kind(&s, &dry.id, "TOKENS_EXHAUSTED").await;
    assert_eq!(exhausted.len(), 1, "one per day: {exhausted:#?}");
    // Per account: another account's denial has its own.
    deny(&s, &other_keys[0], "cad").await;
    assert_eq!(of_kind(&s, &other.id, "TOKENS_EXHAUSTED").await.len(), 1);
    run_maintenance(&s).await;
    assert_eq!(s.mail().len(), 2);

    advance(&s, 24).await;
    deny(&s, &keys[2], "cad").await;
    deny(&s, &keys[1], "cad").await;
    let exhausted = of_kind(&s, &dry.id, "TOKENS_EXHAUSTED").await;
    assert_eq!(exhausted.len(), 2, "the next day, one more: {exhausted:#?}");
    run_maintenance(&s).await;
    let exhausted = of_kind(&s, &dry.id, "TOKENS_EXHAUSTED").await;
    assert!(exhausted.iter().all(|n| n["state"] == "SENT"));
    let inbox = s.mail();
    assert_eq!(inbox.len(), 3);
    let dry_mail: Vec<&ReceivedMail> = inbox
        .iter()
        .filter(|m| m.subject().contains("Dry"))
        .collect();
    assert_eq!(dry_mail.len(), 2);
    assert!(
        dry_mail
            .iter()
            .all(|m| m.text().contains("Balance now: 5 tokens"))
    );
    // No low-balance e-mail came with the denials (nothing was charged).
    assert!(of_kind(&s, &dry.id, "LOW_BALANCE").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_expiry_reminder_per_lot_with_tokens_left() {
    let s = mail_app().await;
    s.upsert_product("cad", 10).await;
    let acct = create_account(&s, "Reminders").await;
    let keys = members(&s, &acct, "reminders", 1).await;
    set_threshold(&s, &acct.admin, 0).await; // no low-balance e-mail in the way
    // A lot that gets used up, then one that keeps tokens.
    let used_up = op_buy(&s, &acct.id, 10, None).await;
    assert_eq!(charge(&s, &keys[0], "cad").await, 0);
    let kept = op_buy(&s, &acct.id, 100, None).await;
    let (used_up_id, kept_id) = (id(&used_up["id"]), id(&kept["id"]));
    let expires = at(&kept["expiresAt"]);

    run_maintenance(&s).await;
    assert!(of_kind(&s, &acct.id, "EXPIRY_REMINDER").await.is_empty());
    // 91 days before the expiry: not yet.
    let now = advance(&s, 0).await;
    let to_91_days_before = (expires - Hours::days(91) - now).num_hours();
    advance(&s, to_91_days_before).await;
    run_maintenance(&s).await;
    assert!(of_kind(&s, &acct.id, "EXPIRY_REMINDER").await.is_empty());
    // 89 days before: one reminder, however often maintenance runs.
    advance(&s, 48).await;
    run_maintenance(&s).await;
    run_maintenance(&s).await;
    let reminders = of_kind(&s, &acct.id, "EXPIRY_REMINDER").await;
    assert_eq!(reminders.len(), 1, "{reminders:#?}");
    assert_eq!(reminders[0]["state"], "SENT");
    advance(&s, 24 * 30).await;
    run_maintenance(&s).await;
    assert_eq!(of_kind(&s, &acct.id, "EXPIRY_REMINDER").await.len(), 1);
    assert_eq!(notifications(&s, &acct.id).await.len(), 1);

    let inbox = s.mail();
    assert_eq!(inbox.len(), 1);
    let text = inbox[0].text();
    assert!(inbox[0].subject().contains("100 tokens of Reminders"));
    assert!(
        text.contains(&format!("Lot {kept_id}: 100 tokens left")),
        "{text}"
    );
    assert!(
        !text.contains(&format!("Lot {used_up_id}:")),
        "the used-up lot gets no reminder: {text}"
    );
}

// ---------------------------------------------------------------------------------
// 3. Retries with backoff, and the dead letter.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_is_retried_then_delivered_once_or_given_up_after_eight() {
    let s = mail_app().await;
    let smtp = s.mail_server();
    s.upsert_product("cad", 10).await;
    let acct = create_account(&s, "Outage").await;
    let keys = members(&s, &acct, "outage", 1).await;
    buy(&s, &acct.admin, 60).await;
    set_threshold(&s, &acct.admin, 55).await;

    smtp.set_down(true);
    assert_eq!(charge(&s, &keys[0], "cad").await, 50);
    run_maintenance(&s).await;
    let low = of_kind(&s, &acct.id, "LOW_BALANCE").await;
    assert_eq!(low.len(), 1);
    assert_eq!(low[0]["state"], "PENDING", "{low:#?}");
    assert!(int(&low[0]["attempts"]) >= 1, "{low:#?}");
    assert!(
        low[0]["lastError"].as_str().is_some_and(|e| !e.is_empty()),
        "{low:#?}"
    );
    assert!(low[0]["sentAt"].is_null());
    assert!(smtp.messages().is_empty());

    smtp.set_down(false);
    advance(&s, 1).await;
    run_maintenance(&s).await;
    let low = of_kind(&s, &acct.id, "LOW_BALANCE").await;
    assert_eq!(low[0]["state"], "SENT", "{low:#?}");
    assert!(low[0]["lastError"].is_null(), "{low:#?}");
    let attempts = int(&low[0]["attempts"]);
    assert!(attempts >= 2, "{low:#?}");
    let inbox = smtp.messages();
    assert_eq!(inbox.len(), 1, "delivered once");
    assert_eq!(inbox[0].message_id(), message_id_of(&low[0]));
    run_maintenance(&s).await;
    assert_eq!(smtp.messages().len(), 1, "a sent e-mail is not sent again");

    // With the server staying down, a notification is given up after 8 attempts.
    smtp.set_down(true);
    let dead = create_account(&s, "Dead Letter").await;
    let dead_keys = members(&s, &dead, "dead-letter", 1).await;
    deny(&s, &dead_keys[0], "cad").await;
    let mut rounds = 0;
    loop {
        run_maintenance(&s).await;
        rounds += 1;
        let n = of_kind(&s, &dead.id, "TOKENS_EXHAUSTED").await;
        assert_eq!(n.len(), 1);
        if n[0]["state"] != "PENDING" {
            break;
        }
        assert!(rounds < 20, "still pending after {rounds} rounds: {n:#?}");
        advance(&s, 2).await;
    }
    let n = &of_kind(&s, &dead.id, "TOKENS_EXHAUSTED").await[0];
    assert_eq!(n["state"], "DEAD", "{n:#}");
    assert_eq!(n["attempts"], 8, "{n:#}");
    assert_eq!(rounds, 8, "one attempt per round");
    assert!(
        n["lastError"].as_str().is_some_and(|e| e.contains("SMTP")),
        "{n:#}"
    );
    assert!(n["sentAt"].is_null());
    // Dead stays dead, even once the server is back.
    smtp.set_down(false);
    advance(&s, 2).await;
    run_maintenance(&s).await;
    let again = &of_kind(&s, &dead.id, "TOKENS_EXHAUSTED").await[0];
    assert_eq!(again["state"], "DEAD");
    assert_eq!(again["attempts"], 8);
    assert_eq!(smtp.messages().len(), 1, "nothing sent for the dead letter");
    let low = of_kind(&s, &acct.id, "LOW_BALANCE").await;
    assert_eq!(
        int(&low[0]["attempts"]),
        attempts,
        "the sent one is left alone"
    );
}

// ---------------------------------------------------------------------------------
// 4. A worker killed mid-send loses no e-mail (rule 15).
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_send_loses_no_email() {
    let smtp = SmtpServer::start().await;
    smtp.set_data_delay(Duration::from_secs(4));
    let queue_name = unique_queue_name("crash");
    let smtp_url = smtp.url();
    let shared = [
        ("DAYPASS_SMTP_URL", smtp_url.as_str()),
        ("DAYPASS_PUBLIC_URL", PUBLIC_URL),
        ("DAYPASS_QUEUE_NAME", queue_name.as_str()),
    ];
    let mut api_env = vec![("DAYPASS_WORKERS", "external")];
    api_env.extend(shared);
    let s = TestServer::start_with(&api_env).await;
    let mut worker = TestWorker::start(&s.database_url, &shared).await;

    s.upsert_product("cad", 10).await;
    const ACCOUNTS: usize = 6;
    let mut accounts = Vec::new();
    for i in 0..ACCOUNTS {
        let acct = create_account(&s, &format!("Crash {i}")).await;
        let keys = members(&s, &acct, &format!("crash-{i}"), 1).await;
        accounts.push((acct, keys));
    }
    for (_, keys) in &accounts {
        deny(&s, &keys[0], "cad").await;
    }
    let ids: Vec<&str> = accounts.iter().map(|(a, _)| a.id.as_str()).collect();

    // The server has the first message but has not confirmed it: kill the worker.
    smtp.wait_for(1, Duration::from_secs(30)).await;
    worker.kill();
    let killed_at = Instant::now();
    let before_kill = smtp.messages().len();
    let pending = {
        let mut all = Vec::new();
        for a in &ids {
            all.extend(notifications(&s, a).await);
        }
        all.iter().filter(|n| n["state"] != "SENT").count()
    };
    assert!(pending > 0, "the kill came before any send was recorded");

    smtp.set_data_delay(Duration::ZERO);
    worker.restart().await;
    let all = wait_all_sent(&s, &ids, Duration::from_secs(150)).await;
    let recovered_in = killed_at.elapsed();
    assert_eq!(
        all.len(),
        ACCOUNTS,
        "one notification per account: {all:#?}"
    );

    let inbox = smtp.messages();
    let mut by_id: BTreeMap<String, Vec<&ReceivedMail>> = BTreeMap::new();
    for m in &inbox {
        by_id.entry(m.message_id()).or_default().push(m);
    }
    for n in &all {
        let copies = by_id
            .get(&message_id_of(n))
            .unwrap_or_else(|| panic!("no e-mail for notification {n:#}"));
        assert!(
            copies
                .iter()
                .all(|m| m.subject() == copies[0].subject() && m.to == copies[0].to),
            "a duplicate is the same e-mail"
        );
    }
    let known: BTreeSet<String> = all.iter().map(message_id_of).collect();
    assert!(
        by_id.keys().all(|k| known.contains(k)),
        "every e-mail belongs to a notification: {:?}",
        by_id.keys()
    );
    let duplicates = inbox.len() - by_id.len();
    println!(
        "crash test: {} notifications, {} messages ({} before the kill), {} duplicates \
         (same Message-ID), all sent {:?} after the kill",
        all.len(),
        inbox.len(),
        before_kill,
        duplicates,
        recovered_in
    );
}

// ---------------------------------------------------------------------------------
// 5. SIGTERM stops both binaries cleanly.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_worker_and_server_with_status_zero() {
    let mail = tempfile::tempdir().unwrap();
    let mail_dir = mail.path().display().to_string();
    let queue_name = unique_queue_name("sigterm");
    let env = [
        ("DAYPASS_MAIL_DIR", mail_dir.as_str()),
        ("DAYPASS_QUEUE_NAME", queue_name.as_str()),
    ];
    let mut s = TestServer::start_with(&env).await;
    let mut worker = TestWorker::start(&s.database_url, &env).await;
    // Both are busy with their schedules and the queue for a moment.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let started = Instant::now();
    let status = worker
        .terminate(Duration::from_secs(10))
        .await
        .expect("daypass-worker exits within 10 s of SIGTERM");
    assert!(status.success(), "daypass-worker: {status}");
    println!("daypass-worker stopped in {:?}", started.elapsed());

    let started = Instant::now();
    let status = s
        .terminate(Duration::from_secs(10))
        .await
        .expect("daypass serve exits within 10 s of SIGTERM");
    assert!(status.success(), "daypass serve: {status}");
    println!("daypass serve stopped in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------
// 6. Two sweepers at once expire each lot once (rules 2 and 6).
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_sweeping_at_once_expire_each_lot_once_and_remind_once() {
    let mail = tempfile::tempdir().unwrap();
    let mail_dir = mail.path().display().to_string();
    let queue_name = unique_queue_name("sweepers");
    let env = [
        ("DAYPASS_TEST_CLOCK", "1"),
        ("DAYPASS_WORKERS", "external"),
        ("DAYPASS_MAIL_DIR", mail_dir.as_str()),
        ("DAYPASS_PUBLIC_URL", PUBLIC_URL),
        ("DAYPASS_QUEUE_NAME", queue_name.as_str()),
    ];
    let s1 = TestServer::start_with(&env).await;
    let s2 = TestServer::start_on(&s1.database_url, &env).await;
    s1.upsert_product("cad", 10).await;

    // Each server has its own test clock: lots recorded as bought long ago expire
    // whatever either clock says; one expires within a week and is partly used first;
    // one is due for its reminder, one is kept.
    let now = advance(&s1, 0).await;
    let mut accounts = Vec::new();
    for i in 0..4i64 {
        let acct = create_account(&s1, &format!("Sweep {i}")).await;
        let keys = members(&s1, &acct, &format!("sweep-{i}"), 1).await;
        let mut expiring = BTreeMap::new();
        for (days, quantity) in [(400, 50), (395, 30), (380 + i, 7)] {
            let lot = op_buy(&s1, &acct.id, quantity, Some(now - Hours::days(days))).await;
            assert!(at(&lot["expiresAt"]) <= now);
            expiring.insert(id(&lot["id"]), quantity);
        }
        let soon = op_buy(&s1, &acct.id, 40, Some(now - Hours::days(360))).await;
        assert_eq!(charge(&s1, &keys[0], "cad").await, 30);
        expiring.insert(id(&soon["id"]), 30);
        let reminded = op_buy(&s1, &acct.id, 15, Some(now - Hours::days(300))).await;
        let kept = op_buy(&s1, &acct.id, 20, None).await;
        let unexpired = BTreeMap::from([(id(&reminded["id"]), 15), (id(&kept["id"]), 20)]);
        accounts.push((acct, expiring, unexpired));
    }
    advance(&s1, 24 * 7).await;
    advance(&s2, 24 * 7).await;
    // Rule 2: past its expiry a lot no longer counts, swept or not.
    for (acct, _, _) in &accounts {
        let d = s2
            .ok(
                OP,
                "query($a: ID!) { account(id: $a) { balance } }",
                json!({"a": acct.id}),
            )
            .await;
        assert_eq!(d["account"]["balance"], 35, "before any sweep");
    }

    let calls = (0..8).flat_map(|_| [&s1, &s2]).map(run_maintenance);
    join_all(calls).await;
    let calls = (0..8).flat_map(|_| [&s2, &s1]).map(run_maintenance);
    join_all(calls).await;

    let mut reminder_ids = Vec::new();
    for (acct, expiring, unexpired) in &accounts {
        let d = s2
            .ok(
                OP,
                "query($a: ID!) { account(id: $a) {
                   balance
                   lots(first: 100) { edges { node { id quantity remaining used expired status } } }
                   ledger(first: 500) { edges { node { kind tokens lot { id } } } }
                 } }",
                json!({"a": acct.id}),
            )
            .await;
        let a = &d["account"];
        assert_eq!(a["balance"], 35, "only the unexpired lots count: {a:#}");
        let ledger = nodes(&a["ledger"]);
        for lot in nodes(&a["lots"]) {
            let lot_id = id(&lot["id"]);
            assert_eq!(
                int(&lot["quantity"]),
                int(&lot["used"]) + int(&lot["expired"]) + int(&lot["remaining"]),
                "rule 6: {lot:#}"
            );
            let expiry: Vec<&Value> = ledger
                .iter()
                .filter(|e| e["kind"] == "EXPIRY" && e["lot"]["id"] == lot_id.as_str())
                .collect();
            match expiring.get(&lot_id) {
                Some(&left) => {
                    assert_eq!(
                        expiry.len(),
                        1,
                        "one expiry entry for lot {lot_id}: {expiry:#?}"
                    );
                    assert_eq!(int(&expiry[0]["tokens"]), -left);
                    assert_eq!(lot["remaining"], 0, "{lot:#}");
                    assert_eq!(int(&lot["expired"]), left, "{lot:#}");
                    assert_eq!(lot["status"], "EXPIRED", "{lot:#}");
                }
                None => {
                    assert!(expiry.is_empty(), "{expiry:#?}");
                    assert_eq!(Some(&int(&lot["remaining"])), unexpired.get(&lot_id));
                }
            }
        }
        // Both servers recorded and sent reminders at once: one each, sent once.
        let reminders = of_kind(&s1, &acct.id, "EXPIRY_REMINDER").await;
        assert_eq!(reminders.len(), 1, "{reminders:#?}");
        assert_eq!(reminders[0]["state"], "SENT");
        assert_eq!(reminders[0]["attempts"], 1);
        reminder_ids.push(message_id_of(&reminders[0]));
    }
    let files = mail_files(mail.path());
    let sent: Vec<String> = files.iter().map(ReceivedMail::message_id).collect();
    reminder_ids.sort();
    let mut sent_sorted = sent.clone();
    sent_sorted.sort();
    assert_eq!(
        sent_sorted, reminder_ids,
        "each reminder e-mailed exactly once"
    );
}

// ---------------------------------------------------------------------------------
// 7. A push lost after the commit is made good by the dispatcher (rule 15).
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_whose_push_was_lost_is_sent_by_the_dispatcher() {
    let mail = tempfile::tempdir().unwrap();
    let mail_dir = mail.path().display().to_string();
    // The API pushes to a queue nobody consumes, as if every push were lost; the
    // worker's queue only ever gets what its dispatcher finds in the outbox.
    let lost = unique_queue_name("lost");
    let found = unique_queue_name("found");
    let s = TestServer::start_with(&[
        ("DAYPASS_WORKERS", "external"),
        ("DAYPASS_MAIL_DIR", mail_dir.as_str()),
        ("DAYPASS_PUBLIC_URL", PUBLIC_URL),
        ("DAYPASS_QUEUE_NAME", lost.as_str()),
    ])
    .await;
    let _worker = TestWorker::start(
        &s.database_url,
        &[
            ("DAYPASS_MAIL_DIR", mail_dir.as_str()),
            ("DAYPASS_PUBLIC_URL", PUBLIC_URL),
            ("DAYPASS_QUEUE_NAME", found.as_str()),
        ],
    )
    .await;
    s.upsert_product("cad", 10).await;
    let acct = create_account(&s, "Lost Push").await;
    let keys = members(&s, &acct, "lost-push", 1).await;
    deny(&s, &keys[0], "cad").await;
    // The dispatcher runs every 10 seconds.
    let sent = wait_all_sent(&s, &[&acct.id], Duration::from_secs(30)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["kind"], "TOKENS_EXHAUSTED");
    assert_eq!(sent[0]["attempts"], 1);
    let files = mail_files(mail.path());
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].message_id(), message_id_of(&sent[0]));
}
