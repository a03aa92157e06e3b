//! A launcher's heartbeat (rules 20, 22): batched like reopens, so the heartbeats
//! that arrive together share one read and one write. Only a heartbeat that must
//! charge (an active product past its window) goes through the charging batches.

use super::{SessionView, lease_for, mark_denied};
use crate::access::Actor;
use crate::charging::renew;
use crate::charging::{balance_sql, prefixed_columns, seat_ends_at_sql};
use crate::conditions::{self, column, text};
use crate::error::{DomainError, Result};
use crate::rules;
use crate::store::{BatchFuture, Db, GroupCommit, stmt};
use crate::units::Tokens;
use crate::vocabulary::{AccessSource, DenyReason, SessionState};
use chrono::{DateTime, Utc};
use daypass_entity::{product, session};
use sea_orm::sea_query::Alias;
use sea_orm::{ConnectionTrait, DatabaseBackend, FromQueryResult, IdenStatic, Iterable};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct HeartbeatRequest {
    pub session_id: String,
    /// The product is in use (as the product itself decides); an idle one never
    /// charges.
    pub active: bool,
    /// Ask for an offline lease (rule 23).
    pub offline: bool,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    pub session: SessionView,
    /// False: the session has ended; the launcher must stop the product.
    pub granted: bool,
    pub deny_reason: Option<DenyReason>,
    /// Tokens a renewal past the window charged, else 0.
    pub tokens_charged: Tokens,
    pub window_ends_at: Option<DateTime<Utc>>,
    pub balance: Tokens,
    pub offline_lease: Option<String>,
}

/// What a heartbeat does, decided on what one read saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beat {
    /// The session had ended (closed, lapsed, denied): nothing changes.
    Ended,
    /// The session ends as denied for this reason.
    End(DenyReason),
    /// Heard from: the last heartbeat and the activity move.
    Touch,
    /// Past its window and in use: charge again, as an open would.
    Renew,
}

/// Rules 20 and 22 on one heartbeat.
fn decide(seen: &Seen, active: bool, now: DateTime<Utc>) -> Result<Beat> {
    let view = SessionView::at(seen.session.clone(), now)?;
    if view.state != SessionState::Open {
        return Ok(Beat::Ended);
    }
    if !seen.user_active {
        return Ok(Beat::End(DenyReason::UserDeactivated));
    }
    Ok(match view.source()? {
        AccessSource::Subscription if seen.seat_ends_at.is_none() => {
            Beat::End(DenyReason::SessionEnded)
        }
        AccessSource::Subscription => Beat::Touch,
        AccessSource::Flex => {
            let covered = seen
                .window_ends_at
                .is_some_and(|ends_at| rules::window_covers(ends_at, now));
            if covered || !active {
                Beat::Touch
            } else {
                Beat::Renew
            }
        }
    })
}

/// The heartbeat of the caller's session `req.session_id` at `now`.
pub async fn heartbeat(
    db: &Db,
    actor: &Actor,
    now: DateTime<Utc>,
    req: HeartbeatRequest,
) -> Result<HeartbeatOutcome> {
    let not_found = || DomainError::not_found(format!("session {:?}", req.session_id));
    let me = actor.user().ok_or_else(not_found)?;
    if req.session_id.len() > 64 {
        return Err(not_found());
    }
    let seen = beats(db)
        .reads
        .submit(
            db,
            0,
            Asked {
                session_id: req.session_id.clone(),
                now,
            },
        )
        .await?
        .filter(|seen| seen.session.user_id == me.user_id)
        .ok_or_else(not_found)?;
    let mut outcome = HeartbeatOutcome {
        session: SessionView::at(seen.session.clone(), now)?,
        granted: true,
        deny_reason: None,
        tokens_charged: Tokens::ZERO,
        window_ends_at: seen.window_ends_at,
        balance: seen.balance,
        offline_lease: None,
    };
    match decide(&seen, req.active, now)? {
        Beat::Ended => return Ok(ended(outcome, DenyReason::SessionEnded)),
        Beat::End(reason) => {
            let ended_here = {
                let _turn = db.write_turn().await;
                mark_denied(db.conn(), &seen.session.id, reason, now).await?
            };
            if !ended_here {
                // Closed or lapsed since the read.
                return ended_since(db, outcome, now).await;
            }
            outcome.session = reread(db, &seen.session.id, now).await?;
            return Ok(ended(outcome, reason));
        }
        Beat::Touch => {
            let touched = beats(db)
                .touches
                .submit(
                    db,
                    0,
                    Touch {
                        id: seen.session.id.clone(),
                        now,
                        active: req.active,
                    },
                )
                .await?;
            match touched {
                Some(session) => outcome.session = SessionView::at(session, now)?,
                // Closed or lapsed since the read.
                None => return ended_since(db, outcome, now).await,
            }
        }
        Beat::Renew => {
            let answer = renew(db, &seen.session, seen.product.clone(), now).await?;
            outcome.session = reread(db, &seen.session.id, now).await?;
            outcome.balance = answer.balance;
            if let Some(reason) = answer.deny_reason {
                return Ok(ended(outcome, reason));
            }
            outcome.tokens_charged = answer.tokens_charged;
            outcome.window_ends_at = answer.window_ends_at;
        }
    }
    if req.offline {
        let source = outcome.session.source()?;
        outcome.offline_lease = lease_for(
            db,
            &outcome.session.session,
            seen.session.account_id,
            &seen.product.code,
            source,
            now,
            outcome.window_ends_at,
            seen.seat_ends_at,
        )
        .await?;
    }
    Ok(outcome)
}

