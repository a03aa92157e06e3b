//! Storage schema of Daypass. Every migration runs unchanged on SQLite and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_ledger;
mod m20261128_000002_notifications;
mod m20261128_000003_usage_rollups;
mod m20261129_000001_period_users_since;
mod m20261129_000002_user_day_blocks;
mod m20261206_000001_sessions;
mod m20261206_000002_signing_keys;
mod m20261206_000003_sessions_heartbeat_hot;
mod m20261206_000004_alerts_webhooks_reports;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_ledger::Migration),
            Box::new(m20261128_000002_notifications::Migration),
            Box::new(m20261128_000003_usage_rollups::Migration),
            Box::new(m20261129_000001_period_users_since::Migration),
            Box::new(m20261129_000002_user_day_blocks::Migration),
            Box::new(m20261206_000001_sessions::Migration),
            Box::new(m20261206_000002_signing_keys::Migration),
            Box::new(m20261206_000003_sessions_heartbeat_hot::Migration),
            Box::new(m20261206_000004_alerts_webhooks_reports::Migration),
        ]
    }
}

/// The PostgreSQL advisory lock key that serializes migrations ("daypass" in ASCII,
/// read as a number, so no other application's key is likely to match).
const MIGRATION_LOCK: i64 = 0x0064_6179_7061_7373;

/// Applies pending migrations inside the caller's write transaction (DDL is
/// transactional on both databases). On SQLite the caller's `BEGIN IMMEDIATE` holds
/// the writer lock; on PostgreSQL an advisory lock held until commit serializes the
/// migrators, which sea-orm-migration does not do by itself.
pub async fn apply(tx: &sea_orm_migration::sea_orm::DatabaseTransaction) -> Result<(), DbErr> {
    use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend, Statement};
    if tx.get_database_backend() == DatabaseBackend::Postgres {
        tx.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [MIGRATION_LOCK.into()],
        ))
        .await?;
    }
    Migrator::up(tx, None).await
}
