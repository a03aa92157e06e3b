//! `balanceChanged` over WebSocket (`/graphql/ws`) against the real binaries: what
//! pushes and what does not, tenancy, authentication, and changes made by another
//! process on the same database (LISTEN/NOTIFY on PostgreSQL, the ledger on SQLite).

use daypass_tests::json::{at, id, int};
use daypass_tests::server::OPERATOR_KEY;
use daypass_tests::ws::{Incoming, Protocol, WsClient, is_refusal};
use daypass_tests::{Api, TestDb, TestServer};
use serde_json::{Value, json};

const OP: Option<&str> = Some(OPERATOR_KEY);

/// Workers stay out of the way: the expiry sweep runs when a test asks for it.
const EXTERNAL_WORKERS: (&str, &str) = ("DAYPASS_WORKERS", "external");
const TEST_CLOCK: (&str, &str) = ("DAYPASS_TEST_CLOCK", "1");

/// An account with its admin and one pay-as-you-go member.
struct Tenant {
    account: String,
    admin: String,
    member_id: String,
    member: String,
}

async fn tenant(s: &TestServer, name: &str) -> Tenant {
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
    let account = id(&d["createAccount"]["account"]["id"]);
    let admin = id(&d["createAccount"]["adminApiKey"]);
    let d = s
        .ok(
            Some(&admin),
            "mutation($e: String!) {
               createUser(input: {email: $e, name: $e, role: MEMBER}) { user { id } apiKey }
             }",
            json!({"e": format!("member@{}.test", name.to_lowercase())}),
        )
        .await;
    let member_id = id(&d["createUser"]["user"]["id"]);
    let member = id(&d["createUser"]["apiKey"]);
    s.ok(
        Some(&admin),
        "mutation($ids: [ID!]!) { assignFlex(userIds: $ids, assigned: true) { id } }",
        json!({"ids": [member_id]}),
    )
    .await;
    Tenant {
        account,
        admin,
        member_id,
        member,
    }
}

/// A self-service purchase by the account's admin.
async fn buy(s: &TestServer, admin: &str, quantity: i64) {
    let d = s
        .ok(
            Some(admin),
            "mutation($q: Int!, $k: String!) {
               purchaseTokens(input: {quantity: $q, idempotencyKey: $k}) { quantity }
             }",
            json!({"q": quantity, "k": format!("live-{:016x}", rand::random::<u64>())}),
        )
        .await;
    assert_eq!(int(&d["purchaseTokens"]["quantity"]), quantity);
}

/// Opens `code` as the holder of `key`; returns the answer.
async fn open(s: &TestServer, key: &str, code: &str) -> Value {
    s.ok(
        Some(key),
        "mutation($c: String!) {
           openProduct(input: {productCode: $c}) { granted tokensCharged balance }
         }",
        json!({"c": code}),
    )
    .await["openProduct"]
        .clone()
}

async fn balance(s: &TestServer, key: &str) -> i64 {
    int(&s.ok(Some(key), "{ account { balance } }", json!({})).await["account"]["balance"])
}

