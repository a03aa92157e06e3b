//! Authorization matrix: every root field of the served schema (Query,
//! Mutation — the test clock's included — and Subscription) against every kind of
//! caller, with the outcome PRODUCT.md rule 19 gives: the queries and mutations in
//! process, the subscription over WebSocket on the real binary. A field of the
//! schema without a row fails the test. Cross-tenant probes use account A's ids
//! with account B's admin.

use daypass_tests::json::id;
use daypass_tests::server::OPERATOR_KEY;
use daypass_tests::ws::{Incoming, Protocol, WsClient, is_refusal};
use daypass_tests::{Api, TestApp, TestServer};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    NoKey,
    Member,
    Analyst,
    Admin,
    OtherAdmin,
    Operator,
}

const CALLERS: [Caller; 6] = [
    Caller::NoKey,
    Caller::Member,
    Caller::Analyst,
    Caller::Admin,
    Caller::OtherAdmin,
    Caller::Operator,
];

/// What a caller gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// An answer without errors.
    Ok,
    /// UNAUTHENTICATED.
    Unauth,
    /// FORBIDDEN.
    Forbid,
    /// Another tenant's data: FORBIDDEN or NOT_FOUND (existence may be hidden).
    Refused,
}
use Expect::{Forbid, Ok as Yes, Refused, Unauth};

/// Account A (the target) and what the probes name.
struct Fixture {
    account_a: String,
    admin_a: String,
    member_a: String,
    member_a_id: String,
    analyst_a: String,
    admin_b: String,
    product: String,
    subscription_a: String,
    /// A session of member A.
    session_a: String,
    /// One user of A per caller, for `deactivateUser`.
    victims: Vec<String>,
    /// One alert rule and one webhook endpoint of A per caller, for the deletes.
    alert_rules: Vec<String>,
    endpoints: Vec<String>,
    /// A webhook delivery of A.
    delivery_a: String,
    /// One report subscription of A per caller (made by its admin), for the removals.
    report_subscriptions: Vec<String>,
}

impl Fixture {
    fn key(&self, caller: Caller) -> Option<&str> {
        match caller {
            Caller::NoKey => None,
            Caller::Member => Some(&self.member_a),
            Caller::Analyst => Some(&self.analyst_a),
            Caller::Admin => Some(&self.admin_a),
            Caller::OtherAdmin => Some(&self.admin_b),
            Caller::Operator => Some(OPERATOR_KEY),
        }
    }
}

struct Row {
    field: &'static str,
    doc: &'static str,
    vars: fn(&Fixture, usize) -> Value,
    /// In the order of [`CALLERS`].
    expect: [Expect; 6],
}

fn none(_: &Fixture, _: usize) -> Value {
    json!({})
}
fn account_a(f: &Fixture, _: usize) -> Value {
    json!({"a": f.account_a})
}
fn session_a(f: &Fixture, _: usize) -> Value {
    json!({"s": f.session_a})
}

