//! Hostile input: a corpus of hostile requests against the real binary in
//! production mode. Each is refused with a clear error (a GraphQL error with one of
//! the contract's codes, or an HTTP 4xx for what is not GraphQL at all), the server
//! keeps answering, and nothing in the database changes: rejected documents run no
//! resolver.

use daypass_domain::Db;
use daypass_tests::json::id;
use daypass_tests::server::OPERATOR_KEY;
use daypass_tests::ws::WsClient;
use daypass_tests::{Api, TestServer};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

const CODES: [&str; 6] = [
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "BAD_USER_INPUT",
    "CONFLICT",
    "INTERNAL",
];

/// Row counts of every table a request could change.
async fn snapshot(db: &Db) -> Vec<(String, i64)> {
    let mut counts = Vec::new();
    for table in [
        "accounts",
        "users",
        "products",
        "price_bands",
        "lots",
        "ledger_entries",
        "charges",
        "windows",
        "opens",
        "subscriptions",
        "notifications",
        "alert_rules",
        "webhook_endpoints",
        "webhook_events",
        "webhook_deliveries",
        "report_subscriptions",
    ] {
        let row = db
            .conn()
            .query_one_raw(Statement::from_string(
                db.backend(),
                format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table}"),
            ))
            .await
            .unwrap()
            .unwrap();
        counts.push((table.to_owned(), row.try_get_by_index::<i64>(0).unwrap()));
    }
    counts
}

enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

/// What came back: the HTTP status and the body.
async fn send(s: &TestServer, key: Option<&str>, body: Body) -> (u16, String) {
    // A connection of its own: the server may close it after refusing an upload.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut req = client
        .post(format!("{}/graphql", s.base_url))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = match body {
        Body::Json(v) => req.body(serde_json::to_vec(&v).unwrap()),
        Body::Raw(b) => req.body(b),
    };
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
        // Closing the connection on an oversized upload is a refusal too.
        Err(e) => (0, e.to_string()),
    }
}

fn doc(query: String, variables: Value) -> Body {
    Body::Json(json!({"query": query, "variables": variables}))
}

