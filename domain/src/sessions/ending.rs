//! How sessions end (rules 20, 21): closed by the launcher or an admin, or lapsed
//! when their heartbeats stop, each under the account's lock, so a close, a
//! heartbeat and the lapse sweep racing over one session end it once and refund
//! its charge at most once.

use super::{SessionView, mark_ended};
use crate::access::Actor;
use crate::conditions;
use crate::error::{DomainError, Result};
use crate::rules;
use crate::store::balance_feed::announce_balance_change;
use crate::store::{Db, WriteTx};
use crate::vocabulary::{LedgerKind, LotStatus, Role, SessionState};
use crate::webhooks::WebhookEvent;
use chrono::{DateTime, Utc};
use daypass_entity::{charge, ledger_entry, lot, session, window};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

/// The answer to a close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseOutcome {
    pub session: SessionView,
    /// This close ended the session (it was open).
    pub ended: bool,
    /// Its open's charge was refunded as a short launch.
    pub refunded: bool,
}

/// Closes session `id` at `now`: by its user, or an admin of its account (or the
/// operator). An ended session is returned unchanged; one that lapsed before the
/// worker saw it ends as lapsed, at its last heartbeat.
pub async fn close_session(
    db: &Db,
    actor: &Actor,
    now: DateTime<Utc>,
    id: &str,
) -> Result<CloseOutcome> {
    let not_found = || DomainError::not_found(format!("session {id:?}"));
    if id.len() > 64 {
        return Err(not_found());
    }
    let found = session::Entity::find_by_id(id.to_owned())
        .one(db.conn())
        .await?
        .ok_or_else(not_found)?;
    // A deactivated user reads `viewer` and nothing else (rule 19).
    actor.require_active()?;
    let own = actor.user().is_some_and(|u| u.user_id == found.user_id);
    if !own {
        actor
            .can_see_usage_of(found.account_id, found.user_id)
            .map_err(|_| not_found())?;
        if actor.role() != Role::Operator {
            actor.can_manage(found.account_id)?;
        }
    }
    let tx = db.begin_write().await?;
    db.lock_account(&tx, found.account_id).await?;
    let current = session::Entity::find_by_id(id.to_owned())
        .one(&*tx)
        .await?
        .ok_or_else(not_found)?;
    let (state, ended_at) =
        if rules::session_lapsed(current.started_at, current.last_heartbeat_at, now) {
            (
                SessionState::Lapsed,
                rules::lapsed_session_end(current.started_at, current.last_heartbeat_at),
            )
        } else {
            (SessionState::Closed, now)
        };
    let ended = mark_ended(&*tx, id, state, ended_at, None).await?;
    let refunded = ended && refund_if_short(db, &tx, &current, ended_at, now).await?;
    tx.commit().await?;
    let after = session::Entity::find_by_id(id.to_owned())
        .one(db.conn())
        .await?
        .ok_or_else(not_found)?;
    Ok(CloseOutcome {
        session: SessionView::at(after, now)?,
        ended,
        refunded,
    })
}

/// What one lapse sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LapseReport {
    pub lapsed: u64,
    pub refunded: u64,
    /// Sessions open (not lapsed) after the sweep.
    pub open_now: u64,
}

/// Ends every session lapsed at `now` (rule 20) at its last heartbeat, refunding
/// short launches (rule 21). Safe to run from several workers at once: each session
/// ends once, under its account's lock.
pub async fn end_lapsed(db: &Db, now: DateTime<Utc>) -> Result<LapseReport> {
    let (heartbeat_cutoff, unwatched_cutoff) = rules::lapse_cutoffs(now);
    let mut report = LapseReport::default();
    loop {
        let due: Vec<session::Model> = session::Entity::find()
            .filter(conditions::stored_open_session(session::Entity))
            .filter(conditions::lapsed_session(
                session::Entity,
                heartbeat_cutoff,
                unwatched_cutoff,
            ))
            .order_by_asc(session::Column::AccountId)
            .limit(500)
            .all(db.conn())
            .await?;
        if due.is_empty() {
            break;
        }
        let ended_before = report.lapsed;
        for account in due.chunk_by(|a, b| a.account_id == b.account_id) {
            let tx = db.begin_write().await?;
            db.lock_account(&tx, account[0].account_id).await?;
            for candidate in account {
                let ended_at =
                    rules::lapsed_session_end(candidate.started_at, candidate.last_heartbeat_at);
                // A heartbeat since the read keeps it open.
                let Some(current) = session::Entity::find_by_id(candidate.id.clone())
                    .one(&*tx)
                    .await?
                    .filter(|s| rules::session_lapsed(s.started_at, s.last_heartbeat_at, now))
                else {
                    continue;
                };
                if mark_ended(&*tx, &current.id, SessionState::Lapsed, ended_at, None).await? {
                    report.lapsed += 1;
                    if refund_if_short(db, &tx, &current, ended_at, now).await? {
                        report.refunded += 1;
                    }
                }
            }
            tx.commit().await?;
        }
        if report.lapsed == ended_before {
            // Each was ended by someone else meanwhile, or heard from: read afresh
            // next run rather than spin on them.
            break;
        }
    }
    report.open_now = session::Entity::find()
        .filter(conditions::stored_open_session(session::Entity))
        .filter(
            conditions::lapsed_session(session::Entity, heartbeat_cutoff, unwatched_cutoff).not(),
        )
        .count(db.conn())
        .await?;
    Ok(report)
}

