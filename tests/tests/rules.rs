//! Rules 1–13 and 19 of PRODUCT.md, each rule and boundary through the domain's
//! public use-cases against the configured database.

use chrono::{DateTime, Duration, Utc};
use daypass_domain::{
    AccessSource, Actor, Db, DenyReason, DomainError, LedgerKind, LotStatus, PlanLevel, Role,
    accounts,
    catalog::{self, UpsertProduct},
    charging::{OpenOutcome, OpenRequest, open_product},
    entity::{charge, ledger_entry, lot, open, subscription, subscription_seat},
    ledger::{self, ChargeFilter},
    lots::{self, LotView, PurchaseInput},
    page::PageRequest,
    rules::Band,
    subscriptions::{self, NewSubscription},
    users::{self, NewUser},
};
use daypass_tests::{AccountFixture, TestDb, account, actor_of, buy, product, t, user};
use futures::future::join_all;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};

const NOW: &str = "2026-03-02T09:00:00Z";

/// Asserts that a use-case refused with one `DomainError` variant.
macro_rules! assert_err {
    ($result:expr, $variant:ident) => {
        match $result {
            Err(DomainError::$variant(_)) => {}
            other => panic!(
                "expected {} from `{}`, got {:?}",
                stringify!($variant),
                stringify!($result),
                other
            ),
        }
    };
}

fn req(code: &str) -> OpenRequest {
    OpenRequest {
        product_code: code.into(),
        version: None,
        ..Default::default()
    }
}

fn req_v(code: &str, version: &str) -> OpenRequest {
    OpenRequest {
        product_code: code.into(),
        version: Some(version.into()),
        ..Default::default()
    }
}

async fn open_at(db: &Db, actor: &Actor, now: DateTime<Utc>, r: OpenRequest) -> OpenOutcome {
    open_product(db, actor, now, r)
        .await
        .expect("an open answers")
}

#[track_caller]
fn assert_denied(o: &OpenOutcome, reason: DenyReason) {
    assert!(!o.granted, "expected a denial ({reason}), got {o:?}");
    assert_eq!(o.deny_reason, Some(reason), "{o:?}");
    assert_eq!(o.tokens_charged, 0, "{o:?}");
    assert_eq!(o.source, None, "{o:?}");
    assert_eq!(o.charge_id, None, "{o:?}");
}

#[track_caller]
fn assert_charged(o: &OpenOutcome, tokens: i64) {
    assert!(o.granted, "expected a grant, got {o:?}");
    assert_eq!(o.source, Some(AccessSource::Flex), "{o:?}");
    assert_eq!(o.tokens_charged, tokens, "{o:?}");
    assert!(o.charge_id.is_some(), "{o:?}");
    assert_eq!(o.deny_reason, None, "{o:?}");
}

#[track_caller]
fn assert_free_flex(o: &OpenOutcome) {
    assert!(o.granted, "expected a grant, got {o:?}");
    assert_eq!(o.source, Some(AccessSource::Flex), "{o:?}");
    assert_eq!(o.tokens_charged, 0, "{o:?}");
    assert_eq!(o.charge_id, None, "{o:?}");
}

#[track_caller]
fn assert_subscription(o: &OpenOutcome) {
    assert!(o.granted, "expected a grant, got {o:?}");
    assert_eq!(o.source, Some(AccessSource::Subscription), "{o:?}");
    assert_eq!(o.tokens_charged, 0, "{o:?}");
    assert_eq!(o.charge_id, None, "{o:?}");
    assert_eq!(o.deny_reason, None, "{o:?}");
}

async fn balance(db: &Db, account_id: i32, now: DateTime<Utc>) -> i64 {
    accounts::balance_at(db.conn(), account_id, now)
        .await
        .expect("balance")
        .get()
}

async fn lot_row(db: &Db, id: i32) -> lot::Model {
    lot::Entity::find_by_id(id)
        .one(db.conn())
        .await
        .unwrap()
        .expect("lot exists")
}

async fn lot_count(db: &Db, account_id: i32) -> u64 {
    lot::Entity::find()
        .filter(lot::Column::AccountId.eq(account_id))
        .count(db.conn())
        .await
        .unwrap()
}

async fn ledger_rows(db: &Db, account_id: i32, kind: LedgerKind) -> Vec<ledger_entry::Model> {
    ledger_entry::Entity::find()
        .filter(ledger_entry::Column::AccountId.eq(account_id))
        .filter(ledger_entry::Column::Kind.eq(kind.as_str()))
        .order_by_asc(ledger_entry::Column::Id)
        .all(db.conn())
        .await
        .unwrap()
}

async fn charge_rows(db: &Db, account_id: i32) -> Vec<charge::Model> {
    charge::Entity::find()
        .filter(charge::Column::AccountId.eq(account_id))
        .order_by_asc(charge::Column::Id)
        .all(db.conn())
        .await
        .unwrap()
}

async fn open_rows(db: &Db, account_id: i32) -> Vec<open::Model> {
    open::Entity::find()
        .filter(open::Column::AccountId.eq(account_id))
        .order_by_asc(open::Column::Id)
        .all(db.conn())
        .await
        .unwrap()
}

/// An operator purchase with an explicit unit price.
async fn buy_priced(
    db: &Db,
    account_id: i32,
    quantity: i64,
    unit_price_minor: i64,
    key: &str,
    purchased_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> i32 {
    lots::purchase(
        db,
        &Actor::Operator,
        now,
        PurchaseInput {
            quantity,
            idempotency_key: key.into(),
            account_id: Some(account_id),
            unit_price_minor: Some(unit_price_minor),
            purchased_at: Some(purchased_at),
        },
    )
    .await
    .expect("priced purchase")
    .lot
    .id
}

fn self_service(quantity: i64, key: &str) -> PurchaseInput {
    PurchaseInput {
        quantity,
        idempotency_key: key.into(),
        ..Default::default()
    }
}

fn operator_sale(account_id: i32, quantity: i64, key: &str) -> PurchaseInput {
    PurchaseInput {
        quantity,
        idempotency_key: key.into(),
        account_id: Some(account_id),
        ..Default::default()
    }
}

async fn subscribe(
    db: &Db,
    account_id: i32,
    product_id: i32,
    plan_level: PlanLevel,
    seats: i32,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
) -> subscription::Model {
    subscriptions::add_subscription(
        db,
        &Actor::Operator,
        NewSubscription {
            product_id,
            plan_level,
            seats,
            starts_at,
            ends_at,
            account_id: Some(account_id),
        },
    )
    .await
    .expect("add subscription")
}

async fn seat(db: &Db, acct: &AccountFixture, sub: i32, user_id: i32, assigned: bool) {
    subscriptions::assign_subscription(db, &acct.admin, sub, user_id, assigned)
        .await
        .expect("seat change");
}

fn all() -> PageRequest {
    PageRequest::new(Some(500), None)
}

// ---------------------------------------------------------------------------
// Rules 1 and 2: lots expire exactly one year later; nothing rolls over.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rule1_a_lot_expires_at_the_same_instant_one_year_later() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Expiry", now).await;

    let purchased = t("2026-03-02T09:00:00.123456Z");
    let id = buy(
        db,
        acct.account_id,
        100,
        "p",
        purchased,
        now + Duration::hours(1),
    )
    .await;
    let stored = lot_row(db, id).await;
    assert_eq!(stored.purchased_at, purchased);
    assert_eq!(stored.expires_at, t("2027-03-02T09:00:00.123456Z"));
    assert_eq!(
        (
            stored.quantity,
            stored.remaining,
            stored.used,
            stored.expired
        ),
        (100, 100, 0, 0)
    );
    assert_eq!(stored.status, LotStatus::Active.as_str());

    // A self-service purchase is made `now`.
    let own = lots::purchase(db, &acct.admin, now, self_service(10, "self"))
        .await
        .unwrap();
    let own = lot_row(db, own.lot.id).await;
    assert_eq!(own.purchased_at, now);
    assert_eq!(own.expires_at, t("2027-03-02T09:00:00Z"));

    // Across a leap day the year is 366 days.
    let id = buy(
        db,
        acct.account_id,
        10,
        "june",
        t("2027-06-01T00:00:00Z"),
        t("2027-06-01T00:00:00Z"),
    )
    .await;
    let june = lot_row(db, id).await;
    assert_eq!(june.expires_at, t("2028-06-01T00:00:00Z"));
    assert_eq!(june.expires_at - june.purchased_at, Duration::days(366));
}

#[tokio::test]
async fn rule1_a_purchase_on_29_february_expires_on_28_february() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t("2028-03-01T00:00:00Z");
    let acct = account(db, "Leap", now).await;
    let leap = t("2028-02-29T23:30:00Z");
    let id = buy(db, acct.account_id, 40, "leap", leap, now).await;
    let stored = lot_row(db, id).await;
    assert_eq!(stored.purchased_at, leap);
    assert_eq!(stored.expires_at, t("2029-02-28T23:30:00Z"));
    assert_eq!(
        balance(db, acct.account_id, t("2029-02-28T23:29:59.999999Z")).await,
        40
    );
    assert_eq!(
        balance(db, acct.account_id, t("2029-02-28T23:30:00Z")).await,
        0
    );
}