/// Asserts a push is `tenant`'s account with `expected` tokens.
fn assert_pushed(push: &Value, tenant: &Tenant, expected: i64) {
    assert_eq!(id(&push["id"]), tenant.account, "{push:#}");
    assert_eq!(int(&push["balance"]), expected, "{push:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_charge_and_expiry_each_push_the_new_balance() {
    let s = TestServer::start_with(&[TEST_CLOCK, EXTERNAL_WORKERS]).await;
    s.upsert_product("cad", 5).await;
    let t = tenant(&s, "Acme").await;
    let mut admin = WsClient::open(&s, &t.admin).await;
    let sub = admin.subscribe_balance(None).await;
    // A member watches the same account (every active user may see its balance).
    let mut member = WsClient::open(&s, &t.member).await;
    let member_sub = member.subscribe_balance(None).await;

    buy(&s, &t.admin, 100).await;
    assert_pushed(&admin.next_balance(&sub).await, &t, 100);
    assert_pushed(&member.next_balance(&member_sub).await, &t, 100);

    let charged = open(&s, &t.member, "cad").await;
    assert_eq!(int(&charged["tokensCharged"]), 5);
    assert_pushed(&admin.next_balance(&sub).await, &t, 95);
    assert_pushed(&member.next_balance(&member_sub).await, &t, 95);

    // A year and a day later the lot has lapsed; the next purchase's push reads the
    // balance as of that purchase (the lapsed lot no longer counts), not as of the
    // moment the connection opened.
    let later = at(&s
        .ok(
            OP,
            "mutation($h: Int!) { advanceClock(hours: $h) }",
            json!({"h": 24 * 367}),
        )
        .await["advanceClock"]);
    buy(&s, &t.admin, 10).await;
    assert_pushed(&admin.next_balance(&sub).await, &t, 10);
    assert_pushed(&member.next_balance(&member_sub).await, &t, 10);
    assert_eq!(balance(&s, &t.admin).await, 10);

    // The sweep records the expiry: one more push, same balance.
    let d = s.ok(OP, "mutation { runMaintenance }", json!({})).await;
    assert_eq!(d["runMaintenance"], true);
    assert_pushed(&admin.next_balance(&sub).await, &t, 10);
    assert_pushed(&member.next_balance(&member_sub).await, &t, 10);
    let ledger = s
        .ok(
            Some(&t.admin),
            "{ account { ledger(first: 10) { edges { node { kind tokens at } } } } }",
            json!({}),
        )
        .await;
    let expiry = ledger["account"]["ledger"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["node"])
        .find(|n| n["kind"] == "EXPIRY")
        .unwrap_or_else(|| panic!("an EXPIRY entry: {ledger:#}"))
        .clone();
    assert_eq!(int(&expiry["tokens"]), -95);
    assert!(at(&expiry["at"]) < later);

    admin.expect_quiet("nothing else changed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_inside_the_window_pushes_nothing() {
    let s = TestServer::start_with(&[EXTERNAL_WORKERS]).await;
    s.upsert_product("cad", 5).await;
    s.upsert_product("cam", 7).await;
    let t = tenant(&s, "Acme").await;
    let mut ws = WsClient::open(&s, &t.admin).await;
    let sub = ws.subscribe_balance(None).await;
    buy(&s, &t.admin, 100).await;
    assert_pushed(&ws.next_balance(&sub).await, &t, 100);

    assert_eq!(int(&open(&s, &t.member, "cad").await["tokensCharged"]), 5);
    assert_pushed(&ws.next_balance(&sub).await, &t, 95);

    let reopen = open(&s, &t.member, "cad").await;
    assert_eq!(reopen["granted"], true);
    assert_eq!(int(&reopen["tokensCharged"]), 0);
    ws.expect_quiet("a reopen inside the 24-hour window charges nothing")
        .await;

    // The subscription is still live: the next charge pushes, with its own balance.
    assert_eq!(int(&open(&s, &t.member, "cam").await["tokensCharged"]), 7);
    assert_pushed(&ws.next_balance(&sub).await, &t, 88);
}

/// Several `daypass serve` processes share one database: a change made through one
/// reaches subscribers connected to another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_another_process_reaches_subscribers() {
    let first = TestServer::start_with(&[EXTERNAL_WORKERS]).await;
    let second = TestServer::start_on(&first.database_url, &[EXTERNAL_WORKERS]).await;
    first.upsert_product("cad", 5).await;
    let t = tenant(&first, "Acme").await;
    let mut on_first = WsClient::open(&first, &t.admin).await;
    let sub = on_first.subscribe_balance(None).await;
    // The operator watches the same account through the other process.
    let mut operator = WsClient::open(&second, OPERATOR_KEY).await;
    let op_sub = operator.subscribe_balance(Some(&t.account)).await;

    buy(&second, &t.admin, 100).await;
    assert_pushed(&on_first.next_balance(&sub).await, &t, 100);
    assert_pushed(&operator.next_balance(&op_sub).await, &t, 100);

    assert_eq!(
        int(&open(&second, &t.member, "cad").await["tokensCharged"]),
        5
    );
    assert_pushed(&on_first.next_balance(&sub).await, &t, 95);
    assert_pushed(&operator.next_balance(&op_sub).await, &t, 95);

    // And the other way round.
    buy(&first, &t.admin, 10).await;
    assert_pushed(&on_first.next_balance(&sub).await, &t, 105);
    assert_pushed(&operator.next_balance(&op_sub).await, &t, 105);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_subscriber_hears_nothing() {
    let s = TestServer::start_with(&[EXTERNAL_WORKERS]).await;
    s.upsert_product("cad", 5).await;
    let acme = tenant(&s, "Acme").await;
    let globex = tenant(&s, "Globex").await;
    let mut acme_ws = WsClient::open(&s, &acme.admin).await;
    let acme_sub = acme_ws.subscribe_balance(None).await;
    let mut globex_ws = WsClient::open(&s, &globex.admin).await;
    let globex_sub = globex_ws.subscribe_balance(None).await;

    // Naming another tenant's account is refused, and ends that subscription only.
    let other = globex_ws.subscribe_balance(Some(&acme.account)).await;
    let refused = globex_ws.next_payload(&other).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused:#}"
    );
    globex_ws.expect_complete(&other).await;
    // An operator must say which account.
    let mut operator = WsClient::open(&s, OPERATOR_KEY).await;
    let unnamed = operator.subscribe_balance(None).await;
    let refused = operator.next_payload(&unnamed).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{refused:#}"
    );
    operator.expect_complete(&unnamed).await;

    buy(&s, &acme.admin, 100).await;
    assert_pushed(&acme_ws.next_balance(&acme_sub).await, &acme, 100);
    assert_eq!(
        int(&open(&s, &acme.member, "cad").await["tokensCharged"]),
        5
    );
    assert_pushed(&acme_ws.next_balance(&acme_sub).await, &acme, 95);
    globex_ws
        .expect_quiet("Acme's purchase and charge are not Globex's business")
        .await;

    // Globex's own change still reaches Globex.
    buy(&s, &globex.admin, 20).await;
    assert_pushed(&globex_ws.next_balance(&globex_sub).await, &globex, 20);
    acme_ws.expect_quiet("Globex's purchase").await;
}

/// A long-lived connection does not outlive the caller's rights: each push reads
/// the caller again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_subscriber_gets_forbidden_and_no_more_pushes() {
    let s = TestServer::start_with(&[EXTERNAL_WORKERS]).await;
    let t = tenant(&s, "Acme").await;
    let mut member = WsClient::open(&s, &t.member).await;
    let sub = member.subscribe_balance(None).await;
    buy(&s, &t.admin, 100).await;
    assert_pushed(&member.next_balance(&sub).await, &t, 100);

    let d = s
        .ok(
            Some(&t.admin),
            "mutation($u: ID!) { deactivateUser(userId: $u) { active } }",
            json!({"u": t.member_id}),
        )
        .await;
    assert_eq!(d["deactivateUser"]["active"], false);
    buy(&s, &t.admin, 10).await;
    let refused = member.next_payload(&sub).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused:#}"
    );
    assert!(refused["data"].is_null(), "{refused:#}");
    member.expect_complete(&sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_valid_key_is_refused() {
    let s = TestServer::start_with(&[EXTERNAL_WORKERS]).await;
    let t = tenant(&s, "Acme").await;

    // No key at all, or a wrong one in connection_init: closed at connection_init.
    for payload in [
        json!({}),
        json!({"Authorization": "Bearer dp_not-a-key"}),
        json!({"authorization": t.admin.clone()}),
        json!({"token": "dp_not-a-key"}),
    ] {
        let mut ws = WsClient::connect(&s, Protocol::GraphqlTransportWs, None)
            .await
            .expect("the upgrade itself needs no key");
        let answer = ws.init(payload.clone()).await;
        assert!(is_refusal(&answer), "{payload}: {answer:?}");
    }

    // A subscribe before connection_init is refused too.
    let mut ws = WsClient::connect(&s, Protocol::GraphqlTransportWs, None)
        .await
        .unwrap();
    ws.send(json!({"id": "1", "type": "subscribe",
        "payload": {"query": "subscription { balanceChanged { balance } }"}}))
        .await;
    match ws.recv(daypass_tests::ws::PUSH_TIMEOUT).await {
        Some(Incoming::Closed(_)) => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }

    // A wrong key on the upgrade request: no upgrade (401).
    match WsClient::connect(&s, Protocol::GraphqlTransportWs, Some("dp_not-a-key")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401)
        }
        Err(e) => panic!("expected a 401, got {e}"),
        Ok(_) => panic!("a wrong key must not upgrade"),
    }

    // The legacy protocol answers connection_error.
    let mut ws = WsClient::connect(&s, Protocol::LegacyGraphqlWs, None)
        .await
        .unwrap();
    match ws.init(json!({"token": "dp_not-a-key"})).await {
        Incoming::Message(m) if m["type"] == "connection_error" => {
            assert!(
                m["payload"]["message"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("UNAUTHENTICATED")),
                "{m}"
            );
        }
        other => panic!("expected connection_error, got {other:?}"),
    }

    // The accepted forms: the header on the upgrade, or `token` in the payload.
    let mut ws = WsClient::connect(&s, Protocol::GraphqlTransportWs, Some(&t.admin))
        .await
        .unwrap();
    assert_eq!(
        ws.init(json!({})).await,
        Incoming::Message(json!({"type": "connection_ack"}))
    );
    let mut ws = WsClient::connect(&s, Protocol::GraphqlTransportWs, None)
        .await
        .unwrap();
    assert_eq!(
        ws.init(json!({"token": t.admin})).await,
        Incoming::Message(json!({"type": "connection_ack"}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_graphql_ws_protocol_pushes_too() {
    let s = TestServer::start_with(&[EXTERNAL_WORKERS]).await;
    let t = tenant(&s, "Acme").await;
    let mut ws = WsClient::connect(&s, Protocol::LegacyGraphqlWs, None)
        .await
        .unwrap();
    assert_eq!(
        ws.init(json!({"Authorization": format!("Bearer {}", t.admin)}))
            .await,
        Incoming::Message(json!({"type": "connection_ack"}))
    );
    let sub = ws.subscribe_balance(None).await;
    buy(&s, &t.admin, 40).await;
    assert_pushed(&ws.next_balance(&sub).await, &t, 40);
}

/// The feed starts at the ledger's end: what was committed before a server started
/// is not pushed again to its subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_before_the_server_started_are_not_pushed() {
    let (url, _dir) = TestDb::fresh_url().await;
    let first = TestServer::start_on(&url, &[EXTERNAL_WORKERS]).await;
    let t = tenant(&first, "Acme").await;
    buy(&first, &t.admin, 100).await;
    let second = TestServer::start_on(&url, &[EXTERNAL_WORKERS]).await;
    let mut ws = WsClient::open(&second, &t.admin).await;
    let sub = ws.subscribe_balance(None).await;
    ws.expect_quiet("the purchase happened before this server started")
        .await;
    buy(&first, &t.admin, 1).await;
    assert_pushed(&ws.next_balance(&sub).await, &t, 101);
}

/// An open subscription does not hold up a shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_subscriber_connected_still_exits() {
    let mut s = TestServer::start_with(&[EXTERNAL_WORKERS]).await;
    let t = tenant(&s, "Acme").await;
    let mut ws = WsClient::open(&s, &t.admin).await;
    let _sub = ws.subscribe_balance(None).await;
    let status = s.terminate(std::time::Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|st| st.success()),
        "daypass exits cleanly on SIGTERM: {status:?}"
    );
    match ws.recv(daypass_tests::ws::PUSH_TIMEOUT).await {
        Some(Incoming::Closed(_)) => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }
}

