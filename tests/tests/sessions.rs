//! Sessions (rules 20–24) through the real binary: short launches refunded on close
//! and on lapse, renewal past 24 hours on an active heartbeat and never on an idle
//! one, sessions ended by a denied renewal, a lost seat or a deactivation, the free
//! access check, and one refund at most when a close, a heartbeat and the lapse
//! sweep race, in one process and across two.

use daypass_domain::Db;
use daypass_tests::json::{at, id, int};
use daypass_tests::server::OPERATOR_KEY;
use daypass_tests::{Api, TestServer, ledger};
use serde_json::{Value, json};

const OP: Option<&str> = Some(OPERATOR_KEY);

const SESSION: &str = "id state active startedAt lastHeartbeatAt endedAt deviceId version source \
                       charges { id tokens refunded windowEndsAt }";

/// An account with a member assigned to pay-as-you-go, a product at `rate` tokens a
/// day and `tokens` bought: (admin key, member key, member id, product code).
async fn setup(
    s: &impl Api,
    name: &str,
    rate: i64,
    tokens: i64,
) -> (String, String, String, String) {
    let d = s
        .ok(
            OP,
            "mutation($n: String!, $e: String!) {
               createAccount(input: {name: $n, adminEmail: $e, adminName: \"Admin\"}) { adminApiKey }
             }",
            json!({"n": name, "e": format!("admin@{}.test", name.to_lowercase())}),
        )
        .await;
    let admin = id(&d["createAccount"]["adminApiKey"]);
    let code = format!("{}-CAD", name.to_uppercase());
    s.upsert_product(&code, rate).await;
    let (member_id, member) = s
        .create_user(
            &admin,
            &format!("m@{}.test", name.to_lowercase()),
            "Member",
            "MEMBER",
        )
        .await;
    s.ok(
        Some(&admin),
        "mutation($u: [ID!]!) { assignFlex(userIds: $u, assigned: true) { id } }",
        json!({"u": [member_id]}),
    )
    .await;
    if tokens > 0 {
        buy(s, &admin, tokens, "first").await;
    }
    (admin, member, member_id, code)
}

async fn buy(s: &impl Api, admin: &str, tokens: i64, key: &str) {
    s.ok(
        Some(admin),
        "mutation($q: Int!, $k: String!) { purchaseTokens(input: {quantity: $q, idempotencyKey: $k}) { id } }",
        json!({"q": tokens, "k": key}),
    )
    .await;
}

async fn open(s: &impl Api, key: &str, code: &str) -> Value {
    let q = format!(
        "mutation($c: String!) {{ openProduct(input: {{productCode: $c, deviceId: \"laptop-1\", version: \"2027\"}}) {{
           granted tokensCharged balance denyReason windowEndsAt source session {{ {SESSION} }} }} }}"
    );
    s.ok(Some(key), &q, json!({"c": code})).await["openProduct"].clone()
}

async fn heartbeat(s: &impl Api, key: &str, session: &str, active: bool) -> Value {
    let q = format!(
        "mutation($s: ID!, $a: Boolean!) {{ heartbeat(input: {{sessionId: $s, active: $a}}) {{
           granted denyReason tokensCharged windowEndsAt balance session {{ {SESSION} }} }} }}"
    );
    s.ok(Some(key), &q, json!({"s": session, "a": active}))
        .await["heartbeat"]
        .clone()
}

async fn close(s: &impl Api, key: &str, session: &str) -> Value {
    let q = format!("mutation($s: ID!) {{ closeProduct(sessionId: $s) {{ {SESSION} }} }}");
    s.ok(Some(key), &q, json!({"s": session})).await["closeProduct"].clone()
}

async fn advance(s: &impl Api, hours: i64, minutes: i64) {
    s.ok(
        OP,
        "mutation($h: Int!, $m: Int!) { advanceClock(hours: $h, minutes: $m) }",
        json!({"h": hours, "m": minutes}),
    )
    .await;
}

async fn maintain(s: &impl Api) {
    s.ok(OP, "mutation { runMaintenance }", json!({})).await;
}

async fn balance(s: &impl Api, key: &str) -> i64 {
    int(&s.ok(Some(key), "{ account { balance } }", json!({})).await["account"]["balance"])
}