#[tokio::test]
async fn rule2_a_lot_past_its_expiry_never_counts_even_before_the_sweep() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Unswept", now).await;
    product(db, "cad", 7).await;
    let (_, member) = user(db, &acct, "m@unswept.test", Role::Member, true, now).await;
    let id = buy(db, acct.account_id, 100, "p", now, now).await;
    let expiry = lot_row(db, id).await.expires_at;
    let just_before = expiry - Duration::microseconds(1);

    assert_eq!(balance(db, acct.account_id, just_before).await, 100);
    assert_eq!(balance(db, acct.account_id, expiry).await, 0);
    assert_eq!(
        accounts::balance(db, &acct.admin, acct.account_id, expiry)
            .await
            .unwrap(),
        0
    );

    // Not swept: the row still holds its tokens, the view does not.
    let stored = lot_row(db, id).await;
    assert_eq!((stored.remaining, stored.expired), (100, 0));
    assert_eq!(stored.status, LotStatus::Active.as_str());
    let live = LotView::at(stored.clone(), just_before);
    assert_eq!(live.status, LotStatus::Active);
    assert_eq!((live.counts.remaining, live.counts.expired), (100, 0));
    let dead = LotView::at(stored, expiry);
    assert_eq!(dead.status, LotStatus::Expired);
    assert_eq!(
        (
            dead.counts.quantity,
            dead.counts.used,
            dead.counts.expired,
            dead.counts.remaining
        ),
        (100, 0, 100, 0)
    );

    let expired = lots::list_lots(
        db,
        &acct.admin,
        acct.account_id,
        expiry,
        Some(LotStatus::Expired),
        all(),
    )
    .await
    .unwrap();
    assert_eq!(expired.items.len(), 1);
    assert_eq!(expired.items[0].1.status, LotStatus::Expired);
    assert_eq!(expired.items[0].1.counts.remaining, 0);
    let active = lots::list_lots(
        db,
        &acct.admin,
        acct.account_id,
        expiry,
        Some(LotStatus::Active),
        all(),
    )
    .await
    .unwrap();
    assert!(active.items.is_empty());

    // Nor can it be spent.
    let o = open_at(db, &member, expiry, req("cad")).await;
    assert_denied(&o, DenyReason::InsufficientTokens);
    assert_eq!(o.balance, 0);
    assert_eq!(lot_row(db, id).await.remaining, 100);
    assert!(charge_rows(db, acct.account_id).await.is_empty());
}

#[tokio::test]
async fn rule2_the_sweep_writes_one_expiry_entry_per_lot_with_tokens_left() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let p = t(NOW);
    let acct = account(db, "Sweep", p).await;
    product(db, "cad", 10).await;
    let (_, member) = user(db, &acct, "m@sweep.test", Role::Member, true, p).await;

    let c = buy(db, acct.account_id, 7, "c", p - Duration::days(2), p).await;
    let a = buy(db, acct.account_id, 100, "a", p - Duration::days(1), p).await;
    let b = buy(db, acct.account_id, 50, "b", p, p).await;
    let later = p + Duration::days(30);
    let d = buy(db, acct.account_id, 10, "d", later, later).await;

    // 10 tokens: all 7 of C (expires first), then 3 of A.
    let o = open_at(db, &member, p + Duration::hours(1), req("cad")).await;
    assert_charged(&o, 10);
    let c_row = lot_row(db, c).await;
    assert_eq!((c_row.remaining, c_row.used), (0, 7));
    assert_eq!(c_row.status, LotStatus::Depleted.as_str());
    assert_eq!(lot_row(db, a).await.remaining, 97);

    let sweep_at = lot_row(db, b).await.expires_at;
    assert_eq!(lots::sweep_expired(db, sweep_at).await.unwrap(), 2);

    let expiries = ledger_rows(db, acct.account_id, LedgerKind::Expiry).await;
    let got: Vec<(i32, i64)> = expiries.iter().map(|e| (e.lot_id, e.tokens)).collect();
    assert_eq!(got, vec![(a, -97), (b, -50)]);
    for e in &expiries {
        assert_eq!(e.at, lot_row(db, e.lot_id).await.expires_at);
        assert_eq!(e.charge_id, None);
    }
    for (id, used, expired) in [(a, 3, 97), (b, 0, 50)] {
        let l = lot_row(db, id).await;
        assert_eq!(l.status, LotStatus::Expired.as_str(), "lot {id}");
        assert_eq!((l.used, l.expired, l.remaining), (used, expired, 0));
    }
    // The used-up lot and the live one are untouched.
    let c_row = lot_row(db, c).await;
    assert_eq!(c_row.status, LotStatus::Depleted.as_str());
    assert_eq!((c_row.used, c_row.expired, c_row.remaining), (7, 0, 0));
    let d_row = lot_row(db, d).await;
    assert_eq!(d_row.status, LotStatus::Active.as_str());
    assert_eq!(d_row.remaining, 10);
    assert_eq!(balance(db, acct.account_id, sweep_at).await, 10);

    // Running it again expires nothing twice.
    assert_eq!(lots::sweep_expired(db, sweep_at).await.unwrap(), 0);
    assert_eq!(
        lots::sweep_expired(db, sweep_at + Duration::days(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        ledger_rows(db, acct.account_id, LedgerKind::Expiry)
            .await
            .len(),
        2
    );

    // D expires in its turn, once.
    let d_expiry = d_row.expires_at;
    assert_eq!(lots::sweep_expired(db, d_expiry).await.unwrap(), 1);
    assert_eq!(lots::sweep_expired(db, d_expiry).await.unwrap(), 0);
    let expiries = ledger_rows(db, acct.account_id, LedgerKind::Expiry).await;
    assert_eq!(expiries.len(), 3);
    assert_eq!((expiries[2].lot_id, expiries[2].tokens), (d, -10));

    // Every token is accounted for, and the ledger sums to what the lots hold.
    let lots = lot::Entity::find().all(db.conn()).await.unwrap();
    for l in &lots {
        assert_eq!(l.quantity, l.used + l.expired + l.remaining, "{l:?}");
    }
    let ledger_sum: i64 = ledger_entry::Entity::find()
        .filter(ledger_entry::Column::AccountId.eq(acct.account_id))
        .all(db.conn())
        .await
        .unwrap()
        .iter()
        .map(|e| e.tokens)
        .sum();
    assert_eq!(ledger_sum, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rule2_concurrent_sweeps_expire_each_lot_once() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let p = t(NOW);
    let a1 = account(db, "SweepA", p).await;
    let a2 = account(db, "SweepB", p).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let acct = if i % 2 == 0 { &a1 } else { &a2 };
        let at = p + Duration::minutes(i);
        ids.push(buy(db, acct.account_id, 10 + i, &format!("k{i}"), at, at).await);
    }
    let sweep_at = p + Duration::days(400);

    let results = join_all((0..4).map(|_| {
        let db = db.clone();
        tokio::spawn(async move { lots::sweep_expired(&db, sweep_at).await })
    }))
    .await;
    let total: u64 = results
        .into_iter()
        .map(|r| r.unwrap().expect("sweep succeeds"))
        .sum();
    assert_eq!(total, 6, "each lot expired by exactly one sweeper");

    let expiries = ledger_entry::Entity::find()
        .filter(ledger_entry::Column::Kind.eq(LedgerKind::Expiry.as_str()))
        .all(db.conn())
        .await
        .unwrap();
    assert_eq!(expiries.len(), 6);
    for (i, id) in ids.iter().enumerate() {
        let of_lot: Vec<_> = expiries.iter().filter(|e| e.lot_id == *id).collect();
        assert_eq!(of_lot.len(), 1, "lot {id}");
        assert_eq!(of_lot[0].tokens, -(10 + i as i64));
        let l = lot_row(db, *id).await;
        assert_eq!((l.expired, l.remaining), (10 + i as i64, 0));
        assert_eq!(l.status, LotStatus::Expired.as_str());
    }
    assert_eq!(lots::sweep_expired(db, sweep_at).await.unwrap(), 0);
}

#[tokio::test]
async fn rule2_a_lot_used_up_is_depleted_and_never_expires() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Depleted", now).await;
    product(db, "cad", 10).await;
    let (_, member) = user(db, &acct, "m@depleted.test", Role::Member, true, now).await;
    let id = buy(db, acct.account_id, 10, "p", now, now).await;
    assert_charged(&open_at(db, &member, now, req("cad")).await, 10);

    let l = lot_row(db, id).await;
    assert_eq!(l.status, LotStatus::Depleted.as_str());
    assert_eq!((l.used, l.expired, l.remaining), (10, 0, 0));
    assert_eq!(LotView::at(l.clone(), now).status, LotStatus::Depleted);
    assert_eq!(
        LotView::at(l.clone(), l.expires_at).status,
        LotStatus::Depleted
    );
    let depleted = lots::list_lots(
        db,
        &acct.admin,
        acct.account_id,
        now,
        Some(LotStatus::Depleted),
        all(),
    )
    .await
    .unwrap();
    assert_eq!(depleted.items.len(), 1);

    assert_eq!(lots::sweep_expired(db, l.expires_at).await.unwrap(), 0);
    assert!(
        ledger_rows(db, acct.account_id, LedgerKind::Expiry)
            .await
            .is_empty()
    );
    assert_eq!(lot_row(db, id).await.status, LotStatus::Depleted.as_str());
}

// ---------------------------------------------------------------------------
// Rule 3: burn order and charges spanning lots.
// ---------------------------------------------------------------------------

async fn charge_draws(db: &Db, charge_id: i32) -> Vec<(i32, i64)> {
    ledger_entry::Entity::find()
        .filter(ledger_entry::Column::ChargeId.eq(charge_id))
        .filter(ledger_entry::Column::Kind.eq(LedgerKind::Charge.as_str()))
        .order_by_asc(ledger_entry::Column::Id)
        .all(db.conn())
        .await
        .unwrap()
        .iter()
        .map(|e| (e.lot_id, e.tokens))
        .collect()
}