/// PostgreSQL: when the feed's `LISTEN` connection drops, the server listens again and
/// pushes every subscriber once (what was committed meanwhile went unheard), then
/// pushes as before. SQLite has no such connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_feed_listens_again_after_its_connection_drops() {
    if !daypass_tests::on_postgres() {
        return;
    }
    use sea_orm::{ConnectionTrait, Database};
    let s = TestServer::start_with(&[EXTERNAL_WORKERS]).await;
    let t = tenant(&s, "Acme").await;
    let mut ws = WsClient::open(&s, &t.admin).await;
    let sub = ws.subscribe_balance(None).await;
    buy(&s, &t.admin, 100).await;
    assert_pushed(&ws.next_balance(&sub).await, &t, 100);

    let db = Database::connect(&s.database_url).await.unwrap();
    let killed = db
        .execute_unprepared(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .await
        .unwrap();
    assert_eq!(killed.rows_affected(), 1, "one LISTEN connection");
    db.close().await.ok();
    assert_pushed(&ws.next_balance(&sub).await, &t, 100);

    buy(&s, &t.admin, 5).await;
    assert_pushed(&ws.next_balance(&sub).await, &t, 105);
}

/// The caps of `api/src/ws_limits.rs`, as a client meets them.
const MAX_OPERATIONS_PER_CONNECTION: usize = 20;
const MAX_CONNECTIONS_PER_CALLER: usize = 20;

