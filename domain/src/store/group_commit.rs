//! Group commit: requests that arrive while a batch of their kind is in flight wait
//! for it and then go together in the next one, so N concurrent writers share one
//! transaction (one lock, one commit) instead of queueing for N.
//!
//! Nothing waits on a timer: a lone request starts its batch at once, and the batch
//! size follows the load (what arrived during the previous batch). Each batch runs in
//! a task of its own, so a caller that goes away cancels nothing for the others.

use crate::error::{DomainError, Result};
use crate::store::Db;
use futures::FutureExt;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The future of one batch: each item's own answer, in order. `Err` fails them all
/// (the transaction did not commit, so none of them happened).
pub type BatchFuture<R> = Pin<Box<dyn Future<Output = Result<Vec<Result<R>>>> + Send>>;

/// Runs one batch of items that share a key (say, an account).
pub type RunBatch<T, R> = fn(Db, i32, Vec<T>) -> BatchFuture<R>;

type Waiting<T, R> = Vec<(T, oneshot::Sender<Result<R>>)>;

pub struct GroupCommit<T, R> {
    run: RunBatch<T, R>,
    max_batch: usize,
    /// Keys with a batch in flight, and what waits for the next one.
    queues: Mutex<HashMap<i32, Waiting<T, R>>>,
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    pub fn new(run: RunBatch<T, R>, max_batch: usize) -> Arc<Self> {
        Arc::new(GroupCommit {
            run,
            max_batch: max_batch.max(1),
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Submits one item and waits for its answer.
    pub async fn submit(self: &Arc<Self>, db: &Db, key: i32, item: T) -> Result<R> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queues = self.queues.lock().expect("group commit queues");
            match queues.get_mut(&key) {
                Some(waiting) => {
                    waiting.push((item, reply));
                    false
                }
                None => {
                    queues.insert(key, vec![(item, reply)]);
                    true
                }
            }
        };
        if start {
            tokio::spawn(self.clone().drain(db.clone(), key));
        }
        answer.await.unwrap_or_else(|_| {
            Err(DomainError::Internal(
                "the batch ended without an answer".into(),
            ))
        })
    }

    /// Runs batches for `key` until nothing waits.
    async fn drain(self: Arc<Self>, db: Db, key: i32) {
        loop {
            let batch: Waiting<T, R> = {
                let mut queues = self.queues.lock().expect("group commit queues");
                let waiting = queues.get_mut(&key).expect("a draining key has a queue");
                if waiting.is_empty() {
                    queues.remove(&key);
                    return;
                }
                let n = waiting.len().min(self.max_batch);
                waiting.drain(..n).collect()
            };
            let (items, replies): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
            let n = items.len();
            let ran = AssertUnwindSafe((self.run)(db.clone(), key, items))
                .catch_unwind()
                .await;
            let answers: Vec<Result<R>> = match ran {
                Ok(Ok(answers)) if answers.len() == n => answers,
                Ok(Ok(answers)) => failed_all(
                    n,
                    &DomainError::Internal(format!(
                        "a batch of {n} gave {} answers",
                        answers.len()
                    )),
                ),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, items = n, "a batch failed; nothing in it happened");
                    failed_all(n, &e)
                }
                Err(_) => failed_all(n, &DomainError::Internal("a batch panicked".into())),
            };
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A caller that went away no longer needs its answer.
                let _ = reply.send(answer);
            }
        }
    }
}

/// The same failure for each of `n` items.
fn failed_all<R>(n: usize, e: &DomainError) -> Vec<Result<R>> {
    (0..n).map(|_| Err(e.duplicate())).collect()
}

impl DomainError {
    /// A copy for each caller of a failed batch (a database error keeps its text).
    pub(crate) fn duplicate(&self) -> DomainError {
        match self {
            DomainError::Unauthenticated => DomainError::Unauthenticated,
            DomainError::Forbidden(m) => DomainError::Forbidden(m.clone()),
            DomainError::NotFound(m) => DomainError::NotFound(m.clone()),
            DomainError::BadInput(m) => DomainError::BadInput(m.clone()),
            DomainError::Conflict(m) => DomainError::Conflict(m.clone()),
            DomainError::Database(e) => DomainError::Internal(format!("database error: {e}")),
            DomainError::Internal(m) => DomainError::Internal(m.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static BATCHES: AtomicUsize = AtomicUsize::new(0);

    fn doubled(_db: Db, _key: i32, items: Vec<i64>) -> BatchFuture<i64> {
        Box::pin(async move {
            BATCHES.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if items.contains(&-1) {
                return Err(DomainError::conflict("no negatives"));
            }
            Ok(items
                .into_iter()
                .map(|i| {
                    if i == 13 {
                        Err(DomainError::bad_input("unlucky"))
                    } else {
                        Ok(i * 2)
                    }
                })
                .collect())
        })
    }

    #[tokio::test]
    async fn concurrent_items_share_batches_and_keep_their_own_answers() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("g.db").display()
        ))
        .await
        .unwrap();
        let group = GroupCommit::new(doubled, 64);
        let before = BATCHES.load(Ordering::SeqCst);
        let answers = futures::future::join_all((0..40i64).map(|i| {
            let (group, db) = (group.clone(), db.clone());
            async move { group.submit(&db, 7, i).await }
        }))
        .await;
        for (i, a) in answers.iter().enumerate() {
            match a {
                Ok(v) => assert_eq!(*v, i as i64 * 2),
                Err(DomainError::BadInput(_)) => assert_eq!(i, 13),
                Err(e) => panic!("{i}: {e}"),
            }
        }
        let batches = BATCHES.load(Ordering::SeqCst) - before;
        assert!(batches < 40, "40 concurrent items ran in {batches} batches");
        // A failed batch fails its items, and the next batch runs.
        assert!(matches!(
            group.submit(&db, 8, -1).await,
            Err(DomainError::Conflict(_))
        ));
        assert_eq!(group.submit(&db, 8, 4).await.unwrap(), 8);
    }
}
