//! The rules written as SQL conditions (`daypass_domain::conditions`) select exactly
//! what their Rust twins (`daypass_domain::rules`) decide, on the real database:
//! through sea-orm filters and through the text the hand-written statements embed.

use chrono::{DateTime, Duration, Utc};
use daypass_domain::conditions;
use daypass_domain::entity::{lot, subscription};
use daypass_domain::rules::{self, LotCounts};
use daypass_domain::store::stmt;
use daypass_domain::units::Tokens;
use daypass_domain::vocabulary::LotStatus;
use daypass_tests::{TestDb, account, product, t};
use proptest::prelude::*;
use sea_orm::sea_query::Alias;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use std::collections::BTreeSet;

/// A lot as stored: remaining and expired tokens, expiring some seconds (and
/// microseconds) from the base instant.
#[derive(Debug, Clone)]
struct LotCase {
    remaining: i64,
    expired: i64,
    used: i64,
    expires_in_micros: i64,
}

#[derive(Debug, Clone)]
struct SubscriptionCase {
    starts_in_micros: i64,
    length_micros: i64,
}

/// Offsets around the base instant, clustered so that many fall exactly on or next
/// to the instants the conditions are asked about.
fn offset() -> impl Strategy<Value = i64> {
    prop_oneof![
        (-3_i64..=3).prop_map(|s| s * 1_000_000),
        (-3_i64..=3).prop_map(|s| s * 1_000_000 + 1),
        (-3_i64..=3).prop_map(|s| s * 1_000_000 - 1),
        -5_000_000_i64..5_000_000,
    ]
}

fn lot_case() -> impl Strategy<Value = LotCase> {
    (
        prop_oneof![Just(0_i64), 1_i64..5],
        prop_oneof![Just(0_i64), 1_i64..5],
        0_i64..3,
        offset(),
    )
        .prop_map(|(remaining, expired, used, expires_in_micros)| LotCase {
            remaining,
            expired,
            // A lot holds at least one token, spent or not.
            used: if remaining + expired == 0 {
                used.max(1)
            } else {
                used
            },
            expires_in_micros,
        })
}

fn subscription_case() -> impl Strategy<Value = SubscriptionCase> {
    (offset(), prop_oneof![Just(1_i64), 1_i64..4_000_000]).prop_map(
        |(starts_in_micros, length_micros)| SubscriptionCase {
            starts_in_micros,
            length_micros,
        },
    )
}