#[tokio::test]
async fn rule3_burns_the_lot_that_expires_first() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "BurnExpiry", now).await;
    product(db, "cad", 3).await;
    let (_, member) = user(db, &acct, "m@burn.test", Role::Member, true, now).await;
    // Recorded first and smaller, but expires a day later.
    let small_late = buy(db, acct.account_id, 5, "small", now, now).await;
    let big_early = buy(
        db,
        acct.account_id,
        100,
        "big",
        now - Duration::days(1),
        now,
    )
    .await;

    let o = open_at(db, &member, now, req("cad")).await;
    assert_charged(&o, 3);
    assert_eq!(
        charge_draws(db, o.charge_id.unwrap().get()).await,
        vec![(big_early, -3)]
    );
    assert_eq!(lot_row(db, big_early).await.remaining, 97);
    assert_eq!(lot_row(db, small_late).await.remaining, 5);
}

#[tokio::test]
async fn rule3_on_equal_expiry_burns_the_smaller_lot() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "BurnSmall", now).await;
    product(db, "cad", 3).await;
    let (_, member) = user(db, &acct, "m@small.test", Role::Member, true, now).await;
    let big = buy(db, acct.account_id, 100, "big", now, now).await;
    let small = buy(db, acct.account_id, 20, "small", now, now).await;
    assert_eq!(
        lot_row(db, big).await.expires_at,
        lot_row(db, small).await.expires_at
    );

    let o = open_at(db, &member, now, req("cad")).await;
    assert_eq!(
        charge_draws(db, o.charge_id.unwrap().get()).await,
        vec![(small, -3)]
    );
    assert_eq!(lot_row(db, big).await.remaining, 100);
    assert_eq!(lot_row(db, small).await.remaining, 17);
}

#[tokio::test]
async fn rule3_on_equal_expiry_and_size_burns_the_lot_recorded_first() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "BurnFirst", now).await;
    product(db, "cad", 10).await;
    let first = buy(db, acct.account_id, 10, "one", now, now).await;
    let second = buy(db, acct.account_id, 10, "two", now, now).await;
    let third = buy(db, acct.account_id, 10, "three", now, now).await;

    let mut drawn = Vec::new();
    for i in 0..3 {
        let (_, m) = user(
            db,
            &acct,
            &format!("u{i}@first.test"),
            Role::Member,
            true,
            now,
        )
        .await;
        let o = open_at(db, &m, now, req("cad")).await;
        assert_charged(&o, 10);
        drawn.extend(charge_draws(db, o.charge_id.unwrap().get()).await);
    }
    assert_eq!(drawn, vec![(first, -10), (second, -10), (third, -10)]);
}

#[tokio::test]
async fn rule3_a_charge_spanning_three_lots_records_each_draw_and_its_cost() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Span", now).await;
    product(db, "cad", 9).await;
    let (member_id, member) = user(db, &acct, "m@span.test", Role::Member, true, now).await;
    let l3 = buy_priced(
        db,
        acct.account_id,
        10,
        100,
        "c",
        now - Duration::days(1),
        now,
    )
    .await;
    let l1 = buy_priced(
        db,
        acct.account_id,
        3,
        120,
        "a",
        now - Duration::days(3),
        now,
    )
    .await;
    let l2 = buy_priced(
        db,
        acct.account_id,
        4,
        110,
        "b",
        now - Duration::days(2),
        now,
    )
    .await;

    let o = open_at(db, &member, now, req("cad")).await;
    assert_charged(&o, 9);
    assert_eq!(o.balance, 17 - 9);
    let charge_id = o.charge_id.unwrap().get();
    assert_eq!(
        charge_draws(db, charge_id).await,
        vec![(l1, -3), (l2, -4), (l3, -2)]
    );
    let charges = charge_rows(db, acct.account_id).await;
    assert_eq!(charges.len(), 1);
    let c = &charges[0];
    assert_eq!(c.id, charge_id);
    assert_eq!(c.user_id, member_id);
    assert_eq!(c.tokens, 9);
    assert_eq!(c.cost_minor, 3 * 120 + 4 * 110 + 2 * 100);
    assert_eq!(c.window_starts_at, now);
    assert_eq!(c.window_ends_at, now + Duration::hours(24));
    for (id, remaining, status) in [
        (l1, 0, LotStatus::Depleted),
        (l2, 0, LotStatus::Depleted),
        (l3, 8, LotStatus::Active),
    ] {
        let l = lot_row(db, id).await;
        assert_eq!(l.remaining, remaining, "lot {id}");
        assert_eq!(l.status, status.as_str(), "lot {id}");
    }
}

// ---------------------------------------------------------------------------
// Rule 4: the price list, the self-service limit, operator sales.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rule4_admins_buy_up_to_ten_thousand_by_themselves() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "SelfService", now).await;

    let bought = lots::purchase(db, &acct.admin, now, self_service(10_000, "max"))
        .await
        .unwrap();
    assert_eq!(bought.lot.quantity, 10_000);
    assert_eq!(bought.lot.unit_price_minor, 100);
    assert_eq!(bought.lot.account_id, acct.account_id);

    assert_err!(
        lots::purchase(db, &acct.admin, now, self_service(10_001, "over")).await,
        Forbidden
    );
    assert_eq!(lot_count(db, acct.account_id).await, 1);
    assert_eq!(balance(db, acct.account_id, now).await, 10_000);

    // Small purchases are priced at their band.
    let small = lots::purchase(db, &acct.admin, now, self_service(999, "small"))
        .await
        .unwrap();
    assert_eq!(small.lot.unit_price_minor, 120);
    let mid = lots::purchase(db, &acct.admin, now, self_service(1_000, "mid"))
        .await
        .unwrap();
    assert_eq!(mid.lot.unit_price_minor, 110);
}

#[tokio::test]
async fn rule4_operators_sell_larger_quantities_at_band_price_and_above_the_list_at_a_given_price()
{
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Vendor", now).await;
    let op = Actor::Operator;
    let id = acct.account_id;

    let sold = lots::purchase(db, &op, now, operator_sale(id, 15_000, "15k"))
        .await
        .unwrap();
    assert_eq!(sold.lot.unit_price_minor, 95);
    let sold = lots::purchase(db, &op, now, operator_sale(id, 10_001, "10k1"))
        .await
        .unwrap();
    assert_eq!(sold.lot.unit_price_minor, 95);
    let sold = lots::purchase(db, &op, now, operator_sale(id, 50_000, "50k"))
        .await
        .unwrap();
    assert_eq!(sold.lot.unit_price_minor, 85);

    assert_err!(
        lots::purchase(db, &op, now, operator_sale(id, 50_001, "over")).await,
        BadInput
    );
    assert_eq!(lot_count(db, id).await, 3);
    let priced = lots::purchase(
        db,
        &op,
        now,
        PurchaseInput {
            unit_price_minor: Some(80),
            ..operator_sale(id, 50_001, "over")
        },
    )
    .await
    .unwrap();
    assert_eq!(priced.lot.quantity, 50_001);
    assert_eq!(priced.lot.unit_price_minor, 80);
    assert_eq!(
        balance(db, id, now).await,
        15_000 + 10_001 + 50_000 + 50_001
    );

    // An operator must name the account.
    assert_err!(
        lots::purchase(db, &op, now, self_service(10, "nameless")).await,
        BadInput
    );
}

#[tokio::test]
async fn rule4_quotes_refuse_zero_and_quantities_above_the_list() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Quote", now).await;
    let admin = &acct.admin;

    let q = catalog::quote(db, admin, 10_000).await.unwrap();
    assert_eq!((q.unit_price_minor, q.total_minor), (100, 1_000_000));
    assert!(q.self_service);
    let q = catalog::quote(db, admin, 10_001).await.unwrap();
    assert_eq!(q.unit_price_minor, 95);
    assert!(!q.self_service);
    let q = catalog::quote(db, admin, 50_000).await.unwrap();
    assert_eq!((q.unit_price_minor, q.total_minor), (85, 4_250_000));
    assert_eq!(q.currency, "USD");

    assert_err!(catalog::quote(db, admin, 50_001).await, BadInput);
    assert_err!(
        catalog::quote(db, &Actor::Operator, 1_000_000).await,
        BadInput
    );
    assert_err!(catalog::quote(db, admin, 0).await, BadInput);
    assert_err!(catalog::quote(db, admin, -5).await, BadInput);
}

#[tokio::test]
async fn rule4_only_an_operator_sets_a_unit_price_or_a_purchase_date() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Priced", now).await;

    assert_err!(
        lots::purchase(
            db,
            &acct.admin,
            now,
            PurchaseInput {
                unit_price_minor: Some(1),
                ..self_service(100, "cheap")
            },
        )
        .await,
        Forbidden
    );
    assert_err!(
        lots::purchase(
            db,
            &acct.admin,
            now,
            PurchaseInput {
                purchased_at: Some(now - Duration::days(30)),
                ..self_service(100, "backdated")
            },
        )
        .await,
        Forbidden
    );
    assert_eq!(lot_count(db, acct.account_id).await, 0);
    assert_eq!(balance(db, acct.account_id, now).await, 0);
}