/// `n` aliases of `__typename`, which costs nothing in the complexity count.
fn typenames(n: usize) -> String {
    (0..n).map(|i| format!("a{i}: __typename ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_hostile_requests_is_refused_and_changes_nothing() {
    let s = TestServer::start_with(&[("DAYPASS_ENV", "production")]).await;
    let op = Some(OPERATOR_KEY);
    s.ok(
        op,
        "mutation { upsertProduct(input: {code: \"cad\", name: \"CAD\", dailyRate: 3}) { id } }",
        json!({}),
    )
    .await;
    let d = s
        .ok(op, "mutation { createAccount(input: {name: \"Hostile\", adminEmail: \"admin@hostile.test\", adminName: \"A\"}) { adminApiKey } }", json!({}))
        .await;
    let admin = id(&d["createAccount"]["adminApiKey"]);
    let admin = admin.as_str();
    s.ok(
        Some(admin),
        "mutation { purchaseTokens(input: {quantity: 100, idempotencyKey: \"seed\"}) { id } }",
        json!({}),
    )
    .await;
    let db = Db::connect(&s.database_url).await.unwrap();
    let before = snapshot(&db).await;

    let create_user =
        "createUser(input: {email: \"x@hostile.test\", name: \"X\", role: MEMBER}) { apiKey }";
    let mut deep = String::from("name");
    for _ in 0..100 {
        deep = format!("ofType {{ {deep} }}");
    }
    let mut nested_fragments = String::from("mutation { ...F0 }\n");
    for i in 0..100 {
        nested_fragments += &format!("fragment F{i} on Mutation {{ ...F{} }}\n", i + 1);
    }
    nested_fragments += &format!("fragment F100 on Mutation {{ {create_user} }}\n");
    let mut inline = String::from(create_user);
    for _ in 0..100 {
        inline = format!("... on Mutation {{ {inline} }}");
    }
    let mut invalid_utf8 = br#"{"query": "{ viewer { role } }", "x": ""#.to_vec();
    invalid_utf8.extend([0xff, 0xfe, 0xc3, 0x28]);
    invalid_utf8.extend(br#""}"#);
    let truncated = &admin[..admin.len() - 1];
    let buy = "mutation($q: Int!) { purchaseTokens(input: {quantity: $q, idempotencyKey: \"h\"}) { id } }";

    let cases: Vec<(&str, Option<&str>, Body)> = vec![
        ("depth 100", Some(admin), doc(format!("{{ __schema {{ types {{ fields {{ type {{ {deep} }} }} }} }} }}"), json!({}))),
        ("depth 100 around a mutation", Some(admin), doc(format!("mutation {{ {create_user} }} query Q {{ __schema {{ types {{ fields {{ type {{ {deep} }} }} }} }} }}"), json!({}))),
        (
            "10,000 aliases",
            Some(admin),
            doc(
                format!("{{ {} }}", (0..10_000).map(|i| format!("a{i}:viewer{{role}} ")).collect::<String>()),
                json!({}),
            ),
        ),
        (
            "5,000 aliases of __typename",
            Some(admin),
            doc(format!("{{ {} }}", typenames(5_000)), json!({})),
        ),
        (
            "2,000 aliases of a mutation",
            Some(admin),
            doc(
                format!("mutation {{ {} }}", (0..2_000).map(|i| format!("a{i}: {create_user}")).collect::<String>()),
                json!({}),
            ),
        ),
        (
            // Under the alias limit: the 16-changes rule refuses it.
            "17 aliases of a mutation",
            Some(admin),
            doc(
                format!("mutation {{ {} }}", (0..17).map(|i| format!("a{i}: {create_user}")).collect::<String>()),
                json!({}),
            ),
        ),
        ("1,000 directives", Some(admin), doc(format!("mutation {{ {} {create_user} }}", "").replace("createUser(", &format!("createUser{}(", "")).replace("{ apiKey }", &format!("{} {{ apiKey }}", "@include(if: true) ".repeat(1000))), json!({}))),
        ("100 nested fragments", Some(admin), doc(nested_fragments, json!({}))),
        ("100 nested inline fragments", Some(admin), doc(format!("mutation {{ {inline} }}"), json!({}))),
        ("a 200 KB e-mail", Some(admin), doc("mutation($e: String!) { createUser(input: {email: $e, name: \"X\", role: MEMBER}) { apiKey } }".to_string(), json!({"e": format!("{}@hostile.test", "a".repeat(200_000))}))),
        ("a JSON batch of mutations", Some(admin), Body::Json(json!([{"query": format!("mutation {{ {create_user} }}")}, {"query": format!("mutation {{ {create_user} }}")}]))),
        ("a 10 MB body", Some(admin), doc(format!("mutation {{ {create_user} }} # {}", "x".repeat(10 * 1024 * 1024)), json!({}))),
        ("invalid UTF-8", Some(admin), Body::Raw(invalid_utf8)),
        ("not JSON", Some(admin), Body::Raw(b"mutation { createUser }".to_vec())),
        ("a wrong variable type", Some(admin), doc(buy.into(), json!({"q": "ten"}))),
        ("an integer past 32 bits", Some(admin), doc(buy.into(), json!({"q": 4_294_967_296_i64}))),
        ("a negative quantity", Some(admin), doc(buy.into(), json!({"q": -5}))),
        ("a zero quantity", Some(admin), doc(buy.into(), json!({"q": 0}))),
        ("an unknown enum value", Some(admin), doc("mutation { createUser(input: {email: \"y@hostile.test\", name: \"Y\", role: SUPERUSER}) { apiKey } }".to_string(), json!({}))),
        ("SQL in an e-mail", Some(admin), doc("mutation($e: String!) { createUser(input: {email: $e, name: \"X\", role: MEMBER}) { apiKey } }".into(), json!({"e": "x'); DROP TABLE users; --"}))),
        ("SQL in a product code", op, doc("mutation($c: String!) { upsertProduct(input: {code: $c, name: \"X\", dailyRate: 1}) { id } }".into(), json!({"c": "x'; DROP TABLE lots; --"}))),
        ("SQL in an idempotency key and a huge quantity", Some(admin), doc("mutation($k: String!) { purchaseTokens(input: {quantity: 2147483647, idempotencyKey: $k}) { id } }".into(), json!({"k": "'; DELETE FROM lots; --"}))),
        ("an alert rule of -1 tokens", Some(admin), doc("mutation { createAlertRule(input: {threshold: -1, unit: TOKENS}) { id } }".into(), json!({}))),
        ("an alert rule of 1,000 percent", Some(admin), doc("mutation { createAlertRule(input: {threshold: 1000, unit: PERCENT}) { id } }".into(), json!({}))),
        ("an alert rule to 10,000 addresses", Some(admin), doc("mutation($r: [String!]) { createAlertRule(input: {threshold: 5, unit: TOKENS, extraRecipients: $r}) { id } }".into(), json!({"r": (0..10_000).map(|i| format!("x{i}@hostile.test")).collect::<Vec<_>>()}))),
        ("an alert rule to a header injection", Some(admin), doc("mutation($r: [String!]) { createAlertRule(input: {threshold: 5, unit: TOKENS, extraRecipients: $r}) { id } }".into(), json!({"r": ["a@b.test\r\nBcc: all@evil.test"]}))),
        ("a webhook to the metadata service", Some(admin), doc("mutation { createWebhookEndpoint(input: {url: \"http://169.254.169.254/latest/\", events: [BALANCE_LOW]}) { secret } }".into(), json!({}))),
        ("a webhook to loopback by name", Some(admin), doc("mutation { createWebhookEndpoint(input: {url: \"http://localhost:8080/graphql\", events: [BALANCE_LOW]}) { secret } }".into(), json!({}))),
        ("a webhook to IPv4 in IPv6", Some(admin), doc("mutation { createWebhookEndpoint(input: {url: \"http://[::ffff:127.0.0.1]/\", events: [BALANCE_LOW]}) { secret } }".into(), json!({}))),
        ("a webhook to a file", Some(admin), doc("mutation { createWebhookEndpoint(input: {url: \"file:///etc/passwd\", events: [BALANCE_LOW]}) { secret } }".into(), json!({}))),
        ("a webhook with a 1 MB URL", Some(admin), doc("mutation($u: String!) { createWebhookEndpoint(input: {url: $u, events: [BALANCE_LOW]}) { secret } }".into(), json!({"u": format!("https://example.com/{}", "a".repeat(1 << 20))}))),
        ("a replay of a forged delivery id", Some(admin), doc("mutation { replayWebhookDelivery(id: \"1 OR 1=1\") { id } }".into(), json!({}))),
        ("a test event to another id", Some(admin), doc("mutation { sendTestWebhook(endpointId: \"999999\") { id } }".into(), json!({}))),
        ("a report to 10,000 addresses", Some(admin), doc("mutation($r: [String!]) { subscribeToReport(schedule: WEEKLY, recipients: $r) { id } }".into(), json!({"r": (0..10_000).map(|i| format!("x{i}@hostile.test")).collect::<Vec<_>>()}))),
        ("a report to someone outside the account", Some(admin), doc("mutation($r: [String!]) { subscribeToReport(schedule: WEEKLY, recipients: $r) { id } }".into(), json!({"r": ["someone@elsewhere.test"]}))),
        ("a report to a header injection", Some(admin), doc("mutation($r: [String!]) { subscribeToReport(schedule: WEEKLY, recipients: $r) { id } }".into(), json!({"r": ["admin@hostile.test\r\nBcc: all@evil.test"]}))),
        ("a report to a 1 MB address", Some(admin), doc("mutation($r: [String!]) { subscribeToReport(schedule: WEEKLY, recipients: $r) { id } }".into(), json!({"r": [format!("{}@hostile.test", "a".repeat(1 << 20))]}))),
        ("a report to no one", Some(admin), doc("mutation($r: [String!]) { subscribeToReport(schedule: WEEKLY, recipients: $r) { id } }".into(), json!({"r": []}))),
        ("a report on a schedule that does not exist", Some(admin), doc("mutation { subscribeToReport(schedule: HOURLY) { id } }".into(), json!({}))),
        ("a report unsubscribed by a forged id", Some(admin), doc("mutation { unsubscribeFromReport(id: \"1 OR 1=1\") }".into(), json!({}))),
        ("a report unsubscribed by another id", Some(admin), doc("mutation { unsubscribeFromReport(id: \"999999\") }".into(), json!({}))),
        ("a forged key", Some("dp_forgedforgedforgedforgedforgedforgedforged"), doc(format!("mutation {{ {create_user} }}"), json!({}))),
        ("a truncated key", Some(truncated), doc(format!("mutation {{ {create_user} }}"), json!({}))),
        ("no key", None, doc(format!("mutation {{ {create_user} }}"), json!({}))),
    ];
    let mut report = Vec::new();
    for (name, key, body) in cases {
        let (status, text) = send(&s, key, body).await;
        let answer: Option<Value> = serde_json::from_str(&text).ok();
        let codes: Vec<String> = answer
            .as_ref()
            .and_then(|a| a.get("errors"))
            .and_then(Value::as_array)
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["extensions"]["code"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let graphql_refusal = status == 200
            && !codes.is_empty()
            && codes.iter().all(|c| CODES.contains(&c.as_str()))
            && answer.as_ref().is_some_and(|a| {
                a["data"].is_null()
                    || a["data"]
                        .as_object()
                        .is_some_and(|d| d.values().all(Value::is_null))
            });
        let http_refusal = status == 0 || (400..500).contains(&status);
        assert!(
            graphql_refusal || http_refusal,
            "{name}: not refused with a clear error: {status} {}",
            &text[..text.len().min(400)]
        );
        // No SQL or stack text reaches a client.
        assert!(
            !text.contains("SELECT") && !text.contains("sqlx") && !text.contains("panicked"),
            "{name}: {text:.300}"
        );
        // The server keeps answering.
        let d = s.ok(Some(admin), "{ viewer { role } }", json!({})).await;
        assert_eq!(d["viewer"]["role"], "ADMIN", "after {name}");
        report.push(format!(
            "{name}: {}",
            if http_refusal {
                format!("HTTP {status}")
            } else {
                codes.join(",")
            }
        ));
    }
    // Introspection is off in production: the schema is not told.
    let (status, text) = send(
        &s,
        Some(admin),
        doc("{ __schema { types { name } } }".into(), json!({})),
    )
    .await;
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert!(
        status == 200 && answer["data"]["__schema"].is_null() && !text.contains("PriceBand"),
        "{text:.300}"
    );
    report.push("introspection in production: __schema is null".into());
    println!("{}", report.join("\n"));
    assert_eq!(
        snapshot(&db).await,
        before,
        "a hostile request changed something"
    );
}

/// Production posture: an internal failure (here the price list's table gone from
/// under the server) answers INTERNAL with "internal error" and the request id, never
/// the SQL or the database's words; a misspelt field gets no suggestion.
#[tokio::test]
async fn production_masks_internal_errors_and_suggests_nothing() {
    let s = TestServer::start_with(&[("DAYPASS_ENV", "production")]).await;
    let op = Some(OPERATOR_KEY);
    assert!(s.ok(op, "{ priceList { minQuantity } }", json!({})).await["priceList"][0].is_object());

    let misspelt = s.gql(op, "{ priceLsit { minQuantity } }", json!({})).await;
    let text = misspelt.to_string();
    assert_eq!(
        misspelt["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{text}"
    );
    assert!(!text.to_lowercase().contains("did you mean"), "{text}");

    let db = Db::connect(&s.database_url).await.unwrap();
    db.conn()
        .execute_unprepared("ALTER TABLE price_bands RENAME TO price_bands_gone")
        .await
        .unwrap();
    let resp = s
        .client()
        .post(format!("{}/graphql", s.base_url))
        .bearer_auth(OPERATOR_KEY)
        .header("x-request-id", "masked-1")
        .json(&json!({"query": "{ priceList { minQuantity } }"}))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    let err = &answer["errors"][0];
    assert_eq!(err["extensions"]["code"], "INTERNAL", "{text}");
    assert_eq!(err["message"], "internal error", "{text}");
    assert_eq!(err["extensions"]["requestId"], "masked-1", "{text}");
    for leak in [
        "price_bands",
        "SELECT",
        "sqlite",
        "relation",
        "no such table",
        "panicked",
    ] {
        assert!(!text.contains(leak), "{leak:?} reached the client: {text}");
    }
    db.conn()
        .execute_unprepared("ALTER TABLE price_bands_gone RENAME TO price_bands")
        .await
        .unwrap();
    assert!(s.ok(op, "{ priceList { minQuantity } }", json!({})).await["priceList"][0].is_object());
}

/// A document holds at most 100 aliases and 5,000 fields (fragments expanded), counted
/// on its text before it is validated or runs: 5,000
/// of `__typename` (free in the complexity count) are refused over POST and over the
/// WebSocket, a document taken from the parsed-document cache is counted again, and
/// one at the limit is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_the_alias_limit_is_refused_before_it_runs() {
    let s = TestServer::start_with(&[("DAYPASS_ENV", "production")]).await;
    let d = s
        .ok(Some(OPERATOR_KEY), "mutation { createAccount(input: {name: \"Aliases\", adminEmail: \"admin@aliases.test\", adminName: \"A\"}) { adminApiKey } }", json!({}))
        .await;
    let admin = id(&d["createAccount"]["adminApiKey"]);
    let admin = admin.as_str();
    let refused = |resp: &Value, asked: usize| {
        let text = resp.to_string();
        let text = &text[..text.len().min(400)];
        let err = &resp["errors"][0];
        assert_eq!(err["extensions"]["code"], "BAD_USER_INPUT", "{text}");
        let message = err["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("at most 100 aliases") && message.contains(&asked.to_string()),
            "the refusal names the limit: {message}"
        );
        assert!(resp["data"].is_null(), "{text}");
    };

    let bomb = format!("{{ {} }}", typenames(5_000));
    refused(&s.gql(Some(admin), &bomb, json!({})).await, 5_000);
    // Short enough to be kept by the parsed-document cache: refused the second time too.
    let just_over = format!("{{ {} }}", typenames(101));
    for _ in 0..2 {
        refused(&s.gql(Some(admin), &just_over, json!({})).await, 101);
    }
    // Spreading a fragment multiplies its aliases.
    let spread = format!(
        "{{ ...F viewer {{ ...G }} }} fragment F on Query {{ {} }} fragment G on Viewer {{ {} }}",
        typenames(60),
        typenames(60)
    );
    refused(&s.gql(Some(admin), &spread, json!({})).await, 120);

    // A fragment fan-out: under 1 KB, each fragment spreads the next twice, 2^24
    // `__typename` selections once expanded. Refused on its text, with the count of
    // the expanded document, before async-graphql walks (or runs) every spread.
    let mut fan_out = String::from("{ ...F0 }\n");
    for i in 0..24 {
        fan_out += &format!("fragment F{i} on Query {{ ...F{n} ...F{n} }}\n", n = i + 1);
    }
    fan_out += "fragment F24 on Query { __typename }\n";
    let resp = s.gql(Some(admin), &fan_out, json!({})).await;
    let err = &resp["errors"][0];
    assert_eq!(err["extensions"]["code"], "BAD_USER_INPUT", "{resp}");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("at most 5000 fields") && message.contains(&(1u64 << 24).to_string()),
        "{message}"
    );

    let at_limit = s
        .ok(Some(admin), &format!("{{ {} }}", typenames(100)), json!({}))
        .await;
    assert_eq!(at_limit.as_object().unwrap().len(), 100);
    assert_eq!(at_limit["a99"], "Query");

    // The same limit over the WebSocket, where the same schema runs each operation.
    let mut ws = WsClient::open(&s, admin).await;
    let op = ws.subscribe(&bomb, json!({})).await;
    refused(&ws.next_payload(&op).await, 5_000);
    ws.expect_complete(&op).await;
    let op = ws.subscribe("{ viewer { role } }", json!({})).await;
    assert_eq!(
        ws.next_payload(&op).await["data"]["viewer"]["role"],
        "ADMIN"
    );

    // The server keeps answering.
    let d = s.ok(Some(admin), "{ viewer { role } }", json!({})).await;
    assert_eq!(d["viewer"]["role"], "ADMIN");
}
