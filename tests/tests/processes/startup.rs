//! Start-up: several processes started at the same instant on a new database all
//! migrate it (one at a time, the others finding it done) and serve.

use daypass_tests::server::{OPERATOR_KEY, TestWorker};
use daypass_tests::{Api, TestDb, TestServer};
use serde_json::json;

/// Three `daypass serve` and two `daypass-worker`, started together on a database
/// nobody has migrated: as a rolling deploy, or a compose file without a one-shot
/// `migrate` service, does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_processes_started_at_once_on_a_new_database_all_serve() {
    for round in 0..3 {
        let (url, _dir) = TestDb::fresh_url().await;
        let env = [("DAYPASS_WORKERS", "external")];
        let servers = futures::future::join_all((0..3).map(|_| TestServer::start_on(&url, &env)));
        let workers = futures::future::join_all((0..2).map(|_| TestWorker::start(&url, &[])));
        let (servers, workers) = tokio::join!(servers, workers);
        assert_eq!(workers.len(), 2);
        for (i, s) in servers.iter().enumerate() {
            let data = s
                .ok(
                    Some(OPERATOR_KEY),
                    "mutation($c: String!) { upsertProduct(input: {code: $c, name: $c, dailyRate: 3}) { code } }",
                    json!({"c": format!("p{round}-{i}")}),
                )
                .await;
            assert_eq!(data["upsertProduct"]["code"], format!("p{round}-{i}"));
        }
        // The price list was seeded once, not once per process.
        let bands = servers[0]
            .ok(
                Some(OPERATOR_KEY),
                "{ priceList { minQuantity } }",
                json!({}),
            )
            .await;
        let mins: Vec<i64> = bands["priceList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["minQuantity"].as_i64().unwrap())
            .collect();
        let mut distinct = mins.clone();
        distinct.dedup();
        assert_eq!(mins, distinct, "each band once: {mins:?}");
    }
}
