//! Rule 25 on the real binary: alert rules in tokens and percent beside rule 14's
//! threshold, their recipients, one e-mail and one BALANCE_LOW event per threshold
//! crossed, re-armed by purchases, and the limits.

use daypass_tests::json::{id, int};
use daypass_tests::server::OPERATOR_KEY;
use daypass_tests::smtp::SmtpServer;
use daypass_tests::webhook_receiver::WebhookReceiver;
use daypass_tests::{Api, TestServer};
use serde_json::{Value, json};
use std::time::Duration;

const OP: Option<&str> = Some(OPERATOR_KEY);

async fn rule(s: &impl Api, admin: &str, input: Value) -> Value {
    s.ok(
        Some(admin),
        "mutation($i: AlertRuleInput!) { createAlertRule(input: $i) {
           id threshold unit includeAdmins extraRecipients armed } }",
        json!({"i": input}),
    )
    .await["createAlertRule"]
        .clone()
}

async fn rules(s: &impl Api, key: &str, account: &str) -> Vec<Value> {
    s.ok(
        Some(key),
        "query($a: ID!) { account(id: $a) { alertRules { id threshold unit armed extraRecipients } } }",
        json!({"a": account}),
    )
    .await["account"]["alertRules"]
        .as_array()
        .unwrap()
        .clone()
}

