//! Lots: buying tokens (rules 1, 4, 5), reading them, and the expiry sweep (rule 2).

use crate::access::Actor;
use crate::catalog::{self, load_price_list};
use crate::conditions;
use crate::error::{DomainError, Result};
use crate::page::{Page, PageRequest};
use crate::rules::{self, LotCounts};
use crate::store::Db;
use crate::store::balance_feed::announce_balance_change;
use crate::store::find_account;
use crate::vocabulary::{LedgerKind, LotStatus};
use crate::webhooks::WebhookEvent;
use chrono::{DateTime, Utc};
use daypass_entity::{ledger_entry, lot};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    sea_query::{Expr, ExprTrait},
};

#[derive(Debug, Clone, Default)]
pub struct PurchaseInput {
    pub quantity: i64,
    pub idempotency_key: String,
    /// Operators only: the account to sell to.
    pub account_id: Option<i32>,
    /// Operators only; required above the top band.
    pub unit_price_minor: Option<i64>,
    /// Operators only: a purchase made earlier (not in the future).
    pub purchased_at: Option<DateTime<Utc>>,
}

/// A lot as it stands at one instant (rule 2 applied before any sweep).
#[derive(Debug, Clone)]
pub struct LotView {
    pub lot: lot::Model,
    pub counts: LotCounts,
    pub status: LotStatus,
}

impl LotView {
    pub fn at(lot: lot::Model, now: DateTime<Utc>) -> LotView {
        let stored = LotCounts {
            quantity: lot.quantity,
            remaining: lot.remaining,
            used: lot.used,
            expired: lot.expired,
        };
        let counts = rules::lot_counts_at(stored, lot.expires_at, now);
        LotView {
            status: rules::lot_status(counts),
            counts,
            lot,
        }
    }
}

/// Buys a lot. The same idempotency key on the same account buys once: a repeat
/// returns the first lot, a repeat with a different quantity is a CONFLICT.
pub async fn purchase(
    db: &Db,
    actor: &Actor,
    now: DateTime<Utc>,
    input: PurchaseInput,
) -> Result<LotView> {
    let account_id = actor.target_account(input.account_id)?;
    actor.can_manage(account_id)?;
    let is_operator = matches!(actor, Actor::Operator);
    let key = input.idempotency_key.trim().to_owned();
    if key.is_empty() || key.len() > 200 {
        return Err(DomainError::bad_input(
            "idempotencyKey must be 1–200 characters",
        ));
    }
    if input.quantity < 1 || input.quantity > rules::MAX_PURCHASE_QUANTITY {
        return Err(DomainError::bad_input(format!(
            "quantity must be between 1 and {}",
            rules::MAX_PURCHASE_QUANTITY
        )));
    }
    if !is_operator {
        if input.unit_price_minor.is_some() || input.purchased_at.is_some() {
            return Err(DomainError::forbidden(
                "only an operator may set unitPriceMinor or purchasedAt",
            ));
        }
        if input.quantity > rules::SELF_SERVICE_LIMIT {
            return Err(DomainError::forbidden(format!(
                "self-service purchases are limited to {} tokens at a time; larger quantities are sold by the vendor",
                rules::SELF_SERVICE_LIMIT
            )));
        }
    }
    let purchased_at = match input.purchased_at {
        Some(at) if at > now => {
            return Err(DomainError::bad_input(
                "purchasedAt cannot be in the future",
            ));
        }
        Some(at) => crate::clock::to_stored_precision(at),
        None => now,
    };
    if input
        .unit_price_minor
        .is_some_and(|p| !(0..=100_000_000).contains(&p))
    {
        return Err(DomainError::bad_input(
            "unitPriceMinor must be between 0 and 100,000,000",
        ));
    }

    let tx = db.begin_write().await?;
    find_account(&*tx, account_id).await?;
    db.lock_account(&tx, account_id).await?;
    let existing = lot::Entity::find()
        .filter(lot::Column::AccountId.eq(account_id))
        .filter(lot::Column::IdempotencyKey.eq(&key))
        .one(&*tx)
        .await?;
    if let Some(existing) = existing {
        if existing.quantity != input.quantity {
            return Err(DomainError::conflict(format!(
                "idempotency key {key:?} already bought {} tokens",
                existing.quantity
            )));
        }
        return Ok(LotView::at(existing, now));
    }
    let list = load_price_list(&*tx).await?;
    let unit_price_minor = match input.unit_price_minor {
        Some(p) => p,
        None => {
            catalog::quote_from(&list, input.quantity)
                .map_err(|_| {
                    DomainError::bad_input(format!(
                        "{} tokens is above the price list: give unitPriceMinor",
                        input.quantity
                    ))
                })?
                .unit_price_minor
        }
    };
    let lot = lot::ActiveModel {
        account_id: Set(account_id),
        quantity: Set(input.quantity),
        remaining: Set(input.quantity),
        used: Set(0),
        expired: Set(0),
        unit_price_minor: Set(unit_price_minor),
        currency: Set(list.currency),
        purchased_at: Set(purchased_at),
        expires_at: Set(rules::expiry_of(purchased_at)),
        status: Set(LotStatus::Active.as_str().to_owned()),
        idempotency_key: Set(key),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(&*tx)
    .await?;
    ledger_entry::ActiveModel {
        account_id: Set(account_id),
        kind: Set(LedgerKind::Purchase.as_str().to_owned()),
        tokens: Set(lot.quantity),
        lot_id: Set(lot.id),
        charge_id: Set(None),
        at: Set(purchased_at),
        ..Default::default()
    }
    .insert(&*tx)
    .await?;
    announce_balance_change(&*tx, account_id).await?;
    record_purchase_event(&tx, &lot, now).await?;
    tx.commit().await?;
    Ok(LotView::at(lot, now))
}

/// Rule 26: PURCHASE_COMPLETED, in the purchase's transaction.
async fn record_purchase_event(
    tx: &crate::store::WriteTx,
    lot: &lot::Model,
    now: DateTime<Utc>,
) -> Result<()> {
    let data = async {
        Ok(serde_json::json!({
            "lotId": lot.id.to_string(),
            "tokens": lot.quantity,
            "unitPriceMinor": lot.unit_price_minor,
            "totalMinor": lot.unit_price_minor.saturating_mul(lot.quantity),
            "currency": lot.currency,
            "purchasedAt": lot.purchased_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "expiresAt": lot.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "balance": crate::accounts::balance_at(&**tx, lot.account_id, now).await?.get(),
        }))
    };
    crate::webhooks::record_event(
        tx,
        lot.account_id,
        WebhookEvent::PurchaseCompleted,
        data,
        now,
    )
    .await?;
    Ok(())
}

pub async fn list_lots(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    now: DateTime<Utc>,
    status: Option<LotStatus>,
    page: PageRequest,
) -> Result<Page<LotView>> {
    actor.can_read_books(account_id)?;
    let limit = page.limit()?;
    let mut q = lot::Entity::find()
        .filter(lot::Column::AccountId.eq(account_id))
        .order_by_asc(lot::Column::Id);
    if let Some(after) = page.after_id()? {
        q = q.filter(lot::Column::Id.gt(after));
    }
    if let Some(status) = status {
        q = q.filter(conditions::lot_status_is(status, now));
    }
    let rows = q.limit(limit + 1).all(db.conn()).await?;
    Ok(Page::from_rows(rows, limit, |l| l.id).map(|l| LotView::at(l, now)))
}

pub async fn lots_by_ids(db: &Db, ids: &[i32], now: DateTime<Utc>) -> Result<Vec<LotView>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let rows = lot::Entity::find()
        .filter(lot::Column::Id.is_in(ids.iter().copied()))
        .all(db.conn())
        .await?;
    Ok(rows.into_iter().map(|l| LotView::at(l, now)).collect())
}

