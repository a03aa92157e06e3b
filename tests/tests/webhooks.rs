//! Rule 26 on the real binary: events written with their causes and POSTed to a
//! real receiver on loopback, signed as the Standard Webhooks reference
//! implementation verifies; retries with the same `webhook-id`; a receiver down for
//! a day; an endpoint disabled after 3 days; replays, test events, secret rotation;
//! where production may send; a sender killed mid-delivery.

use daypass_tests::json::{id, int};
use daypass_tests::server::OPERATOR_KEY;
use daypass_tests::smtp::SmtpServer;
use daypass_tests::webhook_receiver::{Received, WebhookReceiver};
use daypass_tests::{Api, TestDb, TestServer};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const OP: Option<&str> = Some(OPERATOR_KEY);
const ALL_EVENTS: &str = "[BALANCE_LOW, TOKENS_EXHAUSTED, LOT_EXPIRING, LOT_EXPIRED, PURCHASE_COMPLETED, CHARGE_REFUNDED, BUDGET_REACHED]";

struct Acct {
    id: String,
    admin: String,
}

async fn account(s: &impl Api, name: &str) -> Acct {
    let d = s
        .ok(
            OP,
            "mutation($n: String!, $e: String!) {
               createAccount(input: {name: $n, adminEmail: $e, adminName: \"Ada\"}) {
                 account { id } adminApiKey
               }
             }",
            json!({"n": name, "e": format!("admin@{}.test", name.to_lowercase())}),
        )
        .await;
    Acct {
        id: id(&d["createAccount"]["account"]["id"]),
        admin: id(&d["createAccount"]["adminApiKey"]),
    }
}

/// A pay-as-you-go member; returns its key.
async fn member(s: &impl Api, acct: &Acct, email: &str) -> String {
    let (uid, key) = s.create_user(&acct.admin, email, email, "MEMBER").await;
    s.ok(
        Some(&acct.admin),
        "mutation($u: [ID!]!) { assignFlex(userIds: $u, assigned: true) { id } }",
        json!({"u": [uid]}),
    )
    .await;
    key
}

async fn buy(s: &impl Api, admin: &str, quantity: i64) -> Value {
    s.ok(
        Some(admin),
        "mutation($q: Int!, $k: String!) { purchaseTokens(input: {quantity: $q, idempotencyKey: $k}) { id } }",
        json!({"q": quantity, "k": format!("k-{:016x}", rand::random::<u64>())}),
    )
    .await["purchaseTokens"]
        .clone()
}

/// Registers an endpoint; returns (endpoint id, secret).
async fn endpoint(s: &impl Api, admin: &str, url: &str, events: &str) -> (String, String) {
    let d = s
        .ok(
            Some(admin),
            &format!(
                "mutation($u: String!) {{ createWebhookEndpoint(input: {{url: $u, events: {events}}}) {{
                   endpoint {{ id enabled events }} secret }} }}"
            ),
            json!({"u": url}),
        )
        .await;
    let secret = id(&d["createWebhookEndpoint"]["secret"]);
    assert!(secret.starts_with("whsec_"), "{d}");
    (id(&d["createWebhookEndpoint"]["endpoint"]["id"]), secret)
}

