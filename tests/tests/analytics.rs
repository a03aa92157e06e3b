//! Reports over GraphQL: `usageReport`, `spending` and `forecast` with the roles of
//! rule 19, in process ([`TestApp`]); the CSV export over HTTP on the real binary.
//! Before and after the rollup job.

use daypass_tests::json::{id, int};
use daypass_tests::server::OPERATOR_KEY;
use daypass_tests::{Api, TestApp, TestServer};
use serde_json::{Value, json};

const OP: Option<&str> = Some(OPERATOR_KEY);

/// A product name that needs every kind of CSV quoting.
const AWKWARD_NAME: &str = "Render, \"Pro\"\nEdition";

const REPORT: &str = "query($from: Date!, $to: Date!, $g: [ReportDimension!]!, $u: ID, $p: ID) {
  account { usageReport(from: $from, to: $to, groupBy: $g, userId: $u, productId: $p) {
    period user { id email name } product { id code name }
    tokens opens charges denials distinctUsers costMinor
  } }
}";

/// The accounts, keys and days [`story`] left on `s`.
struct Story<S> {
    s: S,
    account_id: String,
    admin: String,
    admin_id: String,
    member: String,
    member_id: String,
    analyst: String,
    other_admin: String,
    first_day: String,
    last_day: String,
}

async fn create_account(s: &impl Api, name: &str) -> (String, String, String) {
    let d = s
        .ok(
            OP,
            "mutation($n: String!, $e: String!) {
               createAccount(input: {name: $n, adminEmail: $e, adminName: \"Ada Admin\"}) {
                 account { id } admin { id } adminApiKey
               }
             }",
            json!({"n": name, "e": format!("admin@{}.test", name.to_lowercase())}),
        )
        .await;
    let c = &d["createAccount"];
    (
        id(&c["account"]["id"]),
        id(&c["admin"]["id"]),
        id(&c["adminApiKey"]),
    )
}

async fn open(s: &impl Api, key: &str, code: &str) -> Value {
    let d = s
        .ok(
            Some(key),
            "mutation($c: String!) { openProduct(input: {productCode: $c}) { granted tokensCharged denyReason } }",
            json!({"c": code}),
        )
        .await;
    d["openProduct"].clone()
}

async fn advance(s: &impl Api, hours: i64) -> String {
    let d = s
        .ok(
            OP,
            "mutation($h: Int!) { advanceClock(hours: $h) }",
            json!({"h": hours}),
        )
        .await;
    d["advanceClock"].as_str().unwrap()[..10].to_owned()
}

async fn report(s: &impl Api, key: &str, vars: Value) -> Vec<Value> {
    let d = s.ok(Some(key), REPORT, vars).await;
    d["account"]["usageReport"].as_array().unwrap().clone()
}

