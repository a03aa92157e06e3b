//! Storage plumbing, apart from the rules: the connection pools, write transactions
//! that take the database's write lock up front so concurrent writers queue instead
//! of failing, group commit, the balance feed, the key cache and SQL text helpers.
//! Nothing here knows a rule; the rules keep their per-database state (batches,
//! caches, ports) in the handle's [`Shared`] slots.

pub mod balance_feed;
pub mod group_commit;
pub mod key_cache;
mod shared;
pub mod sql;

pub use balance_feed::{BalanceEvent, BalanceFeed, BalanceWatch};
pub use group_commit::{BatchFuture, GroupCommit};
pub use key_cache::KeyCache;
pub use shared::Shared;
pub use sql::{numbered, stmt};

use crate::error::{DomainError, Result};
use daypass_entity::account;
use sea_orm::sqlx::sqlite::SqliteSynchronous;
use sea_orm::{
    ColumnTrait, ConnectOptions, Database, DatabaseBackend, DatabaseConnection,
    DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};
use std::{ops::Deref, sync::Arc, time::Duration};
use tokio::sync::{Mutex, OwnedMutexGuard};

#[derive(Clone, Debug)]
pub struct Db {
    conn: DatabaseConnection,
    /// SQLite: a connection for records that need not wait for the disk.
    records: Option<DatabaseConnection>,
    /// SQLite has one writer: in-process writers wait their turn here rather than in
    /// SQLite's busy handler. Other processes still serialize through BEGIN IMMEDIATE.
    write_gate: Option<Arc<Mutex<()>>>,
    /// What the rules keep per database handle, shared by its clones.
    shared: Shared,
}

/// A write transaction; on SQLite it also holds the in-process write gate.
pub struct WriteTx {
    tx: DatabaseTransaction,
    _gate: Option<OwnedMutexGuard<()>>,
    /// What to do once the transaction has committed (and only then).
    after_commit: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    /// The handle's per-database state, for what runs after the commit.
    shared: Shared,
}

impl Deref for WriteTx {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &DatabaseTransaction {
        &self.tx
    }
}

impl WriteTx {
    fn new(tx: DatabaseTransaction, gate: Option<OwnedMutexGuard<()>>, shared: Shared) -> WriteTx {
        WriteTx {
            tx,
            _gate: gate,
            after_commit: Default::default(),
            shared,
        }
    }

    /// The handle's state of type `T` (as [`Db::shared`]).
    pub fn shared<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        self.shared.get_or_default()
    }

    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        let hooks =
            std::mem::take(&mut *self.after_commit.lock().unwrap_or_else(|e| e.into_inner()));
        for hook in hooks {
            hook();
        }
        Ok(())
    }

    /// Runs `hook` after this transaction commits; never if it rolls back.
    pub fn after_commit(&self, hook: impl FnOnce() + Send + 'static) {
        self.after_commit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }
}

/// How full one connection pool is (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// `ledger` (the main pool) or `records` (opens that move no tokens).
    pub name: &'static str,
    /// Connections open, idle or in use.
    pub size: u32,
    pub idle: usize,
}

