//! Writing the year's rows fast: multi-row INSERTs in one transaction per batch on
//! SQLite, `COPY … FROM STDIN` on PostgreSQL. Both on connections of their own, so
//! the bulk settings (no fsync per commit, a large page cache) stay off the domain's
//! pool.

use super::rows::{Batch, ChargeRow, LedgerRow, LotFinal, LotRow, OpenRow, WindowRow};
use anyhow::{Context, Result};
use chrono::{DateTime, Datelike, Timelike, Utc};
use daypass_domain::Db;
use sea_orm::sqlx::{
    self, AssertSqlSafe, Connection, Sqlite,
    postgres::PgConnection,
    query::Query,
    sqlite::{SqliteArguments, SqliteConnection},
};
use std::fmt::Write as _;
use std::sync::Arc;

pub enum Sink {
    Sqlite(Box<SqliteConnection>),
    /// The connections, and whether their foreign-key triggers are off.
    Postgres(Box<[PgConnection; 2]>, bool),
}

const LOT_COLS: &str = "id, account_id, quantity, remaining, used, expired, unit_price_minor, \
     currency, purchased_at, expires_at, status, idempotency_key, created_at";
const CHARGE_COLS: &str = "id, account_id, user_id, product_id, version, tokens, cost_minor, \
     window_starts_at, window_ends_at";
const LEDGER_COLS: &str = "id, account_id, kind, tokens, lot_id, charge_id, at";
const OPEN_COLS: &str = "id, account_id, user_id, product_id, product_code, version, at, \
     granted, source, deny_reason, charge_id, tokens";
const WINDOW_COLS: &str = "user_id, product_id, charge_id, starts_at, ends_at";

/// Every foreign key of the tables the generator fills: (table, column, parent).
pub const REFERENCES: [(&str, &str, &str); 12] = [
    ("lots", "account_id", "accounts"),
    ("charges", "account_id", "accounts"),
    ("charges", "user_id", "users"),
    ("charges", "product_id", "products"),
    ("ledger_entries", "account_id", "accounts"),
    ("ledger_entries", "lot_id", "lots"),
    ("ledger_entries", "charge_id", "charges"),
    ("opens", "account_id", "accounts"),
    ("opens", "user_id", "users"),
    ("windows", "user_id", "users"),
    ("windows", "product_id", "products"),
    ("windows", "charge_id", "charges"),
];

/// The tables the generator gives explicit ids, whose sequences follow afterwards.
pub const ID_TABLES: [&str; 5] = ["users", "lots", "charges", "ledger_entries", "opens"];

impl Sink {
    /// Connections taken out of the domain's pool for good, so their bulk settings
    /// never reach a connection the domain uses.
    pub async fn from_db(db: &Db) -> Result<Sink> {
        if db.is_postgres() {
            let pool = db.conn().get_postgres_connection_pool();
            let mut a = pool.acquire().await?.detach();
            let mut b = pool.acquire().await?.detach();
            let mut triggers_off = true;
            for c in [&mut a, &mut b] {
                // Each COPY commits; none needs to wait for its WAL to reach the disk.
                sqlx::raw_sql("SET synchronous_commit = off")
                    .execute(&mut *c)
                    .await?;
                // Foreign keys are checked once at the end (`check_references`), not by
                // a trigger per row: that makes COPY several times slower. Needs a
                // superuser; without one the triggers stay.
                triggers_off &= sqlx::raw_sql("SET session_replication_role = replica")
                    .execute(&mut *c)
                    .await
                    .is_ok();
            }
            if !triggers_off {
                for c in [&mut a, &mut b] {
                    sqlx::raw_sql("RESET session_replication_role")
                        .execute(&mut *c)
                        .await?;
                }
            }
            Ok(Sink::Postgres(Box::new([a, b]), triggers_off))
        } else {
            let pool = db.conn().get_sqlite_connection_pool();
            let mut conn = pool.acquire().await?.detach();
            // No fsync per batch; up to 4 GiB of page cache so the indexes of a year
            // stay in memory; foreign keys checked once at the end (`check_references`)
            // instead of row by row.
            sqlx::raw_sql(
                "PRAGMA synchronous = OFF; PRAGMA cache_size = -4000000; \
                 PRAGMA temp_store = MEMORY; PRAGMA foreign_keys = OFF",
            )
            .execute(&mut conn)
            .await?;
            Ok(Sink::Sqlite(Box::new(conn)))
        }
    }

