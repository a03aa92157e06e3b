//! Crashes: the real `daypass` binary killed with SIGKILL at random moments
//! under load, twenty times, restarted on the same database each time. After every
//! restart the ledger's invariants hold (and SQLite's integrity check), and nothing
//! the server acknowledged is lost: every purchase it answered, every charge it
//! answered and every open it answered has its row.
//!
//! `DAYPASS_CRASH_SEED=<n>` replays a run (the seed is printed).

use chrono::{DateTime, Utc};
use daypass_domain::Db;
use daypass_tests::json::{at, id, int};
use daypass_tests::ledger::{check_ledger, rows};
use daypass_tests::server::OPERATOR_KEY;
use daypass_tests::{Api, TestDb, TestServer};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KILLS: usize = 20;
const MEMBERS: usize = 120;
const PRODUCTS: [(&str, i64); 4] = [
    ("crash-a", 1),
    ("crash-b", 2),
    ("crash-c", 3),
    ("crash-d", 5),
];

/// What the server acknowledged (answered without error) before it was killed.
#[derive(Default, Clone)]
struct Acknowledged {
    /// Lot id → quantity.
    lots: BTreeMap<i32, i64>,
    /// (user, product code, window end) of every charging answer.
    charges: BTreeSet<(i32, String, DateTime<Utc>)>,
    /// Answered opens per (user, product code).
    opens: BTreeMap<(i32, String), i64>,
}

/// POSTs a document; `None` when the server is gone (connection refused or cut).
async fn post(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    query: &str,
    vars: Value,
) -> Option<Value> {
    let resp = client
        .post(format!("{base}/graphql"))
        .bearer_auth(key)
        .json(&json!({"query": query, "variables": vars}))
        .send()
        .await
        .ok()?;
    resp.json::<Value>().await.ok()
}

const BUY: &str = "mutation($q: Int!, $k: String!) {
  purchaseTokens(input: {quantity: $q, idempotencyKey: $k}) { id quantity }
}";
const OPEN: &str = "mutation($c: String!) {
  openProduct(input: {productCode: $c}) { granted tokensCharged windowEndsAt denyReason }
}";

/// What the load of one round needs.
#[derive(Clone)]
struct Load {
    client: reqwest::Client,
    base: String,
    admin: String,
    members: Arc<Vec<(i32, String)>>,
    acked: Arc<Mutex<Acknowledged>>,
}

/// Drives purchases and opens until the server stops answering.
async fn load(l: Load, seed: u64, round: usize, worker: usize) {
    let Load {
        client,
        base,
        admin,
        members,
        acked,
    } = l;
    let mut rng = StdRng::seed_from_u64(seed ^ ((round as u64) << 32) ^ worker as u64);
    for n in 0.. {
        if rng.random_range(0..10) == 0 {
            let key = format!("crash-{round}-{worker}-{n}");
            let q = rng.random_range(1..=40);
            let Some(resp) = post(&client, &base, &admin, BUY, json!({"q": q, "k": key})).await
            else {
                return;
            };
            if resp.get("errors").is_none() {
                let lot = &resp["data"]["purchaseTokens"];
                let lot_id: i32 = id(&lot["id"]).parse().unwrap();
                acked
                    .lock()
                    .unwrap()
                    .lots
                    .insert(lot_id, int(&lot["quantity"]));
            }
        } else {
            let (user_id, key) = &members[rng.random_range(0..members.len())];
            let (code, _) = PRODUCTS[rng.random_range(0..PRODUCTS.len())];
            let Some(resp) = post(&client, &base, key, OPEN, json!({"c": code})).await else {
                return;
            };
            if resp.get("errors").is_none() {
                let r = &resp["data"]["openProduct"];
                let mut acked = acked.lock().unwrap();
                *acked.opens.entry((*user_id, code.to_owned())).or_default() += 1;
                if int(&r["tokensCharged"]) > 0 {
                    acked
                        .charges
                        .insert((*user_id, code.to_owned(), at(&r["windowEndsAt"])));
                }
            }
        }
    }
}