#[tokio::test]
async fn rule4_purchased_at_may_be_past_not_future_and_expiry_counts_from_it() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Backdated", now).await;
    let id = acct.account_id;

    assert_err!(
        lots::purchase(
            db,
            &Actor::Operator,
            now,
            PurchaseInput {
                purchased_at: Some(now + Duration::seconds(1)),
                ..operator_sale(id, 100, "future")
            },
        )
        .await,
        BadInput
    );
    assert_eq!(lot_count(db, id).await, 0);

    let past = t("2025-06-01T12:00:00Z");
    let moved = lots::purchase(
        db,
        &Actor::Operator,
        now,
        PurchaseInput {
            purchased_at: Some(past),
            ..operator_sale(id, 100, "moved")
        },
    )
    .await
    .unwrap();
    let stored = lot_row(db, moved.lot.id).await;
    assert_eq!(stored.purchased_at, past);
    assert_eq!(stored.expires_at, t("2026-06-01T12:00:00Z"));
    assert_eq!(stored.unit_price_minor, 120);

    // A purchase more than a year ago arrives already expired.
    let old = buy(db, id, 50, "old", t("2025-01-15T00:00:00Z"), now).await;
    assert_eq!(lot_row(db, old).await.expires_at, t("2026-01-15T00:00:00Z"));
    assert_eq!(balance(db, id, now).await, 100);
    assert_eq!(
        balance(db, id, t("2026-06-01T11:59:59Z")).await,
        100,
        "the moved lot still counts just before its expiry"
    );
    assert_eq!(balance(db, id, t("2026-06-01T12:00:00Z")).await, 0);

    // Exactly now is not the future.
    let at_now = buy(db, id, 5, "now", now, now).await;
    assert_eq!(
        lot_row(db, at_now).await.expires_at,
        t("2027-03-02T09:00:00Z")
    );
}

#[tokio::test]
async fn rule4_the_price_list_is_data_contiguous_and_quotes_follow_it() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Prices", now).await;
    let band = |min_quantity, max_quantity, unit_price_minor| Band {
        min_quantity,
        max_quantity,
        unit_price_minor,
    };

    let gap = vec![band(1, 10, 1), band(12, 10_000, 1)];
    assert_err!(
        catalog::set_price_list(db, &Actor::Operator, gap, "USD").await,
        BadInput
    );
    let not_from_one = vec![band(2, 10_000, 1)];
    assert_err!(
        catalog::set_price_list(db, &Actor::Operator, not_from_one, "USD").await,
        BadInput
    );
    assert_err!(
        catalog::set_price_list(db, &Actor::Operator, vec![], "USD").await,
        BadInput
    );
    // A refused list changes nothing.
    assert_eq!(
        catalog::quote(db, &acct.admin, 100)
            .await
            .unwrap()
            .unit_price_minor,
        120
    );

    let straddles = vec![band(1, 12_000, 1), band(12_001, 50_000, 1)];
    assert_err!(
        catalog::set_price_list(db, &Actor::Operator, straddles, "USD").await,
        BadInput
    );
    let new = vec![
        band(1, 4_999, 200),
        band(5_000, 10_000, 180),
        band(10_001, 50_000, 150),
    ];
    assert_err!(
        catalog::set_price_list(db, &acct.admin, new.clone(), "USD").await,
        Forbidden
    );
    let saved = catalog::set_price_list(db, &Actor::Operator, new.clone(), "eur")
        .await
        .unwrap();
    assert_eq!(saved.bands, new);
    let stored = catalog::price_list(db, &acct.admin).await.unwrap();
    assert_eq!(stored.bands, new);
    assert_eq!(stored.currency, "EUR");

    let q = catalog::quote(db, &acct.admin, 100).await.unwrap();
    assert_eq!((q.unit_price_minor, q.total_minor), (200, 20_000));
    assert_eq!(q.currency, "EUR");
    assert_eq!(
        catalog::quote(db, &acct.admin, 10_000)
            .await
            .unwrap()
            .unit_price_minor,
        180
    );
    assert_eq!(
        catalog::quote(db, &acct.admin, 50_000)
            .await
            .unwrap()
            .unit_price_minor,
        150
    );
    assert_err!(catalog::quote(db, &acct.admin, 50_001).await, BadInput);
    let sold = lots::purchase(
        db,
        &Actor::Operator,
        now,
        operator_sale(acct.account_id, 25_000, "big"),
    )
    .await
    .unwrap();
    assert_eq!(sold.lot.unit_price_minor, 150);

    let bought = lots::purchase(db, &acct.admin, now, self_service(100, "new"))
        .await
        .unwrap();
    assert_eq!(bought.lot.unit_price_minor, 200);
    assert_eq!(bought.lot.currency, "EUR");
}

// ---------------------------------------------------------------------------
// Rule 5: idempotency keys.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rule5_the_same_key_twice_buys_once() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let a = account(db, "KeyA", now).await;
    let b = account(db, "KeyB", now).await;

    let first = lots::purchase(db, &a.admin, now, self_service(100, "once"))
        .await
        .unwrap();
    let again = lots::purchase(
        db,
        &a.admin,
        now + Duration::minutes(5),
        self_service(100, "once"),
    )
    .await
    .unwrap();
    assert_eq!(first.lot.id, again.lot.id);
    // The operator replaying the same key for the account also buys nothing new.
    let replay = lots::purchase(
        db,
        &Actor::Operator,
        now,
        operator_sale(a.account_id, 100, "once"),
    )
    .await
    .unwrap();
    assert_eq!(replay.lot.id, first.lot.id);
    assert_eq!(lot_count(db, a.account_id).await, 1);
    assert_eq!(
        ledger_rows(db, a.account_id, LedgerKind::Purchase)
            .await
            .len(),
        1
    );
    assert_eq!(balance(db, a.account_id, now).await, 100);

    assert_err!(
        lots::purchase(db, &a.admin, now, self_service(200, "once")).await,
        Conflict
    );
    assert_eq!(lot_count(db, a.account_id).await, 1);
    assert_eq!(balance(db, a.account_id, now).await, 100);

    // Keys belong to an account: another account with the same key buys its own.
    let other = lots::purchase(db, &b.admin, now, self_service(100, "once"))
        .await
        .unwrap();
    assert_ne!(other.lot.id, first.lot.id);
    assert_eq!(other.lot.account_id, b.account_id);
    assert_eq!(balance(db, b.account_id, now).await, 100);
    assert_eq!(balance(db, a.account_id, now).await, 100);

    // A different key buys again.
    lots::purchase(db, &a.admin, now, self_service(100, "twice"))
        .await
        .unwrap();
    assert_eq!(balance(db, a.account_id, now).await, 200);
}

// ---------------------------------------------------------------------------
// Rule 6: the balance never goes below zero.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rule6_the_balance_never_goes_below_zero() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Floor", now).await;
    product(db, "cad", 3).await;
    let id = buy(db, acct.account_id, 5, "p", now, now).await;
    let (_, m1) = user(db, &acct, "m1@floor.test", Role::Member, true, now).await;
    let (_, m2) = user(db, &acct, "m2@floor.test", Role::Member, true, now).await;

    assert_charged(&open_at(db, &m1, now, req("cad")).await, 3);
    let o = open_at(db, &m2, now, req("cad")).await;
    assert_denied(&o, DenyReason::InsufficientTokens);
    assert_eq!(o.balance, 2);
    assert_eq!(balance(db, acct.account_id, now).await, 2);
    let l = lot_row(db, id).await;
    assert_eq!((l.used, l.expired, l.remaining), (3, 0, 2));
}

// ---------------------------------------------------------------------------
// Rules 7–11: opening a product.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rule7_only_users_assigned_to_pay_as_you_go_are_charged() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Assign", now).await;
    product(db, "cad", 7).await;
    buy(db, acct.account_id, 100, "p", now, now).await;
    let (member_id, member) = user(db, &acct, "m@assign.test", Role::Member, false, now).await;

    let o = open_at(db, &member, now, req("cad")).await;
    assert_denied(&o, DenyReason::NotAssigned);
    assert_eq!(o.balance, 100);
    assert!(charge_rows(db, acct.account_id).await.is_empty());

    users::assign_flex(db, &acct.admin, &[member_id], true)
        .await
        .unwrap();
    assert_charged(&open_at(db, &member, now, req("cad")).await, 7);

    // Taking the user off pay-as-you-go denies again, even inside the window.
    users::assign_flex(db, &acct.admin, &[member_id], false)
        .await
        .unwrap();
    assert_denied(
        &open_at(db, &member, now + Duration::hours(1), req("cad")).await,
        DenyReason::NotAssigned,
    );
    // An admin opening a product is a user like any other.
    let o = open_at(db, &acct.admin, now, req("cad")).await;
    assert_denied(&o, DenyReason::NotAssigned);
}

#[tokio::test]
async fn rule8_an_account_wide_list_restricts_every_assigned_user() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Restrict", now).await;
    let cad = product(db, "cad", 2).await;
    product(db, "cam", 3).await;
    buy(db, acct.account_id, 100, "p", now, now).await;
    let (_, m1) = user(db, &acct, "m1@restrict.test", Role::Member, true, now).await;
    let (_, m2) = user(db, &acct, "m2@restrict.test", Role::Member, true, now).await;

    // Unrestricted: every catalog product is open.
    assert_charged(&open_at(db, &m1, now, req("cam")).await, 3);

    users::set_allowed_products(db, &acct.admin, None, None, Some(vec![cad]))
        .await
        .unwrap();
    for m in [&m1, &m2] {
        assert_charged(&open_at(db, m, now, req("cad")).await, 2);
        let o = open_at(db, m, now + Duration::hours(1), req("cam")).await;
        assert_denied(&o, DenyReason::ProductRestricted);
    }
    assert_eq!(balance(db, acct.account_id, now).await, 100 - 3 - 2 - 2);
}

