//! End to end through GraphQL: the contract's roles, errors, limits and pagination
//! in process ([`TestApp`]: the schema and state `daypass serve` runs, through its
//! request function); what needs HTTP, the binary or a second process (hostile
//! bodies, health endpoints, the CLI, revocation across processes, the rate over
//! WebSocket) on the real `daypass` binary.

use chrono::{DateTime, Duration, Utc};
use daypass_tests::server::{OPERATOR_KEY, daypass_binary};
use daypass_tests::{Api, TestApp, TestDb, TestServer};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const OP: Option<&str> = Some(OPERATOR_KEY);

const OPEN: &str = "mutation($code: String!, $v: String) {
  openProduct(input: {productCode: $code, version: $v}) {
    granted source tokensCharged windowEndsAt denyReason balance planLevel
  }
}";

use daypass_tests::json::{at, id, int};

/// Opens `code` as the holder of `key`; the answer is data, never an error.
async fn open(s: &impl Api, key: &str, code: &str, version: Option<&str>) -> Value {
    let resp = s
        .gql(Some(key), OPEN, json!({"code": code, "v": version}))
        .await;
    assert!(
        resp.get("errors").is_none(),
        "an open answers with data, not errors: {resp:#}"
    );
    resp["data"]["openProduct"].clone()
}

fn assert_denied(r: &Value, reason: &str) {
    assert_eq!(r["granted"], false, "{r:#}");
    assert_eq!(r["denyReason"], reason, "{r:#}");
    assert_eq!(r["tokensCharged"], 0, "{r:#}");
    assert!(r["source"].is_null(), "{r:#}");
}

async fn upsert_product(s: &impl Api, code: &str, daily_rate: i64) -> String {
    let d = s
        .ok(
            OP,
            "mutation($c: String!, $r: Int!) {
               upsertProduct(input: {code: $c, name: $c, dailyRate: $r, annualSubscriptionMinor: 150000}) { id code dailyRate active }
             }",
            json!({"c": code, "r": daily_rate}),
        )
        .await;
    assert_eq!(d["upsertProduct"]["dailyRate"], daily_rate);
    assert_eq!(d["upsertProduct"]["active"], true);
    id(&d["upsertProduct"]["id"])
}

/// Operator creates an account; returns (account id, admin id, admin key).
async fn create_account(s: &impl Api, name: &str) -> (String, String, String) {
    let d = s
        .ok(
            OP,
            "mutation($n: String!, $e: String!) {
               createAccount(input: {name: $n, adminEmail: $e, adminName: \"Ada Admin\"}) {
                 account { id name } admin { id role email } adminApiKey
               }
             }",
            json!({"n": name, "e": format!("admin@{}.test", name.to_lowercase())}),
        )
        .await;
    let c = &d["createAccount"];
    assert_eq!(c["account"]["name"], name);
    assert_eq!(c["admin"]["role"], "ADMIN");
    (
        id(&c["account"]["id"]),
        id(&c["admin"]["id"]),
        id(&c["adminApiKey"]),
    )
}

/// Admin creates a user; returns (user id, api key).
async fn create_user(s: &impl Api, admin: &str, email: &str, role: &str) -> (String, String) {
    let d = s
        .ok(
            Some(admin),
            "mutation($e: String!, $r: Role!) {
               createUser(input: {email: $e, name: $e, role: $r}) { user { id role active flexAssigned } apiKey }
             }",
            json!({"e": email, "r": role}),
        )
        .await;
    let c = &d["createUser"];
    assert_eq!(c["user"]["role"], role);
    assert_eq!(c["user"]["active"], true);
    assert_eq!(c["user"]["flexAssigned"], false);
    (id(&c["user"]["id"]), id(&c["apiKey"]))
}

async fn balance(s: &impl Api, key: &str) -> i64 {
    int(&s.ok(Some(key), "{ account { balance } }", json!({})).await["account"]["balance"])
}

/// The server's current instant (advancing the test clock by nothing).
async fn server_now(s: &impl Api) -> DateTime<Utc> {
    at(&s
        .ok(OP, "mutation { advanceClock(hours: 0) }", json!({}))
        .await["advanceClock"])
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

const LEDGER: &str = "{ account { ledger(first: 500) { edges { node {
    kind tokens at lot { id } charge { id tokens user { id } product { code } }
} } } } }";

const LOTS: &str = "{ account { lots { edges { node {
    id quantity remaining used expired unitPriceMinor currency purchasedAt expiresAt status
} } } } }";