/// The next `balanceChanged` push of each of `ids`, in whatever order they come.
async fn pushes_to_each(ws: &mut WsClient, ids: &[String], tenant: &Tenant, expected: i64) {
    let mut heard = std::collections::BTreeSet::new();
    while heard.len() < ids.len() {
        match ws.recv(daypass_tests::ws::PUSH_TIMEOUT).await {
            Some(Incoming::Message(m)) if m["type"] == "next" || m["type"] == "data" => {
                let id = id(&m["id"]);
                assert!(ids.contains(&id), "a push for {id}, not one of {ids:?}");
                assert_pushed(&m["payload"]["data"]["balanceChanged"], tenant, expected);
                assert!(heard.insert(id.clone()), "two pushes for {id}");
            }
            other => panic!("expected pushes to {ids:?}, heard {heard:?}, got {other:?}"),
        }
    }
}

/// Asserts `payload` (an `error` message's) refuses an operation for the
/// connection's cap.
fn assert_too_many_subscriptions(error: &Value) {
    assert_eq!(error["extensions"]["code"], "FORBIDDEN", "{error:#}");
    assert_eq!(
        error["extensions"]["reason"], "TOO_MANY_SUBSCRIPTIONS",
        "{error:#}"
    );
    assert!(
        error["message"].as_str().unwrap().contains("at most 20"),
        "{error:#}"
    );
}