/// The account's usage over all time: (opens, charges, tokens, spending).
async fn usage(s: &impl Api, admin: &str) -> (i64, i64, i64, i64) {
    let d = s
        .ok(
            Some(admin),
            "{ account { usageReport(from: \"2000-01-01\", to: \"2100-12-31\", groupBy: []) {
                 opens charges tokens costMinor } } }",
            json!({}),
        )
        .await;
    let rows = d["account"]["usageReport"].as_array().unwrap().clone();
    rows.iter().fold((0, 0, 0, 0), |acc, r| {
        (
            acc.0 + int(&r["opens"]),
            acc.1 + int(&r["charges"]),
            acc.2 + int(&r["tokens"]),
            acc.3 + int(&r["costMinor"]),
        )
    })
}

async fn ledger_kinds(s: &impl Api, admin: &str) -> Vec<(String, i64)> {
    let d = s
        .ok(
            Some(admin),
            "{ account { ledger(first: 100) { edges { node { kind tokens } } } } }",
            json!({}),
        )
        .await;
    d["account"]["ledger"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["node"]["kind"].as_str().unwrap().to_owned(),
                int(&e["node"]["tokens"]),
            )
        })
        .collect()
}

async fn check_books(server: &TestServer) {
    let db = Db::connect(&server.database_url).await.unwrap();
    ledger::check_ledger(&db).await;
}

#[tokio::test]
async fn a_short_launch_closed_is_refunded_to_the_token_and_the_next_open_charges_again() {
    let s = TestServer::start().await;
    let (admin, member, _, code) = setup(&s, "Shortco", 10, 100).await;
    let opened = open(&s, &member, &code).await;
    assert_eq!(opened["granted"], true);
    assert_eq!(opened["tokensCharged"], 10);
    let session = &opened["session"];
    assert_eq!(session["state"], "OPEN");
    assert_eq!(session["deviceId"], "laptop-1");
    assert_eq!(session["version"], "2027");
    assert_eq!(session["source"], "FLEX");
    let sid = id(&session["id"]);

    advance(&s, 0, 4).await;
    let closed = close(&s, &member, &sid).await;
    assert_eq!(closed["state"], "CLOSED");
    // The test clock also runs with real time between requests.
    let lasted = at(&closed["endedAt"]) - at(&closed["startedAt"]);
    assert!(lasted >= chrono::Duration::minutes(4) && lasted < chrono::Duration::minutes(5));
    assert_eq!(closed["charges"][0]["refunded"], true, "{closed:#}");
    assert_eq!(
        at(&closed["charges"][0]["windowEndsAt"]),
        at(&closed["endedAt"])
    );
    assert_eq!(balance(&s, &admin).await, 100);
    let kinds = ledger_kinds(&s, &admin).await;
    assert!(kinds.contains(&("REFUND".into(), 10)), "{kinds:?}");
    // Reports count the open, not the charge, its tokens or its cost.
    assert_eq!(usage(&s, &admin).await, (1, 0, 0, 0));

    // Closing again returns it unchanged and refunds nothing more.
    let again = close(&s, &member, &sid).await;
    assert_eq!(again, closed);
    assert_eq!(balance(&s, &admin).await, 100);

    // The window closed with the refund: the next open charges again.
    let reopened = open(&s, &member, &code).await;
    assert_eq!(reopened["tokensCharged"], 10);
    assert_eq!(balance(&s, &admin).await, 90);
    let (opens, charges, tokens, _) = usage(&s, &admin).await;
    assert_eq!((opens, charges, tokens), (2, 1, 10));
    check_books(&s).await;
}

#[tokio::test]
async fn five_minutes_or_another_open_in_the_window_keeps_the_charge() {
    let s = TestServer::start().await;
    let (admin, member, _, code) = setup(&s, "Longco", 10, 100).await;
    let first = id(&open(&s, &member, &code).await["session"]["id"]);
    advance(&s, 0, 5).await;
    let closed = close(&s, &member, &first).await;
    assert_eq!(closed["charges"][0]["refunded"], false);
    assert_eq!(balance(&s, &admin).await, 90);

    // A second launch inside the window: the first one's short close keeps its charge.
    advance(&s, 24, 0).await;
    let charged = open(&s, &member, &code).await;
    assert_eq!(charged["tokensCharged"], 10);
    let second = open(&s, &member, &code).await;
    assert_eq!(second["tokensCharged"], 0);
    assert_eq!(second["session"]["charges"], json!([]));
    advance(&s, 0, 1).await;
    let closed = close(&s, &member, &id(&charged["session"]["id"])).await;
    assert_eq!(closed["charges"][0]["refunded"], false);
    assert_eq!(balance(&s, &admin).await, 80);
    check_books(&s).await;
}

