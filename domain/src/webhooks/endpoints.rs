//! Registering, changing and listing an account's webhook endpoints, and their
//! secrets (shown once; a rotation keeps the old one signing for a day).

use super::{WebhookEvent, events::stored_events, signature};
use crate::access::Actor;
use crate::error::{DomainError, Result};
use crate::store::Db;
use chrono::{DateTime, Duration, Utc};
use daypass_entity::{webhook_attempt, webhook_delivery, webhook_endpoint};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    sea_query::Expr,
};

/// Endpoints per account.
pub const MAX_ENDPOINTS: usize = 20;
/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::hours(24);
const MAX_URL_LEN: usize = 2000;

/// An endpoint as callers see it (never its secret).
#[derive(Debug, Clone)]
pub struct EndpointView {
    pub id: i32,
    pub account_id: i32,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub disabled_reason: Option<String>,
}

impl EndpointView {
    pub(crate) fn of(m: &webhook_endpoint::Model) -> Result<EndpointView> {
        Ok(EndpointView {
            id: m.id,
            account_id: m.account_id,
            url: m.url.clone(),
            events: stored_events(m)?,
            enabled: m.enabled,
            created_at: m.created_at,
            disabled_reason: m.disabled_reason.clone(),
        })
    }
}

/// The secrets that sign a delivery at `now`: the current one, and the previous
/// one during the day after a rotation.
pub(crate) fn signing_secrets(m: &webhook_endpoint::Model, now: DateTime<Utc>) -> Vec<String> {
    let mut secrets = vec![m.secret.clone()];
    if let (Some(previous), Some(until)) = (&m.previous_secret, m.previous_secret_until)
        && now < until
    {
        secrets.push(previous.clone());
    }
    secrets
}