#[tokio::test]
async fn rule8_a_users_own_list_overrides_the_account_list_both_ways() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Override", now).await;
    let cad = product(db, "cad", 2).await;
    let cam = product(db, "cam", 3).await;
    buy(db, acct.account_id, 100, "p", now, now).await;
    let (wider_id, wider) = user(db, &acct, "w@override.test", Role::Member, true, now).await;
    let (narrower_id, narrower) = user(db, &acct, "n@override.test", Role::Member, true, now).await;
    let (_, plain) = user(db, &acct, "p@override.test", Role::Member, true, now).await;

    // The account allows only cad.
    users::set_allowed_products(db, &acct.admin, None, None, Some(vec![cad]))
        .await
        .unwrap();
    // A user's list allowing more than the account's: cam only.
    users::set_allowed_products(db, &acct.admin, Some(wider_id), None, Some(vec![cam]))
        .await
        .unwrap();
    assert_charged(&open_at(db, &wider, now, req("cam")).await, 3);
    assert_denied(
        &open_at(db, &wider, now, req("cad")).await,
        DenyReason::ProductRestricted,
    );
    // Users without their own list follow the account.
    assert_charged(&open_at(db, &plain, now, req("cad")).await, 2);
    assert_denied(
        &open_at(db, &plain, now, req("cam")).await,
        DenyReason::ProductRestricted,
    );

    // An unrestricted account, and a user's list narrowing it.
    users::set_allowed_products(db, &acct.admin, None, None, None)
        .await
        .unwrap();
    users::set_allowed_products(db, &acct.admin, Some(narrower_id), None, Some(vec![cad]))
        .await
        .unwrap();
    assert_charged(&open_at(db, &narrower, now, req("cad")).await, 2);
    assert_denied(
        &open_at(db, &narrower, now, req("cam")).await,
        DenyReason::ProductRestricted,
    );
    assert_charged(&open_at(db, &plain, now, req("cam")).await, 3);

    // Lifting a user's own list hands them back to the account's setting.
    users::set_allowed_products(db, &acct.admin, Some(narrower_id), None, None)
        .await
        .unwrap();
    assert_charged(&open_at(db, &narrower, now, req("cam")).await, 3);
}

#[tokio::test]
async fn rule8_an_empty_list_allows_nothing_and_none_lifts_the_restriction() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Empty", now).await;
    product(db, "cad", 2).await;
    product(db, "cam", 3).await;
    buy(db, acct.account_id, 100, "p", now, now).await;
    let (member_id, member) = user(db, &acct, "m@empty.test", Role::Member, true, now).await;

    users::set_allowed_products(db, &acct.admin, None, None, Some(vec![]))
        .await
        .unwrap();
    for code in ["cad", "cam"] {
        assert_denied(
            &open_at(db, &member, now, req(code)).await,
            DenyReason::ProductRestricted,
        );
    }
    users::set_allowed_products(db, &acct.admin, None, None, None)
        .await
        .unwrap();
    assert_charged(&open_at(db, &member, now, req("cad")).await, 2);

    // A user's own empty list allows nothing either, even when the account is open.
    users::set_allowed_products(db, &acct.admin, Some(member_id), None, Some(vec![]))
        .await
        .unwrap();
    assert_denied(
        &open_at(db, &member, now, req("cam")).await,
        DenyReason::ProductRestricted,
    );
    users::set_allowed_products(db, &acct.admin, Some(member_id), None, None)
        .await
        .unwrap();
    assert_charged(&open_at(db, &member, now, req("cam")).await, 3);
    assert_eq!(balance(db, acct.account_id, now).await, 95);
}

#[tokio::test]
async fn rule10_an_open_charges_the_daily_rate_once_per_24_hour_window() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Window", now).await;
    product(db, "cad", 7).await;
    product(db, "cam", 4).await;
    buy(db, acct.account_id, 100, "p", now, now).await;
    let (m1_id, m1) = user(db, &acct, "m1@window.test", Role::Member, true, now).await;
    let (_, m2) = user(db, &acct, "m2@window.test", Role::Member, true, now).await;
    let ends = now + Duration::hours(24);

    let o = open_at(db, &m1, now, req("cad")).await;
    assert_charged(&o, 7);
    assert_eq!(o.window_ends_at, Some(ends));
    assert_eq!(o.balance, 93);

    let o = open_at(db, &m1, now + Duration::minutes(23 * 60 + 59), req("cad")).await;
    assert_free_flex(&o);
    assert_eq!(o.window_ends_at, Some(ends));
    assert_eq!(o.balance, 93);
    let o = open_at(
        db,
        &m1,
        now + Duration::minutes(23 * 60 + 59),
        req_v("cad", "2027.1"),
    )
    .await;
    assert_free_flex(&o);
    let o = open_at(
        db,
        &m1,
        ends - Duration::microseconds(1),
        req_v("cad", "2025"),
    )
    .await;
    assert_free_flex(&o);
    assert_eq!(balance(db, acct.account_id, now).await, 93);

    // The window is per user and per product.
    assert_charged(
        &open_at(db, &m2, now + Duration::hours(1), req("cad")).await,
        7,
    );
    assert_charged(
        &open_at(db, &m1, now + Duration::hours(1), req("cam")).await,
        4,
    );

    // At 24 hours the window has ended: charged again, a new window.
    let o = open_at(db, &m1, ends, req_v("cad", "2027.1")).await;
    assert_charged(&o, 7);
    assert_eq!(o.window_ends_at, Some(ends + Duration::hours(24)));
    let o = open_at(db, &m1, ends + Duration::hours(1), req("cad")).await;
    assert_free_flex(&o);
    assert_eq!(o.window_ends_at, Some(ends + Duration::hours(24)));

    let charges: Vec<_> = charge_rows(db, acct.account_id)
        .await
        .into_iter()
        .filter(|c| c.user_id == m1_id)
        .collect();
    assert_eq!(charges.len(), 3);
    assert_eq!((charges[0].window_starts_at, charges[0].tokens), (now, 7));
    assert_eq!(charges[2].window_starts_at, ends);
    assert_eq!(charges[2].version.as_deref(), Some("2027.1"));
    assert_eq!(balance(db, acct.account_id, ends).await, 100 - 7 * 3 - 4);
}

#[tokio::test]
async fn rule11_an_open_the_balance_cannot_cover_is_denied_and_charges_nothing() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Short", now).await;
    product(db, "cad", 7).await;
    let first = buy(db, acct.account_id, 5, "p", now - Duration::days(1), now).await;
    let (_, member) = user(db, &acct, "m@short.test", Role::Member, true, now).await;

    let o = open_at(db, &member, now, req("cad")).await;
    assert_denied(&o, DenyReason::InsufficientTokens);
    assert_eq!(o.window_ends_at, None);
    assert_eq!(o.balance, 5);
    assert_eq!(balance(db, acct.account_id, now).await, 5);
    assert!(charge_rows(db, acct.account_id).await.is_empty());
    assert!(
        ledger_rows(db, acct.account_id, LedgerKind::Charge)
            .await
            .is_empty()
    );
    let l = lot_row(db, first).await;
    assert_eq!((l.used, l.remaining), (0, 5));

    // Access returns as soon as tokens are bought.
    let later = now + Duration::minutes(1);
    lots::purchase(db, &acct.admin, later, self_service(10, "topup"))
        .await
        .unwrap();
    let o = open_at(db, &member, later, req("cad")).await;
    assert_charged(&o, 7);
    assert_eq!(o.balance, 8);
    assert_eq!(
        charge_draws(db, o.charge_id.unwrap().get()).await.len(),
        2,
        "5 from the first lot, 2 from the new one"
    );
    assert_eq!(lot_row(db, first).await.remaining, 0);
}

#[tokio::test]
async fn rule11_unknown_and_inactive_products_are_denied() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Unknown", now).await;
    buy(db, acct.account_id, 100, "p", now, now).await;
    catalog::upsert_product(
        db,
        &Actor::Operator,
        UpsertProduct {
            code: "old".into(),
            name: "Retired".into(),
            daily_rate: 5,
            annual_subscription_minor: None,
            active: false,
        },
    )
    .await
    .unwrap();
    let (_, member) = user(db, &acct, "m@unknown.test", Role::Member, true, now).await;

    assert_denied(
        &open_at(db, &member, now, req("nope")).await,
        DenyReason::UnknownProduct,
    );
    assert_denied(
        &open_at(db, &member, now, req("old")).await,
        DenyReason::UnknownProduct,
    );
    assert_eq!(balance(db, acct.account_id, now).await, 100);
    assert!(charge_rows(db, acct.account_id).await.is_empty());
    // Even a user not assigned to pay-as-you-go hears that the product is unknown.
    let (_, unassigned) = user(db, &acct, "u@unknown.test", Role::Member, false, now).await;
    assert_denied(
        &open_at(db, &unassigned, now, req("nope")).await,
        DenyReason::UnknownProduct,
    );
}