fn ended(mut outcome: HeartbeatOutcome, reason: DenyReason) -> HeartbeatOutcome {
    outcome.granted = false;
    outcome.deny_reason = Some(reason);
    outcome.window_ends_at = None;
    outcome
}

/// The answer to a heartbeat whose session was ended by someone else after it was
/// read: as it stands now, with the balance as it is after that (a close may have
/// refunded the charge).
async fn ended_since(
    db: &Db,
    mut outcome: HeartbeatOutcome,
    now: DateTime<Utc>,
) -> Result<HeartbeatOutcome> {
    outcome.session = reread(db, &outcome.session.session.id, now).await?;
    outcome.balance =
        crate::accounts::balance_at(db.conn(), outcome.session.session.account_id, now).await?;
    Ok(ended(outcome, DenyReason::SessionEnded))
}

async fn reread(db: &Db, id: &str, now: DateTime<Utc>) -> Result<SessionView> {
    use sea_orm::EntityTrait;
    let session = session::Entity::find_by_id(id.to_owned())
        .one(db.conn())
        .await?
        .ok_or_else(|| DomainError::Internal("a session vanished".into()))?;
    SessionView::at(session, now)
}

/// The heartbeats waiting for the next batch.
struct Beats {
    reads: Arc<GroupCommit<Asked, Option<Seen>>>,
    touches: Arc<GroupCommit<Touch, Option<session::Model>>>,
}

const MAX_BATCH: usize = 128;

impl Default for Beats {
    fn default() -> Beats {
        Beats {
            reads: GroupCommit::new(run_reads, MAX_BATCH),
            touches: GroupCommit::new(run_touches, MAX_BATCH),
        }
    }
}

fn beats(db: &Db) -> Arc<Beats> {
    db.shared::<Beats>()
}

struct Asked {
    session_id: String,
    now: DateTime<Utc>,
}

/// What a heartbeat is decided on, read with its session in one round trip.
#[derive(Clone)]
struct Seen {
    session: session::Model,
    product: product::Model,
    user_active: bool,
    window_ends_at: Option<DateTime<Utc>>,
    /// The end of the latest active subscription seat for the product, if any.
    seat_ends_at: Option<DateTime<Utc>>,
    balance: Tokens,
}

fn read_sql(backend: DatabaseBackend, n: usize) -> String {
    let at = || column("asked", "at");
    format!(
        "WITH asked(i, id, at) AS (VALUES {}) \
         SELECT asked.i AS asked, {}, {}, u.active AS user_active, \
         (SELECT ends_at FROM windows w WHERE w.user_id = s.user_id \
          AND w.product_id = s.product_id) AS window_ends_at, \
         {} AS seat_ends_at, {} AS balance \
         FROM asked JOIN sessions s ON s.id = asked.id \
         JOIN users u ON u.id = s.user_id JOIN products p ON p.id = s.product_id",
        vec!["(?, ?, ?)"; n].join(", "),
        prefixed_columns(
            "s",
            "s_",
            session::Column::iter().map(|c| c.as_str()).collect()
        ),
        prefixed_columns(
            "p",
            "p_",
            product::Column::iter().map(|c| c.as_str()).collect()
        ),
        seat_ends_at_sql(backend, "s.user_id", "s.product_id", at()),
        balance_sql(backend, "s.account_id", at()),
    )
}