/// Three days of usage on `s` (its test clock on): an admin and a member on two
/// products (one with an awkward name), a reopen inside the window, a denial for an
/// unknown code.
async fn story<S: Api>(s: S) -> Story<S> {
    let (account_id, admin_id, admin) = create_account(&s, "Analytica").await;
    let (_, _, other_admin) = create_account(&s, "Elsewhere").await;
    let (member_id, member) = s
        .create_user(
            &admin,
            "mia@analytica.test",
            "Mia, \"the\" member",
            "MEMBER",
        )
        .await;
    let (_, analyst) = s
        .create_user(&admin, "ann@analytica.test", "Ann Analyst", "ANALYST")
        .await;
    for (code, name, rate, annual) in [
        ("cad", "CAD Suite", 10, 200_000),
        ("render", AWKWARD_NAME, 4, 100),
    ] {
        s.ok(
            OP,
            "mutation($c: String!, $n: String!, $r: Int!, $a: Int) {
               upsertProduct(input: {code: $c, name: $n, dailyRate: $r, annualSubscriptionMinor: $a}) { id }
             }",
            json!({"c": code, "n": name, "r": rate, "a": annual}),
        )
        .await;
    }
    s.ok(
        Some(&admin),
        "mutation($u: [ID!]!) { assignFlex(userIds: $u, assigned: true) { id } }",
        json!({"u": [admin_id, member_id]}),
    )
    .await;
    s.ok(
        Some(&admin),
        "mutation { purchaseTokens(input: {quantity: 500, idempotencyKey: \"k1\"}) { id } }",
        json!({}),
    )
    .await;
    // Start the story at 09:00 UTC of the next day, so all three days are whole.
    let now = s
        .ok(OP, "mutation { advanceClock(hours: 0) }", json!({}))
        .await;
    let hour: i64 = now["advanceClock"].as_str().unwrap()[11..13]
        .parse()
        .unwrap();
    let first_day = advance(&s, 24 - hour + 9).await;
    assert_eq!(open(&s, &member, "cad").await["tokensCharged"], 10);
    assert_eq!(open(&s, &admin, "cad").await["tokensCharged"], 10);
    assert_eq!(open(&s, &admin, "render").await["tokensCharged"], 4);
    advance(&s, 2).await;
    assert_eq!(
        open(&s, &member, "cad").await["tokensCharged"],
        0,
        "inside the window"
    );
    assert_eq!(
        open(&s, &member, "nope").await["denyReason"],
        "UNKNOWN_PRODUCT"
    );
    advance(&s, 24).await; // day 2, 11:00
    assert_eq!(open(&s, &member, "cad").await["tokensCharged"], 10);
    assert_eq!(open(&s, &member, "render").await["tokensCharged"], 4);
    let last_day = advance(&s, 24).await; // day 3, 11:00
    assert_eq!(open(&s, &admin, "render").await["tokensCharged"], 4);
    Story {
        s,
        account_id,
        admin,
        admin_id,
        member,
        member_id,
        analyst,
        other_admin,
        first_day,
        last_day,
    }
}