/// The ledger's invariants, and everything acknowledged is there. Returns the counts.
async fn check(db: &Db, acked: &Acknowledged) -> (i64, i64, i64) {
    check_ledger(db).await;
    // Acknowledged purchases.
    let lots: BTreeMap<i32, i64> = rows(db, "SELECT id, quantity FROM lots")
        .await
        .iter()
        .map(|r| {
            (
                r.try_get_by_index::<i32>(0).unwrap(),
                r.try_get_by_index::<i64>(1).unwrap(),
            )
        })
        .collect();
    for (lot, quantity) in &acked.lots {
        assert_eq!(
            lots.get(lot),
            Some(quantity),
            "acknowledged lot {lot} is kept"
        );
    }
    // Acknowledged charges.
    let charges: BTreeSet<(i32, String, DateTime<Utc>)> = rows(
        db,
        "SELECT c.user_id, p.code, c.window_ends_at FROM charges c JOIN products p ON p.id = c.product_id",
    )
    .await
    .iter()
    .map(|r| {
        (
            r.try_get::<i32>("", "user_id").unwrap(),
            r.try_get::<String>("", "code").unwrap(),
            r.try_get::<DateTime<Utc>>("", "window_ends_at").unwrap(),
        )
    })
    .collect();
    for charge in &acked.charges {
        assert!(
            charges.contains(charge),
            "acknowledged charge {charge:?} is kept"
        );
    }
    // Acknowledged opens (reopens included): at least as many records per pair.
    let opens: BTreeMap<(i32, String), i64> = rows(
        db,
        "SELECT user_id, product_code, COUNT(*) AS n FROM opens GROUP BY user_id, product_code",
    )
    .await
    .iter()
    .map(|r| {
        (
            (
                r.try_get::<i32>("", "user_id").unwrap(),
                r.try_get::<String>("", "product_code").unwrap(),
            ),
            r.try_get::<i64>("", "n").unwrap(),
        )
    })
    .collect();
    for (pair, answered) in &acked.opens {
        let kept = opens.get(pair).copied().unwrap_or(0);
        assert!(
            kept >= *answered,
            "{pair:?}: {answered} opens answered, {kept} kept"
        );
    }
    (
        lots.len() as i64,
        charges.len() as i64,
        opens.values().sum(),
    )
}

fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_twenty_times_under_load_the_server_loses_nothing_it_acknowledged() {
    let seed: u64 = std::env::var("DAYPASS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed {seed} (DAYPASS_CRASH_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let (url, _dir) = TestDb::fresh_url().await;
    let op = Some(OPERATOR_KEY);
    let mut server = TestServer::start_on(&url, &[]).await;

    for (code, rate) in PRODUCTS {
        server
            .ok(
                op,
                "mutation($c: String!, $r: Int!) { upsertProduct(input: {code: $c, name: $c, dailyRate: $r, annualSubscriptionMinor: 100000}) { id } }",
                json!({"c": code, "r": rate}),
            )
            .await;
    }
    let d = server
        .ok(
            op,
            "mutation { createAccount(input: {name: \"Crash\", adminEmail: \"admin@crash.test\", adminName: \"Ada\"}) { account { id } adminApiKey } }",
            json!({}),
        )
        .await;
    let admin = id(&d["createAccount"]["adminApiKey"]);
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let d = server
            .ok(
                Some(&admin),
                "mutation($e: String!) { createUser(input: {email: $e, name: $e, role: MEMBER}) { user { id } apiKey } }",
                json!({"e": format!("m{i}@crash.test")}),
            )
            .await;
        members.push((
            id(&d["createUser"]["user"]["id"]).parse::<i32>().unwrap(),
            id(&d["createUser"]["apiKey"]),
        ));
    }
    let ids: Vec<String> = members.iter().map(|(u, _)| u.to_string()).collect();
    server
        .ok(
            Some(&admin),
            "mutation($ids: [ID!]!) { assignFlex(userIds: $ids, assigned: true) { id } }",
            json!({"ids": ids}),
        )
        .await;
    // Enough for most opens; purchases during the load add more, and some opens are
    // denied when the balance runs short.
    server
        .ok(Some(&admin), BUY, json!({"q": 600, "k": "crash-start"}))
        .await;
    let members = Arc::new(members);
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let check_db = Db::connect(&url).await.expect("connect to check");

    for round in 0..KILLS {
        let l = Load {
            client: server.client().clone(),
            base: server.base_url.clone(),
            admin: admin.clone(),
            members: members.clone(),
            acked: acked.clone(),
        };
        let tasks: Vec<_> = (0..8)
            .map(|worker| tokio::spawn(load(l.clone(), seed, round, worker)))
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..400))).await;
        kill9(server.pid());
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("the load stops once the server is gone")
                .unwrap();
        }
        drop(server);
        server = TestServer::start_on(&url, &[]).await;
        let acked = acked.lock().unwrap().clone();
        let (lots, charges, opens) = check(&check_db, &acked).await;
        println!(
            "kill {}: {lots} lots, {charges} charges, {opens} open records; acknowledged {} purchases, {} charges, {} opens",
            round + 1,
            acked.lots.len(),
            acked.charges.len(),
            acked.opens.values().sum::<i64>()
        );
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.charges.len() >= 40 && acked.lots.len() >= 10,
        "the load did real work between kills: {} charges, {} purchases",
        acked.charges.len(),
        acked.lots.len()
    );
}