fn pool_stats_of(name: &'static str, conn: &DatabaseConnection) -> PoolStats {
    let (size, idle) = match conn.get_database_backend() {
        DatabaseBackend::Postgres => {
            let pool = conn.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => {
            let pool = conn.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
    };
    PoolStats { name, size, idle }
}

impl Db {
    /// The size and idle connections of each pool.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        let mut stats = vec![pool_stats_of("ledger", &self.conn)];
        if let Some(records) = &self.records {
            stats.push(pool_stats_of("records", records));
        }
        stats
    }

    /// Connects to `sqlite://…` or `postgres://…`. SQLite gets WAL, a generous busy
    /// timeout and foreign keys, and `synchronous = FULL`: a committed purchase or charge
    /// survives a power loss, not only a crash of the process.
    pub async fn connect(url: &str) -> Result<Db> {
        let is_sqlite = url.starts_with("sqlite:");
        let sqlite = |synchronous| {
            let mut opts = ConnectOptions::new(url.to_owned());
            opts.sqlx_logging(false)
                .acquire_timeout(Duration::from_secs(30));
            opts.map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(synchronous)
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(true)
            });
            opts
        };
        let (conn, records) = if is_sqlite {
            let mut opts = sqlite(SqliteSynchronous::Full);
            opts.max_connections(8).min_connections(1);
            let conn = connect_sqlite(opts).await?;
            // Records of opens that move no tokens (reopens, subscription opens,
            // denials) commit without waiting for the disk (`synchronous = NORMAL`):
            // they survive a crash of the process, and the next purchase or charge
            // makes them durable with its own commit (WAL keeps commits in order). A
            // power loss in between may lose a few; never a charge or a purchase.
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let records = if in_memory {
                None
            } else {
                let mut opts = sqlite(SqliteSynchronous::Normal);
                opts.max_connections(1).min_connections(1);
                Some(connect_sqlite(opts).await?)
            };
            (conn, records)
        } else {
            let postgres = |max, asynchronous: bool| {
                let mut opts = ConnectOptions::new(url.to_owned());
                opts.sqlx_logging(false)
                    .acquire_timeout(Duration::from_secs(30))
                    .max_connections(max)
                    .min_connections(1);
                if asynchronous {
                    opts.map_sqlx_postgres_opts(|o| o.options([("synchronous_commit", "off")]));
                }
                opts
            };
            let conn = Database::connect(postgres(32, false)).await?;
            // As on SQLite: records of opens that move no tokens do not wait for the
            // WAL flush; a crash of the database server may lose the last few.
            let records = Database::connect(postgres(4, true)).await?;
            (conn, Some(records))
        };
        Ok(Db {
            conn,
            records,
            write_gate: is_sqlite.then(|| Arc::new(Mutex::new(()))),
            shared: Shared::default(),
        })
    }

    /// Where records of opens that move no tokens are written (see [`Db::connect`]).
    pub(crate) fn records_conn(&self) -> &DatabaseConnection {
        self.records.as_ref().unwrap_or(&self.conn)
    }

    /// The value of type `T` kept for this database handle (made on first use).
    pub fn shared<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        self.shared.get_or_default()
    }

    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    pub fn backend(&self) -> DatabaseBackend {
        self.conn.get_database_backend()
    }

    pub fn is_postgres(&self) -> bool {
        self.backend() == DatabaseBackend::Postgres
    }

    /// Applies pending migrations in one write transaction, then runs `then` in it
    /// (see [`daypass_migration::apply`]): processes started together on a new
    /// database wait for the first, then find the work done.
    pub async fn migrate_then<F>(&self, then: F) -> Result<()>
    where
        F: for<'a> FnOnce(&'a DatabaseTransaction) -> futures::future::BoxFuture<'a, Result<()>>,
    {
        let tx = self.begin_write().await?;
        daypass_migration::apply(&tx).await?;
        then(&tx).await?;
        tx.commit().await
    }

    pub async fn ping(&self) -> Result<()> {
        self.conn.ping().await?;
        Ok(())
    }

    /// Waits for this process's turn to write, for a statement that commits alone
    /// (autocommit) rather than in a [`WriteTx`]. On PostgreSQL there is no turn.
    pub async fn write_turn(&self) -> Option<OwnedMutexGuard<()>> {
        match &self.write_gate {
            Some(g) => Some(g.clone().lock_owned().await),
            None => None,
        }
    }

    /// Begins a write transaction. On SQLite it is `BEGIN IMMEDIATE`, so a transaction
    /// never has to upgrade from reader to writer (where SQLite would fail with "database
    /// is locked" instead of waiting).
    pub async fn begin_write(&self) -> Result<WriteTx> {
        let gate = self.write_turn().await;
        let tx = self
            .conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok(WriteTx::new(tx, gate, self.shared.clone()))
    }

    /// A write transaction on the records' connection (see [`Db::connect`]): for
    /// writes that move no tokens and may be lost, as the last few records, by a
    /// crash of the database server.
    pub(crate) async fn begin_records_write(&self) -> Result<WriteTx> {
        let gate = self.write_turn().await;
        let tx = self
            .records_conn()
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok(WriteTx::new(tx, gate, self.shared.clone()))
    }

    /// Serializes the writers of one account on PostgreSQL (`SELECT … FOR UPDATE` on the
    /// account row). On SQLite the transaction already holds the database's write lock.
    pub async fn lock_account(&self, tx: &WriteTx, account_id: i32) -> Result<()> {
        self.lock_accounts(tx, &[account_id]).await.map(|_| ())
    }

    /// Locks several accounts (as [`Db::lock_account`]) in id order, so two
    /// transactions that lock overlapping sets never deadlock, and reads them. An
    /// account that does not exist is simply absent from the answer.
    pub async fn lock_accounts(
        &self,
        tx: &WriteTx,
        account_ids: &[i32],
    ) -> Result<Vec<account::Model>> {
        let mut query = account::Entity::find()
            .filter(account::Column::Id.is_in(account_ids.iter().copied()))
            .order_by_asc(account::Column::Id);
        if self.is_postgres() {
            query = query.lock_exclusive();
        }
        Ok(query.all(&**tx).await?)
    }
}

/// Connects to SQLite, waiting while another process holds the lock a new
/// connection needs (a database being created and migrated by a process started at
/// the same moment answers "database is locked" to the connection's set-up
/// pragmas without waiting in the busy handler).
async fn connect_sqlite(opts: ConnectOptions) -> Result<DatabaseConnection> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Database::connect(opts.clone()).await {
            Ok(conn) => return Ok(conn),
            Err(e)
                if e.to_string().contains("database is locked")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The account `id`, or NOT_FOUND.
pub async fn find_account(conn: &impl sea_orm::ConnectionTrait, id: i32) -> Result<account::Model> {
    account::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or_else(|| DomainError::not_found(format!("account {id}")))
}
