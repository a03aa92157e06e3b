//! The test harness: a fresh database per test (SQLite file by default, PostgreSQL
//! when `DAYPASS_TEST_DATABASE` names a server), fixtures over the domain, the
//! application in process ([`TestApp`]) and the real `daypass` binary started on a
//! free port ([`TestServer`]), both called through [`Api`].

use chrono::{DateTime, Utc};
use daypass_domain::{
    Actor, Db, Role,
    access::UserActor,
    accounts::{self, NewAccount},
    catalog::{self, UpsertProduct},
    lots::{self, PurchaseInput},
    users::{self, NewUser},
};
use sea_orm::{ConnectionTrait, Database};
use std::sync::atomic::{AtomicU32, Ordering};

pub mod api;
pub mod app;
pub mod cluster;
pub mod generate;
pub mod json;
pub mod ledger;
pub mod load;
pub mod server;
pub mod smtp;
pub mod webhook_receiver;
pub mod ws;

pub use api::Api;
pub use app::TestApp;
pub use server::TestServer;

/// A fresh, migrated database for one test.
pub struct TestDb {
    pub url: String,
    pub db: Db,
    _dir: Option<tempfile::TempDir>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// `DAYPASS_TEST_DATABASE`: unset or `sqlite` for SQLite files, or a PostgreSQL URL of
/// a server where tests may create databases (each test creates its own).
pub fn target_database() -> Option<String> {
    std::env::var("DAYPASS_TEST_DATABASE")
        .ok()
        .filter(|v| !v.is_empty() && v != "sqlite")
}

pub fn on_postgres() -> bool {
    target_database().is_some()
}

impl TestDb {
    /// A new empty database on the configured backend. On PostgreSQL an unreachable
    /// server fails the test: it never skips.
    pub async fn new() -> TestDb {
        let url = Self::fresh_url().await;
        let (url, dir) = url;
        let db = Db::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test database {url}: {e}"));
        db.migrate().await.expect("migrations apply");
        TestDb { url, db, _dir: dir }
    }

    /// A URL for a new, empty, not yet migrated database (for the binary to migrate).
    pub async fn fresh_url() -> (String, Option<tempfile::TempDir>) {
        match target_database() {
            None => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("daypass.db").display()
                );
                (url, Some(dir))
            }
            Some(server) => {
                let name = format!(
                    "daypass_test_{}_{}_{}",
                    std::process::id(),
                    SEQ.fetch_add(1, Ordering::SeqCst),
                    rand::random::<u32>()
                );
                let admin = Database::connect(&server)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL test server {server} unreachable: {e}"));
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let base = server
                    .rsplit_once('/')
                    .map(|(b, _)| b.to_owned())
                    .unwrap_or(server.clone());
                (format!("{base}/{name}"), None)
            }
        }
    }
}

/// Creates an empty database named `{prefix}_…` on the PostgreSQL server that
/// `server` (a URL of any database on it) points to, and returns its URL. An
/// unreachable server is an error here: the caller decides whether that skips.
pub async fn create_postgres_database(server: &str, prefix: &str) -> anyhow::Result<String> {
    let name = format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst),
        rand::random::<u32>()
    );
    let admin = Database::connect(server)
        .await
        .map_err(|e| anyhow::anyhow!("PostgreSQL server {server} unreachable: {e}"))?;
    let created = admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot create database {name} on {server}: {e}"));
    admin.close().await.ok();
    created?;
    let base = server
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(server.to_owned());
    Ok(format!("{base}/{name}"))
}

/// True when the environment says this is CI (`CI` set and not empty): services the
/// tests need must then be there, and a test never skips.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// A service a test needs (Redis, a PostgreSQL server): in CI its absence fails the
/// test; elsewhere (a laptop without it) the test says SKIP and returns `None`.
pub fn require<T>(what: &str, found: anyhow::Result<T>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(e) if in_ci() => panic!("{what} is required in CI: {e}"),
        Err(e) => {
            println!("SKIP ({what} unavailable): {e}");
            None
        }
    }
}

/// A fixed instant to build scenarios on.
pub fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("RFC 3339 instant")
}

/// An account with its admin, built through the domain as an operator would.
pub struct AccountFixture {
    pub account_id: i32,
    pub admin: Actor,
    pub admin_id: i32,
    pub admin_key: String,
}

pub async fn account(db: &Db, name: &str, now: DateTime<Utc>) -> AccountFixture {
    let created = accounts::create_account(
        db,
        &Actor::Operator,
        now,
        NewAccount {
            name: name.into(),
            admin_email: format!("admin@{}.test", name.to_lowercase()),
            admin_name: "Admin".into(),
        },
    )
    .await
    .expect("create account");
    AccountFixture {
        account_id: created.account.id,
        admin_id: created.admin.id,
        admin: actor_of(&created.admin),
        admin_key: created.admin_api_key,
    }
}

pub fn actor_of(u: &daypass_domain::entity::user::Model) -> Actor {
    Actor::User(UserActor {
        user_id: u.id,
        account_id: u.account_id,
        role: u.role.parse().unwrap(),
        active: u.active,
    })
}

/// A user of the account with `role`; flex-assigned when `flex`.
pub async fn user(
    db: &Db,
    acct: &AccountFixture,
    email: &str,
    role: Role,
    flex: bool,
    now: DateTime<Utc>,
) -> (i32, Actor) {
    let created = users::create_user(
        db,
        &acct.admin,
        now,
        None,
        NewUser {
            email: email.into(),
            name: email.into(),
            role,
        },
    )
    .await
    .expect("create user");
    if flex {
        users::assign_flex(db, &acct.admin, &[created.user.id], true)
            .await
            .expect("assign flex");
    }
    (created.user.id, actor_of(&created.user))
}

pub async fn product(db: &Db, code: &str, daily_rate: i64) -> i32 {
    catalog::upsert_product(
        db,
        &Actor::Operator,
        UpsertProduct {
            code: code.into(),
            name: format!("{code} product"),
            daily_rate,
            annual_subscription_minor: Some(daily_rate * 200 * 100),
            active: true,
        },
    )
    .await
    .expect("upsert product")
    .id
}

/// An operator purchase recorded at `purchased_at` (so expiry scenarios can be built).
pub async fn buy(
    db: &Db,
    account_id: i32,
    quantity: i64,
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
            unit_price_minor: None,
            purchased_at: Some(purchased_at),
        },
    )
    .await
    .expect("purchase")
    .lot
    .id
}
