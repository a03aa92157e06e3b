//! The opens and charges that wait for the next batch (group commit), and the retry
//! that keeps one account's failure to its own opens.

use super::plan::ChargeRequest;
use super::situation::{Asked, Found, run_situations};
use super::writes::charge_together;
use super::{OpenOutcome, OpenRecord, Outcome};
use crate::error::{DomainError, Result};
use crate::rules::Window;
use crate::store::{BatchFuture, Db, GroupCommit, WriteTx};
use daypass_entity::{account, open, session, window};
use sea_orm::sea_query::LockType;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Which queue a charging open of `account_id` joins. SQLite has one writer, so all
/// accounts share one queue (one commit for everyone waiting). On PostgreSQL the
/// accounts are spread over a few queues: a batch costs about the same dozen
/// statements whatever its size, so opens of many accounts batched together cost far
/// fewer round trips than one transaction per account, while batches of different
/// queues still commit in parallel.
pub(super) fn charge_queue(db: &Db, account_id: i32) -> i32 {
    if db.is_postgres() {
        account_id.rem_euclid(POSTGRES_CHARGE_QUEUES)
    } else {
        0
    }
}

/// How many charging queues a process has on PostgreSQL.
const POSTGRES_CHARGE_QUEUES: i32 = 2;

/// The opens and charges that wait for the next batch, per kind.
pub struct Batches {
    /// Charging opens (see [`charge_queue`]): one transaction per batch, each account
    /// in it under its own lock.
    pub(super) charges: Arc<GroupCommit<ChargeRequest, OpenOutcome>>,
    /// What opens are decided on, read for all that ask at once.
    pub(super) situations: Arc<GroupCommit<Asked, Found>>,
    /// Records of opens that move no tokens (reopens, subscriptions, denials); false
    /// for a reopen whose window was closed since it was read (see
    /// [`standing_windows`]).
    pub(super) records: Arc<GroupCommit<(OpenRecord, Outcome), bool>>,
}

/// The most opens one transaction takes.
const MAX_BATCH: usize = 128;

/// The batches of `db`'s process.
pub(super) fn batches(db: &Db) -> Arc<Batches> {
    db.shared::<Batches>()
}

impl Default for Batches {
    fn default() -> Batches {
        Batches {
            charges: GroupCommit::new(run_charges, MAX_BATCH),
            situations: GroupCommit::new(run_situations, MAX_BATCH),
            records: GroupCommit::new(run_records, MAX_BATCH),
        }
    }
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batches")
    }
}

fn run_records(db: Db, _key: i32, items: Vec<(OpenRecord, Outcome)>) -> BatchFuture<bool> {
    Box::pin(async move {
        // Each row's foreign key takes a share lock on its account (PostgreSQL), row
        // after row: in account id order, the order charging batches lock accounts
        // in, so the two never wait for each other in a circle.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| items[i].0.account_id);
        let has_session = |i: &usize| items[*i].0.session(items[*i].1).is_some();
        if !order.iter().any(has_session) {
            // One statement commits alone: no BEGIN and COMMIT round trips.
            let _turn = db.write_turn().await;
            open::Entity::insert_many(order.iter().map(|&i| items[i].0.model(items[i].1)))
                .exec_without_returning(db.records_conn())
                .await?;
            return Ok(items.iter().map(|_| Ok(true)).collect());
        }
        let tx = db.begin_records_write().await?;
        let standing = standing_windows(&db, &tx, &items).await?;
        let kept: Vec<usize> = order.into_iter().filter(|&i| standing[i]).collect();
        let sessions: Vec<session::ActiveModel> = kept
            .iter()
            .filter_map(|&i| items[i].0.session(items[i].1))
            .map(session::ActiveModel::from)
            .collect();
        open::Entity::insert_many(kept.iter().map(|&i| items[i].0.model(items[i].1)))
            .exec_without_returning(&*tx)
            .await?;
        session::Entity::insert_many(sessions)
            .exec_without_returning(&*tx)
            .await?;
        tx.commit().await?;
        Ok(standing.into_iter().map(Ok).collect())
    })
}

