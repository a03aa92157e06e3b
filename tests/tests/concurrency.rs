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
        ..Default::default()
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
    assert_eq!(
        outcomes.iter().map(|o| o.tokens_charged.get()).sum::<i64>(),
        7
    );
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

/// Charging opens of one account that arrive together share transactions (group
/// commit), in two processes at once (two connections to one database, each batching
/// its own), yet each open is charged as if alone: its own charge, record and answer,
/// the balance after it, the lots burned in order, nothing overspent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opens_charged_together_in_two_processes_are_each_their_own() {
    use daypass_domain::{
        Db,
        entity::{charge, ledger_entry, lot, open as open_record},
    };
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
    use std::collections::BTreeSet;

    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let other_process = Db::connect(&tdb.url).await.unwrap();
    let now = t("2026-03-02T09:00:00Z");
    let acct = account(db, "Batch", now).await;
    product(db, "cam", 3).await;
    // 100 tokens bought earlier expire first and burn first; 200 more after them.
    buy(
        db,
        acct.account_id,
        100,
        "early",
        t("2026-01-05T00:00:00Z"),
        now,
    )
    .await;
    buy(db, acct.account_id, 200, "late", now, now).await;
    let mut members = Vec::new();
    for i in 0..60 {
        members.push(
            user(
                db,
                &acct,
                &format!("u{i}@batch.test"),
                Role::Member,
                true,
                now,
            )
            .await
            .1,
        );
    }
    let outcomes = join_all(members.iter().enumerate().map(|(i, m)| {
        let db = if i % 2 == 0 {
            db.clone()
        } else {
            other_process.clone()
        };
        let m = m.clone();
        tokio::spawn(async move { open_product(&db, &m, now, open("cam")).await })
    }))
    .await;
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|r| r.unwrap().expect("open answers"))
        .collect();
    assert!(outcomes.iter().all(|o| o.granted && o.tokens_charged == 3));
    let charge_ids: BTreeSet<i32> = outcomes
        .iter()
        .filter_map(|o| o.charge_id.map(|id| id.get()))
        .collect();
    assert_eq!(charge_ids.len(), 60, "one charge each");
    // Each answer shows the balance right after its own charge: 297, 294, … 120.
    let balances: BTreeSet<i64> = outcomes.iter().map(|o| o.balance.get()).collect();
    let expected: BTreeSet<i64> = (1..=60).map(|k| 300 - 3 * k).collect();
    assert_eq!(balances, expected);
    assert_eq!(charge::Entity::find().count(db.conn()).await.unwrap(), 60);
    assert_eq!(
        open_record::Entity::find().count(db.conn()).await.unwrap(),
        60,
        "each open recorded once"
    );
    // The early lot went first: 99 of it (33 charges), then one charge split 1 + 2.
    let lots = lot::Entity::find()
        .order_by_asc(lot::Column::ExpiresAt)
        .all(db.conn())
        .await
        .unwrap();
    let remaining: Vec<i64> = lots.iter().map(|l| l.remaining).collect();
    assert_eq!(remaining, vec![0, 120]);
    // One charge spanned both lots: 61 charge entries for 60 charges, 180 tokens.
    let entries = ledger_entry::Entity::find()
        .filter(ledger_entry::Column::Kind.eq("CHARGE"))
        .all(db.conn())
        .await
        .unwrap();
    assert_eq!(entries.len(), 61);
    assert_eq!(entries.iter().map(|e| e.tokens).sum::<i64>(), -180);
}