/// One connection runs at most 20 operations at once: the 21st `subscribe` gets an
/// `error` for its id and never starts, the first 20 still get their pushes, and an
/// operation that ends (completed by the client, or a query that is answered) frees
/// its place. The legacy protocol is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_the_cap_of_a_connection_are_refused_and_the_rest_still_push() {
    let s = TestServer::start_with(&[EXTERNAL_WORKERS]).await;
    let t = tenant(&s, "Acme").await;
    let mut ws = WsClient::open(&s, &t.admin).await;
    let mut subs = Vec::new();
    for _ in 0..MAX_OPERATIONS_PER_CONNECTION {
        subs.push(ws.subscribe_balance(None).await);
    }
    let over = ws.subscribe_balance(None).await;
    let refused = ws.expect_error(&over).await;
    assert_too_many_subscriptions(&refused[0]);

    buy(&s, &t.admin, 100).await;
    pushes_to_each(&mut ws, &subs, &t, 100).await;
    ws.expect_quiet("the refused subscription hears nothing")
        .await;

    // Completing one frees its place for another.
    let done = subs.remove(0);
    ws.complete(&done).await;
    subs.push(ws.subscribe_balance(None).await);
    let over = ws.subscribe_balance(None).await;
    assert_too_many_subscriptions(&ws.expect_error(&over).await[0]);

    // A query is an operation too, and frees its place once answered: with one place
    // free, query after query is answered.
    ws.complete(&subs.remove(0)).await;
    for _ in 0..3 {
        let q = ws.subscribe("{ viewer { role } }", json!({})).await;
        assert_eq!(ws.next_payload(&q).await["data"]["viewer"]["role"], "ADMIN");
        ws.expect_complete(&q).await;
    }
    buy(&s, &t.admin, 5).await;
    pushes_to_each(&mut ws, &subs, &t, 105).await;

    // The legacy graphql-ws protocol: the same cap, its `error` carries one error.
    let mut legacy = WsClient::connect(&s, Protocol::LegacyGraphqlWs, Some(&t.member))
        .await
        .unwrap();
    assert_eq!(
        legacy.init(json!({})).await,
        Incoming::Message(json!({"type": "connection_ack"}))
    );
    let mut legacy_subs = Vec::new();
    for _ in 0..MAX_OPERATIONS_PER_CONNECTION {
        legacy_subs.push(legacy.subscribe_balance(None).await);
    }
    let over = legacy.subscribe_balance(None).await;
    assert_too_many_subscriptions(&legacy.expect_error(&over).await);
    buy(&s, &t.admin, 1).await;
    pushes_to_each(&mut legacy, &legacy_subs, &t, 106).await;
    pushes_to_each(&mut ws, &subs, &t, 106).await;
}