    pub async fn write(&mut self, batch: &Batch) -> Result<()> {
        match self {
            Sink::Sqlite(conn) => {
                let mut tx = conn.begin().await?;
                insert_lots(&mut tx, &batch.lots).await?;
                insert_charges(&mut tx, &batch.charges).await?;
                insert_ledger(&mut tx, &batch.ledger).await?;
                insert_opens(&mut tx, &batch.opens).await?;
                tx.commit().await?;
            }
            Sink::Postgres(conns, _) => {
                let [a, b] = &mut **conns;
                copy(a, "lots", LOT_COLS, &batch.lots, lot_text).await?;
                copy(a, "charges", CHARGE_COLS, &batch.charges, charge_text).await?;
                let (l, o) = tokio::join!(
                    copy(a, "ledger_entries", LEDGER_COLS, &batch.ledger, ledger_text),
                    copy(b, "opens", OPEN_COLS, &batch.opens, open_text),
                );
                l?;
                o?;
            }
        }
        Ok(())
    }

    /// The windows and the lots' final counts, once every charge is written.
    pub async fn finish(&mut self, windows: &[WindowRow], lots: &[LotFinal]) -> Result<()> {
        match self {
            Sink::Sqlite(conn) => {
                let mut tx = conn.begin().await?;
                insert_windows(&mut tx, windows).await?;
                for l in lots {
                    update_lot(&mut tx, l).await?;
                }
                tx.commit().await?;
            }
            Sink::Postgres(conns, _) => {
                let [a, _] = &mut **conns;
                copy(a, "windows", WINDOW_COLS, windows, window_text).await?;
                let mut tx = a.begin().await?;
                for l in lots {
                    sqlx::query(
                        "UPDATE lots SET remaining = $1, used = $2, expired = $3, status = $4 \
                         WHERE id = $5",
                    )
                    .bind(l.remaining)
                    .bind(l.used)
                    .bind(l.expired)
                    .bind(l.status)
                    .bind(l.id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Moves the id sequences past the ids written, and lets PostgreSQL see the new
    /// rows (statistics, visibility map) as autovacuum soon would.
    pub async fn settle(&mut self) -> Result<()> {
        if let Sink::Postgres(conns, _) = self {
            let [a, _] = &mut **conns;
            for t in ID_TABLES {
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "SELECT setval(pg_get_serial_sequence('{t}', 'id'), \
                     (SELECT COALESCE(MAX(id), 0) + 1 FROM {t}), false)"
                )))
                .execute(&mut *a)
                .await
                .with_context(|| format!("moving the id sequence of {t}"))?;
            }
            sqlx::raw_sql("VACUUM ANALYZE").execute(&mut *a).await?;
        }
        if let Sink::Sqlite(conn) = self {
            // Leave the database file whole, not mostly in the WAL.
            sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut **conn)
                .await?;
        }
        Ok(())
    }

    /// What the foreign keys the load did not check row by row would have refused: a
    /// row pointing at nothing. One pass per reference, on the load's connection.
    pub async fn check_references(&mut self) -> Result<()> {
        for (table, column, parent) in REFERENCES {
            let n: i64 = match self {
                // The ids of the parent probed per row, in the bulk connection's cache.
                Sink::Sqlite(conn) => sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM {table} WHERE {column} NOT IN (SELECT id FROM {parent})"
                )))
                .fetch_one(&mut **conn)
                .await?,
                // A hashed anti-join.
                Sink::Postgres(_, false) => return Ok(()),
                Sink::Postgres(conns, true) => {
                    sqlx::query_scalar(AssertSqlSafe(format!(
                        "SELECT COUNT(*) FROM {table} x WHERE x.{column} IS NOT NULL \
                     AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.id = x.{column})"
                    )))
                    .fetch_one(&mut conns[0])
                    .await?
                }
            };
            if n > 0 {
                anyhow::bail!("{n} rows of {table}.{column} point at no row of {parent}");
            }
        }
        Ok(())
    }

    pub async fn close(self) -> Result<()> {
        match self {
            Sink::Sqlite(conn) => conn.close().await?,
            Sink::Postgres(conns, _) => {
                let [a, b] = *conns;
                a.close().await?;
                b.close().await?;
            }
        }
        Ok(())
    }
}