/// Opens of several accounts share a batch: each account is charged under its own
/// lock and keeps its own balance; answers never mix accounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opens_of_many_accounts_batched_together_keep_their_accounts_apart() {
    use daypass_domain::Db;
    use std::collections::BTreeSet;

    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let other_process = Db::connect(&tdb.url).await.unwrap();
    let now = t("2026-03-02T09:00:00Z");
    product(db, "cam", 4).await;
    let mut opens = Vec::new();
    let mut accounts = Vec::new();
    for a in 0..5i64 {
        let acct = account(db, &format!("Many{a}"), now).await;
        // Different balances, so an answer from the wrong account would show.
        buy(db, acct.account_id, 100 + a, &format!("k{a}"), now, now).await;
        for i in 0..10 {
            let (_, m) = user(
                db,
                &acct,
                &format!("u{i}@many{a}.test"),
                Role::Member,
                true,
                now,
            )
            .await;
            opens.push((acct.account_id, m));
        }
        accounts.push((acct.account_id, 100 + a));
    }
    let outcomes = join_all(opens.iter().enumerate().map(|(i, (account_id, m))| {
        let db = if i % 2 == 0 {
            db.clone()
        } else {
            other_process.clone()
        };
        let (account_id, m) = (*account_id, m.clone());
        tokio::spawn(async move { (account_id, open_product(&db, &m, now, open("cam")).await) })
    }))
    .await;
    for (account_id, bought) in accounts {
        let balances: BTreeSet<i64> = outcomes
            .iter()
            .map(|r| r.as_ref().unwrap())
            .filter(|(a, _)| *a == account_id)
            .map(|(_, o)| {
                let o = o.as_ref().expect("open answers");
                assert!(o.granted && o.tokens_charged == 4, "{o:?}");
                o.balance.get()
            })
            .collect();
        let expected: BTreeSet<i64> = (1..=10).map(|k| bought - 4 * k).collect();
        assert_eq!(balances, expected, "account {account_id}");
        let balance = daypass_domain::accounts::balance_at(db.conn(), account_id, now)
            .await
            .unwrap();
        assert_eq!(balance, bought - 40);
    }
}

/// A batch that fails for one of its accounts fails only that account's opens: the
/// others are charged as if they had come alone, and the failing account keeps its
/// tokens. (A trigger makes the database refuse the charges of one account.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_failing_for_one_account_fails_only_its_opens() {
    use daypass_tests::on_postgres;
    use sea_orm::ConnectionTrait;

    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t("2026-03-02T09:00:00Z");
    product(db, "cam", 4).await;
    // Three accounts: two of them share a charging queue on either backend (PostgreSQL
    // spreads accounts over queues by id parity).
    let mut made = Vec::new();
    for a in 0..3 {
        made.push(account(db, &format!("Mixed{a}"), now).await);
    }
    let pair = if made[0].account_id % 2 == made[1].account_id % 2 {
        (0, 1)
    } else if made[0].account_id % 2 == made[2].account_id % 2 {
        (0, 2)
    } else {
        (1, 2)
    };
    let (failing, healthy) = (&made[pair.0], &made[pair.1]);
    for acct in [failing, healthy] {
        buy(
            db,
            acct.account_id,
            100,
            &format!("k{}", acct.account_id),
            now,
            now,
        )
        .await;
    }
    let refuse = if on_postgres() {
        vec![
            format!(
                "CREATE FUNCTION refuse_charge() RETURNS trigger AS $$ BEGIN \
                 IF NEW.account_id = {} THEN RAISE EXCEPTION 'refused for the test'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql",
                failing.account_id
            ),
            "CREATE TRIGGER refuse_charges BEFORE INSERT ON charges FOR EACH ROW \
             EXECUTE FUNCTION refuse_charge()"
                .to_owned(),
        ]
    } else {
        vec![format!(
            "CREATE TRIGGER refuse_charges BEFORE INSERT ON charges \
             WHEN NEW.account_id = {} BEGIN SELECT RAISE(ABORT, 'refused for the test'); END",
            failing.account_id
        )]
    };
    for sql in refuse {
        db.conn().execute_unprepared(&sql).await.unwrap();
    }
    let mut opens = Vec::new();
    for i in 0..12 {
        for acct in [failing, healthy] {
            let (_, m) = user(
                db,
                acct,
                &format!("u{i}@mixed{}.test", acct.account_id),
                Role::Member,
                true,
                now,
            )
            .await;
            opens.push((acct.account_id, m));
        }
    }
    let outcomes = join_all(opens.iter().map(|(account_id, m)| {
        let (db, account_id, m) = (db.clone(), *account_id, m.clone());
        tokio::spawn(async move { (account_id, open_product(&db, &m, now, open("cam")).await) })
    }))
    .await;
    let mut healthy_balances = Vec::new();
    for outcome in outcomes {
        let (account_id, answer) = outcome.unwrap();
        if account_id == failing.account_id {
            let err = answer.expect_err("the refused account's opens fail");
            assert!(err.to_string().contains("refused"), "{err}");
        } else {
            let o = answer.expect("the healthy account's opens are charged");
            assert!(o.granted && o.tokens_charged == 4, "{o:?}");
            healthy_balances.push(o.balance);
        }
    }
    healthy_balances.sort_unstable();
    assert_eq!(
        healthy_balances,
        (0..12).map(|k| 100 - 48 + 4 * k).collect::<Vec<i64>>()
    );
    for (acct, left) in [(failing, 100), (healthy, 52)] {
        let balance = daypass_domain::accounts::balance_at(db.conn(), acct.account_id, now)
            .await
            .unwrap();
        assert_eq!(balance, left, "account {}", acct.account_id);
    }
}