fn run_reads(db: Db, _key: i32, asked: Vec<Asked>) -> BatchFuture<Option<Seen>> {
    Box::pin(async move {
        let backend = db.backend();
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(asked.len() * 3);
        for (i, a) in asked.iter().enumerate() {
            values.extend([
                (i as i32).into(),
                a.session_id.as_str().into(),
                a.now.into(),
            ]);
        }
        let rows = db
            .conn()
            .query_all_raw(stmt(backend, &read_sql(backend, asked.len()), values))
            .await?;
        let mut found: Vec<Result<Option<Seen>>> = (0..asked.len()).map(|_| Ok(None)).collect();
        for row in rows {
            let i: i32 = row.try_get("", "asked")?;
            let seen = Seen {
                session: session::Model::from_query_result(&row, "s_")?,
                product: product::Model::from_query_result(&row, "p_")?,
                user_active: row.try_get("", "user_active")?,
                window_ends_at: row.try_get("", "window_ends_at")?,
                seat_ends_at: row.try_get("", "seat_ends_at")?,
                balance: Tokens(row.try_get("", "balance")?),
            };
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| found.get_mut(i)) {
                *slot = Ok(Some(seen));
            }
        }
        Ok(found)
    })
}

struct Touch {
    id: String,
    now: DateTime<Utc>,
    active: bool,
}

/// Every waiting heartbeat's session heard from, in one statement that commits
/// alone on the records' connection; a session closed or lapsed meanwhile is left
/// as it is (and answered as ended).
fn run_touches(db: Db, _key: i32, touches: Vec<Touch>) -> BatchFuture<Option<session::Model>> {
    Box::pin(async move {
        let backend = db.backend();
        // One row per session: the latest heartbeat's.
        let mut latest: Vec<&Touch> = touches.iter().collect();
        latest.sort_by(|a, b| a.id.cmp(&b.id).then(b.now.cmp(&a.now)));
        latest.dedup_by(|other, kept| other.id == kept.id);
        let lapsed = text(
            backend,
            conditions::lapsed_session(
                Alias::new("sessions"),
                column("v", "heartbeat_cutoff"),
                column("v", "unwatched_cutoff"),
            ),
        );
        let sql = format!(
            "WITH v(id, at, active, heartbeat_cutoff, unwatched_cutoff) AS (VALUES {}) \
             UPDATE sessions SET last_heartbeat_at = v.at, active = v.active FROM v \
             WHERE sessions.id = v.id AND sessions.state = ? AND NOT {lapsed} \
             RETURNING {}",
            vec!["(?, ?, ?, ?, ?)"; latest.len()].join(", "),
            session::Column::iter()
                .map(|c| format!("sessions.{}", c.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(latest.len() * 5 + 1);
        for t in &latest {
            let (heartbeat_cutoff, unwatched_cutoff) = rules::lapse_cutoffs(t.now);
            values.extend([
                t.id.as_str().into(),
                t.now.into(),
                t.active.into(),
                heartbeat_cutoff.into(),
                unwatched_cutoff.into(),
            ]);
        }
        values.push(SessionState::Open.as_str().into());
        let rows = {
            let _turn = db.write_turn().await;
            db.records_conn()
                .query_all_raw(stmt(backend, &sql, values))
                .await?
        };
        let mut touched: HashMap<String, session::Model> = HashMap::new();
        for row in rows {
            let s = session::Model::from_query_result(&row, "")?;
            touched.insert(s.id.clone(), s);
        }
        // Of two heartbeats of one session in a batch the later is stored; each
        // answers with its own values, as it would alone (the stored one came last).
        Ok(touches
            .iter()
            .map(|t| {
                Ok(touched.get(&t.id).map(|s| session::Model {
                    last_heartbeat_at: Some(t.now),
                    active: t.active,
                    ..s.clone()
                }))
            })
            .collect())
    })
}
