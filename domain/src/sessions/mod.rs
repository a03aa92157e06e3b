//! Sessions (rules 20–23): every granted open starts one; the launcher's heartbeats
//! keep it alive and renew its window past 24 hours when the product is in use; a
//! close or a lapse ends it, and a short launch's charge is refunded.
//!
//! Parts: [`heartbeat`] (batched like reopens: one read and one write for all the
//! heartbeats that arrive together), [`ending`] (closes, lapses and denials under
//! the account's lock, and the refund of rule 21), and here the reads and the
//! single-row writes the charging batch shares.

mod ending;
mod heartbeat;

pub use ending::{CloseOutcome, LapseReport, close_session, end_lapsed};
pub use heartbeat::{HeartbeatOutcome, HeartbeatRequest, heartbeat};

use crate::access::Actor;
use crate::conditions;
use crate::error::{DomainError, Result};
use crate::page::{Page, PageRequest};
use crate::rules;
use crate::store::Db;
use crate::vocabulary::{AccessSource, DenyReason, Role, SessionState, parse};
use base64::Engine;
use chrono::{DateTime, Utc};
use daypass_entity::{charge, session};
use sea_orm::sea_query::{Condition, Expr, ExprTrait};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use std::collections::HashSet;

/// A session as reported at one instant: stored OPEN but lapsed reads LAPSED, with
/// its end at its last heartbeat (rule 20), before the worker has ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub session: session::Model,
    pub state: SessionState,
    pub ended_at: Option<DateTime<Utc>>,
}

impl SessionView {
    pub fn at(session: session::Model, now: DateTime<Utc>) -> Result<SessionView> {
        let stored: SessionState = parse(&session.state)?;
        let lapsed = stored == SessionState::Open
            && rules::session_lapsed(session.started_at, session.last_heartbeat_at, now);
        Ok(if lapsed {
            SessionView {
                ended_at: Some(rules::lapsed_session_end(
                    session.started_at,
                    session.last_heartbeat_at,
                )),
                state: SessionState::Lapsed,
                session,
            }
        } else {
            SessionView {
                ended_at: session.ended_at,
                state: stored,
                session,
            }
        })
    }

    pub fn source(&self) -> Result<AccessSource> {
        parse(&self.session.source)
    }

    /// The last heartbeat, or the open for a session not heard from yet.
    pub fn last_heartbeat_at(&self) -> DateTime<Utc> {
        self.session
            .last_heartbeat_at
            .unwrap_or(self.session.started_at)
    }
}

/// Filters of [`list_sessions`].
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub state: Option<SessionState>,
    pub user_id: Option<i32>,
}

/// The account's sessions, newest first; a member sees only their own (rule 19).
pub async fn list_sessions(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    mut filter: SessionFilter,
    page: PageRequest,
    now: DateTime<Utc>,
) -> Result<Page<SessionView>> {
    match filter.user_id {
        Some(user_id) => actor.can_see_usage_of(account_id, user_id)?,
        None => {
            actor.can_see_account(account_id)?;
            if actor.role() == Role::Member {
                filter.user_id = actor.user().map(|u| u.user_id);
            }
        }
    }
    let limit = page.limit()?;
    let mut q = session::Entity::find()
        .filter(session::Column::AccountId.eq(account_id))
        .order_by_desc(session::Column::StartedAt)
        .order_by_desc(session::Column::Id);
    if let Some(user_id) = filter.user_id {
        q = q.filter(session::Column::UserId.eq(user_id));
    }
    if let Some(state) = filter.state {
        q = q.filter(state_is(state, now));
    }
    if let Some((started_at, id)) = page.after.as_deref().map(decode_cursor).transpose()? {
        q = q.filter(
            Condition::any()
                .add(session::Column::StartedAt.lt(started_at))
                .add(
                    Condition::all()
                        .add(session::Column::StartedAt.eq(started_at))
                        .add(session::Column::Id.lt(id)),
                ),
        );
    }
    let mut rows = q.limit(limit + 1).all(db.conn()).await?;
    let has_next_page = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Ok(Page {
        items: rows
            .into_iter()
            .map(|s| Ok((encode_cursor(&s), SessionView::at(s, now)?)))
            .collect::<Result<_>>()?,
        has_next_page,
    })
}

/// Sessions reported in `state` at `now` ([`SessionView::at`] in SQL).
fn state_is(state: SessionState, now: DateTime<Utc>) -> Condition {
    let (heartbeat_cutoff, unwatched_cutoff) = rules::lapse_cutoffs(now);
    let lapsed = || conditions::lapsed_session(session::Entity, heartbeat_cutoff, unwatched_cutoff);
    let stored = |s: SessionState| session::Column::State.eq(s.as_str());
    match state {
        SessionState::Open => Condition::all()
            .add(stored(SessionState::Open))
            .add(lapsed().not()),
        SessionState::Lapsed => Condition::any().add(stored(SessionState::Lapsed)).add(
            Condition::all()
                .add(stored(SessionState::Open))
                .add(lapsed()),
        ),
        other => Condition::all().add(stored(other)),
    }
}

