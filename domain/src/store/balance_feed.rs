//! Balance announcements: which account's balance a committed purchase, charge or
//! expiry moved, for live subscribers in every process that shares the database.
//!
//! PostgreSQL carries them with `NOTIFY` inside the writing transaction (delivered on
//! commit, dropped on rollback). SQLite has no such channel, but its commits are
//! serialized and every balance change writes ledger entries, so reading new entries
//! in id order sees every committed change of every process, in commit order.

use crate::error::{DomainError, Result};
use crate::store::Db;
use daypass_entity::ledger_entry;
use sea_orm::sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// The PostgreSQL notification channel; the payload is the account id.
pub const BALANCE_CHANNEL: &str = "daypass_balance";

/// How often SQLite's ledger is read for new entries.
pub const LEDGER_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Announcements a subscriber may fall behind by before it is told it lagged.
const FEED_CAPACITY: usize = 1024;

/// The longest wait between attempts to re-establish a lost `LISTEN`.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Announces, inside the caller's write transaction, that `account_id`'s balance
/// changes. On PostgreSQL this is a `NOTIFY`, delivered to listeners only if the
/// transaction commits; on SQLite nothing is needed (the feed reads the ledger).
pub async fn announce_balance_change(conn: &impl ConnectionTrait, account_id: i32) -> Result<()> {
    announce_balance_changes(conn, &[account_id]).await
}

/// [`announce_balance_change`] for several accounts in one statement.
pub async fn announce_balance_changes(
    conn: &impl ConnectionTrait,
    account_ids: &[i32],
) -> Result<()> {
    if conn.get_database_backend() != DatabaseBackend::Postgres || account_ids.is_empty() {
        return Ok(());
    }
    let rows = vec!["(?)"; account_ids.len()].join(", ");
    let mut values: Vec<sea_orm::Value> = vec![BALANCE_CHANNEL.into()];
    values.extend(account_ids.iter().map(|id| id.to_string().into()));
    conn.execute_raw(crate::store::stmt(
        DatabaseBackend::Postgres,
        &format!("SELECT pg_notify(?, a.id) FROM (VALUES {rows}) AS a(id)"),
        values,
    ))
    .await?;
    Ok(())
}

/// What the feed tells its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceEvent {
    /// A committed change moved this account's balance.
    Changed(i32),
    /// Announcements may have been lost (the `LISTEN` connection dropped): any
    /// account may have changed.
    MayHaveMissed,
}

impl BalanceEvent {
    /// Whether a subscriber watching `account_id` should look again.
    pub fn concerns(self, account_id: i32) -> bool {
        match self {
            BalanceEvent::Changed(id) => id == account_id,
            BalanceEvent::MayHaveMissed => true,
        }
    }
}

/// Balance announcements of every process on this database, fanned out to the
/// subscribers of this process. Cheap to clone; the background task stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct BalanceFeed {
    inner: Arc<FeedInner>,
}

struct FeedInner {
    sender: broadcast::Sender<BalanceEvent>,
    task: JoinHandle<()>,
}

impl Drop for FeedInner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for BalanceFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalanceFeed")
            .field("subscribers", &self.inner.sender.receiver_count())
            .finish()
    }
}

impl BalanceFeed {
    /// Starts listening. It returns once listening has begun (`LISTEN` is in place, or
    /// the ledger's current end is known), so every change committed after it returns
    /// is announced.
    pub async fn start(db: &Db) -> Result<BalanceFeed> {
        let (sender, _) = broadcast::channel(FEED_CAPACITY);
        let task = if db.is_postgres() {
            let pool = listener_pool(db.conn().get_postgres_connection_pool());
            let listener = listen(&pool).await.map_err(listen_error)?;
            tokio::spawn(forward_notifications(pool, listener, sender.clone()))
        } else {
            let after = last_ledger_id(db).await?;
            tokio::spawn(poll_ledger(db.clone(), after, sender.clone()))
        };
        Ok(BalanceFeed {
            inner: Arc::new(FeedInner { sender, task }),
        })
    }

    /// Every announcement from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BalanceEvent> {
        self.inner.sender.subscribe()
    }

    /// The announcements about one account, from now on.
    pub fn watch(&self, account_id: i32) -> BalanceWatch {
        BalanceWatch {
            events: self.subscribe(),
            account_id,
        }
    }
}

/// One subscriber's view of the feed: wakes up when its account may have changed.
pub struct BalanceWatch {
    events: broadcast::Receiver<BalanceEvent>,
    account_id: i32,
}

impl BalanceWatch {
    pub fn account_id(&self) -> i32 {
        self.account_id
    }

    /// Waits until the account's balance may have changed: an announcement about it,
    /// or announcements lost to lag (the subscriber reads the current state, so one
    /// look covers every change it missed). `false` once the feed has stopped.
    pub async fn changed(&mut self) -> bool {
        loop {
            match self.events.recv().await {
                Ok(event) if event.concerns(self.account_id) => return true,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => return false,
            }
        }
    }
}

/// A pool of one connection, only for `LISTEN`: it stays out of the main pool's
/// connections and lifetimes, and `PgListener` reconnects through it.
fn listener_pool(main: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with((*main.connect_options()).clone())
}

async fn listen(pool: &PgPool) -> Result<PgListener, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(BALANCE_CHANNEL).await?;
    Ok(listener)
}

