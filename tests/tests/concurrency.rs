//! Rule 12 and 5 under real concurrency, on the configured database.

use daypass_domain::{
    Role,
    charging::{OpenRequest, open_product},
    lots::{PurchaseInput, purchase},
};
use daypass_tests::{TestDb, account, buy, product, t, user};
use futures::future::join_all;

fn open(code: &str) -> OpenRequest {
    OpenRequest {
        product_code: code.into(),
        version: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_opens_of_one_user_and_product_charge_once() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t("2026-03-02T09:00:00Z");
    let acct = account(db, "Race", now).await;
    product(db, "cad", 7).await;
    buy(db, acct.account_id, 1000, "k", now, now).await;
    let (_, member) = user(db, &acct, "m@race.test", Role::Member, true, now).await;

    let outcomes = join_all((0..100).map(|_| {
        let (db, member) = (db.clone(), member.clone());
        tokio::spawn(async move { open_product(&db, &member, now, open("cad")).await })
    }))
    .await;
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|r| r.unwrap().expect("open succeeds"))
        .collect();
    assert!(outcomes.iter().all(|o| o.granted));
    assert_eq!(
        outcomes.iter().filter(|o| o.tokens_charged > 0).count(),
        1,
        "exactly one charge"
    );
    assert_eq!(outcomes.iter().map(|o| o.tokens_charged).sum::<i64>(), 7);
    let balance = daypass_domain::accounts::balance_at(db.conn(), acct.account_id, now)
        .await
        .unwrap();
    assert_eq!(balance, 993);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_users_racing_for_a_balance_that_covers_seven() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t("2026-03-02T09:00:00Z");
    let acct = account(db, "Short", now).await;
    product(db, "cam", 10).await;
    buy(db, acct.account_id, 75, "k", now, now).await;
    let mut members = Vec::new();
    for i in 0..20 {
        members.push(
            user(
                db,
                &acct,
                &format!("u{i}@short.test"),
                Role::Member,
                true,
                now,
            )
            .await
            .1,
        );
    }
    let outcomes = join_all(members.into_iter().map(|m| {
        let db = db.clone();
        tokio::spawn(async move { open_product(&db, &m, now, open("cam")).await })
    }))
    .await;
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|r| r.unwrap().expect("open answers"))
        .collect();
    let granted = outcomes.iter().filter(|o| o.granted).count();
    let denied: Vec<_> = outcomes.iter().filter(|o| !o.granted).collect();
    assert_eq!(granted, 7);
    assert_eq!(denied.len(), 13);
    assert!(
        denied
            .iter()
            .all(|o| o.deny_reason == Some(daypass_domain::DenyReason::InsufficientTokens))
    );
    let balance = daypass_domain::accounts::balance_at(db.conn(), acct.account_id, now)
        .await
        .unwrap();
    assert_eq!(balance, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_purchases_with_one_key_buy_once() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t("2026-03-02T09:00:00Z");
    let acct = account(db, "Dupe", now).await;
    let results = join_all((0..30).map(|_| {
        let (db, admin) = (db.clone(), acct.admin.clone());
        tokio::spawn(async move {
            purchase(
                &db,
                &admin,
                now,
                PurchaseInput {
                    quantity: 500,
                    idempotency_key: "same".into(),
                    ..Default::default()
                },
            )
            .await
        })
    }))
    .await;
    let lot_ids: std::collections::BTreeSet<i32> = results
        .into_iter()
        .map(|r| r.unwrap().expect("purchase answers").lot.id)
        .collect();
    assert_eq!(lot_ids.len(), 1, "one lot for one key");
    let balance = daypass_domain::accounts::balance_at(db.conn(), acct.account_id, now)
        .await
        .unwrap();
    assert_eq!(balance, 500);
}
