//! Delivering events: a sender leases a due delivery, POSTs it, and records the
//! attempt; failures are retried with rule 15's backoff until delivered, and an
//! endpoint whose deliveries have failed for [`GIVE_UP_AFTER`] is disabled and its
//! admins are mailed. Also replays, test events and the delivery log.

use super::endpoints::{EndpointView, signing_secrets, visible_endpoint};
use super::events::{pending_delivery, write_event};
use super::{DeliveryState, WebhookEvent};
use crate::access::Actor;
use crate::error::{DomainError, Result};
use crate::notifications::{self, Facts, NotificationKind, Recipients, WebhookFact};
use crate::page::{Page, PageRequest};
use crate::store::Db;
use crate::units::NotificationId;
use chrono::{DateTime, Duration, Utc};
use daypass_entity::{webhook_attempt, webhook_delivery, webhook_endpoint, webhook_event};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Set,
    sea_query::{Expr, ExprTrait, Query},
};
use std::collections::HashMap;

/// How long one sender holds a delivery: beyond the 10-second answer limit, so
/// only a sender that died leaves a delivery to be taken again.
pub const LEASE: Duration = Duration::seconds(60);
/// An endpoint whose deliveries have failed this long is disabled.
pub const GIVE_UP_AFTER: Duration = Duration::days(3);
/// The answer limit of one attempt.
pub const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);
/// What an attempt says until its sender records the answer: a sender that dies
/// mid-attempt leaves it so.
const NO_ANSWER_RECORDED: &str = "no answer recorded: the sender stopped during the attempt";

fn retrying() -> Condition {
    Condition::any()
        .add(webhook_delivery::Column::State.eq(DeliveryState::Pending.as_str()))
        .add(webhook_delivery::Column::State.eq(DeliveryState::Failed.as_str()))
}

fn lease_free(now: DateTime<Utc>) -> Condition {
    Condition::any()
        .add(webhook_delivery::Column::LeaseUntil.is_null())
        .add(webhook_delivery::Column::LeaseUntil.lte(now))
}

/// A delivery waiting for an attempt, and its endpoint (senders limit how many
/// attempts an endpoint has at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueDelivery {
    pub id: i32,
    pub endpoint_id: i32,
}

/// Deliveries due now to enabled endpoints and held by no sender, oldest due first,
/// except to the endpoints in `busy` (whose backlog would otherwise fill the page
/// and hold up every other endpoint's deliveries).
pub async fn due_deliveries(
    db: &Db,
    now: DateTime<Utc>,
    limit: u64,
    busy: &[i32],
) -> Result<Vec<DueDelivery>> {
    let enabled = Query::select()
        .column(webhook_endpoint::Column::Id)
        .from(webhook_endpoint::Entity)
        .and_where(webhook_endpoint::Column::Enabled.eq(true))
        .to_owned();
    let rows: Vec<(i32, i32)> = webhook_delivery::Entity::find()
        .select_only()
        .column(webhook_delivery::Column::Id)
        .column(webhook_delivery::Column::EndpointId)
        .filter(retrying())
        .filter(webhook_delivery::Column::NextAttemptAt.lte(now))
        .filter(lease_free(now))
        .filter(webhook_delivery::Column::EndpointId.in_subquery(enabled))
        .filter(webhook_delivery::Column::EndpointId.is_not_in(busy.iter().copied()))
        .order_by_asc(webhook_delivery::Column::NextAttemptAt)
        .order_by_asc(webhook_delivery::Column::Id)
        .limit(limit)
        .into_tuple()
        .all(db.conn())
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, endpoint_id)| DueDelivery { id, endpoint_id })
        .collect())
}

/// How many deliveries a sender holds right now.
pub async fn deliveries_in_flight(db: &Db, now: DateTime<Utc>) -> Result<u64> {
    use sea_orm::PaginatorTrait;
    Ok(webhook_delivery::Entity::find()
        .filter(retrying())
        .filter(webhook_delivery::Column::LeaseUntil.gt(now))
        .count(db.conn())
        .await?)
}

