//! The in-process harness ([`TestApp`]) itself: it answers what the real binary
//! answers, and its maintenance runs the jobs and delivers the e-mails.

use daypass_tests::json::id;
use daypass_tests::server::OPERATOR_KEY;
use daypass_tests::{Api, TestApp, TestServer};
use serde_json::{Value, json};

const OP: Option<&str> = Some(OPERATOR_KEY);

/// An answer over HTTP without the request id each error carries there (the HTTP
/// layer's, which the harness has not); panics when an error lacks it.
fn without_request_ids(mut answer: Value) -> Value {
    if let Some(errors) = answer.get_mut("errors").and_then(Value::as_array_mut) {
        for e in errors {
            let removed = e["extensions"]
                .as_object_mut()
                .and_then(|x| x.remove("requestId"));
            assert!(removed.is_some(), "an error without its request id: {e}");
        }
    }
    answer
}

/// The same requests, in the same order, to the application in process and to the
/// binary over HTTP get the same JSON, errors and all (but the request ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_answers_as_the_binary_does() {
    let app = TestApp::start().await;
    let server = TestServer::start().await;
    let requests = [
        (None, "{ viewer { role } }", json!({})),
        (Some("dp_not-a-real-key"), "{ viewer { role } }", json!({})),
        (OP, "{ viewer { role ", json!({})),
        (OP, "{ viewr { role } }", json!({})),
        (
            OP,
            "query($q: Int!) { priceQuote(quantity: $q) { totalMinor } }",
            json!({"q": "ten"}),
        ),
        (
            OP,
            "{ priceList { minQuantity maxQuantity unitPriceMinor selfService }
               priceQuote(quantity: 1000) { quantity unitPriceMinor totalMinor currency } }",
            json!({}),
        ),
        (
            OP,
            "mutation { upsertProduct(input: {code: \"cad\", name: \"CAD\", dailyRate: 7}) { id code dailyRate active } }",
            json!({}),
        ),
        (OP, "{ products { id code name dailyRate } }", json!({})),
        (OP, "mutation { advanceClock(hours: -1) }", json!({})),
        (
            None,
            "mutation { openProduct(input: {productCode: \"cad\"}) { granted } }",
            json!({}),
        ),
        (
            OP,
            "{ __schema { types { name kind fields { name args { name type { name kind } } } } } }",
            json!({}),
        ),
    ];
    for (key, query, variables) in requests {
        let in_process = app.gql(key, query, variables.clone()).await;
        let over_http = without_request_ids(server.gql(key, query, variables.clone()).await);
        assert_eq!(in_process, over_http, "{query} with {variables}");
    }
}

/// `run_maintenance` runs the expiry sweep, the rollup and the deliveries now, says
/// what each did, and the e-mails are on the harness's SMTP server when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_runs_the_jobs_and_delivers_the_mail() {
    let s = TestApp::start().await;
    s.upsert_product("cad", 10).await;
    let created = s
        .ok(
            OP,
            "mutation { createAccount(input: {name: \"Harness\", adminEmail: \"admin@harness.test\", adminName: \"A\"}) { account { id } adminApiKey } }",
            json!({}),
        )
        .await;
    let account = id(&created["createAccount"]["account"]["id"]);
    let admin = id(&created["createAccount"]["adminApiKey"]);
    let (member_id, member) = s.create_user(&admin, "m@harness.test", "M", "MEMBER").await;
    s.ok(
        Some(&admin),
        "mutation($u: [ID!]!) { assignFlex(userIds: $u, assigned: true) { id } }",
        json!({"u": [member_id]}),
    )
    .await;
    let buy = "mutation($a: ID!, $q: Int!, $k: String!, $p: DateTime) {
        purchaseTokens(input: {quantity: $q, idempotencyKey: $k, accountId: $a, purchasedAt: $p}) { id }
    }";
    // A lot bought 400 days ago has expired: the balance is nothing, and an open is
    // denied (a tokens-exhausted e-mail).
    let long_ago = s.now() - chrono::Duration::days(400);
    s.ok(
        OP,
        buy,
        json!({"a": account, "q": 50, "k": "old", "p": long_ago.to_rfc3339()}),
    )
    .await;
    let open = "mutation { openProduct(input: {productCode: \"cad\"}) { granted denyReason } }";
    let denied = s.ok(Some(&member), open, json!({})).await;
    assert_eq!(denied["openProduct"]["denyReason"], "INSUFFICIENT_TOKENS");
    assert!(s.mail().is_empty(), "nothing is sent before maintenance");

    let report = s.run_maintenance().await;
    assert_eq!(report.lots_expired, 1, "{report:?}");
    assert_eq!(
        (report.notifications_sent, report.notifications_failed),
        (1, 0),
        "{report:?}"
    );
    let mail = s.mail();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].to, ["admin@harness.test"]);
    assert!(
        mail[0].subject().contains("Harness"),
        "{}",
        mail[0].subject()
    );

    // Opens today, rolled up once the day has closed; a second pass finds nothing.
    s.ok(
        OP,
        buy,
        json!({"a": account, "q": 100, "k": "new", "p": null}),
    )
    .await;
    assert_eq!(
        s.ok(Some(&member), open, json!({})).await["openProduct"]["granted"],
        true
    );
    s.advance(48);
    let report = s.run_maintenance().await;
    assert!(report.days_rolled >= 1, "{report:?}");
    assert_eq!(report.lots_expired, 0, "{report:?}");
    assert_eq!(report.notifications_sent, 0, "{report:?}");
    let again = s.run_maintenance().await;
    assert_eq!(again.days_rolled, 0, "{again:?}");
    assert_eq!(s.mail().len(), 1);
}
