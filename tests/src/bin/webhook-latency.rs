//! How long an event takes from its cause to a receiver: the release binary with
//! its workers embedded, a real HTTP receiver on loopback, one cause at a time.
//! Measures a charge that crosses the low-balance threshold to its BALANCE_LOW
//! delivery, and a purchase to its PURCHASE_COMPLETED delivery (from the start of
//! the request to the receiver's first byte of the POST). Database from
//! DAYPASS_TEST_DATABASE (SQLite when unset).
//!
//! `DAYPASS_TEST_RELEASE=1 cargo run --release -p daypass-tests --bin webhook-latency [N]`

use daypass_tests::webhook_receiver::WebhookReceiver;
use daypass_tests::{Api, TestServer, server::OPERATOR_KEY};
use serde_json::json;
use std::time::{Duration, Instant};

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name}: median {:.1} ms, p90 {:.1} ms, max {:.1} ms ({} events)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
        v.len()
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let receiver = WebhookReceiver::start().await;
    let server = TestServer::start_with(&[]).await;
    let op = Some(OPERATOR_KEY);
    server.upsert_product("bench", 10).await;
    let mut charge_to_receiver = Vec::new();
    let mut purchase_to_receiver = Vec::new();
    for i in 0..n {
        let d = server
            .ok(
                op,
                "mutation($e: String!) { createAccount(input: {name: \"Latency\", adminEmail: $e, adminName: \"A\"}) { adminApiKey } }",
                json!({"e": format!("a{i}@latency.test")}),
            )
            .await;
        let admin = d["createAccount"]["adminApiKey"]
            .as_str()
            .unwrap()
            .to_owned();
        server
            .ok(
                Some(&admin),
                "mutation($u: String!) { createWebhookEndpoint(input: {url: $u, events: [BALANCE_LOW, PURCHASE_COMPLETED]}) { secret } }",
                json!({"u": receiver.url}),
            )
            .await;
        let (uid, key) = server
            .create_user(&admin, &format!("m{i}@latency.test"), "M", "MEMBER")
            .await;
        server
            .ok(
                Some(&admin),
                "mutation($u: [ID!]!) { assignFlex(userIds: $u, assigned: true) { id } }",
                json!({"u": [uid]}),
            )
            .await;
        let before = receiver.received().len();
        let started = Instant::now();
        server
            .ok(
                Some(&admin),
                "mutation($k: String!) { purchaseTokens(input: {quantity: 10, idempotencyKey: $k}) { id } }",
                json!({"k": format!("l{i}")}),
            )
            .await;
        let got = receiver.wait_for(before + 1, Duration::from_secs(30)).await;
        purchase_to_receiver.push(got[before].at - started);
        // 10 → 0 crosses the default threshold of 2.
        let started = Instant::now();
        server
            .ok(
                Some(&key),
                "mutation { openProduct(input: {productCode: \"bench\"}) { granted } }",
                json!({}),
            )
            .await;
        let got = receiver.wait_for(before + 2, Duration::from_secs(30)).await;
        assert_eq!(got[before + 1].event_type(), "BALANCE_LOW");
        charge_to_receiver.push(got[before + 1].at - started);
    }
    summary("charge → BALANCE_LOW at the receiver", charge_to_receiver);
    summary(
        "purchase → PURCHASE_COMPLETED at the receiver",
        purchase_to_receiver,
    );
}