fn nodes(conn: &Value) -> Vec<Value> {
    conn["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("not a connection: {conn}"))
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_member_analyst_story() {
    // No worker runs in process: the expiry sweep runs only when the test asks for it.
    let s = TestApp::start().await;

    // The operator builds the catalog and an account.
    let cad = upsert_product(&s, "cad", 7).await;
    let cam = upsert_product(&s, "cam", 5).await;
    let _viz = upsert_product(&s, "viz", 3).await;
    let (account_id, admin_id, admin) = create_account(&s, "Acme").await;
    let admin = admin.as_str();

    // The admin sees themself and the account.
    let d = s
        .ok(
            Some(admin),
            "{ viewer { role user { id role active planLevel } account { id name balance planLevel } }
               account { id name balance planLevel allowedProducts { id } lowBalanceThreshold } }",
            json!({}),
        )
        .await;
    assert_eq!(d["viewer"]["role"], "ADMIN");
    assert_eq!(d["viewer"]["user"]["id"], admin_id);
    assert_eq!(d["viewer"]["user"]["role"], "ADMIN");
    assert_eq!(d["viewer"]["user"]["planLevel"], "STANDARD");
    assert_eq!(d["viewer"]["account"]["id"], account_id);
    for a in [&d["viewer"]["account"], &d["account"]] {
        assert_eq!(a["name"], "Acme");
        assert_eq!(a["balance"], 0);
        assert_eq!(a["planLevel"], "STANDARD");
    }
    assert!(d["account"]["allowedProducts"].is_null());

    // Price list and a quote.
    let d = s
        .ok(
            Some(admin),
            "{ priceList { minQuantity maxQuantity unitPriceMinor selfService }
               priceQuote(quantity: 1000) { quantity unitPriceMinor totalMinor currency selfService } }",
            json!({}),
        )
        .await;
    let bands = d["priceList"].as_array().unwrap();
    assert!(!bands.is_empty());
    assert_eq!(bands[0]["minQuantity"], 1);
    for w in bands.windows(2) {
        assert_eq!(int(&w[1]["minQuantity"]), int(&w[0]["maxQuantity"]) + 1);
    }
    assert_eq!(bands.last().unwrap()["maxQuantity"], 50_000);
    let band_1000 = bands
        .iter()
        .find(|b| int(&b["minQuantity"]) <= 1000 && 1000 <= int(&b["maxQuantity"]))
        .unwrap();
    assert_eq!(band_1000["selfService"], true);
    let q = &d["priceQuote"];
    assert_eq!(q["quantity"], 1000);
    assert_eq!(q["unitPriceMinor"], band_1000["unitPriceMinor"]);
    assert_eq!(int(&q["totalMinor"]), 1000 * int(&q["unitPriceMinor"]));
    assert_eq!(q["selfService"], true);
    assert!(q["currency"].as_str().is_some_and(|c| c.len() == 3));

    // Buying tokens is idempotent per key.
    let buy = "mutation($q: Int!, $k: String!) {
        purchaseTokens(input: {quantity: $q, idempotencyKey: $k}) {
          id quantity remaining used expired unitPriceMinor currency purchasedAt expiresAt status
        }
    }";
    let first = s
        .ok(Some(admin), buy, json!({"q": 1000, "k": "order-1"}))
        .await["purchaseTokens"]
        .clone();
    assert_eq!(first["quantity"], 1000);
    assert_eq!(first["remaining"], 1000);
    assert_eq!(first["used"], 0);
    assert_eq!(first["status"], "ACTIVE");
    assert_eq!(first["unitPriceMinor"], q["unitPriceMinor"]);
    let purchased_at = at(&first["purchasedAt"]);
    let expires_at = at(&first["expiresAt"]);
    assert!(
        expires_at - purchased_at >= Duration::days(365)
            && expires_at - purchased_at <= Duration::days(366)
    );
    let lot_id = id(&first["id"]);
    let again = s
        .ok(Some(admin), buy, json!({"q": 1000, "k": "order-1"}))
        .await["purchaseTokens"]
        .clone();
    assert_eq!(again["id"], lot_id, "the same key buys once");
    assert_eq!(
        s.error_code(Some(admin), buy, json!({"q": 999, "k": "order-1"}))
            .await,
        "CONFLICT"
    );
    assert_eq!(balance(&s, admin).await, 1000);

    // The admin's people.
    let (member_id, member) = create_user(&s, admin, "mia@acme.test", "MEMBER").await;
    let (_analyst_id, analyst) = create_user(&s, admin, "ann@acme.test", "ANALYST").await;
    let (seat_id, seat_holder) = create_user(&s, admin, "sam@acme.test", "MEMBER").await;
    let (member, analyst, seat_holder) = (member.as_str(), analyst.as_str(), seat_holder.as_str());
    let d = s
        .ok(
            Some(admin),
            "mutation($ids: [ID!]!) { assignFlex(userIds: $ids, assigned: true) { id flexAssigned } }",
            json!({"ids": [member_id, admin_id]}),
        )
        .await;
    assert!(
        d["assignFlex"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["flexAssigned"] == true)
    );

    // Not flex-assigned and no seat: denied.
    assert_denied(&open(&s, seat_holder, "cad", None).await, "NOT_ASSIGNED");

    // First open charges the daily rate and opens a 24-hour window.
    let before = Utc::now();
    let r = open(&s, member, "cad", Some("2026.1")).await;
    let after = Utc::now();
    assert_eq!(r["granted"], true, "{r:#}");
    assert_eq!(r["source"], "FLEX");
    assert_eq!(r["tokensCharged"], 7);
    assert_eq!(r["balance"], 993);
    assert_eq!(r["planLevel"], "STANDARD");
    assert!(r["denyReason"].is_null());
    let window_ends = at(&r["windowEndsAt"]);
    assert!(
        window_ends >= before + Duration::hours(24) - Duration::seconds(1)
            && window_ends <= after + Duration::hours(24) + Duration::seconds(1),
        "window ends 24 h after the open: {window_ends}"
    );
    let d = s
        .ok(
            Some(admin),
            "{ account { charges { edges { node { tokens version windowStartsAt windowEndsAt product { code } user { id } } } } } }",
            json!({}),
        )
        .await;
    let charges = nodes(&d["account"]["charges"]);
    assert_eq!(charges.len(), 1);
    assert_eq!(
        at(&charges[0]["windowEndsAt"]) - at(&charges[0]["windowStartsAt"]),
        Duration::hours(24)
    );
    assert_eq!(at(&charges[0]["windowEndsAt"]), window_ends);
    assert_eq!(charges[0]["version"], "2026.1");
    assert_eq!(charges[0]["user"]["id"], member_id);

    // Another version inside the window: nothing charged.
    let r = open(&s, member, "cad", Some("2026.2")).await;
    assert_eq!(r["granted"], true);
    assert_eq!(r["source"], "FLEX");
    assert_eq!(r["tokensCharged"], 0);
    assert_eq!(r["balance"], 993);
    assert_eq!(at(&r["windowEndsAt"]), window_ends);

    // A day later the next open charges again.
    let moved = advance(&s, 24).await;
    assert!(moved >= window_ends);
    let r = open(&s, member, "cad", None).await;
    assert_eq!(r["tokensCharged"], 7);
    assert_eq!(r["balance"], 986);

    // Restrict the account to cad: cam is refused as an answer, not an error.
    let d = s
        .ok(
            Some(admin),
            "mutation($p: [ID!]) { setAllowedProducts(userId: null, productIds: $p) }",
            json!({"p": [cad]}),
        )
        .await;
    assert_eq!(d["setAllowedProducts"], true);
    let d = s
        .ok(
            Some(admin),
            "{ account { allowedProducts { code } } }",
            json!({}),
        )
        .await;
    assert_eq!(d["account"]["allowedProducts"], json!([{"code": "cad"}]));
    assert_denied(&open(&s, member, "cam", None).await, "PRODUCT_RESTRICTED");
    assert_eq!(balance(&s, admin).await, 986);

    // A per-user list overrides the account's.
    s.ok(
        Some(admin),
        "mutation($u: ID, $p: [ID!]) { setAllowedProducts(userId: $u, productIds: $p) }",
        json!({"u": member_id, "p": [cam]}),
    )
    .await;
    let r = open(&s, member, "cam", None).await;
    assert_eq!(r["granted"], true, "{r:#}");
    assert_eq!(r["tokensCharged"], 5);
    assert_eq!(r["balance"], 981);
    assert_denied(&open(&s, member, "viz", None).await, "PRODUCT_RESTRICTED");
    // The admin has no list of their own: the account's applies to them.
    assert_denied(&open(&s, admin, "viz", None).await, "PRODUCT_RESTRICTED");
    let d = s
        .ok(
            Some(admin),
            "{ account { users(first: 10) { edges { node { id allowedProducts { code } } } } } }",
            json!({}),
        )
        .await;
    for u in nodes(&d["account"]["users"]) {
        if u["id"] == member_id {
            assert_eq!(u["allowedProducts"], json!([{"code": "cam"}]));
        } else {
            assert!(u["allowedProducts"].is_null(), "{u}");
        }
    }
    // Lifting the user's list brings back the account's; lifting that opens all.
    s.ok(
        Some(admin),
        "mutation($u: ID) { setAllowedProducts(userId: $u, productIds: null) }",
        json!({"u": member_id}),
    )
    .await;
    assert_denied(&open(&s, member, "viz", None).await, "PRODUCT_RESTRICTED");
    s.ok(
        Some(admin),
        "mutation { setAllowedProducts(userId: null, productIds: null) }",
        json!({}),
    )
    .await;
    let r = open(&s, admin, "viz", None).await;
    assert_eq!(r["tokensCharged"], 3, "{r:#}");
    assert_eq!(r["balance"], 978);

    // The member sees their own charges only, and none of the account's books.
    let charges_q =
        "{ account { charges { edges { node { id tokens user { id } product { code } } } } } }";
    let mine = nodes(&s.ok(Some(member), charges_q, json!({})).await["account"]["charges"]);
    assert_eq!(mine.len(), 3, "{mine:#?}");
    assert!(mine.iter().all(|c| c["user"]["id"] == member_id));
    let all = nodes(&s.ok(Some(admin), charges_q, json!({})).await["account"]["charges"]);
    assert_eq!(all.len(), 4);
    assert_eq!(
        s.error_code(
            Some(member),
            "query($u: ID) { account { charges(userId: $u) { edges { node { id } } } } }",
            json!({"u": admin_id})
        )
        .await,
        "FORBIDDEN"
    );
    for q in [
        "{ account { lots { edges { node { id } } } } }",
        "{ account { ledger { edges { node { id } } } } }",
        "{ account { users { edges { node { id } } } } }",
    ] {
        assert_eq!(
            s.error_code(Some(member), q, json!({})).await,
            "FORBIDDEN",
            "{q}"
        );
    }
    assert_eq!(balance(&s, member).await, 978);

    // The analyst reads everything of the account.
    let d = s.ok(Some(analyst), LEDGER, json!({})).await;
    let ledger = nodes(&d["account"]["ledger"]);
    let purchases: Vec<_> = ledger.iter().filter(|e| e["kind"] == "PURCHASE").collect();
    let charge_entries: Vec<_> = ledger.iter().filter(|e| e["kind"] == "CHARGE").collect();
    assert_eq!(purchases.len(), 1);
    assert_eq!(purchases[0]["tokens"], 1000);
    assert_eq!(purchases[0]["lot"]["id"], lot_id);
    assert!(purchases[0]["charge"].is_null());
    assert_eq!(charge_entries.len(), 4);
    for e in &charge_entries {
        assert!(int(&e["tokens"]) < 0, "charges are negative: {e}");
        assert_eq!(e["lot"]["id"], lot_id);
        assert_eq!(int(&e["charge"]["tokens"]), -int(&e["tokens"]));
    }
    let charged_ids: BTreeSet<String> = charge_entries
        .iter()
        .map(|e| id(&e["charge"]["id"]))
        .collect();
    let all_ids: BTreeSet<String> = all.iter().map(|c| id(&c["id"])).collect();
    assert_eq!(charged_ids, all_ids);
    assert_eq!(ledger.iter().map(|e| int(&e["tokens"])).sum::<i64>(), 978);
    let d = s.ok(Some(analyst), LOTS, json!({})).await;
    let lots = nodes(&d["account"]["lots"]);
    assert_eq!(lots.len(), 1);
    assert_eq!(lots[0]["used"], 22);
    assert_eq!(lots[0]["remaining"], 978);
    let d = s
        .ok(
            Some(analyst),
            "{ account { users { edges { node { id } } } charges { edges { node { id } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(nodes(&d["account"]["users"]).len(), 4);
    assert_eq!(nodes(&d["account"]["charges"]).len(), 4);
    // …and changes nothing.
    assert_eq!(
        s.error_code(Some(analyst), buy, json!({"q": 10, "k": "analyst"}))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        s.error_code(
            Some(analyst),
            "mutation { createUser(input: {email: \"x@acme.test\", name: \"X\", role: MEMBER}) { apiKey } }",
            json!({})
        )
        .await,
        "FORBIDDEN"
    );
    assert_eq!(
        s.error_code(Some(analyst), OPEN, json!({"code": "cad"}))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(balance(&s, admin).await, 978);

    // Subscriptions come first, free, for a user who is not on pay-as-you-go.
    let now = server_now(&s).await;
    let d = s
        .ok(
            Some(admin),
            "mutation($p: ID!, $s: DateTime!, $e: DateTime!) {
               addSubscription(input: {productId: $p, planLevel: PREMIUM, seats: 1, startsAt: $s, endsAt: $e}) {
                 id seats planLevel product { code } assignedUsers { id }
               }
             }",
            json!({
                "p": cam,
                "s": (now - Duration::hours(1)).to_rfc3339(),
                "e": (now + Duration::days(30)).to_rfc3339(),
            }),
        )
        .await;
    let sub = &d["addSubscription"];
    assert_eq!(sub["seats"], 1);
    assert_eq!(sub["planLevel"], "PREMIUM");
    assert_eq!(sub["product"]["code"], "cam");
    assert_eq!(sub["assignedUsers"], json!([]));
    let sub_id = id(&sub["id"]);
    let assign = "mutation($s: ID!, $u: ID!) {
        assignSubscription(subscriptionId: $s, userId: $u, assigned: true) { id assignedUsers { id } }
    }";
    let d = s
        .ok(Some(admin), assign, json!({"s": sub_id, "u": seat_id}))
        .await;
    assert_eq!(
        d["assignSubscription"]["assignedUsers"],
        json!([{"id": seat_id}])
    );
    let r = open(&s, seat_holder, "cam", None).await;
    assert_eq!(r["granted"], true, "{r:#}");
    assert_eq!(r["source"], "SUBSCRIPTION");
    assert_eq!(r["tokensCharged"], 0);
    assert_eq!(r["balance"], 978);
    assert_eq!(r["planLevel"], "PREMIUM");
    // The seat covers cam only.
    assert_denied(&open(&s, seat_holder, "cad", None).await, "NOT_ASSIGNED");
    let d = s
        .ok(
            Some(admin),
            "{ account { planLevel } viewer { user { planLevel } } }",
            json!({}),
        )
        .await;
    assert_eq!(d["account"]["planLevel"], "PREMIUM");
    assert_eq!(d["viewer"]["user"]["planLevel"], "PREMIUM");
    assert_eq!(
        s.error_code(Some(admin), assign, json!({"s": sub_id, "u": member_id}))
            .await,
        "CONFLICT",
        "one seat, already taken"
    );

    // A deactivated member's key still identifies them, and nothing more.
    let d = s
        .ok(
            Some(admin),
            "mutation($u: ID!) { deactivateUser(userId: $u) { id active } }",
            json!({"u": member_id}),
        )
        .await;
    assert_eq!(d["deactivateUser"]["active"], false);
    assert_denied(&open(&s, member, "cad", None).await, "USER_DEACTIVATED");
    assert_eq!(
        s.error_code(Some(member), "{ account { balance } }", json!({}))
            .await,
        "FORBIDDEN"
    );
    let d = s
        .ok(
            Some(member),
            "{ viewer { role user { id active } } }",
            json!({}),
        )
        .await;
    assert_eq!(d["viewer"]["role"], "MEMBER");
    assert_eq!(d["viewer"]["user"]["id"], member_id);
    assert_eq!(d["viewer"]["user"]["active"], false);
    assert_eq!(balance(&s, admin).await, 978);

    // Tokens do not roll over: a year on, the balance is 0 before any sweep…
    let later = advance(&s, 24 * 366).await;
    assert!(later > expires_at);
    assert_eq!(balance(&s, admin).await, 0);
    let ledger = nodes(&s.ok(Some(admin), LEDGER, json!({})).await["account"]["ledger"]);
    assert!(ledger.iter().all(|e| e["kind"] != "EXPIRY"), "no sweep yet");
    let lots = nodes(&s.ok(Some(admin), LOTS, json!({})).await["account"]["lots"]);
    assert_eq!(lots[0]["status"], "EXPIRED", "expired before the sweep");
    assert_eq!(lots[0]["remaining"], 0);

    // …and the sweep records what was lost.
    let d = s.ok(OP, "mutation { runMaintenance }", json!({})).await;
    assert_eq!(d["runMaintenance"], true);
    let ledger = nodes(&s.ok(Some(admin), LEDGER, json!({})).await["account"]["ledger"]);
    let expiries: Vec<_> = ledger.iter().filter(|e| e["kind"] == "EXPIRY").collect();
    assert_eq!(expiries.len(), 1);
    assert_eq!(expiries[0]["tokens"], -978);
    assert_eq!(expiries[0]["lot"]["id"], lot_id);
    assert!(expiries[0]["charge"].is_null());
    assert_eq!(at(&expiries[0]["at"]), expires_at);
    assert_eq!(ledger.iter().map(|e| int(&e["tokens"])).sum::<i64>(), 0);
    let d = s
        .ok(
            Some(admin),
            "{ account { balance planLevel lots(status: EXPIRED) { edges { node { id quantity remaining used expired status } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(d["account"]["balance"], 0);
    assert_eq!(
        d["account"]["planLevel"], "STANDARD",
        "the subscription has ended"
    );
    let lots = nodes(&d["account"]["lots"]);
    assert_eq!(lots.len(), 1);
    let lot = &lots[0];
    assert_eq!(lot["id"], lot_id);
    assert_eq!(lot["status"], "EXPIRED");
    assert_eq!(lot["used"], 22);
    assert_eq!(lot["expired"], 978);
    assert_eq!(lot["remaining"], 0);
    assert_eq!(
        int(&lot["quantity"]),
        int(&lot["used"]) + int(&lot["expired"]) + int(&lot["remaining"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_codes_follow_the_contract() {
    let s = TestApp::start().await;
    upsert_product(&s, "cad", 7).await;
    let (_a, _admin_a_id, admin_a) = create_account(&s, "Alpha").await;
    let (b, _admin_b_id, _admin_b) = create_account(&s, "Beta").await;
    let admin_a = admin_a.as_str();

    // Authentication.
    assert_eq!(
        s.error_code(None, "{ viewer { role } }", json!({})).await,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        s.error_code(Some("dp_not-a-real-key"), "{ viewer { role } }", json!({}))
            .await,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        s.error_code(
            None,
            "mutation { openProduct(input: {productCode: \"cad\"}) { granted } }",
            json!({})
        )
        .await,
        "UNAUTHENTICATED"
    );

    // Tenancy.
    assert_eq!(
        s.error_code(
            Some(admin_a),
            "query($id: ID) { account(id: $id) { name balance } }",
            json!({"id": b})
        )
        .await,
        "FORBIDDEN"
    );
    assert_eq!(
        s.error_code(
            Some(admin_a),
            "{ accounts { edges { node { id } } } }",
            json!({})
        )
        .await,
        "FORBIDDEN"
    );
    let d = s
        .ok(
            OP,
            "query($id: ID) { accounts { edges { node { name } } } account(id: $id) { name } }",
            json!({"id": b}),
        )
        .await;
    assert_eq!(nodes(&d["accounts"]).len(), 2);
    assert_eq!(d["account"]["name"], "Beta");

    // Not found.
    assert_eq!(
        s.error_code(
            Some(admin_a),
            "mutation { deactivateUser(userId: \"999999\") { id } }",
            json!({})
        )
        .await,
        "NOT_FOUND"
    );

    // Malformed input.
    let malformed: [(&str, Value); 8] = [
        // A string for an Int, inline and as a variable.
        (
            "{ priceQuote(quantity: \"ten\") { totalMinor } }",
            json!({}),
        ),
        (
            "query($q: Int!) { priceQuote(quantity: $q) { totalMinor } }",
            json!({"q": "ten"}),
        ),
        // A missing required field.
        (
            "mutation { createUser(input: {email: \"x@alpha.test\", name: \"X\"}) { apiKey } }",
            json!({}),
        ),
        // Not an id.
        (
            "mutation { deactivateUser(userId: \"abc\") { id } }",
            json!({}),
        ),
        (
            "query($id: ID) { account(id: $id) { name } }",
            json!({"id": "abc"}),
        ),
        // Too large a page.
        (
            "{ account { users(first: 100000) { edges { node { id } } } } }",
            json!({}),
        ),
        // A cursor that is not one.
        (
            "{ account { users(after: \"not a cursor\") { edges { node { id } } } } }",
            json!({}),
        ),
        // Not GraphQL at all.
        ("{ viewer { role ", json!({})),
    ];
    for (q, vars) in malformed {
        assert_eq!(
            s.error_code(Some(admin_a), q, vars.clone()).await,
            "BAD_USER_INPUT",
            "{q} with {vars}"
        );
    }

    // Denials are data, with no errors, whatever the reason.
    let (member_id, member) = create_user(&s, admin_a, "m@alpha.test", "MEMBER").await;
    let r = open(&s, &member, "cad", None).await;
    assert_denied(&r, "NOT_ASSIGNED");
    assert_eq!(r["balance"], 0);
    assert_eq!(r["planLevel"], "STANDARD");
    assert!(r["windowEndsAt"].is_null());
    assert_denied(
        &open(&s, &member, "no-such-product", None).await,
        "UNKNOWN_PRODUCT",
    );
    s.ok(
        Some(admin_a),
        "mutation($u: [ID!]!) { assignFlex(userIds: $u, assigned: true) { id } }",
        json!({"u": [member_id]}),
    )
    .await;
    assert_denied(&open(&s, &member, "cad", None).await, "INSUFFICIENT_TOKENS");
    let resp = s.gql(Some(&member), OPEN, json!({"code": "cad"})).await;
    assert!(resp.get("errors").is_none(), "{resp:#}");
    assert_eq!(resp["data"]["openProduct"]["granted"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_test_clock_its_mutations_do_not_exist() {
    // The root keeps the contract's name `Mutation` with or without the test clock.
    let mutation_fields =
        "{ __schema { mutationType { name } } __type(name: \"Mutation\") { fields { name } } }";
    let names = |d: &Value| -> BTreeSet<String> {
        assert_eq!(d["__schema"]["mutationType"]["name"], "Mutation");
        d["__type"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| id(&f["name"]))
            .collect()
    };

    let plain = TestApp::start_with(&[]).await;
    let fields = names(&plain.ok(OP, mutation_fields, json!({})).await);
    assert!(fields.contains("openProduct") && fields.contains("purchaseTokens"));
    assert!(!fields.contains("advanceClock"), "{fields:?}");
    assert!(!fields.contains("runMaintenance"), "{fields:?}");
    for q in [
        "mutation { advanceClock(hours: 24) }",
        "mutation { runMaintenance }",
    ] {
        let resp = plain.gql(OP, q, json!({})).await;
        assert!(
            resp["errors"].as_array().is_some_and(|e| !e.is_empty()),
            "{q}: {resp:#}"
        );
        assert!(resp["data"].is_null(), "{q} did not run: {resp:#}");
    }

    let clocked = TestApp::start().await;
    let fields = names(&clocked.ok(OP, mutation_fields, json!({})).await);
    assert!(fields.contains("advanceClock") && fields.contains("runMaintenance"));
    // Even there, only the operator moves the clock.
    let (_a, _u, admin) = create_account(&clocked, "Clock").await;
    assert_eq!(
        clocked
            .error_code(
                Some(&admin),
                "mutation { advanceClock(hours: 1) }",
                json!({})
            )
            .await,
        "FORBIDDEN"
    );
}

/// The server still answers an ordinary query.
async fn still_answers(s: &TestServer, key: &str) {
    let d = s.ok(Some(key), "{ viewer { role } }", json!({})).await;
    assert_eq!(d["viewer"]["role"], "ADMIN");
}

async fn post_raw(s: &TestServer, key: &str, body: Vec<u8>) -> (reqwest::StatusCode, String) {
    let resp = s
        .client()
        .post(format!("{}/graphql", s.base_url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /graphql");
    let status = resp.status();
    (status, resp.text().await.unwrap_or_default())
}

/// A 200 answer carrying GraphQL errors, or any non-200 answer, is a refusal.
fn refused(status: reqwest::StatusCode, body: &str) -> bool {
    if status != reqwest::StatusCode::OK {
        return true;
    }
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("errors").cloned())
        .and_then(|e| e.as_array().map(|a| !a.is_empty()))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_are_refused_and_the_server_keeps_answering() {
    let s = TestServer::start().await;
    let (_a, _u, admin) = create_account(&s, "Hostile").await;
    let admin = admin.as_str();

    // A very deep introspection query.
    let mut deep = String::from("name");
    for _ in 0..26 {
        deep = format!("ofType {{ {deep} }}");
    }
    let deep = format!("{{ __schema {{ types {{ fields {{ type {{ {deep} }} }} }} }} }}");
    let resp = s.gql(Some(admin), &deep, json!({})).await;
    assert!(
        resp["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "a 30-level query was answered"
    );
    assert!(resp["data"].is_null());
    still_answers(&s, admin).await;

    // A fragment bomb: each fragment spreads the next twice.
    let mut doc = String::from("{ priceList { ...F0 } }\n");
    for i in 0..16 {
        doc += &format!(
            "fragment F{i} on PriceBand {{ ...F{} ...F{} }}\n",
            i + 1,
            i + 1
        );
    }
    doc += "fragment F16 on PriceBand { minQuantity maxQuantity unitPriceMinor }\n";
    let resp = s.gql(Some(admin), &doc, json!({})).await;
    assert!(
        resp["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "fragment bomb answered"
    );
    still_answers(&s, admin).await;

    // An alias bomb: thousands of copies of a field.
    let bomb: String = (0..3000)
        .map(|i| format!("a{i}: priceList {{ minQuantity unitPriceMinor }} "))
        .collect();
    let resp = s
        .gql(Some(admin), &format!("{{ {bomb} }}"), json!({}))
        .await;
    assert!(
        resp["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "alias bomb answered"
    );
    assert!(resp["data"].is_null());
    still_answers(&s, admin).await;

    // A JSON batch is refused, and none of its mutations run.
    let batch: Vec<Value> = (0..3)
        .map(|i| {
            json!({"query": format!(
                "mutation {{ createUser(input: {{email: \"batch{i}@hostile.test\", name: \"B{i}\", role: MEMBER}}) {{ apiKey }} }}"
            )})
        })
        .collect();
    let (status, body) = post_raw(&s, admin, serde_json::to_vec(&batch).unwrap()).await;
    assert!(refused(status, &body), "batch accepted: {status} {body}");
    let d = s
        .ok(
            Some(admin),
            "{ account { users { edges { node { email } } } } }",
            json!({}),
        )
        .await;
    let emails: Vec<String> = nodes(&d["account"]["users"])
        .iter()
        .map(|u| id(&u["email"]))
        .collect();
    assert_eq!(emails, ["admin@hostile.test"], "no batched mutation ran");
    still_answers(&s, admin).await;

    // A body over 256 KiB.
    let padding = "x".repeat(300 * 1024);
    let big = json!({"query": format!("{{ viewer {{ role }} }} # {padding}")});
    // The server answers 413 without reading the body and then closes that
    // connection, as it must; a pooled client could race that close, so the
    // refused upload travels on a connection of its own.
    let one_shot = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let sent = one_shot
        .post(format!("{}/graphql", s.base_url))
        .bearer_auth(admin)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&big).unwrap())
        .send()
        .await;
    // Closing the connection mid-upload is also a refusal; an answer must be a 413.
    if let Ok(resp) = sent {
        assert_eq!(
            resp.status(),
            reqwest::StatusCode::PAYLOAD_TOO_LARGE,
            "a 300 KiB body was not refused"
        );
    }
    still_answers(&s, admin).await;

    // Just under the limit is fine.
    let padding = "x".repeat(200 * 1024);
    let fine = json!({"query": format!("{{ viewer {{ role }} }} # {padding}")});
    let (status, body) = post_raw(&s, admin, serde_json::to_vec(&fine).unwrap()).await;
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "{}",
        &body[..body.len().min(200)]
    );
    assert!(!refused(status, &body), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_page_through_with_cursors() {
    let s = TestApp::start().await;
    let (_a, admin_id, admin) = create_account(&s, "Pages").await;
    let admin = admin.as_str();
    let mut expected = BTreeSet::from([admin_id]);
    for i in 0..7 {
        let role = if i % 3 == 0 { "ANALYST" } else { "MEMBER" };
        expected.insert(
            create_user(&s, admin, &format!("u{i}@pages.test"), role)
                .await
                .0,
        );
    }
    assert_eq!(expected.len(), 8);

    let q = "query($after: String) { account { users(first: 3, after: $after) {
        edges { cursor node { id } } pageInfo { hasNextPage endCursor }
    } } }";
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let d = s.ok(Some(admin), q, json!({"after": after})).await;
        let conn = &d["account"]["users"];
        let edges = conn["edges"].as_array().unwrap();
        assert!(edges.len() <= 3);
        seen.extend(edges.iter().map(|e| id(&e["node"]["id"])));
        pages += 1;
        assert!(pages <= 5, "paging does not end");
        if let Some(last) = edges.last() {
            assert_eq!(conn["pageInfo"]["endCursor"], last["cursor"]);
        }
        if conn["pageInfo"]["hasNextPage"] == false {
            break;
        }
        assert_eq!(edges.len(), 3, "a page before the last is full");
        after = Some(id(&conn["pageInfo"]["endCursor"]));
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 8, "each user exactly once: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);

    // The filter pages the same way.
    let d = s
        .ok(
            Some(admin),
            "{ account { users(flexAssigned: true, first: 3) { edges { node { id } } pageInfo { hasNextPage endCursor } } } }",
            json!({}),
        )
        .await;
    assert_eq!(d["account"]["users"]["edges"], json!([]));
    assert_eq!(d["account"]["users"]["pageInfo"]["hasNextPage"], false);
    assert!(d["account"]["users"]["pageInfo"]["endCursor"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_graphiql() {
    let s = TestServer::start().await;
    for path in ["/healthz", "/readyz"] {
        let resp = s
            .client()
            .get(format!("{}{path}", s.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK, "{path}");
    }
    let resp = s
        .client()
        .get(format!("{}/graphql", s.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = resp.text().await.unwrap();
    assert!(html.to_lowercase().contains("graphiql"), "not GraphiQL");
    assert!(html.contains("/graphql"), "GraphiQL points at the endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_create_account_prints_a_working_admin_key() {
    let (url, _dir) = TestDb::fresh_url().await;
    let out = tokio::process::Command::new(daypass_binary())
        .args([
            "create-account",
            "--name",
            "Cli Co",
            "--admin-email",
            "root@cli.test",
            "--admin-name",
            "Root",
        ])
        .env("DAYPASS_DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .env_remove("DAYPASS_OPERATOR_KEY")
        .output()
        .await
        .expect("run daypass create-account");
    assert!(
        out.status.success(),
        "create-account failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stdout is the key alone: {stdout:?}");
    let key = lines[0].trim();
    assert!(key.len() >= 32, "{key:?}");

    let s = TestServer::start_on(&url, &[]).await;
    let d = s
        .ok(
            Some(key),
            "{ viewer { role user { email name } } account { name balance } }",
            json!({}),
        )
        .await;
    assert_eq!(d["viewer"]["role"], "ADMIN");
    assert_eq!(d["viewer"]["user"]["email"], "root@cli.test");
    assert_eq!(d["viewer"]["user"]["name"], "Root");
    assert_eq!(d["account"]["name"], "Cli Co");
    assert_eq!(d["account"]["balance"], 0);
    // The key manages the account.
    let (_u, member) = create_user(&s, key, "m@cli.test", "MEMBER").await;
    let d = s.ok(Some(&member), "{ viewer { role } }", json!({})).await;
    assert_eq!(d["viewer"]["role"], "MEMBER");
}

/// Keys are remembered briefly per process (no database round trip per request), yet a
/// deactivation made through one server shuts the user out of that server at once and
/// of every other server on the same database within 5 seconds.
#[tokio::test]
async fn a_deactivated_user_loses_access_in_every_process_within_five_seconds() {
    let a = TestServer::start().await;
    let b = TestServer::start_on(&a.database_url, &[]).await;
    let (_, _, admin) = create_account(&a, "Revocations").await;
    let (member_id, member) = create_user(&a, &admin, "m@revoke.test", "MEMBER").await;
    let read = "{ viewer { user { id } } account { id } }";
    // Both servers have seen the key (and may remember it).
    for s in [&a, &b] {
        for _ in 0..3 {
            s.ok(Some(&member), read, json!({})).await;
        }
    }
    let d = a
        .ok(
            Some(&admin),
            "mutation($u: ID!) { deactivateUser(userId: $u) { active } }",
            json!({"u": member_id}),
        )
        .await;
    assert_eq!(d["deactivateUser"]["active"], false);
    let deactivated_at = std::time::Instant::now();
    assert_eq!(
        a.error_code(Some(&member), read, json!({})).await,
        "FORBIDDEN",
        "the server that deactivated the user forgets the key at once"
    );
    loop {
        let resp = b.gql(Some(&member), read, json!({})).await;
        if resp["errors"][0]["extensions"]["code"] == "FORBIDDEN" {
            break;
        }
        assert!(
            resp.get("errors").is_none(),
            "before it notices, the other server answers as before: {resp:#}"
        );
        assert!(
            deactivated_at.elapsed() < std::time::Duration::from_secs(5),
            "the other server still lets the deactivated user in after 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A key may make at most `DAYPASS_MUTATION_RATE` changes a minute. Past it,
/// a mutation is refused before any resolver runs (nothing changes), while queries
/// and other keys go on.
#[tokio::test]
async fn mutations_past_the_per_key_rate_are_refused_and_change_nothing() {
    let s = TestApp::start_with(&[
        ("DAYPASS_MUTATION_RATE", "4"),
        ("DAYPASS_ENV", "production"),
    ])
    .await;
    upsert_product(&s, "cad", 2).await;
    let (_, admin_id, admin) = create_account(&s, "Limited").await;
    let (member_id, member) = create_user(&s, &admin, "m@limited.test", "MEMBER").await;
    s.ok(
        Some(&admin),
        "mutation($ids: [ID!]!) { assignFlex(userIds: $ids, assigned: true) { id } }",
        json!({"ids": [member_id, admin_id]}),
    )
    .await;
    let buy = "mutation($k: String!) { purchaseTokens(input: {quantity: 10, idempotencyKey: $k}) { id } }";
    // Two more changes fit in the admin's four a minute.
    for k in ["a", "b"] {
        s.ok(Some(&admin), buy, json!({"k": k})).await;
    }
    let refused = s.gql(Some(&admin), buy, json!({"k": "c"})).await;
    let err = &refused["errors"][0];
    assert_eq!(err["extensions"]["code"], "FORBIDDEN", "{refused:#}");
    assert_eq!(err["extensions"]["reason"], "RATE_LIMITED", "{refused:#}");
    assert!(
        err["extensions"]["retryAfterSeconds"]
            .as_u64()
            .is_some_and(|s| (1..=60).contains(&s)),
        "{refused:#}"
    );
    assert!(refused["data"].is_null(), "no resolver ran: {refused:#}");
    // Nothing changed, queries still answer, and the member's own key is not limited.
    assert_eq!(balance(&s, &admin).await, 20);
    let r = open(&s, &member, "cad", None).await;
    assert_eq!(r["granted"], true, "{r:#}");
    assert_eq!(balance(&s, &admin).await, 18);
    assert_eq!(
        s.gql(Some(&admin), buy, json!({"k": "d"})).await["errors"][0]["extensions"]["reason"],
        "RATE_LIMITED"
    );
}

/// The per-key limit counts mutations sent over a WebSocket too, against the same
/// budget as the key's POSTs: a connection is no way around it.
#[tokio::test]
async fn mutations_over_a_websocket_count_against_the_keys_rate() {
    use daypass_tests::ws::{Incoming, WsClient};
    let s = TestServer::start_with(&[("DAYPASS_MUTATION_RATE", "3")]).await;
    let (_, _, admin) = create_account(&s, "Socket").await;
    let buy = "mutation($k: String!) { purchaseTokens(input: {quantity: 10, idempotencyKey: $k}) { id } }";
    let mut ws = WsClient::open(&s, &admin).await;
    let mut answers = Vec::new();
    for k in ["a", "b", "c", "d"] {
        let id = ws.subscribe(buy, json!({"k": k})).await;
        // The answer: `next` with the result, or `error` when refused before running.
        let answer = loop {
            match ws.recv(std::time::Duration::from_secs(10)).await {
                Some(Incoming::Message(m)) if m["id"] == id && m["type"] == "next" => {
                    break m["payload"].clone();
                }
                Some(Incoming::Message(m)) if m["id"] == id && m["type"] == "error" => {
                    break json!({"errors": m["payload"]});
                }
                Some(Incoming::Message(_)) => continue,
                other => panic!("no answer to mutation {k}: {other:?}"),
            }
        };
        answers.push(answer);
    }
    for a in &answers[..3] {
        assert!(a["errors"].is_null(), "{a:#}");
    }
    let refused = &answers[3]["errors"][0];
    assert_eq!(
        refused["extensions"]["code"], "FORBIDDEN",
        "{:#}",
        answers[3]
    );
    assert_eq!(refused["extensions"]["reason"], "RATE_LIMITED");
    // The same key over HTTP has no budget left either; the three purchases stand.
    assert_eq!(
        s.gql(Some(&admin), buy, json!({"k": "e"})).await["errors"][0]["extensions"]["reason"],
        "RATE_LIMITED"
    );
    assert_eq!(balance(&s, &admin).await, 30);
}
