//! A heartbeat writes only its session's last heartbeat and activity. With neither
//! in an index, PostgreSQL can rewrite the row on its own page without touching an
//! index (a HOT update), given room on the page, and SQLite updates no index. The
//! lapse sweep finds the open sessions through a partial index of them instead of an
//! index over the state and the last heartbeat.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The open sessions by account: the lapse sweep reads them in account order. A
/// session's state is only ever written when it ends, so a heartbeat leaves this
/// index alone (a column in an index's predicate counts as indexed for HOT).
const CREATE_OPEN_INDEX: &str =
    "CREATE INDEX ix_sessions_open ON sessions (account_id) WHERE state = 'OPEN'";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let conn = m.get_connection();
        conn.execute_unprepared("DROP INDEX ix_sessions_state_heartbeat")
            .await?;
        conn.execute_unprepared(CREATE_OPEN_INDEX).await?;
        if m.get_database_backend() == sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
            // Room on each page for the next versions of its rows: a session is
            // rewritten at every heartbeat. Pages written from now on keep it.
            conn.execute_unprepared("ALTER TABLE sessions SET (fillfactor = 80)")
                .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let conn = m.get_connection();
        if m.get_database_backend() == sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
            conn.execute_unprepared("ALTER TABLE sessions RESET (fillfactor)")
                .await?;
        }
        conn.execute_unprepared("DROP INDEX ix_sessions_open")
            .await?;
        conn.execute_unprepared(
            "CREATE INDEX ix_sessions_state_heartbeat ON sessions (state, last_heartbeat_at)",
        )
        .await?;
        Ok(())
    }
}