#[tokio::test]
async fn rule11_a_deactivated_user_is_denied_and_unknown_products_come_first() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Gone", now).await;
    let cad = product(db, "cad", 7).await;
    buy(db, acct.account_id, 100, "p", now, now).await;
    let (member_id, _) = user(db, &acct, "m@gone.test", Role::Member, true, now).await;
    // Even a subscription seat does not let a deactivated user in.
    let sub = subscribe(
        db,
        acct.account_id,
        cad,
        PlanLevel::Premium,
        1,
        now - Duration::days(1),
        now + Duration::days(300),
    )
    .await;
    seat(db, &acct, sub.id, member_id, true).await;

    let gone = users::deactivate_user(db, &acct.admin, member_id)
        .await
        .unwrap();
    assert!(!gone.active);
    let gone = actor_of(&gone);

    let o = open_at(db, &gone, now, req("cad")).await;
    assert_denied(&o, DenyReason::UserDeactivated);
    assert_denied(
        &open_at(db, &gone, now, req("nope")).await,
        DenyReason::UnknownProduct,
    );
    assert_eq!(balance(db, acct.account_id, now).await, 100);
    assert!(charge_rows(db, acct.account_id).await.is_empty());
    let rows = open_rows(db, acct.account_id).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].deny_reason.as_deref(), Some("USER_DEACTIVATED"));
    assert_eq!(rows[1].deny_reason.as_deref(), Some("UNKNOWN_PRODUCT"));
}

#[tokio::test]
async fn rule11_every_open_granted_or_denied_is_recorded() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Record", now).await;
    let cad = product(db, "cad", 7).await;
    let viz = product(db, "viz", 5).await;
    buy(db, acct.account_id, 10, "p", now, now).await;
    let (m1_id, m1) = user(db, &acct, "m1@record.test", Role::Member, true, now).await;
    let (m2_id, m2) = user(db, &acct, "m2@record.test", Role::Member, false, now).await;
    let (m3_id, m3) = user(db, &acct, "m3@record.test", Role::Member, true, now).await;
    let sub = subscribe(
        db,
        acct.account_id,
        viz,
        PlanLevel::Standard,
        1,
        now,
        now + Duration::days(365),
    )
    .await;
    seat(db, &acct, sub.id, m3_id, true).await;

    let at = |m: i64| now + Duration::minutes(m);
    let charged = open_at(db, &m1, at(0), req("cad")).await;
    assert_charged(&charged, 7);
    assert_free_flex(&open_at(db, &m1, at(1), req_v("cad", "2")).await);
    assert_denied(
        &open_at(db, &m2, at(2), req("cad")).await,
        DenyReason::NotAssigned,
    );
    assert_denied(
        &open_at(db, &m1, at(3), req("nope")).await,
        DenyReason::UnknownProduct,
    );
    assert_denied(
        &open_at(db, &m3, at(4), req("cad")).await,
        DenyReason::InsufficientTokens,
    );
    assert_subscription(&open_at(db, &m3, at(5), req("viz")).await);

    let rows = open_rows(db, acct.account_id).await;
    type Row = (
        i32,
        Option<i32>,
        &'static str,
        Option<&'static str>,
        bool,
        Option<&'static str>,
        Option<&'static str>,
        i64,
    );
    let expected: Vec<Row> = vec![
        (m1_id, Some(cad), "cad", None, true, Some("FLEX"), None, 7),
        (
            m1_id,
            Some(cad),
            "cad",
            Some("2"),
            true,
            Some("FLEX"),
            None,
            0,
        ),
        (
            m2_id,
            Some(cad),
            "cad",
            None,
            false,
            None,
            Some("NOT_ASSIGNED"),
            0,
        ),
        (
            m1_id,
            None,
            "nope",
            None,
            false,
            None,
            Some("UNKNOWN_PRODUCT"),
            0,
        ),
        (
            m3_id,
            Some(cad),
            "cad",
            None,
            false,
            None,
            Some("INSUFFICIENT_TOKENS"),
            0,
        ),
        (
            m3_id,
            Some(viz),
            "viz",
            None,
            true,
            Some("SUBSCRIPTION"),
            None,
            0,
        ),
    ];
    assert_eq!(rows.len(), expected.len());
    for (i, (row, want)) in rows.iter().zip(&expected).enumerate() {
        let got = (
            row.user_id,
            row.product_id,
            row.product_code.as_str(),
            row.version.as_deref(),
            row.granted,
            row.source.as_deref(),
            row.deny_reason.as_deref(),
            row.tokens,
        );
        assert_eq!(got, *want, "open #{i}");
        assert_eq!(row.at, at(i as i64), "open #{i}");
        assert_eq!(
            row.charge_id,
            (i == 0).then_some(charged.charge_id.unwrap().get())
        );
    }
}

// ---------------------------------------------------------------------------
// Rule 9: subscriptions come first.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rule9_a_subscription_seat_opens_without_tokens_assignment_or_permission() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Subscribed", now).await;
    let cad = product(db, "cad", 7).await;
    product(db, "viz", 5).await;
    let (member_id, member) = user(db, &acct, "m@sub.test", Role::Member, false, now).await;
    users::set_allowed_products(db, &acct.admin, None, None, Some(vec![]))
        .await
        .unwrap();
    users::set_allowed_products(db, &acct.admin, Some(member_id), None, Some(vec![]))
        .await
        .unwrap();
    let sub = subscribe(
        db,
        acct.account_id,
        cad,
        PlanLevel::Premium,
        1,
        now - Duration::days(10),
        now + Duration::days(355),
    )
    .await;
    seat(db, &acct, sub.id, member_id, true).await;

    // No tokens at all, not assigned, restricted: still granted.
    let o = open_at(db, &member, now, req("cad")).await;
    assert_subscription(&o);
    assert_eq!(o.balance, 0);

    buy(db, acct.account_id, 50, "p", now, now).await;
    users::assign_flex(db, &acct.admin, &[member_id], true)
        .await
        .unwrap();
    let o = open_at(db, &member, now + Duration::hours(1), req("cad")).await;
    assert_subscription(&o);
    assert_eq!(o.balance, 50);
    assert!(charge_rows(db, acct.account_id).await.is_empty());

    // Another product is pay-as-you-go, governed by rules 7 and 8.
    assert_denied(
        &open_at(db, &member, now, req("viz")).await,
        DenyReason::ProductRestricted,
    );
    users::assign_flex(db, &acct.admin, &[member_id], false)
        .await
        .unwrap();
    assert_denied(
        &open_at(db, &member, now, req("viz")).await,
        DenyReason::NotAssigned,
    );
    assert_eq!(balance(db, acct.account_id, now).await, 50);
}

#[tokio::test]
async fn rule9_a_subscription_counts_only_within_its_period() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Period", now).await;
    let cad = product(db, "cad", 7).await;
    buy(db, acct.account_id, 100, "p", now, now).await;
    let (flex_id, flex) = user(db, &acct, "f@period.test", Role::Member, true, now).await;
    let (plain_id, plain) = user(db, &acct, "p@period.test", Role::Member, false, now).await;
    let starts = now + Duration::days(1);
    let ends = now + Duration::days(31);
    let sub = subscribe(
        db,
        acct.account_id,
        cad,
        PlanLevel::Standard,
        2,
        starts,
        ends,
    )
    .await;
    seat(db, &acct, sub.id, flex_id, true).await;
    seat(db, &acct, sub.id, plain_id, true).await;

    // Not started yet.
    assert_charged(&open_at(db, &flex, now, req("cad")).await, 7);
    assert_denied(
        &open_at(db, &plain, starts - Duration::microseconds(1), req("cad")).await,
        DenyReason::NotAssigned,
    );
    // From its first instant to just before its end.
    assert_subscription(&open_at(db, &flex, starts, req("cad")).await);
    assert_subscription(&open_at(db, &plain, starts, req("cad")).await);
    assert_subscription(&open_at(db, &flex, ends - Duration::microseconds(1), req("cad")).await);
    assert_subscription(&open_at(db, &plain, ends - Duration::microseconds(1), req("cad")).await);
    // Ended.
    assert_charged(&open_at(db, &flex, ends, req("cad")).await, 7);
    assert_denied(
        &open_at(db, &plain, ends, req("cad")).await,
        DenyReason::NotAssigned,
    );
    assert_eq!(charge_rows(db, acct.account_id).await.len(), 2);
}