/// Rules 7 and 12 together: an open decided while the admin takes the user off
/// pay-as-you-go is decided again under the account's lock, so once that change has
/// committed no open charges on the strength of the old assignment. The test holds the
/// account's lock (PostgreSQL: the account row; SQLite: the write lock) in a
/// transaction that takes the user off pay-as-you-go, lets the open read the old
/// assignment and queue for the lock, then commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_waiting_for_the_lock_obeys_the_change_that_held_it() {
    use sea_orm::{ConnectionTrait, Database, TransactionTrait};
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t("2026-03-02T09:00:00Z");
    let acct = account(db, "Held", now).await;
    product(db, "cae", 4).await;
    buy(db, acct.account_id, 40, "k", now, now).await;
    let (member_id, member) = user(db, &acct, "m@held.test", Role::Member, true, now).await;

    let other = Database::connect(&tdb.url).await.unwrap();
    let tx = other.begin().await.unwrap();
    if daypass_tests::on_postgres() {
        tx.execute_unprepared(&format!(
            "SELECT id FROM accounts WHERE id = {} FOR UPDATE",
            acct.account_id
        ))
        .await
        .unwrap();
    }
    tx.execute_unprepared(&format!(
        "UPDATE users SET flex_assigned = false WHERE id = {member_id}"
    ))
    .await
    .unwrap();

    let opening = {
        let (db, member) = (db.clone(), member.clone());
        tokio::spawn(async move { open_product(&db, &member, now, open("cae")).await })
    };
    // The open has read the committed assignment (still on) and waits for the lock.
    if daypass_tests::on_postgres() {
        let mut waited = false;
        for _ in 0..100 {
            let waiting = other
                .query_one_raw(sea_orm::Statement::from_string(
                    other.get_database_backend(),
                    "SELECT COUNT(*) AS n FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get::<i64>("", "n")
                .unwrap();
            if waiting > 0 {
                waited = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(waited, "the open queued for the account's lock");
    } else {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(!opening.is_finished(), "the open waits for the write lock");
    }
    tx.commit().await.unwrap();

    let outcome = opening.await.unwrap().expect("an answer");
    assert!(!outcome.granted, "{outcome:?}");
    assert_eq!(
        outcome.deny_reason,
        Some(daypass_domain::DenyReason::NotAssigned)
    );
    assert_eq!(outcome.balance, 40);
    let balance = daypass_domain::accounts::balance_at(db.conn(), acct.account_id, now)
        .await
        .unwrap();
    assert_eq!(balance, 40, "nothing charged");
}