fn sum(rows: &[Value], field: &str) -> i64 {
    rows.iter().map(|r| int(&r[field])).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_over_graphql_follow_the_ledger_and_the_roles() {
    let st = story(TestApp::start().await).await;
    let s = &st.s;
    let range = |g: Value| json!({"from": st.first_day, "to": st.last_day, "g": g});

    // Totals: 42 tokens in 6 charges, 7 granted opens, 1 denial, 2 users.
    let total = report(s, &st.admin, range(json!([]))).await;
    assert_eq!(total.len(), 1, "{total:#?}");
    let t = &total[0];
    assert_eq!(
        [
            int(&t["tokens"]),
            int(&t["charges"]),
            int(&t["opens"]),
            int(&t["denials"]),
            int(&t["distinctUsers"])
        ],
        [42, 6, 7, 1, 2],
        "{t:#}"
    );
    assert!(t["period"].is_null() && t["user"].is_null() && t["product"].is_null());
    let charges = s
        .ok(
            Some(&st.admin),
            "{ account { charges(first: 100) { edges { node { tokens costMinor } } } } }",
            json!({}),
        )
        .await;
    let charged: Vec<&Value> = charges["account"]["charges"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(charged.len(), 6);
    let cost: i64 = charged.iter().map(|e| int(&e["node"]["costMinor"])).sum();
    assert_eq!(int(&t["costMinor"]), cost);

    // By day, user and product; the same before and after the rollup job.
    let fine = range(json!(["DAY", "USER", "PRODUCT"]));
    let before = report(s, &st.admin, fine.clone()).await;
    assert_eq!(sum(&before, "tokens"), 42);
    let days: std::collections::BTreeSet<&str> = before
        .iter()
        .map(|r| r["period"].as_str().unwrap())
        .collect();
    assert_eq!(days.len(), 3, "{before:#?}");
    let unknown: Vec<&Value> = before.iter().filter(|r| r["product"].is_null()).collect();
    assert_eq!(
        unknown.len(),
        1,
        "the denial for an unknown code has no product"
    );
    assert_eq!(int(&unknown[0]["denials"]), 1);
    let by_month_before = report(s, &st.admin, range(json!(["MONTH", "PRODUCT"]))).await;
    advance(s, 48).await;
    s.ok(OP, "mutation { runMaintenance }", json!({})).await;
    let after = report(s, &st.admin, fine.clone()).await;
    assert_eq!(before, after, "the rollup changed a report");
    let by_month_after = report(s, &st.admin, range(json!(["MONTH", "PRODUCT"]))).await;
    assert_eq!(by_month_before, by_month_after);

    // By product: distinct users per product; cad had both users, render too.
    let by_product = report(s, &st.admin, range(json!(["PRODUCT"]))).await;
    for r in by_product.iter().filter(|r| !r["product"].is_null()) {
        assert_eq!(int(&r["distinctUsers"]), 2, "{r:#}");
    }

    // Members see their own usage only; naming someone else is forbidden.
    let mine = report(s, &st.member, fine.clone()).await;
    assert!(!mine.is_empty());
    assert!(
        mine.iter().all(|r| id(&r["user"]["id"]) == st.member_id),
        "{mine:#?}"
    );
    assert_eq!(sum(&mine, "tokens"), 24);
    let mut other = fine.clone();
    other["u"] = json!(st.admin_id);
    assert_eq!(
        s.error_code(Some(&st.member), REPORT, other.clone()).await,
        "FORBIDDEN"
    );
    let spending = "query($f: Date!, $t: Date!) { account { spending(from: $f, to: $t) {
        tokens costMinor currency purchasedTokens purchasedMinor expiredTokens } } }";
    let days = json!({"f": st.first_day, "t": st.last_day});
    assert_eq!(
        s.error_code(Some(&st.member), spending, days.clone()).await,
        "FORBIDDEN"
    );
    assert_eq!(
        s.error_code(
            Some(&st.member),
            "{ account { forecast { expectedTokens } } }",
            json!({})
        )
        .await,
        "FORBIDDEN"
    );

    // Analysts read everything of their account.
    let analyst_view = report(s, &st.analyst, fine.clone()).await;
    assert_eq!(analyst_view, after);
    let sp = s.ok(Some(&st.analyst), spending, days.clone()).await;
    let sp = &sp["account"]["spending"];
    assert_eq!(int(&sp["tokens"]), 42);
    assert_eq!(int(&sp["costMinor"]), cost);
    assert_eq!(int(&sp["expiredTokens"]), 0);
    // The purchase happened before the first day: not in this range.
    assert_eq!(int(&sp["purchasedTokens"]), 0);

    // Another tenant's admin sees their own (empty) account, never this one.
    let theirs = report(s, &st.other_admin, fine.clone()).await;
    assert!(theirs.is_empty());
    let op_view = s
        .ok(
            OP,
            "query($a: ID, $from: Date!, $to: Date!) { account(id: $a) { usageReport(from: $from, to: $to, groupBy: [USER]) { tokens } } }",
            json!({"a": st.account_id, "from": st.first_day, "to": st.last_day}),
        )
        .await;
    let op_rows = op_view["account"]["usageReport"].as_array().unwrap();
    assert_eq!(op_rows.iter().map(|r| int(&r["tokens"])).sum::<i64>(), 42);

    // Bad input is BAD_USER_INPUT.
    for vars in [
        json!({"from": "2026-13-01", "to": st.last_day, "g": []}),
        json!({"from": "2026-1-1", "to": st.last_day, "g": []}),
        json!({"from": st.last_day, "to": st.first_day, "g": []}),
        json!({"from": "10000-01-01", "to": "10000-01-02", "g": []}),
    ] {
        assert_eq!(
            s.error_code(Some(&st.admin), REPORT, vars).await,
            "BAD_USER_INPUT"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecast_and_advice_over_graphql() {
    let st = story(TestApp::start().await).await;
    let s = &st.s;
    let q = "query($h: Int!) { account { balance forecast(horizonDays: $h) {
        horizonDays expectedTokens balance shortfall
        advice { user { id } product { code } flexCostMinor subscriptionCostMinor recommendSubscription }
    } } }";
    // The story's three days are inside the trailing 28 days once a day has passed.
    advance(s, 24).await;
    let d = s.ok(Some(&st.admin), q, json!({"h": 28})).await;
    let f = &d["account"]["forecast"];
    assert_eq!(int(&f["horizonDays"]), 28);
    assert_eq!(
        int(&f["expectedTokens"]),
        42,
        "28 days ahead at the trailing 28 days' pace"
    );
    assert_eq!(int(&f["balance"]), int(&d["account"]["balance"]));
    assert_eq!(int(&f["balance"]), 500 - 42);
    assert_eq!(int(&f["shortfall"]), 0);
    let d = s.ok(Some(&st.admin), q, json!({"h": 3650})).await;
    let f = &d["account"]["forecast"];
    assert_eq!(int(&f["expectedTokens"]), (42 * 3650 + 27) / 28);
    assert!(int(&f["shortfall"]) > 0, "{f:#}");
    // render's subscription (100 a year) beats pay-as-you-go; cad's (200,000) does not.
    let advice = f["advice"].as_array().unwrap();
    assert!(!advice.is_empty());
    for a in advice {
        let flex = int(&a["flexCostMinor"]);
        let sub = int(&a["subscriptionCostMinor"]);
        assert_eq!(a["recommendSubscription"], flex > sub, "{a:#}");
        match a["product"]["code"].as_str().unwrap() {
            "render" => assert_eq!(a["recommendSubscription"], true, "{a:#}"),
            "cad" => assert_eq!(a["recommendSubscription"], false, "{a:#}"),
            other => panic!("unexpected product {other}"),
        }
    }
    let default = s
        .ok(
            Some(&st.analyst),
            "{ account { forecast { horizonDays } } }",
            json!({}),
        )
        .await;
    assert_eq!(int(&default["account"]["forecast"]["horizonDays"]), 90);
    assert_eq!(
        s.error_code(Some(&st.admin), q, json!({"h": 0})).await,
        "BAD_USER_INPUT"
    );
}