async fn update_lot(conn: &mut SqliteConnection, l: &LotFinal) -> Result<()> {
    sqlx::query("UPDATE lots SET remaining = ?, used = ?, expired = ?, status = ? WHERE id = ?")
        .bind(l.remaining)
        .bind(l.used)
        .bind(l.expired)
        .bind(l.status)
        .bind(l.id)
        .execute(conn)
        .await?;
    Ok(())
}

// --- SQLite: multi-row INSERTs, bound values encoded exactly as sea-orm binds them.

type SqliteQuery = Query<'static, Sqlite, SqliteArguments>;

/// Rows per statement: large statements, well under SQLite's 32,766 bound values.
fn rows_per_statement(cols: usize) -> usize {
    (30_000 / cols).min(1_000)
}

async fn insert_many<T>(
    conn: &mut SqliteConnection,
    table: &str,
    cols: &str,
    rows: &[T],
    bind: impl Fn(SqliteQuery, &T) -> SqliteQuery,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = cols.split(',').count();
    let per = rows_per_statement(n);
    let one = format!("({})", vec!["?"; n].join(","));
    let statement = |k: usize| -> Arc<str> {
        Arc::from(format!(
            // OR FAIL: a failing row fails the batch's transaction all the same, and
            // SQLite then needs no statement journal for each multi-row statement.
            "INSERT OR FAIL INTO {table} ({cols}) VALUES {}",
            vec![one.as_str(); k].join(",")
        ))
    };
    let full = statement(per);
    for chunk in rows.chunks(per) {
        let sql = if chunk.len() == per {
            full.clone()
        } else {
            statement(chunk.len())
        };
        let mut q: SqliteQuery = sqlx::query(AssertSqlSafe(sql));
        for r in chunk {
            q = bind(q, r);
        }
        q.execute(&mut *conn)
            .await
            .with_context(|| format!("inserting into {table}"))?;
    }
    Ok(())
}

async fn insert_lots(conn: &mut SqliteConnection, rows: &[LotRow]) -> Result<()> {
    insert_many(conn, "lots", LOT_COLS, rows, |q, r| {
        q.bind(r.id)
            .bind(r.account_id)
            .bind(r.quantity)
            .bind(r.quantity)
            .bind(0i64)
            .bind(0i64)
            .bind(r.unit_price_minor)
            .bind(r.currency.to_string())
            .bind(r.purchased_at)
            .bind(r.expires_at)
            .bind("ACTIVE")
            .bind(r.idempotency_key.clone())
            .bind(r.created_at)
    })
    .await
}

async fn insert_charges(conn: &mut SqliteConnection, rows: &[ChargeRow]) -> Result<()> {
    insert_many(conn, "charges", CHARGE_COLS, rows, |q, r| {
        q.bind(r.id)
            .bind(r.account_id)
            .bind(r.user_id)
            .bind(r.product_id)
            .bind(r.version.as_deref().map(str::to_owned))
            .bind(r.tokens)
            .bind(r.cost_minor)
            .bind(r.window_starts_at)
            .bind(r.window_ends_at)
    })
    .await
}

async fn insert_ledger(conn: &mut SqliteConnection, rows: &[LedgerRow]) -> Result<()> {
    insert_many(conn, "ledger_entries", LEDGER_COLS, rows, |q, r| {
        q.bind(r.id)
            .bind(r.account_id)
            .bind(r.kind)
            .bind(r.tokens)
            .bind(r.lot_id)
            .bind(r.charge_id)
            .bind(r.at)
    })
    .await
}

async fn insert_opens(conn: &mut SqliteConnection, rows: &[OpenRow]) -> Result<()> {
    insert_many(conn, "opens", OPEN_COLS, rows, |q, r| {
        q.bind(r.id)
            .bind(r.account_id)
            .bind(r.user_id)
            .bind(r.product_id)
            .bind(r.product_code.to_string())
            .bind(r.version.as_deref().map(str::to_owned))
            .bind(r.at)
            .bind(r.granted)
            .bind(r.source)
            .bind(r.deny_reason)
            .bind(r.charge_id)
            .bind(r.tokens)
    })
    .await
}