#[tokio::test]
async fn rule9_a_subscription_never_has_more_users_than_seats() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Seats", now).await;
    let cad = product(db, "cad", 7).await;
    let sub = subscribe(
        db,
        acct.account_id,
        cad,
        PlanLevel::Standard,
        2,
        now,
        now + Duration::days(365),
    )
    .await;
    let (u1, a1) = user(db, &acct, "u1@seats.test", Role::Member, false, now).await;
    let (u2, _) = user(db, &acct, "u2@seats.test", Role::Member, false, now).await;
    let (u3, a3) = user(db, &acct, "u3@seats.test", Role::Member, false, now).await;
    let seats = || async {
        subscription_seat::Entity::find()
            .filter(subscription_seat::Column::SubscriptionId.eq(sub.id))
            .count(db.conn())
            .await
            .unwrap()
    };

    seat(db, &acct, sub.id, u1, true).await;
    seat(db, &acct, sub.id, u2, true).await;
    assert_err!(
        subscriptions::assign_subscription(db, &acct.admin, sub.id, u3, true).await,
        Conflict
    );
    assert_err!(
        subscriptions::assign_subscription(db, &Actor::Operator, sub.id, u3, true).await,
        Conflict
    );
    assert_eq!(seats().await, 2);
    assert_denied(
        &open_at(db, &a3, now, req("cad")).await,
        DenyReason::NotAssigned,
    );

    // Unassigning frees a seat.
    seat(db, &acct, sub.id, u1, false).await;
    assert_eq!(seats().await, 1);
    assert_denied(
        &open_at(db, &a1, now, req("cad")).await,
        DenyReason::NotAssigned,
    );
    seat(db, &acct, sub.id, u3, true).await;
    assert_eq!(seats().await, 2);
    assert_subscription(&open_at(db, &a3, now, req("cad")).await);
    assert_err!(
        subscriptions::assign_subscription(db, &acct.admin, sub.id, u1, true).await,
        Conflict
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rule9_concurrent_seat_assignments_never_exceed_the_seats() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "SeatRace", now).await;
    let cad = product(db, "cad", 7).await;
    let sub = subscribe(
        db,
        acct.account_id,
        cad,
        PlanLevel::Standard,
        3,
        now,
        now + Duration::days(365),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let email = format!("u{i}@seatrace.test");
        ids.push(user(db, &acct, &email, Role::Member, false, now).await.0);
    }
    let results = join_all(ids.into_iter().map(|user_id| {
        let (db, admin) = (db.clone(), acct.admin.clone());
        tokio::spawn(async move {
            subscriptions::assign_subscription(&db, &admin, sub.id, user_id, true).await
        })
    }))
    .await;
    let mut granted = 0;
    for r in results {
        match r.unwrap() {
            Ok(_) => granted += 1,
            Err(DomainError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(granted, 3);
    assert_eq!(
        subscription_seat::Entity::find()
            .filter(subscription_seat::Column::SubscriptionId.eq(sub.id))
            .count(db.conn())
            .await
            .unwrap(),
        3
    );
}

#[tokio::test]
async fn rule9_a_seat_cannot_go_to_a_user_of_another_account() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let a = account(db, "SeatA", now).await;
    let b = account(db, "SeatB", now).await;
    let cad = product(db, "cad", 7).await;
    let sub = subscribe(
        db,
        a.account_id,
        cad,
        PlanLevel::Standard,
        5,
        now,
        now + Duration::days(365),
    )
    .await;
    let (stranger_id, stranger) = user(db, &b, "s@seatb.test", Role::Member, false, now).await;

    assert_err!(
        subscriptions::assign_subscription(db, &a.admin, sub.id, stranger_id, true).await,
        NotFound
    );
    assert_err!(
        subscriptions::assign_subscription(db, &Actor::Operator, sub.id, stranger_id, true).await,
        NotFound
    );
    // B's admin cannot reach A's subscription either.
    assert_err!(
        subscriptions::assign_subscription(db, &b.admin, sub.id, stranger_id, true).await,
        Forbidden
    );
    assert_eq!(
        subscription_seat::Entity::find()
            .count(db.conn())
            .await
            .unwrap(),
        0
    );
    assert_denied(
        &open_at(db, &stranger, now, req("cad")).await,
        DenyReason::NotAssigned,
    );
}

// ---------------------------------------------------------------------------
// Rule 13: plan levels.
// ---------------------------------------------------------------------------

async fn plan(db: &Db, account_id: i32, now: DateTime<Utc>) -> PlanLevel {
    accounts::plan_level_at(db.conn(), account_id, now)
        .await
        .unwrap()
}

#[tokio::test]
async fn rule13_the_plan_level_is_the_highest_active_and_education_only_alone() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Plans", now).await;
    let ids = [
        product(db, "a", 1).await,
        product(db, "b", 1).await,
        product(db, "c", 1).await,
        product(db, "d", 1).await,
    ];
    buy(db, acct.account_id, 100, "p", now, now).await;
    let (_, member) = user(db, &acct, "m@plans.test", Role::Member, true, now).await;
    let year = Duration::days(365);

    assert_eq!(plan(db, acct.account_id, now).await, PlanLevel::Standard);
    let o = open_at(db, &member, now, req("a")).await;
    assert_eq!(o.plan_level, PlanLevel::Standard);

    subscribe(
        db,
        acct.account_id,
        ids[0],
        PlanLevel::Education,
        1,
        now - Duration::days(1),
        now + year,
    )
    .await;
    assert_eq!(plan(db, acct.account_id, now).await, PlanLevel::Education);
    // The member holds no seat, yet receives the account's plan.
    let o = open_at(db, &member, now, req("a")).await;
    assert_eq!(o.plan_level, PlanLevel::Education);

    subscribe(
        db,
        acct.account_id,
        ids[1],
        PlanLevel::Premium,
        1,
        now - Duration::days(1),
        now + year,
    )
    .await;
    assert_eq!(plan(db, acct.account_id, now).await, PlanLevel::Premium);
    // An ENTERPRISE subscription that has ended, and one not yet started, do not count.
    subscribe(
        db,
        acct.account_id,
        ids[2],
        PlanLevel::Enterprise,
        1,
        now - year,
        now,
    )
    .await;
    subscribe(
        db,
        acct.account_id,
        ids[3],
        PlanLevel::Enterprise,
        1,
        now + Duration::days(1),
        now + year,
    )
    .await;
    assert_eq!(plan(db, acct.account_id, now).await, PlanLevel::Premium);
    assert_eq!(
        accounts::plan_level(db, &member, acct.account_id, now)
            .await
            .unwrap(),
        PlanLevel::Premium
    );
    let o = open_at(db, &member, now, req("b")).await;
    assert_eq!(o.plan_level, PlanLevel::Premium);
    // Denied opens carry the plan too.
    let o = open_at(db, &member, now, req("nope")).await;
    assert_denied(&o, DenyReason::UnknownProduct);
    assert_eq!(o.plan_level, PlanLevel::Premium);

    let tomorrow = now + Duration::days(1);
    assert_eq!(
        plan(db, acct.account_id, tomorrow).await,
        PlanLevel::Enterprise
    );
    let o = open_at(db, &member, tomorrow, req("c")).await;
    assert_eq!(o.plan_level, PlanLevel::Enterprise);
    // Once everything but EDUCATION has ended, EDUCATION is back.
    assert_eq!(
        plan(db, acct.account_id, now + year - Duration::hours(1)).await,
        PlanLevel::Enterprise
    );
    assert_eq!(
        plan(db, acct.account_id, now + year).await,
        PlanLevel::Standard
    );

    // EDUCATION with STANDARD is STANDARD.
    let other = account(db, "Campus", now).await;
    subscribe(
        db,
        other.account_id,
        ids[0],
        PlanLevel::Education,
        1,
        now,
        now + year,
    )
    .await;
    assert_eq!(plan(db, other.account_id, now).await, PlanLevel::Education);
    subscribe(
        db,
        other.account_id,
        ids[1],
        PlanLevel::Standard,
        1,
        now,
        now + year,
    )
    .await;
    assert_eq!(plan(db, other.account_id, now).await, PlanLevel::Standard);
}

// ---------------------------------------------------------------------------
// Rule 19: tenancy and roles.
// ---------------------------------------------------------------------------

/// An account with two members who have each made one charge, and an analyst.
struct Tenancy {
    tdb: TestDb,
    acct: AccountFixture,
    m1_id: i32,
    m1: Actor,
    m2_id: i32,
    analyst: Actor,
    now: DateTime<Utc>,
}

async fn tenancy(name: &str) -> Tenancy {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, name, now).await;
    product(db, "cad", 7).await;
    buy(db, acct.account_id, 100, "p", now, now).await;
    let domain = name.to_lowercase();
    let (m1_id, m1) = user(
        db,
        &acct,
        &format!("m1@{domain}.test"),
        Role::Member,
        true,
        now,
    )
    .await;
    let (m2_id, m2) = user(
        db,
        &acct,
        &format!("m2@{domain}.test"),
        Role::Member,
        true,
        now,
    )
    .await;
    let (_, analyst) = user(
        db,
        &acct,
        &format!("a@{domain}.test"),
        Role::Analyst,
        false,
        now,
    )
    .await;
    assert_charged(&open_at(db, &m1, now, req("cad")).await, 7);
    assert_charged(&open_at(db, &m2, now, req("cad")).await, 7);
    Tenancy {
        tdb,
        acct,
        m1_id,
        m1,
        m2_id,
        analyst,
        now,
    }
}

fn by_user(user_id: i32) -> ChargeFilter {
    ChargeFilter {
        user_id: Some(user_id),
        ..Default::default()
    }
}

#[tokio::test]
async fn rule19_members_see_their_own_usage_not_the_books() {
    let s = tenancy("Members").await;
    let db = &s.tdb.db;
    let id = s.acct.account_id;

    assert_err!(
        lots::list_lots(db, &s.m1, id, s.now, None, all()).await,
        Forbidden
    );
    assert_err!(ledger::list_ledger(db, &s.m1, id, all()).await, Forbidden);
    assert_err!(
        users::list_users(db, &s.m1, id, None, all()).await,
        Forbidden
    );
    assert_err!(
        ledger::list_charges(db, &s.m1, id, by_user(s.m2_id), all()).await,
        Forbidden
    );

    let own = ledger::list_charges(db, &s.m1, id, ChargeFilter::default(), all())
        .await
        .unwrap();
    assert_eq!(own.items.len(), 1);
    assert!(own.items.iter().all(|(_, c)| c.user_id == s.m1_id));
    let own = ledger::list_charges(db, &s.m1, id, by_user(s.m1_id), all())
        .await
        .unwrap();
    assert_eq!(own.items.len(), 1);
    assert_eq!(own.items[0].1.user_id, s.m1_id);

    // The admin sees both.
    let every = ledger::list_charges(db, &s.acct.admin, id, ChargeFilter::default(), all())
        .await
        .unwrap();
    assert_eq!(every.items.len(), 2);
    // Members may read the account's balance (their launcher shows it).
    assert_eq!(accounts::balance(db, &s.m1, id, s.now).await.unwrap(), 86);
}