async fn charge(s: &impl Api, key: &str) -> i64 {
    let d = s
        .ok(
            Some(key),
            "mutation { openProduct(input: {productCode: \"cad\"}) { granted balance } }",
            json!({}),
        )
        .await;
    assert_eq!(d["openProduct"]["granted"], true, "{d}");
    int(&d["openProduct"]["balance"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_threshold_crossed_mails_its_recipients_once_and_purchases_rearm() {
    let smtp = SmtpServer::start().await;
    let receiver = WebhookReceiver::start().await;
    let smtp_url = smtp.url();
    let s = TestServer::start_with(&[
        ("DAYPASS_TEST_CLOCK", "1"),
        ("DAYPASS_SMTP_URL", smtp_url.as_str()),
        ("DAYPASS_PUBLIC_URL", "https://daypass.test"),
    ])
    .await;
    s.upsert_product("cad", 10).await;
    let d = s
        .ok(
            OP,
            "mutation { createAccount(input: {name: \"Alerting Co\", adminEmail: \"boss@alerting.test\", adminName: \"Boss\"}) { account { id } adminApiKey } }",
            json!({}),
        )
        .await;
    let account = id(&d["createAccount"]["account"]["id"]);
    let admin = id(&d["createAccount"]["adminApiKey"]);
    let analyst = s
        .create_user(&admin, "an@alerting.test", "An", "ANALYST")
        .await
        .1;
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    for i in 0..15 {
        let (uid, key) = s
            .create_user(&admin, &format!("m{i}@alerting.test"), "M", "MEMBER")
            .await;
        ids.push(uid);
        keys.push(key);
    }
    s.ok(
        Some(&admin),
        "mutation($u: [ID!]!) { assignFlex(userIds: $u, assigned: true) { id } }",
        json!({"u": ids}),
    )
    .await;
    s.ok(
        Some(&admin),
        "mutation($u: String!) { createWebhookEndpoint(input: {url: $u, events: [BALANCE_LOW]}) { secret } }",
        json!({"u": receiver.url}),
    )
    .await;
    s.ok(
        Some(&admin),
        "mutation { purchaseTokens(input: {quantity: 100, idempotencyKey: \"first\"}) { id } }",
        json!({}),
    )
    .await;
    s.ok(
        Some(&admin),
        "mutation { setLowBalanceThreshold(tokens: 55) { id } }",
        json!({}),
    )
    .await;
    // 60 tokens, to the admins and the finance team; 30% of 100 bought = 30 tokens,
    // to finance only.
    let sixty = rule(
        &s,
        &admin,
        json!({"threshold": 60, "unit": "TOKENS", "extraRecipients": ["Finance@Alerting.test"]}),
    )
    .await;
    assert_eq!(sixty["extraRecipients"], json!(["finance@alerting.test"]));
    assert_eq!(sixty["armed"], true);
    let thirty = rule(
        &s,
        &admin,
        json!({"threshold": 30, "unit": "PERCENT", "includeAdmins": false, "extraRecipients": ["finance@alerting.test"]}),
    )
    .await;
    assert_eq!(thirty["unit"], "PERCENT");
    assert_eq!(
        rules(&s, &analyst, &account).await.len(),
        2,
        "analysts read rules"
    );

    // 100 → … → 60: nothing. 60 → 50 crosses 60 (the rule) and 55 (rule 14) in
    // one charge: two e-mails, two events.
    for key in &keys[..4] {
        charge(&s, key).await;
    }
    assert!(smtp.messages().is_empty());
    assert_eq!(charge(&s, &keys[4]).await, 50);
    let mails = smtp.wait_for(2, Duration::from_secs(20)).await;
    let mut to: Vec<Vec<String>> = mails.iter().map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(
        to,
        vec![
            vec!["boss@alerting.test".to_owned()],
            vec![
                "boss@alerting.test".to_owned(),
                "finance@alerting.test".to_owned()
            ],
        ]
    );
    let rule_mail = mails.iter().find(|m| m.to.len() == 2).unwrap();
    assert!(
        rule_mail.text().contains("alert threshold of 60 tokens"),
        "{}",
        rule_mail.text()
    );
    assert!(rule_mail.text().contains("Alerting Co"));
    assert!(rule_mail.text().contains("https://daypass.test/#alerts"));
    assert!(rule_mail.html().contains("<p>"), "plain text and HTML");
    assert!(
        !rule_mail
            .raw
            .lines()
            .any(|l| l.starts_with("To:") || l.starts_with("Bcc:")),
        "a rule's recipients do not see each other:\n{}",
        rule_mail.raw
    );
    let events = receiver.wait_for(2, Duration::from_secs(20)).await;
    let mut thresholds: Vec<i64> = events
        .iter()
        .map(|e| int(&e.json()["data"]["threshold"]))
        .collect();
    thresholds.sort();
    assert_eq!(thresholds, vec![55, 60]);
    let armed: Vec<(i64, bool)> = rules(&s, &admin, &account)
        .await
        .iter()
        .map(|r| (int(&r["threshold"]), r["armed"] == true))
        .collect();
    assert_eq!(armed, vec![(60, false), (30, true)]);

    // 50 → 40 → 30: nothing; 30 → 20 crosses 30%: finance alone.
    assert_eq!(charge(&s, &keys[5]).await, 40);
    assert_eq!(charge(&s, &keys[6]).await, 30);
    assert_eq!(charge(&s, &keys[7]).await, 20);
    let mails = smtp.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(mails[2].to, vec!["finance@alerting.test".to_owned()]);
    assert!(
        mails[2].text().contains("30% of the tokens bought"),
        "{}",
        mails[2].text()
    );
    assert_eq!(charge(&s, &keys[8]).await, 10);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        smtp.messages().len(),
        3,
        "below every threshold: nothing more"
    );

    // Buying 100 brings 110 of 200 bought: 60 and 55 re-armed; 30% of 200 = 60 is
    // not (110 ≥ 60, so it is armed too). 110 → 100 → … → 50 crosses all three.
    s.ok(
        Some(&admin),
        "mutation { purchaseTokens(input: {quantity: 100, idempotencyKey: \"second\"}) { id } }",
        json!({}),
    )
    .await;
    assert!(
        rules(&s, &admin, &account)
            .await
            .iter()
            .all(|r| r["armed"] == true)
    );
    let mut balance = 110;
    for key in &keys[9..] {
        balance = charge(&s, key).await;
        if balance < 55 {
            break;
        }
    }
    assert_eq!(balance, 50);
    let mails = smtp.wait_for(6, Duration::from_secs(20)).await;
    assert_eq!(
        mails.len(),
        6,
        "one per threshold: {:#?}",
        mails.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_validated_limited_and_kept_to_their_account() {
    let s = TestServer::start().await;
    let mut accounts = Vec::new();
    for name in ["LimitsA", "LimitsB"] {
        let d = s
            .ok(
                OP,
                "mutation($n: String!, $e: String!) { createAccount(input: {name: $n, adminEmail: $e, adminName: \"A\"}) { account { id } adminApiKey } }",
                json!({"n": name, "e": format!("admin@{name}.test")}),
            )
            .await;
        accounts.push(id(&d["createAccount"]["adminApiKey"]));
    }
    let (a, b) = (&accounts[0], &accounts[1]);
    let member = s.create_user(a, "m@limitsa.test", "M", "MEMBER").await.1;
    let create = "mutation($i: AlertRuleInput!) { createAlertRule(input: $i) { id } }";
    for bad in [
        json!({"threshold": 0, "unit": "PERCENT"}),
        json!({"threshold": 101, "unit": "PERCENT"}),
        json!({"threshold": -1, "unit": "TOKENS"}),
        json!({"threshold": 0, "unit": "TOKENS"}),
        json!({"threshold": 5, "unit": "TOKENS", "extraRecipients": ["a@b.test,c@d.test"]}),
        json!({"threshold": 5, "unit": "TOKENS", "extraRecipients": ["a..b@d.test"]}),
        json!({"threshold": 5, "unit": "TOKENS", "extraRecipients": ["not-an-address"]}),
        json!({"threshold": 5, "unit": "TOKENS", "includeAdmins": false}),
        json!({"threshold": 5, "unit": "TOKENS", "extraRecipients": (0..11).map(|i| format!("x{i}@y.test")).collect::<Vec<_>>()}),
    ] {
        assert_eq!(
            s.error_code(Some(a), create, json!({"i": bad})).await,
            "BAD_USER_INPUT",
            "{bad}"
        );
    }
    assert_eq!(
        s.error_code(
            Some(&member),
            create,
            json!({"i": {"threshold": 5, "unit": "TOKENS"}})
        )
        .await,
        "FORBIDDEN"
    );
    let mut made = Vec::new();
    for t in 1..=10 {
        made.push(id(&s
            .ok(
                Some(a),
                create,
                json!({"i": {"threshold": t, "unit": "TOKENS"}}),
            )
            .await["createAlertRule"]["id"]));
    }
    assert_eq!(
        s.error_code(
            Some(a),
            create,
            json!({"i": {"threshold": 99, "unit": "TOKENS"}})
        )
        .await,
        "CONFLICT",
        "ten rules at most"
    );
    let delete = "mutation($id: ID!) { deleteAlertRule(id: $id) }";
    assert_eq!(
        s.error_code(Some(b), delete, json!({"id": made[0]})).await,
        "NOT_FOUND"
    );
    assert_eq!(
        s.ok(Some(a), delete, json!({"id": made[0]})).await["deleteAlertRule"],
        true
    );
    assert_eq!(
        s.error_code(Some(a), delete, json!({"id": made[0]})).await,
        "NOT_FOUND"
    );
    s.ok(
        Some(a),
        create,
        json!({"i": {"threshold": 99, "unit": "TOKENS"}}),
    )
    .await;
}