/// A delivery held by one sender for one attempt: what to POST, where, signed how.
#[derive(Debug, Clone)]
pub struct LeasedDelivery {
    pub delivery_id: i32,
    pub attempt_id: i32,
    /// Attempts so far, this one included.
    pub attempt: i32,
    /// When the delivery was made (or replayed): it is given up after
    /// [`GIVE_UP_AFTER`] of failures, even to an endpoint that answers others.
    pub created_at: DateTime<Utc>,
    pub endpoint_id: i32,
    pub url: String,
    /// The `webhook-id`.
    pub msg_id: String,
    pub body: String,
    pub secrets: Vec<String>,
}

/// Takes a due delivery for one attempt, or `None` when it is delivered, dead, not
/// due, its endpoint disabled, or another sender holds it (the conditional update
/// decides between racing senders). The attempt is kept from its start, so one a
/// sender died in still shows.
pub async fn lease_delivery(
    db: &Db,
    id: i32,
    now: DateTime<Utc>,
) -> Result<Option<LeasedDelivery>> {
    let tx = db.begin_write().await?;
    let claimed = webhook_delivery::Entity::update_many()
        .col_expr(
            webhook_delivery::Column::LeaseUntil,
            Expr::value(Some(now + LEASE)),
        )
        .col_expr(
            webhook_delivery::Column::Attempts,
            Expr::col(webhook_delivery::Column::Attempts).add(1),
        )
        .filter(webhook_delivery::Column::Id.eq(id))
        .filter(retrying())
        .filter(webhook_delivery::Column::NextAttemptAt.lte(now))
        .filter(lease_free(now))
        .exec(&*tx)
        .await?;
    if claimed.rows_affected != 1 {
        return Ok(None);
    }
    let delivery = webhook_delivery::Entity::find_by_id(id)
        .one(&*tx)
        .await?
        .ok_or_else(|| DomainError::Internal(format!("webhook delivery {id} vanished")))?;
    let endpoint = webhook_endpoint::Entity::find_by_id(delivery.endpoint_id)
        .one(&*tx)
        .await?;
    let Some(endpoint) = endpoint.filter(|e| e.enabled) else {
        // Rolled back: an endpoint disabled meanwhile takes nothing.
        return Ok(None);
    };
    let event = webhook_event::Entity::find_by_id(delivery.event_id.clone())
        .one(&*tx)
        .await?
        .ok_or_else(|| DomainError::Internal(format!("webhook delivery {id} lost its event")))?;
    let attempt = webhook_attempt::ActiveModel {
        delivery_id: Set(id),
        at: Set(now),
        status: Set(None),
        error: Set(Some(NO_ANSWER_RECORDED.to_owned())),
        ..Default::default()
    }
    .insert(&*tx)
    .await?;
    tx.commit().await?;
    Ok(Some(LeasedDelivery {
        delivery_id: id,
        attempt_id: attempt.id,
        attempt: delivery.attempts,
        created_at: delivery.created_at,
        endpoint_id: endpoint.id,
        url: endpoint.url.clone(),
        msg_id: event.id,
        body: event.body,
        secrets: signing_secrets(&endpoint, now),
    }))
}

/// What came back from one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The endpoint answered with this HTTP status.
    Status(u16),
    /// No answer: refused address, connection error, timeout.
    NoAnswer(String),
}

impl Answer {
    fn delivered(&self) -> bool {
        matches!(self, Answer::Status(s) if (200..300).contains(s))
    }
}