/// Rule 16: any range is valid, all time included. An all-time report, grouped by
/// day, answers the days that hold data (not 36,500 empty ones), the same rows as
/// the range that holds them, before and after the rollups; spending and the CSV
/// export take the same range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_time_reports_answer_the_days_that_hold_data() {
    let st = story(TestServer::start().await).await;
    let s = &st.s;
    let all_time = |g: Value| json!({"from": "2000-01-01", "to": "2100-12-31", "g": g});
    let exact = |g: Value| json!({"from": st.first_day, "to": st.last_day, "g": g});
    for phase in ["raw", "rolled"] {
        for g in [
            json!(["DAY"]),
            json!(["DAY", "USER", "PRODUCT"]),
            json!(["WEEK", "PRODUCT"]),
            json!(["MONTH"]),
            json!(["USER"]),
            json!([]),
        ] {
            let all = report(s, &st.admin, all_time(g.clone())).await;
            assert_eq!(
                all,
                report(s, &st.admin, exact(g.clone())).await,
                "{phase} {g}"
            );
            assert!(!all.is_empty(), "{phase} {g}");
        }
        let days = report(s, &st.admin, all_time(json!(["DAY"]))).await;
        let periods: Vec<&str> = days.iter().map(|r| r["period"].as_str().unwrap()).collect();
        assert_eq!(
            periods.len(),
            3,
            "{phase}: one row per day with data: {periods:?}"
        );
        assert_eq!(
            (periods[0], periods[2]),
            (st.first_day.as_str(), st.last_day.as_str())
        );
        // A member's own all-time usage.
        let own = report(s, &st.member, all_time(json!(["PRODUCT"]))).await;
        assert_eq!(sum(&own, "tokens"), 24, "{phase}");

        let spending = s
            .ok(
                Some(&st.admin),
                "query { account { spending(from: \"2000-01-01\", to: \"2100-12-31\") {
                   tokens costMinor purchasedTokens } } }",
                json!({}),
            )
            .await;
        let sp = &spending["account"]["spending"];
        assert_eq!(int(&sp["tokens"]), 42, "{phase}");
        assert_eq!(
            int(&sp["purchasedTokens"]),
            500,
            "{phase}: the purchase is in all time"
        );

        let (status, _, body) = get_csv(s, Some(&st.admin), "from=2000-01-01&to=2100-12-31").await;
        assert_eq!(status, 200, "{phase}: {body}");
        let range = format!("from={}&to={}", st.first_day, st.last_day);
        let (_, _, exact_body) = get_csv(s, Some(&st.admin), &range).await;
        assert_eq!(body, exact_body, "{phase}");

        // Roll every closed day up, then ask again.
        advance(s, 48).await;
        s.ok(OP, "mutation { runMaintenance }", json!({})).await;
    }

    // An account with no opens at all: the ungrouped report has its zero row, a
    // grouped one has no rows.
    let all = report(s, &st.other_admin, all_time(json!([]))).await;
    assert_eq!(all.len(), 1);
    assert_eq!((int(&all[0]["opens"]), int(&all[0]["tokens"])), (0, 0));
    assert!(
        report(s, &st.other_admin, all_time(json!(["DAY"])))
            .await
            .is_empty()
    );
    // The widest dates the Date scalar takes are still a range.
    let widest = json!({"from": "0000-01-01", "to": "9999-12-31", "g": ["MONTH"]});
    assert_eq!(
        report(s, &st.admin, widest).await,
        report(s, &st.admin, exact(json!(["MONTH"]))).await
    );
}