async fn insert_windows(conn: &mut SqliteConnection, rows: &[WindowRow]) -> Result<()> {
    insert_many(conn, "windows", WINDOW_COLS, rows, |q, r| {
        q.bind(r.user_id)
            .bind(r.product_id)
            .bind(r.charge_id)
            .bind(r.starts_at)
            .bind(r.ends_at)
    })
    .await
}

// --- PostgreSQL: COPY in text format.

async fn copy<T>(
    conn: &mut PgConnection,
    table: &str,
    cols: &str,
    rows: &[T],
    line: fn(&mut String, &T),
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} ({cols}) FROM STDIN"))
        .await
        .with_context(|| format!("starting COPY into {table}"))?;
    // Send in slices of a few MB so formatting and the server's work overlap.
    for chunk in rows.chunks(20_000) {
        let mut buf = String::with_capacity(chunk.len() * 96);
        for r in chunk {
            line(&mut buf, r);
        }
        if let Err(e) = copy.send(buf.into_bytes()).await {
            copy.abort(e.to_string()).await.ok();
            return Err(e).with_context(|| format!("COPY into {table}"));
        }
    }
    copy.finish()
        .await
        .with_context(|| format!("COPY into {table}"))?;
    Ok(())
}

fn ts(s: &mut String, t: DateTime<Utc>) {
    let (d, time) = (t.date_naive(), t.time());
    let _ = write!(
        s,
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
        d.year(),
        d.month(),
        d.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.nanosecond() / 1_000
    );
}

fn opt<T: std::fmt::Display>(s: &mut String, v: Option<T>) {
    match v {
        Some(v) => {
            let _ = write!(s, "{v}");
        }
        None => s.push_str("\\N"),
    }
}

fn lot_text(s: &mut String, r: &LotRow) {
    let _ = write!(
        s,
        "{}\t{}\t{}\t{}\t0\t0\t{}\t{}\t",
        r.id, r.account_id, r.quantity, r.quantity, r.unit_price_minor, r.currency
    );
    ts(s, r.purchased_at);
    s.push('\t');
    ts(s, r.expires_at);
    let _ = write!(s, "\tACTIVE\t{}\t", r.idempotency_key);
    ts(s, r.created_at);
    s.push('\n');
}

fn charge_text(s: &mut String, r: &ChargeRow) {
    let _ = write!(
        s,
        "{}\t{}\t{}\t{}\t",
        r.id, r.account_id, r.user_id, r.product_id
    );
    opt(s, r.version.as_deref());
    let _ = write!(s, "\t{}\t{}\t", r.tokens, r.cost_minor);
    ts(s, r.window_starts_at);
    s.push('\t');
    ts(s, r.window_ends_at);
    s.push('\n');
}

fn ledger_text(s: &mut String, r: &LedgerRow) {
    let _ = write!(
        s,
        "{}\t{}\t{}\t{}\t{}\t",
        r.id, r.account_id, r.kind, r.tokens, r.lot_id
    );
    opt(s, r.charge_id);
    s.push('\t');
    ts(s, r.at);
    s.push('\n');
}

fn open_text(s: &mut String, r: &OpenRow) {
    let _ = write!(s, "{}\t{}\t{}\t", r.id, r.account_id, r.user_id);
    opt(s, r.product_id);
    let _ = write!(s, "\t{}\t", r.product_code);
    opt(s, r.version.as_deref());
    s.push('\t');
    ts(s, r.at);
    s.push_str(if r.granted { "\tt\t" } else { "\tf\t" });
    opt(s, r.source);
    s.push('\t');
    opt(s, r.deny_reason);
    s.push('\t');
    opt(s, r.charge_id);
    let _ = writeln!(s, "\t{}", r.tokens);
}

fn window_text(s: &mut String, r: &WindowRow) {
    let _ = write!(s, "{}\t{}\t{}\t", r.user_id, r.product_id, r.charge_id);
    ts(s, r.starts_at);
    s.push('\t');
    ts(s, r.ends_at);
    s.push('\n');
}