#[tokio::test]
async fn rule19_analysts_read_everything_of_their_account_and_change_nothing() {
    let s = tenancy("Analysts").await;
    let db = &s.tdb.db;
    let id = s.acct.account_id;
    let a = &s.analyst;

    assert_eq!(
        lots::list_lots(db, a, id, s.now, None, all())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let ledger = ledger::list_ledger(db, a, id, all()).await.unwrap();
    assert_eq!(ledger.items.len(), 3, "one purchase, two charges");
    assert_eq!(
        ledger::list_charges(db, a, id, ChargeFilter::default(), all())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert_eq!(
        ledger::list_charges(db, a, id, by_user(s.m2_id), all())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        users::list_users(db, a, id, None, all())
            .await
            .unwrap()
            .items
            .len(),
        4
    );

    assert_err!(
        lots::purchase(db, a, s.now, self_service(10, "analyst")).await,
        Forbidden
    );
    assert_err!(
        users::create_user(
            db,
            a,
            s.now,
            None,
            NewUser {
                email: "x@analysts.test".into(),
                name: "X".into(),
                role: Role::Member,
            },
        )
        .await,
        Forbidden
    );
    assert_err!(
        users::set_allowed_products(db, a, None, None, Some(vec![])).await,
        Forbidden
    );
    assert_err!(
        users::set_allowed_products(db, a, Some(s.m1_id), None, Some(vec![])).await,
        Forbidden
    );
    assert_err!(
        users::assign_flex(db, a, &[s.m1_id], false).await,
        Forbidden
    );
    assert_err!(
        accounts::set_low_balance_threshold(db, a, None, 5).await,
        Forbidden
    );
    assert_err!(open_product(db, a, s.now, req("cad")).await, Forbidden);
    assert_eq!(lot_count(db, id).await, 1);
    assert_eq!(balance(db, id, s.now).await, 86);
    assert_eq!(
        open_rows(db, id).await.len(),
        2,
        "the analyst's open is not an open"
    );
}

#[tokio::test]
async fn rule19_an_admin_sees_only_their_own_account() {
    let s = tenancy("Home").await;
    let db = &s.tdb.db;
    let now = s.now;
    let home = s.acct.account_id;
    let away = account(db, "Away", now).await;
    let away_id = away.account_id;
    buy(db, away_id, 40, "p", now, now).await;
    let (away_user, _) = user(db, &away, "u@away.test", Role::Member, true, now).await;
    let admin = &s.acct.admin;

    assert_err!(
        lots::list_lots(db, admin, away_id, now, None, all()).await,
        Forbidden
    );
    assert_err!(
        ledger::list_ledger(db, admin, away_id, all()).await,
        Forbidden
    );
    assert_err!(
        ledger::list_charges(db, admin, away_id, ChargeFilter::default(), all()).await,
        Forbidden
    );
    assert_err!(
        users::list_users(db, admin, away_id, None, all()).await,
        Forbidden
    );
    assert_err!(accounts::balance(db, admin, away_id, now).await, Forbidden);
    assert_err!(
        accounts::get_account(db, admin, Some(away_id)).await,
        Forbidden
    );
    assert_err!(
        accounts::plan_level(db, admin, away_id, now).await,
        Forbidden
    );
    assert_err!(
        lots::purchase(
            db,
            admin,
            now,
            PurchaseInput {
                account_id: Some(away_id),
                ..self_service(10, "theirs")
            },
        )
        .await,
        Forbidden
    );
    assert_err!(
        users::create_user(
            db,
            admin,
            now,
            Some(away_id),
            NewUser {
                email: "x@away.test".into(),
                name: "X".into(),
                role: Role::Member,
            },
        )
        .await,
        Forbidden
    );
    assert_err!(
        users::assign_flex(db, admin, &[away_user], false).await,
        Forbidden
    );
    assert_err!(
        users::set_allowed_products(db, admin, Some(away_user), None, Some(vec![])).await,
        Forbidden
    );
    assert_err!(
        users::deactivate_user(db, admin, away_user).await,
        Forbidden
    );
    // Nothing of the other account moved.
    assert_eq!(balance(db, away_id, now).await, 40);
    assert_eq!(lot_count(db, away_id).await, 1);

    // The operator sees all.
    assert_eq!(
        lots::list_lots(db, &Actor::Operator, away_id, now, None, all())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        ledger::list_charges(db, &Actor::Operator, home, ChargeFilter::default(), all())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
}

#[tokio::test]
async fn rule19_a_deactivated_user_may_read_viewer_and_nothing_else() {
    let s = tenancy("Deactivated").await;
    let db = &s.tdb.db;
    let now = s.now;
    let id = s.acct.account_id;
    let second_admin = users::create_user(
        db,
        &s.acct.admin,
        now,
        None,
        NewUser {
            email: "admin2@deactivated.test".into(),
            name: "Second".into(),
            role: Role::Admin,
        },
    )
    .await
    .unwrap()
    .user;
    let gone_admin = users::deactivate_user(db, &s.acct.admin, second_admin.id)
        .await
        .unwrap();
    let gone_member = users::deactivate_user(db, &s.acct.admin, s.m1_id)
        .await
        .unwrap();
    assert!(!gone_admin.active && !gone_member.active);
    let gone_admin_actor = actor_of(&gone_admin);
    let gone_member_actor = actor_of(&gone_member);

    for (gone, gone_id) in [
        (&gone_admin_actor, gone_admin.id),
        (&gone_member_actor, gone_member.id),
    ] {
        assert_err!(
            lots::list_lots(db, gone, id, now, None, all()).await,
            Forbidden
        );
        assert_err!(ledger::list_ledger(db, gone, id, all()).await, Forbidden);
        assert_err!(
            ledger::list_charges(db, gone, id, ChargeFilter::default(), all()).await,
            Forbidden
        );
        assert_err!(
            ledger::list_charges(db, gone, id, by_user(gone_id), all()).await,
            Forbidden
        );
        assert_err!(
            users::list_users(db, gone, id, None, all()).await,
            Forbidden
        );
        assert_err!(accounts::balance(db, gone, id, now).await, Forbidden);
        assert_err!(accounts::get_account(db, gone, None).await, Forbidden);
        assert_err!(
            subscriptions::list_subscriptions(db, gone, id).await,
            Forbidden
        );
        assert_err!(catalog::quote(db, gone, 10).await, Forbidden);
        assert_err!(catalog::price_list(db, gone).await, Forbidden);
        assert_err!(catalog::list_products(db, gone, false).await, Forbidden);
        assert_err!(
            lots::purchase(db, gone, now, self_service(10, "gone")).await,
            Forbidden
        );

        // `viewer` still answers.
        let me = users::viewer_user(db, gone).await.unwrap().expect("viewer");
        assert_eq!(me.id, gone_id);
        assert!(!me.active);
        let acct = accounts::viewer_account(db, gone)
            .await
            .unwrap()
            .expect("viewer account");
        assert_eq!(acct.id, id);
    }

    // What only an admin could do is forbidden to the deactivated admin too.
    let g = &gone_admin_actor;
    assert_err!(
        users::create_user(
            db,
            g,
            now,
            None,
            NewUser {
                email: "x@deactivated.test".into(),
                name: "X".into(),
                role: Role::Member,
            },
        )
        .await,
        Forbidden
    );
    assert_err!(
        users::assign_flex(db, g, &[s.m2_id], false).await,
        Forbidden
    );
    assert_err!(
        users::set_allowed_products(db, g, None, None, Some(vec![])).await,
        Forbidden
    );
    assert_err!(
        accounts::set_low_balance_threshold(db, g, None, 1).await,
        Forbidden
    );
    assert_err!(
        users::deactivate_user(db, g, s.acct.admin_id).await,
        Forbidden
    );

    // Their opens are denied, not refused.
    let o = open_at(
        db,
        &gone_member_actor,
        now + Duration::hours(30),
        req("cad"),
    )
    .await;
    assert_denied(&o, DenyReason::UserDeactivated);
    assert_eq!(lot_count(db, id).await, 1);
    assert_eq!(balance(db, id, now).await, 86);
}

/// Rule 8 for the vendor's staff: an operator sets an account's product list by naming
/// the account; an admin naming another account is refused, and nothing changes there.
#[tokio::test]
async fn operators_set_an_accounts_product_list_by_naming_it() {
    let tdb = TestDb::new().await;
    let db = &tdb.db;
    let now = t(NOW);
    let acct = account(db, "Named", now).await;
    let other = account(db, "Other", now).await;
    let cad = product(db, "cad", 2).await;
    product(db, "cam", 3).await;
    buy(db, acct.account_id, 100, "p", now, now).await;
    let (member_id, member) = user(db, &acct, "m@named.test", Role::Member, true, now).await;

    assert_err!(
        users::set_allowed_products(db, &Actor::Operator, None, None, Some(vec![cad])).await,
        BadInput
    );
    assert_err!(
        users::set_allowed_products(db, &other.admin, None, Some(acct.account_id), Some(vec![]))
            .await,
        Forbidden
    );
    assert_err!(
        users::set_allowed_products(
            db,
            &Actor::Operator,
            Some(member_id),
            Some(other.account_id),
            None
        )
        .await,
        BadInput
    );
    assert_charged(&open_at(db, &member, now, req("cam")).await, 3);

    users::set_allowed_products(
        db,
        &Actor::Operator,
        None,
        Some(acct.account_id),
        Some(vec![cad]),
    )
    .await
    .unwrap();
    assert_charged(&open_at(db, &member, now, req("cad")).await, 2);
    let later = now + Duration::hours(25);
    assert_denied(
        &open_at(db, &member, later, req("cam")).await,
        DenyReason::ProductRestricted,
    );
}