/// Records an attempt's answer: DELIVERED on a 2xx; otherwise FAILED and due again
/// after rule 15's backoff, unless the delivery has now failed for
/// [`GIVE_UP_AFTER`] (DEAD), or the endpoint's deliveries have: then the endpoint
/// is disabled, its undelivered deliveries are given up (DEAD, replayable) and its
/// admins are mailed, in one transaction. A sender whose lease ran out and whose
/// delivery another sender took records only its attempt.
pub async fn record_answer(
    db: &Db,
    leased: &LeasedDelivery,
    answer: &Answer,
    now: DateTime<Utc>,
) -> Result<DeliveryState> {
    let (status, error) = match answer {
        Answer::Status(s) if answer.delivered() => (Some(i32::from(*s)), None),
        Answer::Status(s) => (Some(i32::from(*s)), Some(format!("answered HTTP {s}"))),
        Answer::NoAnswer(e) => (None, Some(e.chars().take(1000).collect::<String>())),
    };
    let tx = db.begin_write().await?;
    // The endpoint first, as every writer of its deliveries here: two answers
    // recorded at once never lock each other's deliveries in opposite orders. Not
    // FOR UPDATE: a charge writing a delivery to it (a key-share lock) never waits.
    let mut endpoint = webhook_endpoint::Entity::find_by_id(leased.endpoint_id);
    if db.is_postgres() {
        endpoint = endpoint.lock(sea_orm::sea_query::LockType::NoKeyUpdate);
    }
    endpoint.one(&*tx).await?;
    webhook_attempt::Entity::update_many()
        .col_expr(webhook_attempt::Column::Status, Expr::value(status))
        .col_expr(webhook_attempt::Column::Error, Expr::value(error.clone()))
        .filter(webhook_attempt::Column::Id.eq(leased.attempt_id))
        .exec(&*tx)
        .await?;
    // Only the sender still holding this attempt changes the delivery.
    let ours = || {
        webhook_delivery::Entity::update_many()
            .col_expr(
                webhook_delivery::Column::LeaseUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(webhook_delivery::Column::Id.eq(leased.delivery_id))
            // Each lease counts an attempt: another sender's lease changed it.
            .filter(webhook_delivery::Column::Attempts.eq(leased.attempt))
            .filter(retrying())
    };
    let endpoint = webhook_endpoint::Entity::update_many()
        .filter(webhook_endpoint::Column::Id.eq(leased.endpoint_id));
    let mut told = Vec::new();
    let state = if answer.delivered() {
        let changed = ours()
            .col_expr(
                webhook_delivery::Column::State,
                Expr::value(DeliveryState::Delivered.as_str()),
            )
            .col_expr(
                webhook_delivery::Column::DeliveredAt,
                Expr::value(Some(now)),
            )
            .exec(&*tx)
            .await?;
        if changed.rows_affected == 1 {
            endpoint
                .col_expr(
                    webhook_endpoint::Column::FailingSince,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .exec(&*tx)
                .await?;
        }
        DeliveryState::Delivered
    } else {
        let given_up = now - leased.created_at >= GIVE_UP_AFTER;
        let (state, next) = if given_up {
            (DeliveryState::Dead, now)
        } else {
            (
                DeliveryState::Failed,
                now + notifications::backoff_after(leased.attempt),
            )
        };
        let changed = ours()
            .col_expr(webhook_delivery::Column::State, Expr::value(state.as_str()))
            .col_expr(webhook_delivery::Column::NextAttemptAt, Expr::value(next))
            .exec(&*tx)
            .await?;
        if changed.rows_affected != 1 {
            // Another sender has it now: its answer counts, not this late one.
            tx.commit().await?;
            return Ok(state);
        }
        endpoint
            .col_expr(
                webhook_endpoint::Column::FailingSince,
                Expr::value(Some(now)),
            )
            .filter(webhook_endpoint::Column::FailingSince.is_null())
            .exec(&*tx)
            .await?;
        match disable_if_failing_too_long(&tx, leased.endpoint_id, error.as_deref(), now).await? {
            Some(notified) => {
                told.extend(notified);
                DeliveryState::Dead
            }
            None => state,
        }
    };
    tx.commit().await?;
    db.deliveries().committed(&told).await;
    Ok(state)
}

/// Disables the endpoint when its deliveries have failed for [`GIVE_UP_AFTER`]:
/// `Some` (with the admins' notification, if made) when it did.
async fn disable_if_failing_too_long(
    tx: &crate::store::WriteTx,
    endpoint_id: i32,
    last_error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<Option<NotificationId>>> {
    let Some(endpoint) = webhook_endpoint::Entity::find_by_id(endpoint_id)
        .one(&**tx)
        .await?
    else {
        return Ok(None);
    };
    let Some(since) = endpoint.failing_since.filter(|s| now - *s >= GIVE_UP_AFTER) else {
        return Ok(None);
    };
    if !endpoint.enabled {
        return Ok(None);
    }
    let reason = format!(
        "every delivery failed for 3 days (since {})",
        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    webhook_endpoint::Entity::update_many()
        .col_expr(webhook_endpoint::Column::Enabled, Expr::value(false))
        .col_expr(
            webhook_endpoint::Column::DisabledReason,
            Expr::value(Some(reason)),
        )
        .filter(webhook_endpoint::Column::Id.eq(endpoint_id))
        .exec(&**tx)
        .await?;
    webhook_delivery::Entity::update_many()
        .col_expr(
            webhook_delivery::Column::State,
            Expr::value(DeliveryState::Dead.as_str()),
        )
        .col_expr(
            webhook_delivery::Column::LeaseUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(webhook_delivery::Column::EndpointId.eq(endpoint_id))
        .filter(retrying())
        .exec(&**tx)
        .await?;
    let account = crate::store::find_account(&**tx, endpoint.account_id).await?;
    let facts = Facts {
        account_id: account.id,
        account_name: account.name.clone(),
        balance: crate::accounts::balance_at(&**tx, account.id, now)
            .await?
            .get(),
        at: now,
        webhook: Some(WebhookFact {
            endpoint_id,
            url: endpoint.url.clone(),
            failing_since: since,
            last_error: last_error.map(str::to_owned),
        }),
        ..Facts::default()
    };
    let id = notifications::insert_once(
        &**tx,
        NotificationKind::WebhookDisabled,
        format!("webhook-disabled:{endpoint_id}:{}", since.timestamp()),
        &facts,
        &Recipients::admins(),
        now,
    )
    .await?;
    tracing::warn!(
        endpoint = endpoint_id,
        "webhook endpoint disabled after 3 days of failures"
    );
    Ok(Some(id.map(NotificationId)))
}

/// One attempt as the log shows it.
#[derive(Debug, Clone)]
pub struct AttemptView {
    pub at: DateTime<Utc>,
    pub status: Option<i32>,
    pub error: Option<String>,
}

/// A delivery as the log shows it.
#[derive(Debug, Clone)]
pub struct DeliveryView {
    pub id: i32,
    pub endpoint: EndpointView,
    pub event: WebhookEvent,
    /// The exact body POSTed.
    pub payload: serde_json::Value,
    pub state: DeliveryState,
    pub attempts: Vec<AttemptView>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Builds the views of `deliveries` with three more reads (events, endpoints,
/// attempts), whatever their number.
async fn views(db: &Db, deliveries: Vec<webhook_delivery::Model>) -> Result<Vec<DeliveryView>> {
    if deliveries.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i32> = deliveries.iter().map(|d| d.id).collect();
    let events: HashMap<String, webhook_event::Model> = webhook_event::Entity::find()
        .filter(webhook_event::Column::Id.is_in(deliveries.iter().map(|d| d.event_id.clone())))
        .all(db.conn())
        .await?
        .into_iter()
        .map(|e| (e.id.clone(), e))
        .collect();
    let endpoints: HashMap<i32, EndpointView> = webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::Id.is_in(deliveries.iter().map(|d| d.endpoint_id)))
        .all(db.conn())
        .await?
        .iter()
        .map(|e| EndpointView::of(e).map(|v| (v.id, v)))
        .collect::<Result<_>>()?;
    let mut attempts: HashMap<i32, Vec<AttemptView>> = HashMap::new();
    for a in webhook_attempt::Entity::find()
        .filter(webhook_attempt::Column::DeliveryId.is_in(ids))
        .order_by_asc(webhook_attempt::Column::Id)
        .all(db.conn())
        .await?
    {
        attempts
            .entry(a.delivery_id)
            .or_default()
            .push(AttemptView {
                at: a.at,
                status: a.status,
                error: a.error,
            });
    }
    deliveries
        .into_iter()
        .map(|d| {
            let missing =
                || DomainError::Internal(format!("webhook delivery {} is incomplete", d.id));
            let event = events.get(&d.event_id).ok_or_else(missing)?;
            Ok(DeliveryView {
                id: d.id,
                endpoint: endpoints.get(&d.endpoint_id).cloned().ok_or_else(missing)?,
                event: event.event_type.parse()?,
                payload: serde_json::from_str(&event.body).map_err(|e| {
                    DomainError::Internal(format!("webhook event {}: {e}", event.id))
                })?,
                state: d.state.parse()?,
                attempts: attempts.remove(&d.id).unwrap_or_default(),
                created_at: d.created_at,
                delivered_at: d.delivered_at,
            })
        })
        .collect()
}

async fn view_of(db: &Db, id: i32) -> Result<DeliveryView> {
    let delivery = webhook_delivery::Entity::find_by_id(id)
        .one(db.conn())
        .await?
        .ok_or_else(|| DomainError::not_found(format!("webhook delivery {id}")))?;
    views(db, vec![delivery])
        .await?
        .pop()
        .ok_or_else(|| DomainError::Internal("a delivery without its view".into()))
}

/// The account's deliveries, newest first, optionally of one endpoint (admins,
/// analysts, operators).
pub async fn list_deliveries(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    endpoint_id: Option<i32>,
    page: PageRequest,
) -> Result<Page<DeliveryView>> {
    actor.can_read_books(account_id)?;
    let limit = page.limit()?;
    let mut q = webhook_delivery::Entity::find()
        .filter(webhook_delivery::Column::AccountId.eq(account_id))
        .order_by_desc(webhook_delivery::Column::Id);
    if let Some(endpoint_id) = endpoint_id {
        q = q.filter(webhook_delivery::Column::EndpointId.eq(endpoint_id));
    }
    if let Some(after) = page.after_id()? {
        q = q.filter(webhook_delivery::Column::Id.lt(after));
    }
    let rows = q.limit(limit + 1).all(db.conn()).await?;
    let page = Page::from_rows(rows, limit, |d| d.id);
    let cursors: Vec<String> = page.items.iter().map(|(c, _)| c.clone()).collect();
    let views = views(db, page.items.into_iter().map(|(_, d)| d).collect()).await?;
    Ok(Page {
        items: cursors.into_iter().zip(views).collect(),
        has_next_page: page.has_next_page,
    })
}

/// Sends a TEST event to the endpoint, whatever event types it takes (admins).
pub async fn send_test_event(
    db: &Db,
    actor: &Actor,
    endpoint_id: i32,
    now: DateTime<Utc>,
) -> Result<DeliveryView> {
    let endpoint = visible_endpoint(db, actor, endpoint_id).await?;
    actor.can_manage(endpoint.account_id)?;
    if !endpoint.enabled {
        return Err(DomainError::conflict(
            "the endpoint is disabled: enable it first",
        ));
    }
    let data = serde_json::json!({
        "message": "A test event from Daypass.",
        "endpointId": endpoint_id.to_string(),
    });
    let tx = db.begin_write().await?;
    let event_id = write_event(
        &tx,
        endpoint.account_id,
        WebhookEvent::Test,
        data,
        &[endpoint_id],
        now,
    )
    .await?;
    tx.commit().await?;
    let id: i32 = webhook_delivery::Entity::find()
        .select_only()
        .column(webhook_delivery::Column::Id)
        .filter(webhook_delivery::Column::EventId.eq(event_id))
        .into_tuple()
        .one(db.conn())
        .await?
        .ok_or_else(|| DomainError::Internal("a test event without its delivery".into()))?;
    view_of(db, id).await
}

/// Sends a delivery's event again to its endpoint, with the same `webhook-id`
/// (admins): one still being retried is tried now; a delivered or dead one gets a
/// new delivery of the same event.
pub async fn replay_delivery(
    db: &Db,
    actor: &Actor,
    id: i32,
    now: DateTime<Utc>,
) -> Result<DeliveryView> {
    let not_found = || DomainError::not_found(format!("webhook delivery {id}"));
    let delivery = webhook_delivery::Entity::find_by_id(id)
        .one(db.conn())
        .await?
        .ok_or_else(not_found)?;
    actor
        .can_see_account(delivery.account_id)
        .map_err(|_| not_found())?;
    actor.can_manage(delivery.account_id)?;
    let endpoint = visible_endpoint(db, actor, delivery.endpoint_id).await?;
    if !endpoint.enabled {
        return Err(DomainError::conflict(
            "the endpoint is disabled: enable it first",
        ));
    }
    let tx = db.begin_write().await?;
    let state: DeliveryState = delivery.state.parse()?;
    let replayed = match state {
        DeliveryState::Pending | DeliveryState::Failed => {
            webhook_delivery::Entity::update_many()
                .col_expr(webhook_delivery::Column::NextAttemptAt, Expr::value(now))
                .filter(webhook_delivery::Column::Id.eq(id))
                .filter(retrying())
                .exec(&*tx)
                .await?;
            id
        }
        DeliveryState::Delivered | DeliveryState::Dead => {
            pending_delivery(
                &delivery.event_id,
                delivery.endpoint_id,
                delivery.account_id,
                now,
            )
            .insert(&*tx)
            .await?
            .id
        }
    };
    tx.commit().await?;
    db.wake_webhook_sender();
    view_of(db, replayed).await
}
