//! Median latency of one `openProduct` over HTTP against the real binary, one request
//! at a time: charging opens (each a new user–product pair) and reopens inside the
//! window. Database from DAYPASS_TEST_DATABASE (SQLite when unset).
//!
//! `DAYPASS_TEST_RELEASE=1 cargo run --release -p daypass-tests --bin open-latency [N]`

use daypass_tests::{Api, TestServer, server::OPERATOR_KEY};
use serde_json::json;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let server = TestServer::start().await;
    let op = Some(OPERATOR_KEY);
    for i in 0..4 {
        server
            .ok(
                op,
                "mutation($c:String!){upsertProduct(input:{code:$c,name:$c,dailyRate:5}){id}}",
                json!({"c": format!("p{i}")}),
            )
            .await;
    }
    let created = server
        .ok(op, r#"mutation{createAccount(input:{name:"Bench",adminEmail:"a@bench.test",adminName:"A"}){adminApiKey}}"#, json!({}))
        .await;
    let admin = created["createAccount"]["adminApiKey"]
        .as_str()
        .unwrap()
        .to_owned();
    server
        .ok(
            Some(&admin),
            r#"mutation{purchaseTokens(input:{quantity:10000,idempotencyKey:"b"}){id}}"#,
            json!({}),
        )
        .await;
    let users = n.div_ceil(4);
    let mut keys = Vec::new();
    for u in 0..users {
        let d = server
            .ok(
                Some(&admin),
                "mutation($e:String!){createUser(input:{email:$e,name:$e,role:MEMBER}){user{id} apiKey}}",
                json!({"e": format!("u{u}@bench.test")}),
            )
            .await;
        let id = d["createUser"]["user"]["id"].as_str().unwrap().to_owned();
        server
            .ok(
                Some(&admin),
                "mutation($i:[ID!]!){assignFlex(userIds:$i,assigned:true){id}}",
                json!({"i": [id]}),
            )
            .await;
        keys.push(d["createUser"]["apiKey"].as_str().unwrap().to_owned());
    }
    let open = "mutation($c:String!){openProduct(input:{productCode:$c}){granted tokensCharged}}";
    let mut charging = Vec::new();
    let mut reopen = Vec::new();
    for pass in [&mut charging, &mut reopen] {
        for i in 0..n {
            let key = &keys[i % users];
            let code = format!("p{}", i / users);
            let start = Instant::now();
            let d = server.ok(Some(key), open, json!({"c": code})).await;
            pass.push(start.elapsed());
            assert_eq!(d["openProduct"]["granted"], true);
        }
    }
    let backend = if daypass_tests::on_postgres() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!(
        "{backend}: openProduct over HTTP, {n} sequential each: charging median {:.2} ms, reopen median {:.2} ms",
        median(charging).as_secs_f64() * 1e3,
        median(reopen).as_secs_f64() * 1e3
    );
}