async fn get_csv(s: &TestServer, key: Option<&str>, query: &str) -> (u16, String, String) {
    let mut req = s
        .client()
        .get(format!("{}/reports/usage.csv?{query}", s.base_url));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("GET usage.csv");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, resp.text().await.unwrap())
}

fn error_code_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_csv_is_rfc4180_and_matches_the_report() {
    let st = story(TestServer::start().await).await;
    let s = &st.s;
    let range = format!("from={}&to={}", st.first_day, st.last_day);
    let (status, ctype, body) = get_csv(s, Some(&st.admin), &range).await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/csv"), "{ctype}");
    // RFC 4180: CRLF after every record; quotes doubled inside quoted fields; the
    // line break inside a name stays inside its quoted field.
    assert!(body.ends_with("\r\n"));
    assert!(
        body.contains("\"Render, \"\"Pro\"\"\nEdition\""),
        "product name not quoted per RFC 4180: {body}"
    );
    assert!(body.contains("\"Mia, \"\"the\"\" member\""), "{body}");
    let mut reader = csv::ReaderBuilder::new().from_reader(body.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header,
        [
            "day",
            "user_id",
            "user_email",
            "user_name",
            "product_id",
            "product_code",
            "product_name",
            "tokens",
            "opens",
            "charges",
            "denials",
            "distinct_users",
            "cost_minor"
        ]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let rows = report(
        s,
        &st.admin,
        json!({"from": st.first_day, "to": st.last_day, "g": ["DAY", "USER", "PRODUCT"]}),
    )
    .await;
    assert_eq!(records.len(), rows.len());
    for (rec, row) in records.iter().zip(&rows) {
        assert_eq!(&rec[0], row["period"].as_str().unwrap());
        assert_eq!(rec[1], id(&row["user"]["id"]));
        assert_eq!(&rec[3], row["user"]["name"].as_str().unwrap());
        if row["product"].is_null() {
            assert_eq!(&rec[4], "");
        } else {
            assert_eq!(&rec[6], row["product"]["name"].as_str().unwrap());
        }
        for (i, f) in [
            (7, "tokens"),
            (8, "opens"),
            (9, "charges"),
            (10, "denials"),
            (11, "distinctUsers"),
            (12, "costMinor"),
        ] {
            assert_eq!(
                rec[i].parse::<i64>().unwrap(),
                int(&row[f]),
                "{f} of {row:#}"
            );
        }
    }
    assert!(records.iter().any(|r| &r[6] == AWKWARD_NAME));

    // The same authorization as GraphQL.
    let (status, _, body) = get_csv(s, None, &range).await;
    assert_eq!(
        (status, error_code_of(&body).as_str()),
        (401, "UNAUTHENTICATED")
    );
    let (status, _, body) = get_csv(s, Some("dp_not-a-key"), &range).await;
    assert_eq!(
        (status, error_code_of(&body).as_str()),
        (401, "UNAUTHENTICATED")
    );
    let (status, _, body) = get_csv(s, Some(&st.member), &range).await;
    assert_eq!(status, 200);
    let mine: Vec<csv::StringRecord> = csv::Reader::from_reader(body.as_bytes())
        .records()
        .map(|r| r.unwrap())
        .collect();
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|r| r[1] == st.member_id), "{body}");
    let (status, _, body) = get_csv(
        s,
        Some(&st.member),
        &format!("{range}&userId={}", st.admin_id),
    )
    .await;
    assert_eq!((status, error_code_of(&body).as_str()), (403, "FORBIDDEN"));
    let (status, _, body) = get_csv(s, Some(&st.other_admin), &range).await;
    assert_eq!(status, 200);
    assert_eq!(
        body.lines().count(),
        1,
        "another tenant sees only the header: {body}"
    );
    let (status, _, body) = get_csv(
        s,
        Some(&st.other_admin),
        &format!("{range}&accountId={}", st.account_id),
    )
    .await;
    assert_eq!((status, error_code_of(&body).as_str()), (403, "FORBIDDEN"));
    let (status, _, body) = get_csv(s, OP, &range).await;
    assert_eq!(
        (status, error_code_of(&body).as_str()),
        (400, "BAD_USER_INPUT")
    );
    let (status, _, body) = get_csv(s, OP, &format!("{range}&accountId={}", st.account_id)).await;
    assert_eq!(status, 200);
    assert_eq!(body.lines().count(), csv_lines(&rows));
    for bad in [
        "from=2026-02-30&to=2026-03-01".to_owned(),
        format!("to={}", st.last_day),
        format!("{range}&userId=abc"),
    ] {
        let (status, _, body) = get_csv(s, Some(&st.admin), &bad).await;
        assert_eq!(
            (status, error_code_of(&body).as_str()),
            (400, "BAD_USER_INPUT"),
            "{bad}"
        );
    }
}