#[tokio::test]
async fn a_lapsed_session_is_reported_lapsed_then_ended_and_a_short_one_refunded() {
    let s = TestServer::start().await;
    let (admin, member, _, code) = setup(&s, "Lapseco", 10, 100).await;
    let sid = id(&open(&s, &member, &code).await["session"]["id"]);
    advance(&s, 0, 2).await;
    let beat = heartbeat(&s, &member, &sid, true).await;
    assert_eq!(beat["granted"], true);
    assert_eq!(beat["tokensCharged"], 0);
    let heard = at(&beat["session"]["lastHeartbeatAt"]);

    advance(&s, 0, 15).await;
    // Lapsed before the worker has run: reported so, and a heartbeat changes nothing.
    let d = s
        .ok(
            Some(&admin),
            "{ account { open: sessions(state: OPEN) { edges { node { id } } }
                         lapsed: sessions(state: LAPSED) { edges { node { id state endedAt } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(d["account"]["open"]["edges"], json!([]));
    assert_eq!(id(&d["account"]["lapsed"]["edges"][0]["node"]["id"]), sid);
    assert_eq!(
        at(&d["account"]["lapsed"]["edges"][0]["node"]["endedAt"]),
        heard
    );
    let late = heartbeat(&s, &member, &sid, true).await;
    assert_eq!(late["granted"], false);
    assert_eq!(late["denyReason"], "SESSION_ENDED");
    assert_eq!(
        at(&late["session"]["lastHeartbeatAt"]),
        heard,
        "an ended session's heartbeat changes nothing"
    );
    assert_eq!(balance(&s, &admin).await, 90);

    maintain(&s).await;
    let d = s
        .ok(
            Some(&member),
            &format!("{{ account {{ sessions {{ edges {{ node {{ {SESSION} }} }} }} }} }}"),
            json!({}),
        )
        .await;
    let ended = &d["account"]["sessions"]["edges"][0]["node"];
    assert_eq!(ended["state"], "LAPSED");
    assert_eq!(at(&ended["endedAt"]), heard);
    assert_eq!(
        ended["charges"][0]["refunded"], true,
        "ended 2 minutes after the charge"
    );
    assert_eq!(balance(&s, &admin).await, 100);
    check_books(&s).await;
}

#[tokio::test]
async fn a_launcher_without_heartbeats_is_charged_as_rule_ten_says() {
    let s = TestServer::start().await;
    let (admin, member, _, code) = setup(&s, "Quietco", 10, 100).await;
    let sid = id(&open(&s, &member, &code).await["session"]["id"]);
    advance(&s, 23, 59).await;
    maintain(&s).await;
    let d = s
        .ok(
            Some(&admin),
            "{ account { sessions(state: OPEN) { edges { node { id } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        id(&d["account"]["sessions"]["edges"][0]["node"]["id"]),
        sid,
        "not watched: open for 24 hours"
    );
    advance(&s, 0, 1).await;
    maintain(&s).await;
    let d = s
        .ok(Some(&admin), "{ account { sessions { edges { node { state endedAt startedAt charges { refunded } } } } } }", json!({}))
        .await;
    let node = &d["account"]["sessions"]["edges"][0]["node"];
    assert_eq!(node["state"], "LAPSED");
    assert_eq!(
        at(&node["endedAt"]) - at(&node["startedAt"]),
        chrono::Duration::hours(24),
        "ends when it lapses"
    );
    assert_eq!(node["charges"][0]["refunded"], false);
    assert_eq!(balance(&s, &admin).await, 90);
}

#[tokio::test]
async fn an_active_heartbeat_past_the_window_charges_again_and_an_idle_one_never_does() {
    let s = TestServer::start().await;
    let (admin, member, _, code) = setup(&s, "Renewco", 10, 25).await;
    let opened = open(&s, &member, &code).await;
    let sid = id(&opened["session"]["id"]);
    let first_end = at(&opened["windowEndsAt"]);
    // Idle all day: heartbeats every 10 minutes keep the session, charge nothing.
    for _ in 0..150 {
        advance(&s, 0, 10).await;
        let beat = heartbeat(&s, &member, &sid, false).await;
        assert_eq!(beat["granted"], true, "{beat:#}");
        assert_eq!(beat["tokensCharged"], 0);
    }
    assert_eq!(balance(&s, &admin).await, 15);
    // In use again past the window: charged as an open, a new window from now.
    let renewed = heartbeat(&s, &member, &sid, true).await;
    assert_eq!(renewed["granted"], true);
    assert_eq!(renewed["tokensCharged"], 10);
    assert_eq!(renewed["balance"], 5);
    let second_end = at(&renewed["windowEndsAt"]);
    assert!(second_end > first_end + chrono::Duration::hours(1));
    assert_eq!(renewed["session"]["charges"].as_array().unwrap().len(), 2);
    // Inside the new window, heartbeats charge nothing.
    advance(&s, 0, 10).await;
    assert_eq!(heartbeat(&s, &member, &sid, true).await["tokensCharged"], 0);
    // Reports count the renewal's charge and tokens, and one open.
    let (opens, charges, tokens, _) = usage(&s, &admin).await;
    assert_eq!((opens, charges, tokens), (1, 2, 20));

    // Past the second window with 5 tokens left: denied, the session ends.
    for _ in 0..144 {
        advance(&s, 0, 10).await;
        heartbeat(&s, &member, &sid, false).await;
    }
    let denied = heartbeat(&s, &member, &sid, true).await;
    assert_eq!(denied["granted"], false);
    assert_eq!(denied["denyReason"], "INSUFFICIENT_TOKENS");
    assert_eq!(denied["tokensCharged"], 0);
    assert_eq!(denied["session"]["state"], "DENIED");
    assert_eq!(balance(&s, &admin).await, 5);
    let after = heartbeat(&s, &member, &sid, true).await;
    assert_eq!(after["denyReason"], "SESSION_ENDED");
    check_books(&s).await;
}

#[tokio::test]
async fn a_lost_seat_or_a_deactivation_ends_the_session() {
    let s = TestServer::start().await;
    let (admin, member, member_id, code) = setup(&s, "Seatco", 10, 100).await;
    let product_id = s.ok(OP, "{ products { id code } }", json!({})).await["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == code.as_str())
        .map(|p| id(&p["id"]))
        .unwrap();
    let d = s
        .ok(
            Some(&admin),
            "mutation($p: ID!) { addSubscription(input: {productId: $p, planLevel: PREMIUM, seats: 1,
               startsAt: \"2000-01-01T00:00:00Z\", endsAt: \"2100-01-01T00:00:00Z\"}) { id } }",
            json!({"p": product_id}),
        )
        .await;
    let sub = id(&d["addSubscription"]["id"]);
    let assign = |on: bool| {
        let (s, admin, sub, member_id) = (&s, admin.clone(), sub.clone(), member_id.clone());
        async move {
            s.ok(
                Some(&admin),
                "mutation($s: ID!, $u: ID!, $a: Boolean!) { assignSubscription(subscriptionId: $s, userId: $u, assigned: $a) { id } }",
                json!({"s": sub, "u": member_id, "a": on}),
            )
            .await;
        }
    };
    assign(true).await;
    let opened = open(&s, &member, &code).await;
    assert_eq!(opened["source"], "SUBSCRIPTION");
    assert_eq!(opened["session"]["source"], "SUBSCRIPTION");
    let sid = id(&opened["session"]["id"]);
    advance(&s, 0, 10).await;
    let beat = heartbeat(&s, &member, &sid, true).await;
    assert_eq!(beat["granted"], true);
    assert_eq!(
        beat["tokensCharged"], 0,
        "a subscription session never charges"
    );
    assign(false).await;
    let gone = heartbeat(&s, &member, &sid, true).await;
    assert_eq!(gone["granted"], false);
    assert_eq!(gone["denyReason"], "SESSION_ENDED");
    assert_eq!(gone["session"]["state"], "DENIED");
    assert_eq!(balance(&s, &admin).await, 100);

    // Pay-as-you-go now; then the user is deactivated mid-session.
    let flex = open(&s, &member, &code).await;
    assert_eq!(flex["source"], "FLEX");
    let sid = id(&flex["session"]["id"]);
    s.ok(
        Some(&admin),
        "mutation($u: ID!) { deactivateUser(userId: $u) { id } }",
        json!({"u": member_id}),
    )
    .await;
    let off = heartbeat(&s, &member, &sid, true).await;
    assert_eq!(off["granted"], false);
    assert_eq!(off["denyReason"], "USER_DEACTIVATED");
    assert_eq!(off["session"]["state"], "DENIED");
    // Closing is a change like any other: forbidden to a deactivated user.
    assert_eq!(
        s.error_code(
            Some(&member),
            "mutation($s: ID!) { closeProduct(sessionId: $s) { state } }",
            json!({"s": sid})
        )
        .await,
        "FORBIDDEN"
    );
}

#[tokio::test]
async fn sessions_belong_to_their_user_and_admins_may_close_them() {
    let s = TestServer::start().await;
    let (admin, member, _, code) = setup(&s, "Ownco", 10, 100).await;
    let (_, other) = s
        .create_user(&admin, "other@ownco.test", "Other", "MEMBER")
        .await;
    let (_, analyst) = s
        .create_user(&admin, "an@ownco.test", "Analyst", "ANALYST")
        .await;
    let (other_admin, _, _, _) = setup(&s, "Elsewhere", 10, 0).await;
    let sid = id(&open(&s, &member, &code).await["session"]["id"]);
    let beat = "mutation($s: ID!) { heartbeat(input: {sessionId: $s}) { granted } }";
    let shut = "mutation($s: ID!) { closeProduct(sessionId: $s) { state } }";
    for key in [&other, &admin, &other_admin, &analyst] {
        assert_eq!(
            s.error_code(Some(key), beat, json!({"s": sid})).await,
            "NOT_FOUND"
        );
    }
    for key in [&other, &other_admin] {
        assert_eq!(
            s.error_code(Some(key), shut, json!({"s": sid})).await,
            "NOT_FOUND"
        );
    }
    assert_eq!(
        s.error_code(Some(&analyst), shut, json!({"s": sid})).await,
        "FORBIDDEN"
    );
    assert_eq!(
        s.error_code(Some(&member), beat, json!({"s": "no-such-session"}))
            .await,
        "NOT_FOUND"
    );
    // The other member sees no sessions of others.
    let d = s
        .ok(
            Some(&other),
            "{ account { sessions { edges { node { id } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(d["account"]["sessions"]["edges"], json!([]));
    let closed = s.ok(Some(&admin), shut, json!({"s": sid})).await;
    assert_eq!(closed["closeProduct"]["state"], "CLOSED");
}

#[tokio::test]
async fn asking_costs_nothing_and_answers_what_an_open_would() {
    let s = TestServer::start().await;
    let (admin, member, _, code) = setup(&s, "Askco", 10, 15).await;
    let ask = "query($c: String!) { accessCheck(productCode: $c) {
                 granted source tokensToCharge windowEndsAt denyReason balance } }";
    let counts = |s: &TestServer| {
        let url = s.database_url.clone();
        async move {
            let db = Db::connect(&url).await.unwrap();
            let mut n = Vec::new();
            for table in [
                "opens",
                "charges",
                "sessions",
                "ledger_entries",
                "notifications",
            ] {
                n.push(ledger::count(&db, &format!("SELECT COUNT(*) FROM {table}")).await);
            }
            n
        }
    };
    let before = counts(&s).await;
    let answer = s.ok(Some(&member), ask, json!({"c": code})).await["accessCheck"].clone();
    assert_eq!(answer["granted"], true);
    assert_eq!(answer["source"], "FLEX");
    assert_eq!(answer["tokensToCharge"], 10);
    assert_eq!(answer["balance"], 15);
    assert_eq!(counts(&s).await, before, "an access check records nothing");
    let opened = open(&s, &member, &code).await;
    assert_eq!(opened["tokensCharged"], answer["tokensToCharge"]);
    let (asked, got) = (at(&answer["windowEndsAt"]), at(&opened["windowEndsAt"]));
    assert!(got >= asked && got - asked < chrono::Duration::seconds(5));
    // Inside the window: free; another product past the balance: denied as an open.
    let inside = s.ok(Some(&member), ask, json!({"c": code})).await["accessCheck"].clone();
    assert_eq!(
        (inside["granted"].clone(), inside["tokensToCharge"].clone()),
        (json!(true), json!(0))
    );
    assert_eq!(inside["windowEndsAt"], opened["windowEndsAt"]);
    s.upsert_product("ASK-BIG", 50).await;
    let big = s.ok(Some(&member), ask, json!({"c": "ASK-BIG"})).await["accessCheck"].clone();
    assert_eq!(big["denyReason"], "INSUFFICIENT_TOKENS");
    let unknown = s.ok(Some(&member), ask, json!({"c": "NOPE"})).await["accessCheck"].clone();
    assert_eq!(unknown["denyReason"], "UNKNOWN_PRODUCT");
    assert_eq!(
        s.error_code(Some(&admin), ask, json!({"c": ""})).await,
        "BAD_USER_INPUT"
    );
    assert_eq!(s.error_code(OP, ask, json!({"c": code})).await, "FORBIDDEN");
}

/// Opens `n` sessions (one per member of `name`'s account), each charged, each heard
/// from once a minute later: (admin key, member keys, session ids).
async fn heard_sessions(s: &impl Api, name: &str, n: usize) -> (String, Vec<String>, Vec<String>) {
    let (admin, first, first_id, code) = setup(s, name, 10, 1000).await;
    let mut members = vec![first];
    let mut ids = vec![first_id];
    for i in 1..n {
        let (uid, key) = s
            .create_user(
                &admin,
                &format!("m{i}@{}.test", name.to_lowercase()),
                "M",
                "MEMBER",
            )
            .await;
        members.push(key);
        ids.push(uid);
    }
    s.ok(
        Some(&admin),
        "mutation($u: [ID!]!) { assignFlex(userIds: $u, assigned: true) { id } }",
        json!({"u": ids}),
    )
    .await;
    let mut sessions = Vec::new();
    for key in &members {
        let opened = open(s, key, &code).await;
        assert_eq!(opened["tokensCharged"], 10);
        sessions.push(id(&opened["session"]["id"]));
    }
    (admin, members, sessions)
}

/// A close, a heartbeat and lapse sweeps race over each session: `close_on` and
/// `beat_on` say which server sends them (one process, or two on one database).
async fn race_and_check(
    servers: &[&TestServer],
    admin: &str,
    members: &[String],
    sessions: &[String],
    minutes: i64,
) {
    for s in servers {
        advance(*s, 0, minutes).await;
    }
    let mut racing = Vec::new();
    for (i, (key, sid)) in members.iter().zip(sessions).enumerate() {
        let closer = servers[i % servers.len()];
        let beater = servers[(i + 1) % servers.len()];
        racing.push(
            async move {
                let q = "mutation($s: ID!) { closeProduct(sessionId: $s) { state } }";
                closer.ok(Some(key), q, json!({"s": sid})).await;
            }
            .boxed(),
        );
        racing.push(
            async move {
                heartbeat(beater, key, sid, true).await;
            }
            .boxed(),
        );
    }
    for s in servers {
        racing.push(async move { maintain(*s).await }.boxed());
        racing.push(async move { maintain(*s).await }.boxed());
    }
    futures::future::join_all(racing).await;
    maintain(servers[0]).await;
    // Every session ended within 5 minutes of its charge: each refunded exactly once.
    assert_eq!(balance(servers[0], admin).await, 1000);
    let refunds = ledger_kinds(servers[0], admin)
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "REFUND")
        .count();
    assert_eq!(refunds, members.len(), "one refund per session");
    check_books(servers[0]).await;
}

use futures::FutureExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_a_heartbeat_and_the_sweep_racing_refund_once() {
    let s = TestServer::start().await;
    // Closed while open: the close ends it (a heartbeat may come first, the sweep finds
    // nothing lapsed).
    let (admin, members, sessions) = heard_sessions(&s, "Raceone", 6).await;
    race_and_check(&[&s], &admin, &members, &sessions, 2).await;
    // Lapsed before anyone looked: the close, the heartbeat's answer and the sweeps all
    // see it lapsed at its last heartbeat.
    let (admin, members, sessions) = heard_sessions(&s, "Racetwo", 6).await;
    advance(&s, 0, 1).await;
    for (key, sid) in members.iter().zip(&sessions) {
        heartbeat(&s, key, sid, true).await;
    }
    race_and_check(&[&s], &admin, &members, &sessions, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_racing_over_sessions_refund_once() {
    let a = TestServer::start().await;
    let b = TestServer::start_on(&a.database_url, &[("DAYPASS_TEST_CLOCK", "1")]).await;
    let (admin, members, sessions) = heard_sessions(&a, "Racetwoproc", 8).await;
    race_and_check(&[&a, &b], &admin, &members, &sessions, 2).await;
    let (admin, members, sessions) = heard_sessions(&b, "Racelapsed", 8).await;
    advance(&a, 0, 1).await;
    advance(&b, 0, 1).await;
    for (key, sid) in members.iter().zip(&sessions) {
        heartbeat(&a, key, sid, true).await;
    }
    race_and_check(&[&a, &b], &admin, &members, &sessions, 16).await;
}

/// Each member closes a short launch while opening the product again: either the
/// open came first (free, inside the window, and the charge stands) or the close did
/// (refunded, and the open charges anew); never a free open and a refund.
async fn reopen_while_closing(servers: &[&TestServer], name: &str) {
    let (admin, members, sessions) = heard_sessions(servers[0], name, 8).await;
    let code = format!("{}-CAD", name.to_uppercase());
    let racing = members
        .iter()
        .zip(&sessions)
        .enumerate()
        .map(|(i, (key, sid))| {
            let (closer, opener) = (servers[i % servers.len()], servers[(i + 1) % servers.len()]);
            let code = code.clone();
            async move {
                let (closed, opened) =
                    futures::join!(close(closer, key, sid), open(opener, key, &code));
                let refunded = closed["charges"][0]["refunded"] == json!(true);
                (refunded, int(&opened["tokensCharged"]))
            }
        });
    let outcomes = futures::future::join_all(racing).await;
    for (refunded, charged) in &outcomes {
        assert_eq!(
            *charged,
            if *refunded { 10 } else { 0 },
            "a refund and a free open of the same window: {outcomes:?}"
        );
    }
    assert_eq!(balance(servers[0], &admin).await, 1000 - 10 * 8);
    check_books(servers[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_racing_a_refunding_close_is_free_only_if_the_charge_stands() {
    let a = TestServer::start().await;
    reopen_while_closing(&[&a], "Reopenrace").await;
    let b = TestServer::start_on(&a.database_url, &[("DAYPASS_TEST_CLOCK", "1")]).await;
    reopen_while_closing(&[&a, &b], "Reopentwo").await;
}

/// A refund after its day was rolled up corrects that day; one while the day waits
/// to be rolled leaves a correction the rollup applies. Reports stay exact.
#[tokio::test]
async fn a_refund_of_a_rolled_day_corrects_its_rollups() {
    use daypass_tests::TestApp;
    let s = TestApp::start().await;
    let (admin, member, _, code) = setup(&s, "Rollco", 10, 100).await;
    let (admin2, member2, _, code2) = setup(&s, "Rolltwo", 10, 100).await;
    for (key, code) in [(&member, &code), (&member2, &code2)] {
        let sid = id(&open(&s, key, code).await["session"]["id"]);
        advance(&s, 0, 1).await;
        heartbeat(&s, key, &sid, true).await;
    }
    advance(&s, 48, 0).await;
    let db = s.db();
    // Rolled while the first session still held its charge ...
    daypass_domain::rollups::roll_up(db, s.now()).await.unwrap();
    let totals = |db: &Db| {
        let db = db.clone();
        async move {
            ledger::count(
                &db,
                "SELECT CAST(COALESCE(SUM(tokens), 0) AS BIGINT) FROM usage_day_totals",
            )
            .await
        }
    };
    assert_eq!(totals(db).await, 20);
    assert_eq!(usage(&s, &admin).await.2, 10);
    // ... then the lapse sweep refunds both: the rolled day is corrected at once.
    let report = daypass_domain::sessions::end_lapsed(db, s.now())
        .await
        .unwrap();
    assert_eq!((report.lapsed, report.refunded), (2, 2));
    assert_eq!(totals(db).await, 0);
    assert_eq!(usage(&s, &admin).await, (1, 0, 0, 0));
    assert_eq!(usage(&s, &admin2).await, (1, 0, 0, 0));
    // Refunded two days late: the window had ended and keeps its end.
    let d = s
        .ok(Some(&member), "{ account { sessions { edges { node { startedAt charges { refunded windowEndsAt } } } } } }", json!({}))
        .await;
    let node = &d["account"]["sessions"]["edges"][0]["node"];
    assert_eq!(node["charges"][0]["refunded"], true);
    assert!(
        at(&node["charges"][0]["windowEndsAt"])
            <= at(&node["startedAt"]) + chrono::Duration::hours(24)
    );

    // A day closed but not rolled yet: the refund leaves a correction.
    let sid = id(&open(&s, &member, &code).await["session"]["id"]);
    assert_eq!(usage(&s, &admin).await.2, 10);
    advance(&s, 0, 1).await;
    heartbeat(&s, &member, &sid, true).await;
    advance(&s, 48, 0).await;
    daypass_domain::sessions::end_lapsed(db, s.now())
        .await
        .unwrap();
    let corrections = ledger::count(db, "SELECT COUNT(*) FROM rollup_corrections").await;
    assert_eq!(corrections, 1);
    daypass_domain::rollups::roll_up(db, s.now()).await.unwrap();
    assert_eq!(
        ledger::count(db, "SELECT COUNT(*) FROM rollup_corrections").await,
        0
    );
    assert_eq!(totals(db).await, 0);
    assert_eq!(usage(&s, &admin).await, (2, 0, 0, 0));
    ledger::check_ledger(db).await;
}

async fn low_balance_notices(s: &impl Api, admin: &str) -> usize {
    s.ok(
        Some(admin),
        "{ account { notifications { edges { node { kind } } } } }",
        json!({}),
    )
    .await["account"]["notifications"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["node"]["kind"] == "LOW_BALANCE")
        .count()
}

#[tokio::test]
async fn a_refund_that_lifts_the_balance_back_rearms_the_threshold() {
    use daypass_tests::TestApp;
    let s = TestApp::start().await;
    let (admin, member, _, code) = setup(&s, "Rearmco", 10, 55).await;
    s.ok(
        Some(&admin),
        "mutation { setLowBalanceThreshold(tokens: 50) { id } }",
        json!({}),
    )
    .await;
    let sid = id(&open(&s, &member, &code).await["session"]["id"]);
    assert_eq!(balance(&s, &admin).await, 45);
    assert_eq!(
        low_balance_notices(&s, &admin).await,
        1,
        "55 → 45 crossed 50"
    );
    advance(&s, 0, 1).await;
    close(&s, &member, &sid).await;
    assert_eq!(
        balance(&s, &admin).await,
        55,
        "refunded back above the threshold"
    );
    assert_eq!(
        low_balance_notices(&s, &admin).await,
        1,
        "a refund sends nothing by itself"
    );
    open(&s, &member, &code).await;
    assert_eq!(
        low_balance_notices(&s, &admin).await,
        2,
        "re-armed: the next crossing tells again"
    );
}

#[tokio::test]
async fn bad_session_input_is_refused_and_metrics_count_sessions() {
    let s = TestServer::start().await;
    let (_, member, _, code) = setup(&s, "Metricco", 10, 100).await;
    let long = "x".repeat(101);
    let code_of = |field: &str| {
        format!(
            "mutation($c: String!, $d: String) {{ openProduct(input: {{productCode: $c, {field}: $d}}) {{ granted }} }}"
        )
    };
    assert_eq!(
        s.error_code(
            Some(&member),
            &code_of("deviceId"),
            json!({"c": code, "d": long})
        )
        .await,
        "BAD_USER_INPUT"
    );
    for bad in ["", "x", &"y".repeat(500), "'; DROP TABLE sessions; --"] {
        assert_eq!(
            s.error_code(
                Some(&member),
                "mutation($s: ID!) { heartbeat(input: {sessionId: $s}) { granted } }",
                json!({"s": bad})
            )
            .await,
            "NOT_FOUND"
        );
        assert_eq!(
            s.error_code(
                Some(&member),
                "mutation($s: ID!) { closeProduct(sessionId: $s) { state } }",
                json!({"s": bad})
            )
            .await,
            "NOT_FOUND"
        );
    }
    let sid = id(&open(&s, &member, &code).await["session"]["id"]);
    heartbeat(&s, &member, &sid, true).await;
    close(&s, &member, &sid).await;
    maintain(&s).await;
    let text = s
        .client()
        .get(format!("{}/metrics", s.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "daypass_heartbeats_total{outcome=\"granted\"} 1",
        "daypass_session_refunds_total{ended=\"CLOSED\"} 1",
        "daypass_sessions_ended_total{state=\"CLOSED\"} 1",
        "daypass_sessions_open 0",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
}
