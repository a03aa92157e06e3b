//! Storage schema of Daypass. Every migration runs unchanged on SQLite and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_ledger;
mod m20261128_000002_notifications;
mod m20261128_000003_usage_rollups;
mod m20261129_000001_period_users_since;
mod m20261129_000002_user_day_blocks;

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
        ]
    }
}