/// Lines of the CSV of `rows`: the header, one per row, plus the line breaks inside
/// the awkward product name.
fn csv_lines(rows: &[Value]) -> usize {
    1 + rows.len()
        + rows
            .iter()
            .filter(|r| r["product"]["name"].as_str() == Some(AWKWARD_NAME))
            .count()
}

/// Names and codes that a spreadsheet would run as formulas come out of the CSV
/// export with a leading `'` (and RFC 4180 quoting as before); numbers stay numbers,
/// and GraphQL still answers the names exactly as they were given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_csv_writes_formula_like_names_as_text() {
    const LINK: &str = "=HYPERLINK(\"http://x\",\"y\")";
    const CMD: &str = "+cmd|' /C calc'!A0";
    let s = TestServer::start_with(&[]).await;
    let d = s
        .ok(
            OP,
            "mutation { createAccount(input: {name: \"Formulas\", adminEmail: \"=cmd@evil.test\", adminName: \"@SUM(1)\"}) { admin { id } adminApiKey } }",
            json!({}),
        )
        .await;
    let admin_id = id(&d["createAccount"]["admin"]["id"]);
    let admin = id(&d["createAccount"]["adminApiKey"]);
    let (member_id, member) = s
        .create_user(&admin, "+1@evil.test", "-2+3", "MEMBER")
        .await;
    for (code, name, rate) in [("-2", LINK, 3), ("plain", CMD, 2)] {
        s.ok(
            OP,
            "mutation($c: String!, $n: String!, $r: Int!) { upsertProduct(input: {code: $c, name: $n, dailyRate: $r}) { id } }",
            json!({"c": code, "n": name, "r": rate}),
        )
        .await;
    }
    s.ok(
        Some(&admin),
        "mutation($u: [ID!]!) { assignFlex(userIds: $u, assigned: true) { id } }",
        json!({"u": [admin_id, member_id]}),
    )
    .await;
    s.ok(
        Some(&admin),
        "mutation { purchaseTokens(input: {quantity: 100, idempotencyKey: \"f1\"}) { id } }",
        json!({}),
    )
    .await;
    assert_eq!(open(&s, &admin, "-2").await["tokensCharged"], 3);
    assert_eq!(open(&s, &member, "plain").await["tokensCharged"], 2);

    // Today by the server's clock (this machine's), a day either side.
    let today = chrono::Utc::now().date_naive();
    let (from, to) = (today - chrono::Days::new(1), today + chrono::Days::new(1));
    let (status, _, body) = get_csv(&s, Some(&admin), &format!("from={from}&to={to}")).await;
    assert_eq!(status, 200, "{body}");
    // The quote goes inside the RFC 4180 quoting, which is as before.
    assert!(
        body.contains("\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""),
        "{body}"
    );
    assert!(body.ends_with("\r\n"));
    let records: Vec<csv::StringRecord> = csv::Reader::from_reader(body.as_bytes())
        .records()
        .map(|r| r.unwrap())
        .collect();
    let cells = |user: &str| -> Vec<String> {
        let rec = records
            .iter()
            .find(|r| &r[1] == user)
            .unwrap_or_else(|| panic!("a row for user {user}: {body}"));
        rec.iter().map(str::to_owned).collect()
    };
    // user_email, user_name, then product_code, product_name.
    let admin_row = cells(&admin_id);
    assert_eq!(admin_row[2..4], ["'=cmd@evil.test", "'@SUM(1)"]);
    assert_eq!(admin_row[5..7], ["'-2".to_owned(), format!("'{LINK}")]);
    let member_row = cells(&member_id);
    assert_eq!(member_row[2..4], ["'+1@evil.test", "'-2+3"]);
    assert_eq!(member_row[5..7], ["plain".to_owned(), format!("'{CMD}")]);
    for row in [&admin_row, &member_row] {
        // Ids, counts and money are plain numbers, untouched.
        for cell in [&row[1], &row[4], &row[7], &row[8], &row[9], &row[12]] {
            assert!(cell.parse::<i64>().is_ok(), "{cell:?} in {row:?}");
        }
        // No text cell starts a formula any more.
        for cell in &row[2..7] {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{cell:?}"
            );
        }
    }
    assert_eq!((&admin_row[7][..], &member_row[7][..]), ("3", "2"));

    // GraphQL answers the names exactly as given.
    let rows = report(
        &s,
        &admin,
        json!({"from": from.to_string(), "to": to.to_string(), "g": ["USER", "PRODUCT"]}),
    )
    .await;
    let mut named: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                &r["user"]["email"],
                &r["user"]["name"],
                &r["product"]["code"],
                &r["product"]["name"],
            ]
            .map(id)
        })
        .collect();
    named.sort();
    assert_eq!(
        named,
        [
            ["+1@evil.test", "-2+3", "plain", CMD],
            ["=cmd@evil.test", "@SUM(1)", "-2", LINK],
        ]
    );
    let products = s.ok(OP, "{ products { code name } }", json!({})).await;
    assert!(
        products["products"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["code"] == "-2" && p["name"] == LINK),
        "{products:#}"
    );
}
