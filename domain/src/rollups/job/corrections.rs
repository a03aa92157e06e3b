//! Refunds of rolled days (rule 21): a short launch refunded after its day closed
//! changes that day's usage. The refund's transaction takes the watermark's lock;
//! if the day is rolled already it rolls that account's day again itself, else it
//! leaves a correction that the job's last transaction of the day applies under
//! the same lock. Either way the day's rows are never left counting a refunded
//! charge, whichever commits first.

use super::{UserChunk, replace_account_rows, replace_user_rows};
use crate::error::Result;
use crate::rollups::{ROLLUP_GRACE, day_aggregates, day_start, rolled_through};
use crate::store::stmt;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend};

/// Called in a refund's transaction (the account locked) for a charge made on
/// `day`: keeps the day's rollups exact when the rollup job may have read it.
pub(crate) async fn after_refund(
    conn: &impl ConnectionTrait,
    account_id: i32,
    day: NaiveDate,
    now: DateTime<Utc>,
) -> Result<()> {
    if now < day_start(day + Duration::days(1)) + ROLLUP_GRACE {
        // The job reads a day only once it has closed: it will read the refund.
        return Ok(());
    }
    let backend = conn.get_database_backend();
    if backend == DatabaseBackend::Postgres {
        conn.execute_raw(stmt(
            backend,
            "SELECT id FROM rollup_watermark WHERE id = 1 FOR UPDATE",
            vec![],
        ))
        .await?;
    }
    if rolled_through(conn).await?.is_some_and(|w| w >= day) {
        roll_account_day(conn, account_id, day).await
    } else {
        conn.execute_raw(stmt(
            backend,
            "INSERT INTO rollup_corrections (account_id, day) VALUES (?, ?) \
             ON CONFLICT (account_id, day) DO NOTHING",
            vec![account_id.into(), day.into()],
        ))
        .await?;
        Ok(())
    }
}

/// In the job's last transaction of `day` (the watermark locked): the accounts
/// refunded since the job read the day are rolled again from the raw rows.
pub(super) async fn apply(conn: &impl ConnectionTrait, day: NaiveDate) -> Result<()> {
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(stmt(
            backend,
            "SELECT account_id FROM rollup_corrections WHERE day = ?",
            vec![day.into()],
        ))
        .await?;
    for row in rows {
        let account_id: i32 = row.try_get("", "account_id")?;
        roll_account_day(conn, account_id, day).await?;
    }
    conn.execute_raw(stmt(
        backend,
        "DELETE FROM rollup_corrections WHERE day <= ?",
        vec![day.into()],
    ))
    .await?;
    Ok(())
}

/// One account's rows of `day`, every grain, from its raw rows as `conn` sees them.
/// The day's distinct users do not move: a refund keeps its open.
async fn roll_account_day(
    conn: &impl ConnectionTrait,
    account_id: i32,
    day: NaiveDate,
) -> Result<()> {
    let mut aggregates = day_aggregates(conn, day, account_id).await?;
    aggregates.sort_unstable_by_key(|a| (a.account_id, a.user_id, a.product_id));
    let chunk = UserChunk {
        aggregates: &aggregates,
        ranges: vec![(account_id, None, None)],
    };
    replace_user_rows(conn, day, &chunk).await?;
    replace_account_rows(conn, day, &aggregates).await
}
