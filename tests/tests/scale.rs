//! The year generator (`generate-year`) at a small scale: what it writes keeps the ledger's rules,
//! and the typical reports give the same rows from the rollups (mixed with the raw
//! tail) as from the raw opens, and the same totals as the tables themselves.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use daypass_domain::{
    Actor, Db,
    accounts::balance,
    reports::{Dimension, Source, UsageQuery, UsageRow, usage_rows},
    rollups::{self, day_start},
};
use daypass_tests::{
    TestDb,
    generate::{YearSpec, generate_year},
};
use sea_orm::{ConnectionTrait, DatabaseBackend, QueryResult, Statement, Value};

async fn rows(db: &Db, sql: &str, values: Vec<Value>) -> Vec<QueryResult> {
    let sql = if db.backend() == DatabaseBackend::Postgres {
        let mut n = 0;
        sql.chars()
            .map(|c| {
                if c == '?' {
                    n += 1;
                    format!("${n}")
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        sql.to_owned()
    };
    db.conn()
        .query_all_raw(Statement::from_sql_and_values(db.backend(), sql, values))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn int(db: &Db, sql: &str, values: Vec<Value>) -> i64 {
    rows(db, sql, values).await[0].try_get("", "n").unwrap()
}

fn ints(r: &QueryResult, cols: &[&str]) -> Vec<i64> {
    cols.iter()
        .map(|c| r.try_get::<i64>("", c).unwrap())
        .collect()
}

/// Totals of a report's rows: tokens, opens, charges, denials, cost.
fn totals(report: &[UsageRow]) -> [i64; 5] {
    report.iter().fold([0; 5], |t, r| {
        [
            t[0] + r.tokens,
            t[1] + r.opens,
            t[2] + r.charges,
            t[3] + r.denials,
            t[4] + r.cost_minor,
        ]
    })
}

/// The same totals straight from the opens and charges tables.
async fn table_totals(
    db: &Db,
    account: i32,
    from: NaiveDate,
    to: NaiveDate,
    user: Option<i32>,
) -> [i64; 5] {
    let (start, end): (DateTime<Utc>, DateTime<Utc>) =
        (day_start(from), day_start(to + Duration::days(1)));
    let user_filter = if user.is_some() {
        " AND user_id = ?"
    } else {
        ""
    };
    let mut values: Vec<Value> = vec![account.into(), start.into(), end.into()];
    if let Some(u) = user {
        values.push(u.into());
    }
    let c = &rows(
        db,
        &format!(
            "SELECT CAST(COALESCE(SUM(tokens), 0) AS BIGINT) AS tokens, \
             CAST(COUNT(*) AS BIGINT) AS charges, \
             CAST(COALESCE(SUM(cost_minor), 0) AS BIGINT) AS cost \
             FROM charges WHERE account_id = ? AND window_starts_at >= ? \
             AND window_starts_at < ?{user_filter}"
        ),
        values.clone(),
    )
    .await[0];
    let o = &rows(
        db,
        &format!(
            "SELECT CAST(SUM(CASE WHEN granted THEN 1 ELSE 0 END) AS BIGINT) AS opens, \
             CAST(SUM(CASE WHEN granted THEN 0 ELSE 1 END) AS BIGINT) AS denials \
             FROM opens WHERE account_id = ? AND at >= ? AND at < ?{user_filter}"
        ),
        values,
    )
    .await[0];
    let [tokens, charges, cost] = ints(c, &["tokens", "charges", "cost"])[..] else {
        unreachable!()
    };
    let [opens, denials] = ints(o, &["opens", "denials"])[..] else {
        unreachable!()
    };
    [tokens, opens, charges, denials, cost]
}

#[tokio::test]
async fn a_generated_year_keeps_the_ledger_and_its_reports_agree() {
    let (url, _dir) = TestDb::fresh_url().await;
    let db = Db::connect(&url).await.expect("connect");
    db.migrate().await.expect("migrate");
    let spec = YearSpec {
        charges: 20_000,
        users: 200,
        products: 20,
        days: 60,
        roll_up: false,
        progress: false,
        seed: 7,
        ..YearSpec::year()
    };
    let g = generate_year(&db, &spec).await.expect("generate");
    let big = g.big_account_id;
    let (from, to) = (spec.first_day(), spec.end);
    assert_eq!(
        g.accounts[0].stats.charges, spec.charges,
        "{:?}",
        g.accounts[0]
    );
    assert!(g.accounts.len() >= 3);

    // Rule 6, lot by lot: the ledger holds what the lot says, and the status follows.
    let lots = rows(
        &db,
        "SELECT CAST(l.id AS BIGINT) AS id, l.quantity AS quantity, l.used AS used, l.expired AS expired, \
         l.remaining AS remaining, l.status AS status, \
         CAST(COALESCE(SUM(CASE WHEN e.kind = 'PURCHASE' THEN e.tokens ELSE 0 END), 0) AS BIGINT) AS bought, \
         CAST(COALESCE(SUM(CASE WHEN e.kind = 'CHARGE' THEN -e.tokens ELSE 0 END), 0) AS BIGINT) AS charged, \
         CAST(COALESCE(SUM(CASE WHEN e.kind = 'EXPIRY' THEN -e.tokens ELSE 0 END), 0) AS BIGINT) AS lost \
         FROM lots l LEFT JOIN ledger_entries e ON e.lot_id = l.id \
         GROUP BY l.id, l.quantity, l.used, l.expired, l.remaining, l.status",
        vec![],
    )
    .await;
    assert!(lots.len() as u64 >= g.lots && g.lots > 0);
    let mut expired_lots = 0;
    for l in &lots {
        let [
            id,
            quantity,
            used,
            expired,
            remaining,
            bought,
            charged,
            lost,
        ] = ints(
            l,
            &[
                "id",
                "quantity",
                "used",
                "expired",
                "remaining",
                "bought",
                "charged",
                "lost",
            ],
        )[..]
        else {
            unreachable!()
        };
        let status: String = l.try_get("", "status").unwrap();
        assert_eq!(quantity, used + expired + remaining, "lot {id}");
        assert_eq!(
            (bought, charged, lost),
            (quantity, used, expired),
            "lot {id}"
        );
        let expected = match (remaining, expired) {
            (r, _) if r > 0 => "ACTIVE",
            (0, e) if e > 0 => "EXPIRED",
            _ => "DEPLETED",
        };
        assert_eq!(status, expected, "lot {id}");
        expired_lots += usize::from(expired > 0);
    }
    assert!(
        expired_lots > 0,
        "the migrated lot expires with tokens left"
    );

    // Every token charged came from a lot; each charge's ledger entries sum to it and
    // its cost is what those lots were bought at.
    let used = int(
        &db,
        "SELECT CAST(SUM(used) AS BIGINT) AS n FROM lots",
        vec![],
    )
    .await;
    let charged = int(
        &db,
        "SELECT CAST(SUM(tokens) AS BIGINT) AS n FROM charges",
        vec![],
    )
    .await;
    assert_eq!(used, charged);
    let bad_charges = int(
        &db,
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM charges c WHERE c.tokens <> \
         (SELECT -SUM(e.tokens) FROM ledger_entries e WHERE e.charge_id = c.id) \
         OR c.cost_minor <> (SELECT SUM(-e.tokens * l.unit_price_minor) \
         FROM ledger_entries e JOIN lots l ON l.id = e.lot_id WHERE e.charge_id = c.id) \
         OR 1 <> (SELECT COUNT(*) FROM opens o WHERE o.charge_id = c.id \
         AND o.tokens = c.tokens AND o.at = c.window_starts_at AND o.granted)",
        vec![],
    )
    .await;
    assert_eq!(bad_charges, 0);
    // One window per user and product, pointing at their last charge.
    let stale_windows = int(
        &db,
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM windows w WHERE w.charge_id <> \
         (SELECT MAX(c.id) FROM charges c WHERE c.user_id = w.user_id \
         AND c.product_id = w.product_id)",
        vec![],
    )
    .await;
    let windows = int(
        &db,
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM windows",
        vec![],
    )
    .await;
    let pairs = int(
        &db,
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM \
         (SELECT DISTINCT user_id, product_id FROM charges) p",
        vec![],
    )
    .await;
    assert_eq!((stale_windows, windows), (0, pairs));
    // The balance is what the ledger sums to.
    for a in &g.accounts {
        let ledger = int(
            &db,
            "SELECT CAST(SUM(tokens) AS BIGINT) AS n FROM ledger_entries WHERE account_id = ?",
            vec![a.id.into()],
        )
        .await;
        let now = Utc::now();
        let balance = balance(&db, &Actor::Operator, a.id, now).await.unwrap();
        assert_eq!(balance, ledger, "{}", a.name);
        assert!(balance >= 0);
    }
    // The open outcomes the generator makes, as the domain names them.
    let outcomes: Vec<String> = rows(
        &db,
        "SELECT DISTINCT COALESCE(deny_reason, source) AS o FROM opens ORDER BY 1",
        vec![],
    )
    .await
    .iter()
    .map(|r| r.try_get("", "o").unwrap())
    .collect();
    for o in [
        "FLEX",
        "SUBSCRIPTION",
        "PRODUCT_RESTRICTED",
        "UNKNOWN_PRODUCT",
    ] {
        assert!(outcomes.iter().any(|x| x == o), "{o} in {outcomes:?}");
    }

    // The three typical reports, with the first half of the range rolled up.
    let user = g.accounts[0].stats.busiest_user_id.expect("a user charged");
    let last_30 = to - Duration::days(29);
    let reports = [
        (from, to, vec![Dimension::Month, Dimension::Product], None),
        (last_30, to, vec![Dimension::Day, Dimension::User], None),
        (
            from,
            to,
            vec![Dimension::Month, Dimension::Product],
            Some(user),
        ),
    ];
    let half = day_start(from + Duration::days(30)) + rollups::ROLLUP_GRACE;
    let rolled = rollups::roll_up(&db, half).await.unwrap();
    assert_eq!(rolled, 30);
    for stage in ["half rolled up", "all rolled up"] {
        if stage == "all rolled up" {
            rollups::roll_up(&db, Utc::now()).await.unwrap();
        }
        for (from, to, group_by, user_id) in &reports {
            let q = UsageQuery {
                from: *from,
                to: *to,
                group_by: group_by.clone(),
                user_id: *user_id,
                product_id: None,
            };
            let raw = usage_rows(&db, big, &q, Source::Raw).await.unwrap();
            let rolled = usage_rows(&db, big, &q, Source::Rollups).await.unwrap();
            assert!(!raw.is_empty());
            assert_eq!(rolled, raw, "{stage}: {q:?}");
            assert_eq!(
                totals(&raw),
                table_totals(&db, big, *from, *to, *user_id).await,
                "{stage}: {q:?}"
            );
        }
    }
}

/// The real binary rolls a generated stretch of busy days up while a launcher
/// charges: each day is written in several short transactions, so rows of a day
/// beyond the watermark are seen committed mid-roll (never with one transaction a
/// day), charges commit meanwhile, and the reports equal the raw opens afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_rolls_a_busy_day_up_in_short_transactions() {
    use daypass_tests::server::OPERATOR_KEY;
    use daypass_tests::{Api, TestServer};
    use serde_json::json;

    let (url, _dir) = TestDb::fresh_url().await;
    let db = Db::connect(&url).await.expect("connect");
    db.migrate().await.expect("migrate");
    // About 2,000 user × product rows a day: several of the job's chunks each.
    let spec = YearSpec {
        charges: 12_000,
        users: 2_000,
        products: 4,
        days: 6,
        roll_up: false,
        progress: false,
        seed: 11,
        ..YearSpec::year()
    };
    let g = generate_year(&db, &spec).await.expect("generate");
    let big = g.big_account_id;
    let (from, to) = (spec.first_day(), spec.end);
    let s = TestServer::start_on(&url, &[("DAYPASS_TEST_CLOCK", "1")]).await;
    let op = Some(OPERATOR_KEY);
    s.upsert_product("roll-time", 1).await;
    let created = s
        .ok(
            op,
            r#"mutation { createAccount(input: {name: "Launcher", adminEmail: "l@l.test", adminName: "L"}) { admin { id } adminApiKey } }"#,
            json!({}),
        )
        .await;
    let admin = created["createAccount"]["adminApiKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin_id = created["createAccount"]["admin"]["id"].clone();
    s.ok(
        Some(&admin),
        "mutation($u: [ID!]!) { assignFlex(userIds: $u, assigned: true) { id } }",
        json!({"u": [admin_id]}),
    )
    .await;
    s.ok(
        Some(&admin),
        "mutation { purchaseTokens(input: {quantity: 1000, idempotencyKey: \"roll\"}) { id } }",
        json!({}),
    )
    .await;

    let maintenance = {
        let client = s.client().clone();
        let url = format!("{}/graphql", s.base_url);
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(OPERATOR_KEY)
                .json(&json!({"query": "mutation { runMaintenance }"}))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        })
    };
    // Watch the tables from outside: rows of a day after the watermark, committed.
    let mut seen_mid_roll = false;
    let mut charged_mid_roll = false;
    while !maintenance.is_finished() {
        // One statement, one snapshot: rows of a day after the watermark it sees.
        let beyond = int(
            &db,
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM usage_days WHERE account_id = ? \
             AND day > COALESCE((SELECT rolled_through FROM rollup_watermark WHERE id = 1), ?)",
            vec![big.into(), (from - Duration::days(1)).into()],
        )
        .await;
        if beyond > 0 {
            seen_mid_roll = true;
            // A launcher's open charges while the day is half rolled up.
            if !charged_mid_roll {
                let d = s
                    .ok(
                        Some(&admin),
                        "mutation { openProduct(input: {productCode: \"roll-time\"}) { granted tokensCharged } }",
                        json!({}),
                    )
                    .await;
                assert_eq!(d["openProduct"]["granted"], true);
                charged_mid_roll = true;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let done = maintenance.await.unwrap();
    assert_eq!(done["data"]["runMaintenance"], true, "{done}");
    assert!(
        seen_mid_roll,
        "no day was ever seen partly written: one transaction per day"
    );
    assert!(charged_mid_roll);
    // Through yesterday (the day before, in the ten minutes after midnight).
    let rolled = rollups::rolled_through(db.conn()).await.unwrap();
    assert!(rolled >= Some(to - Duration::days(1)), "{rolled:?}");
    for group_by in [
        vec![Dimension::Day, Dimension::User, Dimension::Product],
        vec![Dimension::Week],
        vec![Dimension::Month, Dimension::Product],
        vec![],
    ] {
        let q = UsageQuery {
            from,
            to,
            group_by,
            user_id: None,
            product_id: None,
        };
        let raw = usage_rows(&db, big, &q, Source::Raw).await.unwrap();
        let rolled = usage_rows(&db, big, &q, Source::Rollups).await.unwrap();
        assert!(!raw.is_empty());
        assert_eq!(rolled, raw, "{q:?}");
    }
}