/// The matrix. Columns: no key, member, analyst, admin, other account's admin, operator.
fn rows() -> Vec<Row> {
    vec![
        // Query
        Row {
            field: "viewer",
            doc: "{ viewer { __typename } }",
            vars: none,
            expect: [Unauth, Yes, Yes, Yes, Yes, Yes],
        },
        Row {
            field: "account",
            doc: "query($a: ID) { account(id: $a) { id name balance } }",
            vars: account_a,
            expect: [Unauth, Yes, Yes, Yes, Refused, Yes],
        },
        Row {
            field: "account.lots",
            doc: "query($a: ID) { account(id: $a) { lots { edges { node { id } } } } }",
            vars: account_a,
            expect: [Unauth, Forbid, Yes, Yes, Refused, Yes],
        },
        Row {
            field: "account.ledger",
            doc: "query($a: ID) { account(id: $a) { ledger { edges { node { tokens } } } } }",
            vars: account_a,
            expect: [Unauth, Forbid, Yes, Yes, Refused, Yes],
        },
        Row {
            field: "account.spending",
            doc: "query($a: ID) { account(id: $a) { spending(from: \"2026-01-01\", to: \"2026-12-31\") { tokens } } }",
            vars: account_a,
            expect: [Unauth, Forbid, Yes, Yes, Refused, Yes],
        },
        Row {
            field: "account.usageReport",
            doc: "query($a: ID) { account(id: $a) { usageReport(from: \"2026-01-01\", to: \"2026-12-31\", groupBy: [USER]) { tokens } } }",
            vars: account_a,
            expect: [Unauth, Yes, Yes, Yes, Refused, Yes],
        },
        Row {
            field: "account.sessions",
            doc: "query($a: ID) { account(id: $a) { sessions { edges { node { id state } } } } }",
            vars: account_a,
            expect: [Unauth, Yes, Yes, Yes, Refused, Yes],
        },
        Row {
            field: "accessCheck",
            doc: "{ accessCheck(productCode: \"authz-open\") { granted } }",
            vars: none,
            expect: [Unauth, Yes, Forbid, Yes, Yes, Forbid],
        },
        Row {
            field: "account.charges",
            doc: "query($a: ID) { account(id: $a) { charges { edges { node { id } } } } }",
            vars: account_a,
            expect: [Unauth, Yes, Yes, Yes, Refused, Yes],
        },
        Row {
            field: "accounts",
            doc: "{ accounts { edges { node { id } } } }",
            vars: none,
            expect: [Unauth, Forbid, Forbid, Forbid, Forbid, Yes],
        },
        Row {
            field: "products",
            doc: "{ products { id } }",
            vars: none,
            expect: [Unauth, Yes, Yes, Yes, Yes, Yes],
        },
        Row {
            field: "priceList",
            doc: "{ priceList { unitPriceMinor } }",
            vars: none,
            expect: [Unauth, Yes, Yes, Yes, Yes, Yes],
        },
        Row {
            field: "priceQuote",
            doc: "{ priceQuote(quantity: 10) { totalMinor } }",
            vars: none,
            expect: [Unauth, Yes, Yes, Yes, Yes, Yes],
        },
        // Mutation
        Row {
            field: "createAccount",
            doc: "mutation($n: String!) { createAccount(input: {name: $n, adminEmail: \"x@authz.test\", adminName: \"X\"}) { adminApiKey } }",
            vars: |_, i| json!({"n": format!("Authz{i}")}),
            expect: [Unauth, Forbid, Forbid, Forbid, Forbid, Yes],
        },
        Row {
            field: "upsertProduct",
            doc: "mutation { upsertProduct(input: {code: \"authz\", name: \"Authz\", dailyRate: 3}) { id } }",
            vars: none,
            expect: [Unauth, Forbid, Forbid, Forbid, Forbid, Yes],
        },
        Row {
            field: "setPriceList",
            doc: "mutation { setPriceList(bands: [{minQuantity: 1, maxQuantity: 10000, unitPriceMinor: 120}, {minQuantity: 10001, maxQuantity: 50000, unitPriceMinor: 100}], currency: \"USD\") { unitPriceMinor } }",
            vars: none,
            expect: [Unauth, Forbid, Forbid, Forbid, Forbid, Yes],
        },
        Row {
            field: "createUser",
            doc: "mutation($e: String!, $a: ID) { createUser(input: {email: $e, name: \"U\", role: MEMBER, accountId: $a}) { apiKey } }",
            vars: |f, i| json!({"e": format!("new{i}@authz.test"), "a": f.account_a}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "deactivateUser",
            doc: "mutation($u: ID!) { deactivateUser(userId: $u) { active } }",
            vars: |f, i| json!({"u": f.victims[i]}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "assignFlex",
            doc: "mutation($u: ID!) { assignFlex(userIds: [$u], assigned: true) { id } }",
            vars: |f, _| json!({"u": f.member_a_id}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "setAllowedProducts",
            doc: "mutation($u: ID) { setAllowedProducts(userId: $u, productIds: null) }",
            vars: |f, _| json!({"u": f.member_a_id}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "purchaseTokens",
            doc: "mutation($k: String!, $a: ID) { purchaseTokens(input: {quantity: 5, idempotencyKey: $k, accountId: $a}) { id } }",
            vars: |f, i| json!({"k": format!("authz-{i}"), "a": f.account_a}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "addSubscription",
            doc: "mutation($p: ID!, $a: ID) { addSubscription(input: {productId: $p, planLevel: PREMIUM, seats: 1, startsAt: \"2026-01-01T00:00:00Z\", endsAt: \"2027-01-01T00:00:00Z\", accountId: $a}) { id } }",
            vars: |f, _| json!({"p": f.product, "a": f.account_a}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "assignSubscription",
            doc: "mutation($s: ID!, $u: ID!) { assignSubscription(subscriptionId: $s, userId: $u, assigned: false) { id } }",
            vars: |f, _| json!({"s": f.subscription_a, "u": f.member_a_id}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "setLowBalanceThreshold",
            doc: "mutation($a: ID) { setLowBalanceThreshold(tokens: 5, accountId: $a) { id } }",
            vars: account_a,
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "openProduct",
            doc: "mutation { openProduct(input: {productCode: \"authz-open\"}) { granted } }",
            vars: none,
            expect: [Unauth, Yes, Forbid, Yes, Yes, Forbid],
        },
        Row {
            field: "heartbeat",
            doc: "mutation($s: ID!) { heartbeat(input: {sessionId: $s}) { granted } }",
            vars: session_a,
            // Only the session's own user: to anyone else it does not exist.
            expect: [Unauth, Yes, Refused, Refused, Refused, Refused],
        },
        Row {
            field: "closeProduct",
            doc: "mutation($s: ID!) { closeProduct(sessionId: $s) { state } }",
            vars: session_a,
            expect: [Unauth, Yes, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "account.alertRules",
            doc: "query($a: ID!) { account(id: $a) { alertRules { id armed } } }",
            vars: account_a,
            expect: [Unauth, Forbid, Yes, Yes, Refused, Yes],
        },
        Row {
            field: "account.webhookEndpoints",
            doc: "query($a: ID!) { account(id: $a) { webhookEndpoints { id url } webhookDeliveries { edges { node { id state } } } } }",
            vars: account_a,
            expect: [Unauth, Forbid, Yes, Yes, Refused, Yes],
        },
        Row {
            field: "createAlertRule",
            doc: "mutation($a: ID) { createAlertRule(input: {threshold: 5, unit: TOKENS}, accountId: $a) { id } }",
            vars: account_a,
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "deleteAlertRule",
            doc: "mutation($id: ID!) { deleteAlertRule(id: $id) }",
            vars: |f, i| json!({"id": f.alert_rules[i]}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "createWebhookEndpoint",
            doc: "mutation($a: ID) { createWebhookEndpoint(input: {url: \"http://127.0.0.1:9/authz\", events: [PURCHASE_COMPLETED]}, accountId: $a) { secret } }",
            vars: account_a,
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "updateWebhookEndpoint",
            doc: "mutation($id: ID!) { updateWebhookEndpoint(id: $id, events: [LOT_EXPIRED]) { id } }",
            vars: |f, _| json!({"id": f.endpoints[0]}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "rotateWebhookSecret",
            doc: "mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret } }",
            vars: |f, _| json!({"id": f.endpoints[0]}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "sendTestWebhook",
            doc: "mutation($id: ID!) { sendTestWebhook(endpointId: $id) { id state } }",
            vars: |f, _| json!({"id": f.endpoints[0]}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "replayWebhookDelivery",
            doc: "mutation($id: ID!) { replayWebhookDelivery(id: $id) { id state } }",
            vars: |f, _| json!({"id": f.delivery_a}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "deleteWebhookEndpoint",
            doc: "mutation($id: ID!) { deleteWebhookEndpoint(id: $id) }",
            vars: |f, i| json!({"id": f.endpoints[i]}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "account.reportSubscriptions",
            doc: "query($a: ID!) { account(id: $a) { reportSubscriptions { id recipients createdBy { id } } } }",
            vars: account_a,
            expect: [Unauth, Forbid, Yes, Yes, Refused, Yes],
        },
        Row {
            // Analysts subscribe themselves; the operator has no account or address
            // to subscribe; another account's admin subscribes in their own account.
            field: "subscribeToReport",
            doc: "mutation { subscribeToReport(schedule: WEEKLY) { id } }",
            vars: none,
            expect: [Unauth, Forbid, Yes, Yes, Yes, Forbid],
        },
        Row {
            // The admin's subscriptions: an analyst removes only their own.
            field: "unsubscribeFromReport",
            doc: "mutation($id: ID!) { unsubscribeFromReport(id: $id) }",
            vars: |f, i| json!({"id": f.report_subscriptions[i]}),
            expect: [Unauth, Forbid, Forbid, Yes, Refused, Yes],
        },
        Row {
            field: "advanceClock",
            doc: "mutation { advanceClock(hours: 0, minutes: 0) }",
            vars: none,
            expect: [Unauth, Forbid, Forbid, Forbid, Forbid, Yes],
        },
        Row {
            field: "runMaintenance",
            doc: "mutation { runMaintenance }",
            vars: none,
            expect: [Unauth, Forbid, Forbid, Forbid, Forbid, Yes],
        },
    ]
}

/// What an answer came to.
fn outcome(resp: &Value) -> Result<(), String> {
    match resp.get("errors").and_then(|e| e.get(0)) {
        None => Ok(()),
        Some(e) => Err(e["extensions"]["code"]
            .as_str()
            .unwrap_or("no code")
            .to_owned()),
    }
}

fn matches(expect: Expect, got: &Result<(), String>) -> bool {
    match (expect, got) {
        (Yes, Ok(())) => true,
        (Unauth, Err(c)) => c == "UNAUTHENTICATED",
        (Forbid, Err(c)) => c == "FORBIDDEN",
        (Refused, Err(c)) => c == "FORBIDDEN" || c == "NOT_FOUND",
        _ => false,
    }
}

async fn fixture(s: &impl Api) -> Fixture {
    let op = Some(OPERATOR_KEY);
    let product = id(&s
        .ok(op, "mutation { upsertProduct(input: {code: \"authz-open\", name: \"Open\", dailyRate: 2, annualSubscriptionMinor: 1000}) { id } }", json!({}))
        .await["upsertProduct"]["id"]);
    let mut accounts = Vec::new();
    for name in ["AuthzA", "AuthzB"] {
        let d = s
            .ok(op, "mutation($n: String!, $e: String!) { createAccount(input: {name: $n, adminEmail: $e, adminName: \"Ad\"}) { account { id } adminApiKey } }",
                json!({"n": name, "e": format!("admin@{name}.test")}))
            .await;
        accounts.push((
            id(&d["createAccount"]["account"]["id"]),
            id(&d["createAccount"]["adminApiKey"]),
        ));
    }
    let (account_a, admin_a) = accounts[0].clone();
    let admin_b = accounts[1].1.clone();
    let user = |email: String, role: &'static str| {
        let admin_a = admin_a.clone();
        async move {
            let d = s
                .ok(Some(&admin_a), "mutation($e: String!, $r: Role!) { createUser(input: {email: $e, name: $e, role: $r}) { user { id } apiKey } }",
                    json!({"e": email, "r": role}))
                .await;
            (
                id(&d["createUser"]["user"]["id"]),
                id(&d["createUser"]["apiKey"]),
            )
        }
    };
    let (member_a_id, member_a) = user("member@a.test".into(), "MEMBER").await;
    let (_, analyst_a) = user("analyst@a.test".into(), "ANALYST").await;
    let mut victims = Vec::new();
    for i in 0..CALLERS.len() {
        victims.push(user(format!("victim{i}@a.test"), "MEMBER").await.0);
    }
    s.ok(
        Some(&admin_a),
        "mutation($u: [ID!]!) { assignFlex(userIds: $u, assigned: true) { id } }",
        json!({"u": [member_a_id, ]}),
    )
    .await;
    s.ok(Some(&admin_a), "mutation { purchaseTokens(input: {quantity: 100, idempotencyKey: \"authz-start\"}) { id } }", json!({}))
        .await;
    let subscription_a = id(&s
        .ok(Some(&admin_a), "mutation($p: ID!) { addSubscription(input: {productId: $p, planLevel: STANDARD, seats: 2, startsAt: \"2026-01-01T00:00:00Z\", endsAt: \"2027-01-01T00:00:00Z\"}) { id } }",
            json!({"p": product}))
        .await["addSubscription"]["id"]);
    let session_a = id(&s
        .ok(
            Some(&member_a),
            "mutation { openProduct(input: {productCode: \"authz-open\"}) { session { id } } }",
            json!({}),
        )
        .await["openProduct"]["session"]["id"]);
    let mut alert_rules = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..CALLERS.len() {
        alert_rules.push(id(&s
            .ok(Some(&admin_a), "mutation($t: Int!) { createAlertRule(input: {threshold: $t, unit: TOKENS}) { id } }",
                json!({"t": 10 + i}))
            .await["createAlertRule"]["id"]));
        endpoints.push(id(&s
            .ok(Some(&admin_a), "mutation { createWebhookEndpoint(input: {url: \"http://127.0.0.1:9/authz\", events: [BALANCE_LOW]}) { endpoint { id } } }", json!({}))
            .await["createWebhookEndpoint"]["endpoint"]["id"]));
    }
    let mut report_subscriptions = Vec::new();
    for _ in 0..CALLERS.len() {
        report_subscriptions.push(id(&s
            .ok(
                Some(&admin_a),
                "mutation { subscribeToReport(schedule: MONTHLY) { id } }",
                json!({}),
            )
            .await["subscribeToReport"]["id"]));
    }
    let delivery_a = id(&s
        .ok(
            Some(&admin_a),
            "mutation($id: ID!) { sendTestWebhook(endpointId: $id) { id } }",
            json!({"id": endpoints[0]}),
        )
        .await["sendTestWebhook"]["id"]);
    Fixture {
        report_subscriptions,
        alert_rules,
        endpoints,
        delivery_a,
        session_a,
        account_a,
        admin_a,
        member_a,
        member_a_id,
        analyst_a,
        admin_b,
        product,
        subscription_a,
        victims,
    }
}

/// The root fields the server serves, by introspection.
async fn served_fields(s: &impl Api) -> BTreeSet<String> {
    let d = s
        .ok(Some(OPERATOR_KEY), "{ __schema { queryType { fields { name } } mutationType { fields { name } } subscriptionType { fields { name } } } }", json!({}))
        .await;
    let mut names = BTreeSet::new();
    for root in ["queryType", "mutationType", "subscriptionType"] {
        for f in d["__schema"][root]["fields"].as_array().unwrap() {
            names.insert(f["name"].as_str().unwrap().to_owned());
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_root_field_against_every_caller() {
    let s = TestApp::start().await;
    let f = fixture(&s).await;
    let rows = rows();

    // Every field the schema serves has a row (nested rows such as `account.lots`
    // are extra probes of the account's parts; `balanceChanged` has its own test,
    // over WebSocket, below).
    let covered: BTreeSet<String> = rows
        .iter()
        .map(|r| r.field.split('.').next().unwrap().to_owned())
        .chain(["balanceChanged".to_owned()])
        .collect();
    let served = served_fields(&s).await;
    let missing: Vec<&String> = served.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "fields without a row in the authorization matrix: {missing:?}"
    );

    let mut wrong = Vec::new();
    for row in &rows {
        let mut line = format!("{:24}", row.field);
        for (i, (caller, expect)) in CALLERS.iter().zip(row.expect).enumerate() {
            let resp = s.gql(f.key(*caller), row.doc, (row.vars)(&f, i)).await;
            let got = outcome(&resp);
            line.push_str(&format!(
                " {:>16}",
                match &got {
                    Ok(()) => "ok".to_owned(),
                    Err(c) => c.clone(),
                }
            ));
            if !matches(expect, &got) {
                wrong.push(format!(
                    "{} as {caller:?}: expected {expect:?}, got {resp}",
                    row.field
                ));
            }
        }
        println!("{line}");
    }
    assert!(
        wrong.is_empty(),
        "authorization matrix mismatches:\n{}",
        wrong.join("\n")
    );
}

/// The matrix's row for the subscription: `balanceChanged` over WebSocket on the
/// real binary, naming account A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_changed_against_every_caller() {
    let s = TestServer::start().await;
    let f = fixture(&s).await;
    let mut wrong = Vec::new();
    let sub = "subscription($a: ID) { balanceChanged(accountId: $a) { balance } }";
    for (caller, expect) in CALLERS.iter().zip([Unauth, Yes, Yes, Yes, Refused, Yes]) {
        let got = match f.key(*caller) {
            None => {
                let mut ws = WsClient::connect(&s, Protocol::GraphqlTransportWs, None)
                    .await
                    .expect("WebSocket upgrade");
                let answer = ws.init(json!({})).await;
                if is_refusal(&answer) {
                    Err("UNAUTHENTICATED".to_owned())
                } else {
                    Ok(())
                }
            }
            Some(key) => {
                let mut ws = WsClient::open(&s, key).await;
                let sub_id = ws.subscribe(sub, json!({"a": f.account_a})).await;
                // A purchase on A: an allowed subscriber is told.
                s.ok(Some(&f.admin_a), "mutation($k: String!) { purchaseTokens(input: {quantity: 1, idempotencyKey: $k}) { id } }",
                    json!({"k": format!("authz-ws-{caller:?}")})).await;
                match ws.recv(Duration::from_secs(5)).await {
                    Some(Incoming::Message(m)) if m["id"] == sub_id.as_str() => {
                        match m["payload"].get("errors").and_then(|e| e.get(0)) {
                            None => Ok(()),
                            Some(e) => Err(e["extensions"]["code"]
                                .as_str()
                                .unwrap_or("no code")
                                .to_owned()),
                        }
                    }
                    Some(Incoming::Message(m)) if m["type"] == "error" => {
                        Err(m["payload"][0]["extensions"]["code"]
                            .as_str()
                            .unwrap_or("no code")
                            .to_owned())
                    }
                    other => Err(format!("{other:?}")),
                }
            }
        };
        if !matches(expect, &got) {
            wrong.push(format!(
                "balanceChanged as {caller:?}: expected {expect:?}, got {got:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "authorization matrix mismatches:\n{}",
        wrong.join("\n")
    );
}