async fn deliveries(s: &impl Api, acct: &Acct) -> Vec<Value> {
    let d = s
        .ok(
            OP,
            "query($a: ID!) { account(id: $a) { webhookDeliveries(first: 500) { edges { node {
               id event state payload createdAt deliveredAt endpoint { id }
               attempts { at status error }
             } } } } }",
            json!({"a": acct.id}),
        )
        .await;
    d["account"]["webhookDeliveries"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

async fn run_maintenance(s: &impl Api) {
    s.ok(OP, "mutation { runMaintenance }", json!({})).await;
}

async fn advance(s: &impl Api, hours: i64, minutes: i64) {
    s.ok(
        OP,
        "mutation($h: Int!, $m: Int) { advanceClock(hours: $h, minutes: $m) }",
        json!({"h": hours, "m": minutes}),
    )
    .await;
}

async fn open(s: &impl Api, key: &str, code: &str) -> Value {
    s.ok(
        Some(key),
        "mutation($c: String!) { openProduct(input: {productCode: $c}) { granted tokensCharged balance session { id } } }",
        json!({"c": code}),
    )
    .await["openProduct"]
        .clone()
}

/// Polls the delivery log until `done` holds (panics after `timeout`).
async fn wait_log(
    s: &impl Api,
    acct: &Acct,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = deliveries(s, acct).await;
        if done(&log) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "delivery log never settled: {log:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a TEST event to the endpoint and runs the workers once.
async fn send_test(s: &TestServer, admin: &str, endpoint_id: &str) {
    let d = s
        .ok(
            Some(admin),
            "mutation($id: ID!) { sendTestWebhook(endpointId: $id) { id event state payload } }",
            json!({"id": endpoint_id}),
        )
        .await;
    assert_eq!(d["sendTestWebhook"]["event"], "TEST");
    run_maintenance(s).await;
}

fn by_type(received: &[Received]) -> BTreeMap<String, Vec<Received>> {
    let mut map: BTreeMap<String, Vec<Received>> = BTreeMap::new();
    for r in received {
        map.entry(r.event_type()).or_default().push(r.clone());
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_receiver_signed_as_the_standard_says() {
    let receiver = WebhookReceiver::start().await;
    let s = TestServer::start().await;
    s.upsert_product("cad", 10).await;
    let acct = account(&s, "Signed").await;
    let (_, secret) = endpoint(&s, &acct.admin, &receiver.url, ALL_EVENTS).await;
    let keys = [
        member(&s, &acct, "a@signed.test").await,
        member(&s, &acct, "b@signed.test").await,
        member(&s, &acct, "c@signed.test").await,
    ];
    // PURCHASE_COMPLETED.
    buy(&s, &acct.admin, 20).await;
    // Rule 14's default threshold: 20% of 20 = 4 tokens.
    // A short launch: closed within 5 minutes, refunded (CHARGE_REFUNDED).
    let first = open(&s, &keys[0], "cad").await;
    assert_eq!(int(&first["tokensCharged"]), 10);
    s.ok(
        Some(&keys[0]),
        "mutation($s: ID!) { closeProduct(sessionId: $s) { state } }",
        json!({"s": first["session"]["id"]}),
    )
    .await;
    // 20 → 10 → 0: the second charge crosses 4 (BALANCE_LOW); the third open is
    // refused (TOKENS_EXHAUSTED).
    assert_eq!(int(&open(&s, &keys[1], "cad").await["balance"]), 10);
    let started = Instant::now();
    assert_eq!(int(&open(&s, &keys[2], "cad").await["balance"]), 0);
    let low_latency = {
        let got = receiver.wait_for(3, Duration::from_secs(20)).await;
        let low = got
            .iter()
            .find(|r| r.event_type() == "BALANCE_LOW")
            .expect("BALANCE_LOW");
        low.at - started
    };
    assert_eq!(open(&s, &keys[0], "cad").await["granted"], false);
    let got = receiver.wait_for(4, Duration::from_secs(20)).await;
    println!("charge to receiver (BALANCE_LOW, embedded workers): {low_latency:?}");

    let types = by_type(&got);
    for t in [
        "PURCHASE_COMPLETED",
        "CHARGE_REFUNDED",
        "BALANCE_LOW",
        "TOKENS_EXHAUSTED",
    ] {
        assert_eq!(types.get(t).map(Vec::len), Some(1), "{t}: {types:#?}");
    }
    for r in &got {
        r.verify(&secret)
            .unwrap_or_else(|e| panic!("{} does not verify: {e}", r.body));
        assert!(
            r.verify(&format!("whsec_{}", "A".repeat(43) + "="))
                .is_err()
        );
        let body = r.json();
        assert_eq!(body["id"], r.id, "the body's id is the webhook-id");
        assert!(r.id.starts_with("msg_"));
        assert_eq!(body["accountId"], acct.id);
        assert!(body["createdAt"].as_str().unwrap().ends_with('Z'));
        assert!(body["data"].is_object());
        assert_eq!(
            r.headers["content-type"], "application/json",
            "{:?}",
            r.headers
        );
    }
    let low = &types["BALANCE_LOW"][0].json()["data"];
    assert_eq!(
        (int(&low["balance"]), int(&low["threshold"])),
        (0, 4),
        "{low}"
    );
    assert_eq!(low["alertRuleId"], Value::Null);
    let refund = &types["CHARGE_REFUNDED"][0].json()["data"];
    assert_eq!(int(&refund["tokens"]), 10);

    // The log shows each delivery DELIVERED with one 2xx attempt and the exact body.
    let log = wait_log(&s, &acct, Duration::from_secs(10), |l| {
        l.len() == 4 && l.iter().all(|d| d["state"] == "DELIVERED")
    })
    .await;
    for d in &log {
        let sent = got.iter().find(|r| r.id == d["payload"]["id"]).unwrap();
        assert_eq!(d["payload"], sent.json());
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d}");
        assert_eq!(d["attempts"][0]["status"], 204);
        assert_eq!(d["attempts"][0]["error"], Value::Null);
        assert!(d["deliveredAt"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_day_gets_every_event_once_with_the_same_id() {
    let receiver = WebhookReceiver::start().await;
    receiver.set_status(503);
    // The workers run only at runMaintenance, so every attempt is counted.
    let s = TestServer::start_with(&[("DAYPASS_TEST_CLOCK", "1"), ("DAYPASS_WORKERS", "external")])
        .await;
    let acct = account(&s, "Downtime").await;
    let (endpoint_id, secret) =
        endpoint(&s, &acct.admin, &receiver.url, "[PURCHASE_COMPLETED]").await;
    for q in [10, 20, 30, 40, 50] {
        buy(&s, &acct.admin, q).await;
    }
    run_maintenance(&s).await;
    assert_eq!(receiver.received().len(), 5, "each delivery tried once");
    let log = deliveries(&s, &acct).await;
    assert!(log.iter().all(|d| d["state"] == "FAILED"), "{log:#?}");
    // A day of hourly passes while the receiver answers 503.
    for _ in 0..24 {
        advance(&s, 1, 0).await;
        run_maintenance(&s).await;
    }
    let failed = receiver.received();
    assert!(
        failed.len() >= 5 * 10,
        "retried through the day: {}",
        failed.len()
    );
    // Every retry of a delivery carries the same webhook-id.
    let ids: BTreeMap<String, usize> = failed.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.id.clone()).or_default() += 1;
        m
    });
    assert_eq!(ids.len(), 5, "five events, five ids: {ids:?}");
    receiver.set_status(200);
    advance(&s, 1, 0).await;
    run_maintenance(&s).await;
    let delivered = receiver.delivered();
    assert_eq!(
        delivered.len(),
        5,
        "each event delivered once: {delivered:#?}"
    );
    let delivered_ids: Vec<&String> = delivered.iter().map(|r| &r.id).collect();
    for id in ids.keys() {
        assert_eq!(
            delivered_ids.iter().filter(|d| **d == id).count(),
            1,
            "{id}"
        );
    }
    for r in &delivered {
        r.verify_ignoring_time(&secret).unwrap();
    }
    // Nothing more afterwards, however long.
    advance(&s, 5, 0).await;
    run_maintenance(&s).await;
    assert_eq!(receiver.delivered().len(), 5);
    let log = deliveries(&s, &acct).await;
    for d in &log {
        assert_eq!(d["state"], "DELIVERED", "{d}");
        let attempts = d["attempts"].as_array().unwrap();
        let seen = ids[d["payload"]["id"].as_str().unwrap()] + 1;
        assert_eq!(attempts.len(), seen, "every attempt kept: {d}");
        assert!(attempts[..seen - 1].iter().all(|a| a["status"] == 503));
        assert_eq!(attempts[seen - 1]["status"], 200);
    }
    let e = s
        .ok(
            OP,
            "query($a: ID!) { account(id: $a) { webhookEndpoints { id enabled } } }",
            json!({"a": acct.id}),
        )
        .await;
    assert_eq!(e["account"]["webhookEndpoints"][0]["id"], endpoint_id);
    assert_eq!(
        e["account"]["webhookEndpoints"][0]["enabled"], true,
        "a day is not three"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_days_of_failures_disable_the_endpoint_and_mail_the_admins() {
    let smtp = SmtpServer::start().await;
    let receiver = WebhookReceiver::start().await;
    receiver.set_status(500);
    let smtp_url = smtp.url();
    let s = TestServer::start_with(&[
        ("DAYPASS_TEST_CLOCK", "1"),
        ("DAYPASS_WORKERS", "external"),
        ("DAYPASS_SMTP_URL", smtp_url.as_str()),
        ("DAYPASS_PUBLIC_URL", "https://daypass.test"),
    ])
    .await;
    let acct = account(&s, "Flaky").await;
    let (endpoint_id, _) = endpoint(&s, &acct.admin, &receiver.url, "[PURCHASE_COMPLETED]").await;
    buy(&s, &acct.admin, 10).await;
    run_maintenance(&s).await;
    for _ in 0..3 {
        advance(&s, 24, 0).await;
        run_maintenance(&s).await;
    }
    advance(&s, 1, 0).await;
    run_maintenance(&s).await;
    let e = s
        .ok(
            OP,
            "query($a: ID!) { account(id: $a) { webhookEndpoints { enabled disabledReason } } }",
            json!({"a": acct.id}),
        )
        .await;
    let endpoint_now = &e["account"]["webhookEndpoints"][0];
    assert_eq!(endpoint_now["enabled"], false, "{e}");
    assert!(
        endpoint_now["disabledReason"]
            .as_str()
            .unwrap()
            .contains("3 days"),
        "{e}"
    );
    let log = deliveries(&s, &acct).await;
    assert_eq!(log[0]["state"], "DEAD", "{log:#?}");
    let mails = smtp.wait_for(1, Duration::from_secs(20)).await;
    let mail = mails
        .iter()
        .find(|m| m.subject().contains("webhook endpoint"))
        .unwrap_or_else(|| panic!("no webhook e-mail: {mails:#?}"));
    assert!(mail.text().contains(&receiver.url), "{}", mail.text());
    assert!(
        mail.text().contains("https://daypass.test/#alerts"),
        "{}",
        mail.text()
    );
    assert_eq!(mail.to, vec!["admin@flaky.test".to_owned()]);
    // No more attempts while disabled.
    let tried = receiver.received().len();
    advance(&s, 2, 0).await;
    run_maintenance(&s).await;
    assert_eq!(receiver.received().len(), tried);
    // Fixed and enabled again, the dead delivery is replayed with its webhook-id.
    receiver.set_status(200);
    s.ok(
        Some(&acct.admin),
        "mutation($id: ID!) { updateWebhookEndpoint(id: $id, enabled: true) { enabled disabledReason } }",
        json!({"id": endpoint_id}),
    )
    .await;
    let replay = s
        .ok(
            Some(&acct.admin),
            "mutation($id: ID!) { replayWebhookDelivery(id: $id) { id state payload } }",
            json!({"id": log[0]["id"]}),
        )
        .await;
    assert_eq!(replay["replayWebhookDelivery"]["state"], "PENDING");
    assert_ne!(replay["replayWebhookDelivery"]["id"], log[0]["id"]);
    run_maintenance(&s).await;
    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].id, log[0]["payload"]["id"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_signs_with_both_secrets_for_a_day_and_test_events_go_anywhere() {
    let receiver = WebhookReceiver::start().await;
    let s = TestServer::start_with(&[("DAYPASS_TEST_CLOCK", "1"), ("DAYPASS_WORKERS", "external")])
        .await;
    let acct = account(&s, "Rotating").await;
    // The endpoint takes only LOT_EXPIRED; a TEST event goes to it all the same.
    let (endpoint_id, old) = endpoint(&s, &acct.admin, &receiver.url, "[LOT_EXPIRED]").await;
    let d = s
        .ok(
            Some(&acct.admin),
            "mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret endpoint { id } } }",
            json!({"id": endpoint_id}),
        )
        .await;
    let new = id(&d["rotateWebhookSecret"]["secret"]);
    assert_ne!(new, old);
    send_test(&s, &acct.admin, &endpoint_id).await;
    let first = receiver.wait_for(1, Duration::from_secs(10)).await[0].clone();
    assert_eq!(first.event_type(), "TEST");
    assert_eq!(first.signature.split(' ').count(), 2, "{}", first.signature);
    first.verify(&new).unwrap();
    first.verify(&old).unwrap();
    advance(&s, 24, 1).await;
    send_test(&s, &acct.admin, &endpoint_id).await;
    let second = receiver.wait_for(2, Duration::from_secs(10)).await[1].clone();
    assert_eq!(second.signature.split(' ').count(), 1);
    second.verify_ignoring_time(&new).unwrap();
    assert!(
        second.verify_ignoring_time(&old).is_err(),
        "the old secret stopped signing"
    );
    // A replay of a delivered event sends the same webhook-id again.
    let log = deliveries(&s, &acct).await;
    let delivered = log
        .iter()
        .find(|d| d["payload"]["id"] == first.id.as_str())
        .unwrap();
    s.ok(
        Some(&acct.admin),
        "mutation($id: ID!) { replayWebhookDelivery(id: $id) { id } }",
        json!({"id": delivered["id"]}),
    )
    .await;
    run_maintenance(&s).await;
    let third = receiver.wait_for(3, Duration::from_secs(10)).await[2].clone();
    assert_eq!(third.id, first.id);
    assert_eq!(third.body, first.body, "the exact body again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_endpoints_and_callers_get_clear_errors() {
    let s = TestServer::start().await;
    let acct = account(&s, "Strict").await;
    let analyst = s
        .create_user(&acct.admin, "an@strict.test", "An", "ANALYST")
        .await
        .1;
    let create = |url: &str, events: &str| {
        format!(
            "mutation {{ createWebhookEndpoint(input: {{url: {url:?}, events: {events}}}) {{ secret }} }}"
        )
    };
    for (url, events) in [
        ("ftp://example.com/x", "[BALANCE_LOW]"),
        ("not a url", "[BALANCE_LOW]"),
        ("http://user:pw@example.com/x", "[BALANCE_LOW]"),
        ("http://127.0.0.1:9/x", "[]"),
        ("http://127.0.0.1:9/x", "[TEST]"),
    ] {
        assert_eq!(
            s.error_code(Some(&acct.admin), &create(url, events), json!({}))
                .await,
            "BAD_USER_INPUT",
            "{url} {events}"
        );
    }
    let long = format!("http://example.com/{}", "a".repeat(3000));
    assert_eq!(
        s.error_code(
            Some(&acct.admin),
            &create(&long, "[BALANCE_LOW]"),
            json!({})
        )
        .await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        s.error_code(
            Some(&analyst),
            &create("http://127.0.0.1:9/x", "[BALANCE_LOW]"),
            json!({})
        )
        .await,
        "FORBIDDEN"
    );
    for bad in ["\"x\"", "\"999999\""] {
        assert_eq!(
            s.error_code(
                Some(&acct.admin),
                &format!("mutation {{ replayWebhookDelivery(id: {bad}) {{ id }} }}"),
                json!({})
            )
            .await,
            if bad == "\"x\"" {
                "BAD_USER_INPUT"
            } else {
                "NOT_FOUND"
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_sends_nowhere_inward_unless_the_host_is_allowed() {
    let receiver = WebhookReceiver::start().await;
    let (db, _dir) = TestDb::fresh_url().await;
    let strict = TestServer::start_on(&db, &[("DAYPASS_ENV", "production")]).await;
    let acct = account(&strict, "Guarded").await;
    let port = receiver
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    for url in [
        receiver.url.clone(),
        format!("http://localhost:{port}/hooks"),
        format!("http://[::1]:{port}/hooks"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.0.0.1/hooks".to_owned(),
    ] {
        let resp = strict
            .gql(
                Some(&acct.admin),
                "mutation($u: String!) { createWebhookEndpoint(input: {url: $u, events: [PURCHASE_COMPLETED]}) { secret } }",
                json!({"u": url}),
            )
            .await;
        assert_eq!(
            resp["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{url}: {resp}"
        );
        assert!(
            resp["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("DAYPASS_WEBHOOK_ALLOW_HOSTS"),
            "{resp}"
        );
    }
    // Registered while allowed (development), then served in production: refused at
    // delivery time, with the reason in the attempt.
    drop(strict);
    let open = TestServer::start_on(&db, &[]).await;
    let (_, _) = endpoint(&open, &acct.admin, &receiver.url, "[PURCHASE_COMPLETED]").await;
    drop(open);
    let strict = TestServer::start_on(&db, &[("DAYPASS_ENV", "production")]).await;
    buy(&strict, &acct.admin, 10).await;
    let log = wait_log(&strict, &acct, Duration::from_secs(20), |l| {
        l.first().is_some_and(|d| d["state"] == "FAILED")
    })
    .await;
    let error = log[0]["attempts"][0]["error"].as_str().unwrap().to_owned();
    assert!(error.contains("loopback, private or link-local"), "{error}");
    assert_eq!(log[0]["attempts"][0]["status"], Value::Null);
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
    drop(strict);
    // Listed in DAYPASS_WEBHOOK_ALLOW_HOSTS, the same host is allowed.
    let allowing = TestServer::start_on(
        &db,
        &[
            ("DAYPASS_ENV", "production"),
            ("DAYPASS_WEBHOOK_ALLOW_HOSTS", "127.0.0.1"),
        ],
    )
    .await;
    endpoint(
        &allowing,
        &acct.admin,
        &receiver.url,
        "[PURCHASE_COMPLETED]",
    )
    .await;
    buy(&allowing, &acct.admin, 10).await;
    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].event_type(), "PURCHASE_COMPLETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_delivery_loses_nothing() {
    let receiver = WebhookReceiver::start().await;
    // The receiver holds the request long enough for the server to die under it.
    receiver.set_delay(Duration::from_secs(5));
    let (db, _dir) = TestDb::fresh_url().await;
    let first = TestServer::start_on(&db, &[("DAYPASS_TEST_CLOCK", "1")]).await;
    let acct = account(&first, "Crashing").await;
    endpoint(&first, &acct.admin, &receiver.url, "[PURCHASE_COMPLETED]").await;
    buy(&first, &acct.admin, 10).await;
    let in_flight = receiver.wait_for(1, Duration::from_secs(20)).await[0].clone();
    // SIGKILL while the POST waits for its answer.
    drop(first);
    receiver.set_delay(Duration::ZERO);
    let second = TestServer::start_on(&db, &[("DAYPASS_TEST_CLOCK", "1")]).await;
    let log = deliveries(&second, &acct).await;
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0]["state"], "PENDING",
        "the attempt never finished: {log:#?}"
    );
    // After the dead sender's lease, the delivery is tried again, same webhook-id.
    advance(&second, 0, 2).await;
    run_maintenance(&second).await;
    let log = wait_log(&second, &acct, Duration::from_secs(20), |l| {
        l[0]["state"] == "DELIVERED"
    })
    .await;
    let got = receiver.received();
    assert_eq!(
        got.len(),
        2,
        "the cut-short request and the retry: {got:#?}"
    );
    assert_eq!(got[1].id, in_flight.id, "the same webhook-id");
    assert_eq!(got[1].body, in_flight.body, "the same body");
    let attempts = log[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{log:#?}");
    assert_eq!(attempts[0]["status"], Value::Null);
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("sender stopped"),
        "{attempts:?}"
    );
    assert_eq!(attempts[1]["status"], 204);
    // Nothing more is sent afterwards.
    advance(&second, 2, 0).await;
    run_maintenance(&second).await;
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_holds_up_neither_other_endpoints_nor_email_nor_charges() {
    let smtp = SmtpServer::start().await;
    let slow = WebhookReceiver::start().await;
    slow.set_delay(Duration::from_secs(4));
    let fast = WebhookReceiver::start().await;
    let smtp_url = smtp.url();
    let s = TestServer::start_with(&[("DAYPASS_SMTP_URL", smtp_url.as_str())]).await;
    s.upsert_product("cad", 10).await;
    let acct = account(&s, "Isolated").await;
    endpoint(
        &s,
        &acct.admin,
        &slow.url,
        "[PURCHASE_COMPLETED, BALANCE_LOW]",
    )
    .await;
    endpoint(
        &s,
        &acct.admin,
        &fast.url,
        "[PURCHASE_COMPLETED, BALANCE_LOW]",
    )
    .await;
    for _ in 0..12 {
        buy(&s, &acct.admin, 10).await;
    }
    // Twelve purchases: the slow endpoint has at most 4 at once; the fast one gets
    // all twelve while the slow one still holds its first requests.
    fast.wait_for(12, Duration::from_secs(5)).await;
    slow.wait_for(4, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(slow.most_in_flight(), 4, "per-endpoint limit");
    assert_eq!(slow.received().len(), 4, "the rest wait for a free slot");
    // Charges and their e-mail go on: 120 bought, threshold 24; ten members
    // charge 10 each, down to 20.
    let mut keys = Vec::new();
    for i in 0..10 {
        keys.push(member(&s, &acct, &format!("m{i}@isolated.test")).await);
    }
    for key in &keys {
        assert_eq!(open(&s, key, "cad").await["granted"], true);
    }
    // The e-mail and the fast endpoint's event arrive while the slow endpoint is
    // still working through its backlog (4 at a time, 4 seconds each).
    let mail = smtp.wait_for(1, Duration::from_secs(20)).await;
    assert!(
        mail[0].subject().contains("low on tokens"),
        "{}",
        mail[0].subject()
    );
    fast.wait_for(13, Duration::from_secs(20)).await;
    assert!(
        slow.received().len() < 13,
        "e-mail and the other endpoint did not wait for the slow one"
    );
    // In the end the slow endpoint gets every event too.
    let got = slow.wait_for(13, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sending_at_once_deliver_each_event_once() {
    let receiver = WebhookReceiver::start().await;
    receiver.set_delay(Duration::from_millis(50));
    let (db, _dir) = TestDb::fresh_url().await;
    let one = TestServer::start_on(&db, &[]).await;
    let two = TestServer::start_on(&db, &[]).await;
    let acct = account(&one, "Twice").await;
    endpoint(&one, &acct.admin, &receiver.url, "[PURCHASE_COMPLETED]").await;
    let buys = (0..30).map(|i| {
        let server = if i % 2 == 0 { &one } else { &two };
        buy(server, &acct.admin, 10)
    });
    futures::future::join_all(buys).await;
    let got = receiver.wait_for(30, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_after = receiver.received();
    assert_eq!(
        got_after.len(),
        got.len().max(30),
        "nothing sent twice: {}",
        got_after.len()
    );
    let ids: std::collections::BTreeSet<&String> = got_after.iter().map(|r| &r.id).collect();
    assert_eq!(ids.len(), 30);
    assert_eq!(got_after.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoints_backlog_does_not_hold_up_another_account() {
    let slow = WebhookReceiver::start().await;
    slow.set_delay(Duration::from_secs(3));
    let fast = WebhookReceiver::start().await;
    let s = TestServer::start().await;
    let backlog = account(&s, "Backlog").await;
    endpoint(&s, &backlog.admin, &slow.url, "[PURCHASE_COMPLETED]").await;
    // More due deliveries than a sender reads at once, all to one slow endpoint.
    for _ in 0..400 {
        buy(&s, &backlog.admin, 10).await;
    }
    let bystander = account(&s, "Bystander").await;
    endpoint(&s, &bystander.admin, &fast.url, "[PURCHASE_COMPLETED]").await;
    buy(&s, &bystander.admin, 10).await;
    // Through the backlog 4 at a time, 3 seconds each, would take minutes; the
    // bystander's event does not wait for it.
    fast.wait_for(1, Duration::from_secs(30)).await;
    assert!(
        slow.received().len() < 400,
        "the backlog was not through yet"
    );
    assert!(slow.most_in_flight() <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_delivery_refused_for_three_days_is_given_up_alone() {
    let receiver = WebhookReceiver::start().await;
    receiver.refuse_containing("\"tokens\":77");
    let s = TestServer::start_with(&[("DAYPASS_TEST_CLOCK", "1"), ("DAYPASS_WORKERS", "external")])
        .await;
    let acct = account(&s, "Picky").await;
    endpoint(&s, &acct.admin, &receiver.url, "[PURCHASE_COMPLETED]").await;
    buy(&s, &acct.admin, 77).await;
    run_maintenance(&s).await;
    // Other events keep getting through, so the endpoint is healthy throughout.
    for hour in 1..=73 {
        advance(&s, 1, 0).await;
        if hour % 12 == 0 {
            buy(&s, &acct.admin, 10).await;
        }
        run_maintenance(&s).await;
    }
    let log = deliveries(&s, &acct).await;
    let refused = log
        .iter()
        .find(|d| int(&d["payload"]["data"]["tokens"]) == 77)
        .unwrap();
    assert_eq!(refused["state"], "DEAD", "{refused}");
    assert!(
        refused["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == 400)
    );
    assert!(
        log.iter()
            .filter(|d| int(&d["payload"]["data"]["tokens"]) == 10)
            .all(|d| d["state"] == "DELIVERED"),
        "{log:#?}"
    );
    let e = s
        .ok(
            OP,
            "query($a: ID!) { account(id: $a) { webhookEndpoints { enabled } } }",
            json!({"a": acct.id}),
        )
        .await;
    assert_eq!(e["account"]["webhookEndpoints"][0]["enabled"], true);
    let tried = receiver.received().len();
    advance(&s, 3, 0).await;
    run_maintenance(&s).await;
    assert_eq!(
        receiver.received().len(),
        tried,
        "no attempt after giving up"
    );
}