async fn check(lots: Vec<LotCase>, subscriptions: Vec<SubscriptionCase>, asked: Vec<i64>) {
    let test = TestDb::new().await;
    let db = &test.db;
    let base = t("2027-03-01T12:00:00Z");
    let acct = account(db, "Conditions", base - Duration::days(1)).await;
    let product_id = product(db, "CAD", 10).await;
    let at = |micros: i64| base + Duration::microseconds(micros);
    let mut stored_lots = Vec::new();
    for (i, case) in lots.iter().enumerate() {
        let quantity = case.remaining + case.expired + case.used;
        let model = lot::ActiveModel {
            account_id: Set(acct.account_id),
            quantity: Set(quantity),
            remaining: Set(case.remaining),
            used: Set(case.used),
            expired: Set(case.expired),
            unit_price_minor: Set(100),
            currency: Set("EUR".into()),
            purchased_at: Set(base - Duration::days(300)),
            expires_at: Set(at(case.expires_in_micros)),
            status: Set("ACTIVE".into()),
            idempotency_key: Set(format!("case-{i}")),
            created_at: Set(base - Duration::days(300)),
            ..Default::default()
        }
        .insert(db.conn())
        .await
        .expect("insert lot");
        stored_lots.push(model);
    }
    let mut stored_subscriptions = Vec::new();
    for case in &subscriptions {
        let model = subscription::ActiveModel {
            account_id: Set(acct.account_id),
            product_id: Set(product_id),
            plan_level: Set("PROFESSIONAL".into()),
            seats: Set(1),
            starts_at: Set(at(case.starts_in_micros)),
            ends_at: Set(at(case.starts_in_micros + case.length_micros)),
            ..Default::default()
        }
        .insert(db.conn())
        .await
        .expect("insert subscription");
        stored_subscriptions.push(model);
    }

    // Every instant a lot or a subscription turns at, and the asked ones.
    let mut instants: BTreeSet<DateTime<Utc>> = asked.into_iter().map(at).collect();
    for l in &stored_lots {
        instants.extend([l.expires_at, l.expires_at - Duration::microseconds(1)]);
    }
    for s in &stored_subscriptions {
        instants.extend([
            s.starts_at,
            s.ends_at,
            s.ends_at - Duration::microseconds(1),
        ]);
    }

    let lots_where = |condition| async move {
        ids(lot::Entity::find()
            .filter(lot::Column::AccountId.eq(acct.account_id))
            .filter(condition)
            .all(db.conn())
            .await
            .expect("lots")
            .into_iter()
            .map(|l| l.id))
    };
    for &now in &instants {
        let expected = |keep: &dyn Fn(&lot::Model) -> bool| {
            ids(stored_lots.iter().filter(|l| keep(l)).map(|l| l.id))
        };
        assert_eq!(
            lots_where(conditions::live_lot(lot::Entity, now)).await,
            expected(&|l| rules::lot_is_live(Tokens(l.remaining), l.expires_at, now)),
            "live lots at {now}"
        );
        assert_eq!(
            lots_where(conditions::unexpired_lot(lot::Entity, now)).await,
            expected(&|l| rules::lot_is_unexpired(l.expires_at, now)),
            "unexpired lots at {now}"
        );
        assert_eq!(
            lots_where(conditions::lot_holding_expired_tokens(lot::Entity, now)).await,
            expected(&|l| rules::lot_holds_expired_tokens(l.remaining, l.expires_at, now)),
            "lots holding expired tokens at {now}"
        );
        for status in [LotStatus::Active, LotStatus::Expired, LotStatus::Depleted] {
            let found = ids(lot::Entity::find()
                .filter(lot::Column::AccountId.eq(acct.account_id))
                .filter(conditions::lot_status_is(status, now))
                .all(db.conn())
                .await
                .expect("lots by status")
                .into_iter()
                .map(|l| l.id));
            let counts = |l: &lot::Model| LotCounts {
                quantity: l.quantity,
                remaining: l.remaining,
                used: l.used,
                expired: l.expired,
            };
            assert_eq!(
                found,
                expected(&|l| rules::lot_status(rules::lot_counts_at(
                    counts(l),
                    l.expires_at,
                    now
                )) == status),
                "{status:?} lots at {now}"
            );
        }
        // The text the hand-written statements embed, with `at` a column.
        let backend = db.backend();
        let live_text = conditions::text(
            backend,
            conditions::live_lot(Alias::new("l"), conditions::column("asked", "at")),
        );
        let rows = db
            .conn()
            .query_all_raw(stmt(
                backend,
                &format!(
                    "WITH asked(at) AS (VALUES (?)) SELECT l.id FROM lots l, asked \
                     WHERE l.account_id = ? AND {live_text}"
                ),
                vec![now.into(), acct.account_id.into()],
            ))
            .await
            .expect("live lots by text");
        let by_text = ids(rows.iter().map(|r| r.try_get::<i32>("", "id").expect("id")));
        assert_eq!(
            by_text,
            expected(&|l| rules::lot_is_live(Tokens(l.remaining), l.expires_at, now)),
            "live lots at {now}, by the text of hand-written statements"
        );

        let active = ids(subscription::Entity::find()
            .filter(subscription::Column::AccountId.eq(acct.account_id))
            .filter(conditions::active_subscription(subscription::Entity, now))
            .all(db.conn())
            .await
            .expect("subscriptions")
            .into_iter()
            .map(|s| s.id));
        assert_eq!(
            active,
            ids(stored_subscriptions
                .iter()
                .filter(|s| rules::subscription_active(s.starts_at, s.ends_at, now))
                .map(|s| s.id)),
            "active subscriptions at {now}"
        );
    }
}

fn ids(ids: impl IntoIterator<Item = i32>) -> BTreeSet<i32> {
    ids.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn sql_conditions_select_what_the_rules_decide(
        lots in proptest::collection::vec(lot_case(), 1..12),
        subscriptions in proptest::collection::vec(subscription_case(), 0..6),
        asked in proptest::collection::vec(offset(), 1..6),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(check(lots, subscriptions, asked));
    }
}