/// Rule 2: every lot past its expiry with tokens left loses them, recorded as one
/// EXPIRY entry. Safe to run anywhere at any time: the conditional update lets only
/// one sweeper expire a lot, and a unique index allows one EXPIRY entry per lot.
/// Returns how many lots it expired.
pub async fn sweep_expired(db: &Db, now: DateTime<Utc>) -> Result<u64> {
    let due: Vec<lot::Model> = lot::Entity::find()
        .filter(conditions::lot_holding_expired_tokens(lot::Entity, now))
        .order_by_asc(lot::Column::ExpiresAt)
        .limit(10_000)
        .all(db.conn())
        .await?;
    let mut expired = 0;
    for candidate in due {
        let tx = db.begin_write().await?;
        db.lock_account(&tx, candidate.account_id).await?;
        let Some(current) = lot::Entity::find_by_id(candidate.id).one(&*tx).await? else {
            continue;
        };
        if current.remaining == 0 {
            continue;
        }
        let left = current.remaining;
        let result = lot::Entity::update_many()
            .col_expr(
                lot::Column::Expired,
                Expr::col(lot::Column::Expired).add(left),
            )
            .col_expr(lot::Column::Remaining, Expr::value(0i64))
            .col_expr(
                lot::Column::Status,
                Expr::value(LotStatus::Expired.as_str()),
            )
            .filter(lot::Column::Id.eq(current.id))
            .filter(lot::Column::Remaining.eq(left))
            .exec(&*tx)
            .await?;
        if result.rows_affected != 1 {
            continue;
        }
        ledger_entry::ActiveModel {
            account_id: Set(current.account_id),
            kind: Set(LedgerKind::Expiry.as_str().to_owned()),
            tokens: Set(-left),
            lot_id: Set(current.id),
            charge_id: Set(None),
            at: Set(current.expires_at),
            ..Default::default()
        }
        .insert(&*tx)
        .await?;
        announce_balance_change(&*tx, current.account_id).await?;
        let data = async {
            Ok(serde_json::json!({
                "lotId": current.id.to_string(),
                "tokensExpired": left,
                "expiredAt": current.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "balance": crate::accounts::balance_at(&*tx, current.account_id, now).await?.get(),
            }))
        };
        crate::webhooks::record_event(&tx, current.account_id, WebhookEvent::LotExpired, data, now)
            .await?;
        tx.commit().await?;
        expired += 1;
    }
    Ok(expired)
}
