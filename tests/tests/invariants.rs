//! Rule 6 as a property: after any sequence of purchases, opens, clock moves and
//! sweeps, every lot has quantity = used + expired + remaining, no balance is
//! negative, and the ledger sums to what the lots hold.

use chrono::Duration;
use daypass_domain::{
    Role,
    charging::{OpenRequest, open_product},
    entity::{ledger_entry, lot},
    lots::{LotView, sweep_expired},
};
use daypass_tests::{TestDb, account, buy, product, t, user};
use proptest::prelude::*;
use sea_orm::EntityTrait;

#[derive(Debug, Clone)]
enum Step {
    Buy(i64),
    Open { user: usize, product: usize },
    AdvanceHours(i64),
    Sweep,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (1i64..60).prop_map(Step::Buy),
        4 => (0usize..3, 0usize..3).prop_map(|(user, product)| Step::Open { user, product }),
        1 => prop_oneof![Just(1i64), Just(23), Just(24), Just(24 * 90), Just(24 * 366)].prop_map(Step::AdvanceHours),
        1 => Just(Step::Sweep),
    ]
}

async fn run(steps: Vec<Step>) {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let mut now = t("2027-02-27T08:00:00Z");
    let acct = account(db, "Prop", now).await;
    let codes = ["p1", "p2", "p3"];
    for (i, c) in codes.iter().enumerate() {
        product(db, c, (i as i64 + 1) * 3).await;
    }
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(
            user(
                db,
                &acct,
                &format!("u{i}@prop.test"),
                Role::Member,
                true,
                now,
            )
            .await
            .1,
        );
    }
    for (n, s) in steps.into_iter().enumerate() {
        match s {
            Step::Buy(q) => {
                buy(db, acct.account_id, q, &format!("k{n}"), now, now).await;
            }
            Step::Open { user, product } => {
                let o = open_product(
                    db,
                    &members[user],
                    now,
                    OpenRequest {
                        product_code: codes[product].into(),
                        version: None,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
                assert!(o.balance >= 0);
            }
            Step::AdvanceHours(h) => now += Duration::hours(h),
            Step::Sweep => {
                sweep_expired(db, now).await.unwrap();
            }
        }
        let lots = lot::Entity::find().all(db.conn()).await.unwrap();
        for l in &lots {
            assert_eq!(
                l.quantity,
                l.used + l.expired + l.remaining,
                "stored lot {l:?}"
            );
            assert!(l.remaining >= 0);
            let v = LotView::at(l.clone(), now);
            assert_eq!(
                v.counts.quantity,
                v.counts.used + v.counts.expired + v.counts.remaining,
                "viewed lot {v:?}"
            );
        }
        let ledger_sum: i64 = ledger_entry::Entity::find()
            .all(db.conn())
            .await
            .unwrap()
            .iter()
            .map(|e| e.tokens)
            .sum();
        let stored_remaining: i64 = lots.iter().map(|l| l.remaining).sum();
        assert_eq!(
            ledger_sum, stored_remaining,
            "the ledger sums to what the lots hold"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn every_token_is_accounted_for(steps in proptest::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(steps));
    }
}