/// For each item, false when it is a reopen whose window is no longer the one it was
/// decided on: a short launch's refund has closed it since (rule 21), and the open
/// must be decided again. The windows are read under share locks (PostgreSQL) that a
/// refund's exclusive lock waits for, so a refund either sees the reopen's session
/// or closes the window before the reopen is recorded. Accounts are locked first,
/// as refunds and charging batches lock them, so none of them wait in a circle.
async fn standing_windows(
    db: &Db,
    tx: &WriteTx,
    items: &[(OpenRecord, Outcome)],
) -> Result<Vec<bool>> {
    let reopened = |(record, outcome): &(OpenRecord, Outcome)| match outcome {
        Outcome::Reopen(window) => record.product_id.map(|p| (record.user_id, p, *window)),
        _ => None,
    };
    if !items.iter().any(|item| reopened(item).is_some()) {
        return Ok(vec![true; items.len()]);
    }
    if db.is_postgres() {
        let mut accounts: Vec<i32> = items.iter().map(|(r, _)| r.account_id).collect();
        accounts.sort_unstable();
        accounts.dedup();
        account::Entity::find()
            .filter(account::Column::Id.is_in(accounts))
            .order_by_asc(account::Column::Id)
            .lock(LockType::KeyShare)
            .all(&**tx)
            .await?;
    }
    let asked: Vec<(i32, i32, Window)> = items.iter().filter_map(reopened).collect();
    let mut query = window::Entity::find()
        .filter(window::Column::UserId.is_in(asked.iter().map(|a| a.0)))
        .filter(window::Column::ProductId.is_in(asked.iter().map(|a| a.1)))
        .order_by_asc(window::Column::UserId)
        .order_by_asc(window::Column::ProductId);
    if db.is_postgres() {
        query = query.lock_shared();
    }
    let found = query.all(&**tx).await?;
    Ok(items
        .iter()
        .map(|item| {
            reopened(item).is_none_or(|(user_id, product_id, window)| {
                found.iter().any(|w| {
                    (w.user_id, w.product_id, w.starts_at)
                        == (user_id, product_id, window.starts_at)
                })
            })
        })
        .collect())
}

/// Rule 22: a heartbeat's charge past the window, through the same batches and
/// rules as an open's. `None` when the session's product has left the catalog.
pub(crate) async fn renew(
    db: &Db,
    session: &daypass_entity::session::Model,
    product: daypass_entity::product::Model,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<OpenOutcome> {
    let request = ChargeRequest {
        record: OpenRecord {
            account_id: session.account_id,
            user_id: session.user_id,
            product_id: Some(product.id),
            code: product.code.clone(),
            version: session.version.clone(),
            now,
            session_id: session.id.clone(),
            device_id: session.device_id.clone(),
        },
        product,
        renewal: true,
    };
    let answer = batches(db)
        .charges
        .submit(db, charge_queue(db, session.account_id), request)
        .await?;
    db.deliveries().committed(&answer.notifications).await;
    Ok(answer)
}

fn run_charges(db: Db, _key: i32, items: Vec<ChargeRequest>) -> BatchFuture<OpenOutcome> {
    Box::pin(async move { charge_batch(&db, items).await })
}

/// Rules 3, 6, 10–12 for the charging opens that arrived together, of one account or
/// many: one transaction, each account under its lock. If it fails and spans several
/// accounts, each account's opens are tried again on their own, so one account's
/// failure fails only its own opens.
async fn charge_batch(db: &Db, items: Vec<ChargeRequest>) -> Result<Vec<Result<OpenOutcome>>> {
    let all: Vec<&ChargeRequest> = items.iter().collect();
    let first_error = match charge_together(db, &all).await {
        Ok(answers) => return Ok(answers.into_iter().map(Ok).collect()),
        Err(e) => e,
    };
    let mut by_account: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        by_account
            .entry(item.record.account_id)
            .or_default()
            .push(i);
    }
    if by_account.len() < 2 {
        return Err(first_error);
    }
    let mut answers: Vec<Option<Result<OpenOutcome>>> = (0..items.len()).map(|_| None).collect();
    for indices in by_account.into_values() {
        let group: Vec<&ChargeRequest> = indices.iter().map(|&i| &items[i]).collect();
        match charge_together(db, &group).await {
            Ok(outcomes) => {
                for (i, outcome) in indices.into_iter().zip(outcomes) {
                    answers[i] = Some(Ok(outcome));
                }
            }
            Err(e) => {
                for i in indices {
                    answers[i] = Some(Err(e.duplicate()));
                }
            }
        }
    }
    Ok(answers
        .into_iter()
        .map(|a| {
            a.unwrap_or_else(|| {
                Err(DomainError::Internal(
                    "an open of the batch was not decided".into(),
                ))
            })
        })
        .collect())
}