/// Rule 21, in the transaction that ended `session` at `ended_at` (its account
/// locked): the charge of its open is refunded when the session ended less than 5
/// minutes after it and no other open of the user and product was granted inside
/// its window. Its tokens go back to the lots they came from (expiring at once in a
/// lot expired meanwhile), the window closes now, and a day already rolled up is
/// corrected.
async fn refund_if_short(
    db: &Db,
    tx: &WriteTx,
    session: &session::Model,
    ended_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let Some(charge_id) = session.open_charge_id else {
        return Ok(false);
    };
    let Some(charge) = charge::Entity::find_by_id(charge_id).one(&**tx).await? else {
        return Ok(false);
    };
    if charge.refunded_at.is_some() || !rules::short_launch(charge.window_starts_at, ended_at) {
        return Ok(false);
    }
    // A reopen read the window without the account's lock; it records its session
    // under a share lock of the window (PostgreSQL), so once this lock is held every
    // such session is visible, and a later one finds the window closed.
    if db.is_postgres() {
        window::Entity::find()
            .filter(window::Column::UserId.eq(charge.user_id))
            .filter(window::Column::ProductId.eq(charge.product_id))
            .lock_exclusive()
            .all(&**tx)
            .await?;
    }
    let other_opens = session::Entity::find()
        .filter(session::Column::UserId.eq(session.user_id))
        .filter(session::Column::ProductId.eq(session.product_id))
        .filter(session::Column::Id.ne(session.id.clone()))
        .filter(session::Column::StartedAt.gte(charge.window_starts_at))
        .filter(session::Column::StartedAt.lt(charge.window_ends_at))
        .count(&**tx)
        .await?;
    if other_opens > 0 {
        return Ok(false);
    }
    let refunded = charge::Entity::update_many()
        .col_expr(charge::Column::RefundedAt, Expr::value(Some(now)))
        // A window that had ended before a late refund (a lapse swept long after)
        // keeps its end: it never reaches into the next charge's window.
        .col_expr(
            charge::Column::WindowEndsAt,
            Expr::value(Ord::min(charge.window_ends_at, now)),
        )
        .filter(charge::Column::Id.eq(charge.id))
        .filter(charge::Column::RefundedAt.is_null())
        .exec(&**tx)
        .await?;
    if refunded.rows_affected != 1 {
        return Ok(false);
    }
    give_back(tx, &charge, now).await?;
    let data = async {
        Ok(serde_json::json!({
            "chargeId": charge.id.to_string(),
            "tokens": charge.tokens,
            "userId": charge.user_id.to_string(),
            "productId": charge.product_id.to_string(),
            "sessionId": session.id,
            "balance": crate::accounts::balance_at(&**tx, charge.account_id, now).await?.get(),
        }))
    };
    crate::webhooks::record_event(
        tx,
        charge.account_id,
        WebhookEvent::ChargeRefunded,
        data,
        now,
    )
    .await?;
    // The window closes: no open is inside it any more, whatever its clock says.
    window::Entity::delete_many()
        .filter(window::Column::UserId.eq(charge.user_id))
        .filter(window::Column::ProductId.eq(charge.product_id))
        .filter(window::Column::ChargeId.eq(charge.id))
        .exec(&**tx)
        .await?;
    announce_balance_change(&**tx, charge.account_id).await?;
    crate::rollups::after_refund(
        &**tx,
        charge.account_id,
        charge.window_starts_at.date_naive(),
        now,
    )
    .await?;
    Ok(true)
}

/// The charge's tokens back to each lot it drew from, with REFUND entries; tokens
/// going back to a lot expired at `now` expire at once (an EXPIRY entry naming the
/// charge), so every lot still adds up (rule 6).
async fn give_back(tx: &WriteTx, charge: &charge::Model, now: DateTime<Utc>) -> Result<()> {
    let draws = ledger_entry::Entity::find()
        .filter(ledger_entry::Column::ChargeId.eq(charge.id))
        .filter(ledger_entry::Column::Kind.eq(LedgerKind::Charge.as_str()))
        .order_by_asc(ledger_entry::Column::Id)
        .all(&**tx)
        .await?;
    for draw in draws {
        let tokens = -draw.tokens;
        let lot = lot::Entity::find_by_id(draw.lot_id)
            .one(&**tx)
            .await?
            .ok_or_else(|| DomainError::Internal("a charge drew from a missing lot".into()))?;
        let entry = |kind: LedgerKind, tokens: i64| ledger_entry::ActiveModel {
            account_id: Set(charge.account_id),
            kind: Set(kind.as_str().to_owned()),
            tokens: Set(tokens),
            lot_id: Set(lot.id),
            charge_id: Set(Some(charge.id)),
            at: Set(now),
            ..Default::default()
        };
        entry(LedgerKind::Refund, tokens).insert(&**tx).await?;
        let mut back: lot::ActiveModel = lot.clone().into();
        back.used = Set(lot.used - tokens);
        if rules::lot_is_unexpired(lot.expires_at, now) {
            back.remaining = Set(lot.remaining + tokens);
            back.status = Set(LotStatus::Active.as_str().to_owned());
        } else {
            back.expired = Set(lot.expired + tokens);
            if lot.remaining == 0 {
                back.status = Set(LotStatus::Expired.as_str().to_owned());
            }
            entry(LedgerKind::Expiry, -tokens).insert(&**tx).await?;
        }
        back.update(&**tx).await?;
    }
    Ok(())
}