/// A session as stored: opened about a day before the base instant, heard from
/// about 15 minutes before it (or never), so the instants asked about fall on and
/// around both lapse boundaries.
#[derive(Debug, Clone)]
struct SessionCase {
    started_in_micros: i64,
    heard_in_micros: Option<i64>,
}

fn session_case() -> impl Strategy<Value = SessionCase> {
    (offset(), proptest::option::of(offset())).prop_map(|(started, heard)| SessionCase {
        started_in_micros: started,
        heard_in_micros: heard,
    })
}

async fn check_sessions(cases: Vec<SessionCase>, asked: Vec<i64>) {
    use daypass_domain::entity::session;
    let test = TestDb::new().await;
    let db = &test.db;
    let base = t("2027-03-01T12:00:00Z");
    let acct = account(db, "Lapses", base - Duration::days(2)).await;
    let product_id = product(db, "CAD", 10).await;
    let at = |micros: i64| base + Duration::microseconds(micros);
    let mut stored = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let started_at = at(case.started_in_micros) - rules::UNWATCHED_LAPSE;
        let heard = case
            .heard_in_micros
            .map(|m| (at(m) - rules::HEARTBEAT_LAPSE).max(started_at));
        let model = session::ActiveModel {
            id: Set(format!("case-{i}")),
            account_id: Set(acct.account_id),
            user_id: Set(acct.admin_id),
            product_id: Set(product_id),
            device_id: Set("default".into()),
            version: Set(None),
            source: Set("FLEX".into()),
            state: Set("OPEN".into()),
            active: Set(true),
            started_at: Set(started_at),
            last_heartbeat_at: Set(heard),
            ended_at: Set(None),
            deny_reason: Set(None),
            open_charge_id: Set(None),
        }
        .insert(db.conn())
        .await
        .expect("insert session");
        stored.push(model);
    }
    let mut instants: BTreeSet<DateTime<Utc>> = asked.into_iter().map(at).collect();
    for s in &stored {
        let lapses = rules::session_lapses_at(s.started_at, s.last_heartbeat_at);
        instants.extend([lapses, lapses - Duration::microseconds(1)]);
    }
    let names = |it: &mut dyn Iterator<Item = String>| it.collect::<BTreeSet<String>>();
    for &now in &instants {
        let expected = names(
            &mut stored
                .iter()
                .filter(|s| rules::session_lapsed(s.started_at, s.last_heartbeat_at, now))
                .map(|s| s.id.clone()),
        );
        let (heartbeat_cutoff, unwatched_cutoff) = rules::lapse_cutoffs(now);
        let found = session::Entity::find()
            .filter(conditions::lapsed_session(
                session::Entity,
                heartbeat_cutoff,
                unwatched_cutoff,
            ))
            .all(db.conn())
            .await
            .expect("sessions");
        assert_eq!(
            names(&mut found.into_iter().map(|s| s.id)),
            expected,
            "lapsed sessions at {now}"
        );
        // As the batched heartbeat embeds it, with the cutoffs as columns.
        let backend = db.backend();
        let lapsed_text = conditions::text(
            backend,
            conditions::lapsed_session(
                Alias::new("s"),
                conditions::column("v", "hc"),
                conditions::column("v", "uc"),
            ),
        );
        let rows = db
            .conn()
            .query_all_raw(stmt(
                backend,
                &format!(
                    "WITH v(hc, uc) AS (VALUES (?, ?)) SELECT s.id FROM sessions s, v \
                     WHERE {lapsed_text}"
                ),
                vec![heartbeat_cutoff.into(), unwatched_cutoff.into()],
            ))
            .await
            .expect("lapsed sessions by text");
        assert_eq!(
            names(
                &mut rows
                    .iter()
                    .map(|r| r.try_get::<String>("", "id").expect("id"))
            ),
            expected,
            "lapsed sessions at {now}, by the text of the batched heartbeat"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    #[test]
    fn the_lapse_condition_selects_what_the_rule_decides(
        sessions in proptest::collection::vec(session_case(), 1..10),
        asked in proptest::collection::vec(offset(), 1..6),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(check_sessions(sessions, asked));
    }
}