/// An HTTP(S) URL with a host, and where the process's guard lets it go.
async fn checked_url(db: &Db, text: &str) -> Result<String> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_URL_LEN {
        return Err(DomainError::bad_input(format!(
            "a webhook URL must be 1–{MAX_URL_LEN} characters"
        )));
    }
    let url =
        url::Url::parse(text).map_err(|e| DomainError::bad_input(format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(DomainError::bad_input(
            "a webhook URL must be http or https",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(DomainError::bad_input("a webhook URL needs a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(DomainError::bad_input(
            "put no credentials in a webhook URL: deliveries are signed instead",
        ));
    }
    db.webhook_guard().check_url(&url).await?;
    Ok(url.to_string())
}

/// At least one event type, each once; TEST is not subscribed to (it is sent on
/// request to any endpoint).
fn checked_events(events: &[WebhookEvent]) -> Result<Vec<WebhookEvent>> {
    if events.contains(&WebhookEvent::Test) {
        return Err(DomainError::bad_input(
            "TEST events are sent on request (sendTestWebhook), not subscribed to",
        ));
    }
    let mut events = events.to_vec();
    events.sort();
    events.dedup();
    if events.is_empty() {
        return Err(DomainError::bad_input(
            "an endpoint needs at least one event type",
        ));
    }
    Ok(events)
}

fn stored(events: &[WebhookEvent]) -> String {
    serde_json::Value::from(events.iter().map(|e| e.as_str()).collect::<Vec<_>>()).to_string()
}

/// An endpoint the actor may see, or NOT_FOUND (another account's too).
pub(crate) async fn visible_endpoint(
    db: &Db,
    actor: &Actor,
    id: i32,
) -> Result<webhook_endpoint::Model> {
    let not_found = || DomainError::not_found(format!("webhook endpoint {id}"));
    let endpoint = webhook_endpoint::Entity::find_by_id(id)
        .one(db.conn())
        .await?
        .ok_or_else(not_found)?;
    actor
        .can_see_account(endpoint.account_id)
        .map_err(|_| not_found())?;
    Ok(endpoint)
}

/// Rule 26: registers an endpoint (admins; operators name the account). The secret
/// is returned here and never again.
pub async fn create_endpoint(
    db: &Db,
    actor: &Actor,
    account_id: Option<i32>,
    url: &str,
    events: &[WebhookEvent],
    now: DateTime<Utc>,
) -> Result<(EndpointView, String)> {
    let account_id = actor.target_account(account_id)?;
    actor.can_manage(account_id)?;
    let events = checked_events(events)?;
    let url = checked_url(db, url).await?;
    let secret = signature::new_secret();
    let tx = db.begin_write().await?;
    crate::store::find_account(&*tx, account_id).await?;
    db.lock_account(&tx, account_id).await?;
    let count = webhook_endpoint::Entity::find()
        .select_only()
        .column(webhook_endpoint::Column::Id)
        .filter(webhook_endpoint::Column::AccountId.eq(account_id))
        .into_tuple::<i32>()
        .all(&*tx)
        .await?
        .len();
    if count >= MAX_ENDPOINTS {
        return Err(DomainError::conflict(format!(
            "an account has at most {MAX_ENDPOINTS} webhook endpoints"
        )));
    }
    let created = webhook_endpoint::ActiveModel {
        account_id: Set(account_id),
        url: Set(url),
        events: Set(stored(&events)),
        secret: Set(secret.clone()),
        previous_secret: Set(None),
        previous_secret_until: Set(None),
        enabled: Set(true),
        disabled_reason: Set(None),
        failing_since: Set(None),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(&*tx)
    .await?;
    tx.commit().await?;
    Ok((EndpointView::of(&created)?, secret))
}

/// What an update changes; `None` keeps the value.
#[derive(Debug, Clone, Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub events: Option<Vec<WebhookEvent>>,
    pub enabled: Option<bool>,
}

/// The endpoint again inside a write transaction, under its account's lock: every
/// writer of the account's events holds that lock, so none reads the endpoint
/// while it changes.
async fn locked_endpoint(
    db: &Db,
    tx: &crate::store::WriteTx,
    endpoint: &webhook_endpoint::Model,
) -> Result<webhook_endpoint::Model> {
    db.lock_account(tx, endpoint.account_id).await?;
    webhook_endpoint::Entity::find_by_id(endpoint.id)
        .one(&**tx)
        .await?
        .ok_or_else(|| DomainError::not_found(format!("webhook endpoint {}", endpoint.id)))
}

/// Changes an endpoint (admins). Disabling one pauses its deliveries; enabling it
/// clears why it was disabled and its failures; deliveries given up (DEAD) stay so
/// until replayed.
pub async fn update_endpoint(
    db: &Db,
    actor: &Actor,
    id: i32,
    change: EndpointChange,
) -> Result<EndpointView> {
    let seen = visible_endpoint(db, actor, id).await?;
    actor.can_manage(seen.account_id)?;
    let events = change.events.as_deref().map(checked_events).transpose()?;
    let url = match &change.url {
        Some(url) => Some(checked_url(db, url).await?),
        None => None,
    };
    let tx = db.begin_write().await?;
    let endpoint = locked_endpoint(db, &tx, &seen).await?;
    let mut am: webhook_endpoint::ActiveModel = endpoint.clone().into();
    if let Some(events) = &events {
        am.events = Set(stored(events));
    }
    if let Some(url) = url {
        am.url = Set(url);
    }
    match change.enabled {
        Some(true) if !endpoint.enabled => {
            am.enabled = Set(true);
            am.disabled_reason = Set(None);
            am.failing_since = Set(None);
        }
        Some(false) if endpoint.enabled => {
            am.enabled = Set(false);
            am.disabled_reason = Set(Some("disabled by an admin".to_owned()));
        }
        _ => {}
    }
    let updated = am.update(&*tx).await?;
    tx.commit().await?;
    EndpointView::of(&updated)
}

/// Deletes an endpoint with its deliveries and their attempts (admins). It is
/// disabled first, so nothing new is written for it, then emptied a few
/// deliveries per transaction, so a long history never holds the database's
/// writers (SQLite has one) for long.
pub async fn delete_endpoint(db: &Db, actor: &Actor, id: i32) -> Result<bool> {
    let seen = visible_endpoint(db, actor, id).await?;
    actor.can_manage(seen.account_id)?;
    let tx = db.begin_write().await?;
    locked_endpoint(db, &tx, &seen).await?;
    webhook_endpoint::Entity::update_many()
        .col_expr(webhook_endpoint::Column::Enabled, Expr::value(false))
        .col_expr(
            webhook_endpoint::Column::DisabledReason,
            Expr::value(Some("being deleted")),
        )
        .filter(webhook_endpoint::Column::Id.eq(id))
        .exec(&*tx)
        .await?;
    tx.commit().await?;
    loop {
        let tx = db.begin_write().await?;
        let deliveries: Vec<i32> = webhook_delivery::Entity::find()
            .select_only()
            .column(webhook_delivery::Column::Id)
            .filter(webhook_delivery::Column::EndpointId.eq(id))
            .limit(50)
            .into_tuple()
            .all(&*tx)
            .await?;
        if deliveries.is_empty() {
            let deleted = webhook_endpoint::Entity::delete_by_id(id)
                .exec(&*tx)
                .await?;
            tx.commit().await?;
            return Ok(deleted.rows_affected == 1);
        }
        webhook_attempt::Entity::delete_many()
            .filter(webhook_attempt::Column::DeliveryId.is_in(deliveries.iter().copied()))
            .exec(&*tx)
            .await?;
        webhook_delivery::Entity::delete_many()
            .filter(webhook_delivery::Column::Id.is_in(deliveries))
            .exec(&*tx)
            .await?;
        tx.commit().await?;
    }
}

/// A new secret for the endpoint (admins), shown once; the old one keeps signing
/// beside it for [`ROTATION_OVERLAP`], so receivers can switch without losing a
/// delivery. A second rotation within that day drops the oldest secret.
pub async fn rotate_secret(
    db: &Db,
    actor: &Actor,
    id: i32,
    now: DateTime<Utc>,
) -> Result<(EndpointView, String)> {
    let seen = visible_endpoint(db, actor, id).await?;
    actor.can_manage(seen.account_id)?;
    let secret = signature::new_secret();
    let tx = db.begin_write().await?;
    let endpoint = locked_endpoint(db, &tx, &seen).await?;
    let mut am: webhook_endpoint::ActiveModel = endpoint.clone().into();
    am.previous_secret = Set(Some(endpoint.secret.clone()));
    am.previous_secret_until = Set(Some(now + ROTATION_OVERLAP));
    am.secret = Set(secret.clone());
    let updated = am.update(&*tx).await?;
    tx.commit().await?;
    Ok((EndpointView::of(&updated)?, secret))
}

/// The account's endpoints, oldest first (admins, analysts, operators).
pub async fn list_endpoints(db: &Db, actor: &Actor, account_id: i32) -> Result<Vec<EndpointView>> {
    actor.can_read_books(account_id)?;
    webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::AccountId.eq(account_id))
        .order_by_asc(webhook_endpoint::Column::Id)
        .all(db.conn())
        .await?
        .iter()
        .map(EndpointView::of)
        .collect()
}