fn listen_error(e: sea_orm::sqlx::Error) -> DomainError {
    DomainError::Internal(format!("cannot LISTEN {BALANCE_CHANNEL}: {e}"))
}

async fn forward_notifications(
    pool: PgPool,
    mut listener: PgListener,
    sender: broadcast::Sender<BalanceEvent>,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match notification.payload().parse::<i32>() {
                Ok(account_id) => {
                    // No subscriber is not an error.
                    let _ = sender.send(BalanceEvent::Changed(account_id));
                }
                Err(_) => tracing::warn!(
                    payload = notification.payload(),
                    "ignoring a {BALANCE_CHANNEL} notification that is not an account id"
                ),
            },
            // The connection dropped and `try_recv` has already listened again: whatever
            // was committed meanwhile went unheard.
            Ok(None) => {
                tracing::warn!("{BALANCE_CHANNEL} listener reconnected");
                let _ = sender.send(BalanceEvent::MayHaveMissed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "{BALANCE_CHANNEL} listener failed; listening again");
                listener = relisten(&pool).await;
                let _ = sender.send(BalanceEvent::MayHaveMissed);
            }
        }
    }
}

/// A new listener, retrying with a growing pause until the database answers.
async fn relisten(pool: &PgPool) -> PgListener {
    let mut pause = Duration::from_millis(100);
    loop {
        tokio::time::sleep(pause).await;
        match listen(pool).await {
            Ok(listener) => return listener,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "cannot LISTEN {BALANCE_CHANNEL}");
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn last_ledger_id(db: &Db) -> Result<i32> {
    let last: Option<i32> = ledger_entry::Entity::find()
        .select_only()
        .column(ledger_entry::Column::Id)
        .order_by_desc(ledger_entry::Column::Id)
        .limit(1)
        .into_tuple()
        .one(db.conn())
        .await?;
    Ok(last.unwrap_or(0))
}

/// A ledger entry as the SQLite feed reads it: (id, account, charge).
type LedgerRow = (i32, i32, Option<i32>);

/// Reads the ledger entries committed since `after`, by any process, and announces
/// each change once.
async fn poll_ledger(db: Db, mut after: i32, sender: broadcast::Sender<BalanceEvent>) {
    const BATCH: u64 = 1000;
    let mut ticks = tokio::time::interval(LEDGER_POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        loop {
            let rows: Vec<LedgerRow> = match ledger_entry::Entity::find()
                .select_only()
                .column(ledger_entry::Column::Id)
                .column(ledger_entry::Column::AccountId)
                .column(ledger_entry::Column::ChargeId)
                .filter(ledger_entry::Column::Id.gt(after))
                .order_by_asc(ledger_entry::Column::Id)
                .limit(BATCH)
                .into_tuple()
                .all(db.conn())
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    // The next tick reads from the same place: nothing is skipped.
                    tracing::warn!(error = %e, "cannot read new ledger entries");
                    break;
                }
            };
            for account_id in changed_accounts(&rows) {
                let _ = sender.send(BalanceEvent::Changed(account_id));
            }
            match rows.last() {
                Some(&(id, _, _)) => after = id,
                None => break,
            }
            if (rows.len() as u64) < BATCH {
                break;
            }
        }
    }
}

/// One announcement per change: the entries of one charge (one per lot it drew
/// from) are one change; a purchase or an expiry is one entry. Entries of one change
/// are consecutive, as SQLite writes one transaction at a time.
fn changed_accounts(rows: &[LedgerRow]) -> Vec<i32> {
    let mut changes = Vec::new();
    let mut previous: Option<(i32, Option<i32>)> = None;
    for &(_, account_id, charge_id) in rows {
        let same_charge = charge_id.is_some() && previous == Some((account_id, charge_id));
        if !same_charge {
            changes.push(account_id);
        }
        previous = Some((account_id, charge_id));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_announcement_per_purchase_charge_and_expiry() {
        let rows = [
            (1, 7, None),     // purchase on 7
            (2, 7, Some(10)), // a charge on 7 drawing from two lots
            (3, 7, Some(10)),
            (4, 8, Some(11)), // a charge on 8
            (5, 7, Some(12)), // another charge on 7
            (6, 7, None),     // two expiries on 7
            (7, 7, None),
        ];
        assert_eq!(changed_accounts(&rows), vec![7, 7, 8, 7, 7, 7]);
        assert!(changed_accounts(&[]).is_empty());
    }

    #[tokio::test]
    async fn a_watch_wakes_for_its_account_and_for_lost_announcements() {
        let (sender, _) = broadcast::channel(4);
        let mut watch = BalanceWatch {
            events: sender.subscribe(),
            account_id: 7,
        };
        sender.send(BalanceEvent::Changed(8)).unwrap();
        sender.send(BalanceEvent::Changed(7)).unwrap();
        assert!(watch.changed().await);
        sender.send(BalanceEvent::MayHaveMissed).unwrap();
        assert!(watch.changed().await);

        // Falling behind is not the end: it is one more look at the current state.
        for _ in 0..10 {
            sender.send(BalanceEvent::Changed(8)).unwrap();
        }
        assert!(watch.changed().await);

        drop(sender);
        assert!(!watch.changed().await);
    }
}