fn encode_cursor(s: &session::Model) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "s:{}:{}",
        s.started_at.timestamp_micros(),
        s.id
    ))
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, String)> {
    let bad = || DomainError::bad_input(format!("invalid cursor {cursor:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.splitn(3, ':');
    let (Some("s"), Some(micros), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let at = micros
        .parse()
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok((at, id.to_owned()))
}

/// One session, for whoever may see it: its user, or whoever reads the account's
/// books; anyone else is told it does not exist.
pub async fn find_session(
    db: &Db,
    actor: &Actor,
    id: &str,
    now: DateTime<Utc>,
) -> Result<SessionView> {
    let not_found = || DomainError::not_found(format!("session {id:?}"));
    let session = session::Entity::find_by_id(id.to_owned())
        .one(db.conn())
        .await?
        .ok_or_else(not_found)?;
    actor
        .can_see_usage_of(session.account_id, session.user_id)
        .map_err(|_| not_found())?;
    SessionView::at(session, now)
}

/// The charges a session paid: its open's and any renewal's, oldest first.
pub async fn session_charges(db: &Db, session_id: &str) -> Result<Vec<charge::Model>> {
    Ok(charge::Entity::find()
        .filter(charge::Column::SessionId.eq(session_id))
        .order_by_asc(charge::Column::Id)
        .all(db.conn())
        .await?)
}

/// Which of `asked` (session, instant) are open at their instant: stored OPEN and
/// not lapsed. Read under the account's lock by a charging batch's renewals.
pub(crate) async fn open_among<'a>(
    conn: &impl ConnectionTrait,
    asked: impl Iterator<Item = (&'a str, DateTime<Utc>)>,
) -> Result<HashSet<&'a str>> {
    let asked: Vec<(&str, DateTime<Utc>)> = asked.collect();
    if asked.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = session::Entity::find()
        .filter(session::Column::Id.is_in(asked.iter().map(|(id, _)| id.to_string())))
        .filter(session::Column::State.eq(SessionState::Open.as_str()))
        .all(conn)
        .await?;
    Ok(asked
        .into_iter()
        .filter(|(id, now)| {
            rows.iter().any(|s| {
                s.id == *id && !rules::session_lapsed(s.started_at, s.last_heartbeat_at, *now)
            })
        })
        .map(|(id, _)| id)
        .collect())
}

/// A session heard from at `now` (rule 20), if still open.
pub(crate) async fn touch_one(
    conn: &impl ConnectionTrait,
    id: &str,
    now: DateTime<Utc>,
    active: bool,
) -> Result<()> {
    session::Entity::update_many()
        .col_expr(session::Column::LastHeartbeatAt, Expr::value(Some(now)))
        .col_expr(session::Column::Active, Expr::value(active))
        .filter(session::Column::Id.eq(id))
        .filter(session::Column::State.eq(SessionState::Open.as_str()))
        .exec(conn)
        .await?;
    Ok(())
}

/// Ends an open session as denied (rule 22: a renewal denied, the seat gone, the
/// user deactivated). False when it had ended already.
pub(crate) async fn mark_denied(
    conn: &impl ConnectionTrait,
    id: &str,
    reason: DenyReason,
    now: DateTime<Utc>,
) -> Result<bool> {
    mark_ended(conn, id, SessionState::Denied, now, Some(reason)).await
}

/// Moves an open session to `state`, ended at `ended_at`: the one write that ends a
/// session, conditional on it being open, so of several racing enders one wins.
pub(crate) async fn mark_ended(
    conn: &impl ConnectionTrait,
    id: &str,
    state: SessionState,
    ended_at: DateTime<Utc>,
    reason: Option<DenyReason>,
) -> Result<bool> {
    let done = session::Entity::update_many()
        .col_expr(session::Column::State, Expr::value(state.as_str()))
        .col_expr(session::Column::EndedAt, Expr::value(Some(ended_at)))
        .col_expr(session::Column::Active, Expr::value(false))
        .col_expr(
            session::Column::DenyReason,
            Expr::value(reason.map(|r| r.as_str().to_owned())),
        )
        .filter(session::Column::Id.eq(id))
        .filter(session::Column::State.eq(SessionState::Open.as_str()))
        .exec(conn)
        .await?;
    Ok(done.rows_affected == 1)
}

/// Rule 23: the offline lease for a session, expiring at the earliest of a day, the
/// window's end and the subscription's end; `None` when that is already past (an
/// idle product whose window has ended has nothing to work offline on).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn lease_for(
    db: &Db,
    session: &session::Model,
    account_id: i32,
    product_code: &str,
    source: AccessSource,
    issued_at: DateTime<Utc>,
    window_ends_at: Option<DateTime<Utc>>,
    seat_ends_at: Option<DateTime<Utc>>,
) -> Result<Option<String>> {
    // A pay-as-you-go session without a window (a refund closed it) or a
    // subscription session without a seat has nothing to work offline on.
    let (window_ends_at, seat_ends_at) = match (source, window_ends_at, seat_ends_at) {
        (AccessSource::Flex, Some(ends_at), _) => (Some(ends_at), None),
        (AccessSource::Subscription, _, Some(ends_at)) => (None, Some(ends_at)),
        _ => return Ok(None),
    };
    let expires_at = rules::lease_expiry(issued_at, window_ends_at, seat_ends_at);
    if expires_at <= issued_at {
        return Ok(None);
    }
    let claims = crate::leases::LeaseClaims {
        account_id,
        user_id: session.user_id,
        product_code: product_code.to_owned(),
        source,
        session_id: session.id.clone(),
        issued_at,
        expires_at,
    };
    crate::leases::issue_lease(db, &claims).await.map(Some)
}
