//! Recording an event in its cause's transaction: one event row (its id is the
//! `webhook-id`, its body the exact JSON POSTed) and one delivery for each enabled
//! endpoint of the account that takes the event type.

use super::{DeliveryState, WebhookEvent};
use crate::error::{DomainError, Result};
use crate::store::WriteTx;
use chrono::{DateTime, SecondsFormat, Utc};
use daypass_entity::{webhook_delivery, webhook_endpoint, webhook_event};
use sea_orm::{ActiveValue::NotSet, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};

/// The endpoint's event types, as stored.
pub(crate) fn stored_events(endpoint: &webhook_endpoint::Model) -> Result<Vec<WebhookEvent>> {
    let names: Vec<String> = serde_json::from_str(&endpoint.events)
        .map_err(|e| DomainError::Internal(format!("webhook endpoint {}: {e}", endpoint.id)))?;
    names.iter().map(|n| n.parse()).collect()
}

/// The body POSTed for an event: `{"id","type","createdAt","accountId","data"}`.
pub(crate) fn body(
    id: &str,
    event: WebhookEvent,
    account_id: i32,
    data: serde_json::Value,
    now: DateTime<Utc>,
) -> String {
    serde_json::json!({
        "id": id,
        "type": event.as_str(),
        "createdAt": now.to_rfc3339_opts(SecondsFormat::Millis, true),
        "accountId": account_id.to_string(),
        "data": data,
    })
    .to_string()
}

fn new_event_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

/// Records `event` with its cause, in the cause's transaction, for every enabled
/// endpoint of the account that takes it; nothing when none does (and `data`, a
/// future not yet started, is then never read). The sender is
/// woken once the transaction commits. Returns the deliveries made.
pub(crate) async fn record_event(
    tx: &WriteTx,
    account_id: i32,
    event: WebhookEvent,
    data: impl std::future::Future<Output = Result<serde_json::Value>>,
    now: DateTime<Utc>,
) -> Result<usize> {
    let endpoints = webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::AccountId.eq(account_id))
        .filter(webhook_endpoint::Column::Enabled.eq(true))
        .order_by_asc(webhook_endpoint::Column::Id)
        .all(&**tx)
        .await?;
    let mut takers = Vec::new();
    for endpoint in endpoints {
        if stored_events(&endpoint)?.contains(&event) {
            takers.push(endpoint.id);
        }
    }
    if takers.is_empty() {
        return Ok(0);
    }
    // The data is read only now: a cause with no endpoint to tell pays nothing.
    write_event(tx, account_id, event, data.await?, &takers, now).await?;
    Ok(takers.len())
}

/// A delivery of `event_id` to `endpoint_id`, due now.
pub(crate) fn pending_delivery(
    event_id: &str,
    endpoint_id: i32,
    account_id: i32,
    now: DateTime<Utc>,
) -> webhook_delivery::ActiveModel {
    webhook_delivery::ActiveModel {
        id: NotSet,
        event_id: Set(event_id.to_owned()),
        endpoint_id: Set(endpoint_id),
        account_id: Set(account_id),
        state: Set(DeliveryState::Pending.as_str().to_owned()),
        attempts: Set(0),
        next_attempt_at: Set(now),
        lease_until: Set(None),
        delivered_at: Set(None),
        created_at: Set(now),
    }
}

/// Writes the event and a PENDING delivery of it to each of `endpoint_ids`;
/// returns the event's id.
pub(crate) async fn write_event(
    tx: &WriteTx,
    account_id: i32,
    event: WebhookEvent,
    data: serde_json::Value,
    endpoint_ids: &[i32],
    now: DateTime<Utc>,
) -> Result<String> {
    let id = new_event_id();
    webhook_event::Entity::insert(webhook_event::ActiveModel {
        id: Set(id.clone()),
        account_id: Set(account_id),
        event_type: Set(event.as_str().to_owned()),
        body: Set(body(&id, event, account_id, data, now)),
        created_at: Set(now),
    })
    .exec_without_returning(&**tx)
    .await?;
    webhook_delivery::Entity::insert_many(
        endpoint_ids
            .iter()
            .map(|&endpoint_id| pending_delivery(&id, endpoint_id, account_id, now)),
    )
    .exec_without_returning(&**tx)
    .await?;
    let settings = tx.shared::<super::WebhookSettings>();
    tx.after_commit(move || settings.wake.notify_one());
    Ok(id)
}