/// Connects with the key in `connection_init`; the answer to it.
async fn try_open(s: &TestServer, protocol: Protocol, key: &str) -> (WsClient, Incoming) {
    let mut ws = WsClient::connect(s, protocol, None).await.unwrap();
    let answer = ws
        .init(json!({"Authorization": format!("Bearer {key}")}))
        .await;
    (ws, answer)
}

/// Asserts `answer` closes the connection for the caller's cap.
fn assert_too_many_connections(answer: &Incoming) {
    match answer {
        Incoming::Closed(Some((4429, reason))) => {
            assert!(
                reason.starts_with("TOO_MANY_CONNECTIONS") && reason.contains("at most 20"),
                "{reason}"
            );
            assert!(reason.len() <= 123, "{reason}");
        }
        other => panic!("expected a close with 4429, got {other:?}"),
    }
}

/// A key whose caller has a place again, once the server has seen a connection go
/// (closing is not instant on its side): retried for a few seconds, no longer.
async fn open_once_a_place_frees(s: &TestServer, key: &str) -> WsClient {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (ws, answer) = try_open(s, Protocol::GraphqlTransportWs, key).await;
        match answer {
            Incoming::Message(m) if m == json!({"type": "connection_ack"}) => return ws,
            refused if std::time::Instant::now() < deadline => {
                assert_too_many_connections(&refused);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            refused => panic!("no place freed within 5 s: {refused:?}"),
        }
    }
}

/// One caller holds at most 20 open connections: the 21st is closed at
/// `connection_init` with 4429 and a reason, the 20 keep working, other callers
/// connect and subscribe as before, and a connection that goes (closed, or dropped
/// without a word) frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_of_a_caller_are_closed_and_others_still_connect() {
    let s = TestServer::start_with(&[EXTERNAL_WORKERS]).await;
    let t = tenant(&s, "Acme").await;
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS_PER_CALLER {
        held.push(WsClient::open(&s, &t.admin).await);
    }
    assert_too_many_connections(&try_open(&s, Protocol::GraphqlTransportWs, &t.admin).await.1);
    // The key on the upgrade request: upgraded, then refused at connection_init.
    let mut ws = WsClient::connect(&s, Protocol::GraphqlTransportWs, Some(&t.admin))
        .await
        .unwrap();
    assert_too_many_connections(&ws.init(json!({})).await);
    // The legacy protocol is told with connection_error, then closed the same way.
    let (mut legacy, answer) = try_open(&s, Protocol::LegacyGraphqlWs, &t.admin).await;
    match answer {
        Incoming::Message(m) if m["type"] == "connection_error" => assert!(
            m["payload"]["message"]
                .as_str()
                .is_some_and(|r| r.starts_with("TOO_MANY_CONNECTIONS")),
            "{m}"
        ),
        other => panic!("expected connection_error, got {other:?}"),
    }
    assert_too_many_connections(&legacy.recv(daypass_tests::ws::PUSH_TIMEOUT).await.unwrap());

    // Everyone else is served: another caller connects and hears its account, and the
    // admin's connections still work, over HTTP too.
    let mut member = WsClient::open(&s, &t.member).await;
    let member_sub = member.subscribe_balance(None).await;
    let admin_sub = held[0].subscribe_balance(None).await;
    buy(&s, &t.admin, 100).await;
    assert_pushed(&member.next_balance(&member_sub).await, &t, 100);
    assert_pushed(&held[0].next_balance(&admin_sub).await, &t, 100);
    assert_eq!(balance(&s, &t.admin).await, 100);

    // Closing one frees a place; so does dropping one without a close frame.
    held.pop().unwrap().close().await;
    held.push(open_once_a_place_frees(&s, &t.admin).await);
    drop(held.pop());
    held.push(open_once_a_place_frees(&s, &t.admin).await);
    // And the count is exact: full again.
    assert_too_many_connections(&try_open(&s, Protocol::GraphqlTransportWs, &t.admin).await.1);
}
