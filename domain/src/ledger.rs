//! Reading the ledger and the charges (rule 19: members see only their own charges).

use crate::access::Actor;
use crate::error::Result;
use crate::page::{Page, PageRequest};
use crate::store::Db;
use chrono::{DateTime, Utc};
use daypass_entity::{charge, ledger_entry};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

/// The account's ledger, newest first.
pub async fn list_ledger(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    page: PageRequest,
) -> Result<Page<ledger_entry::Model>> {
    actor.can_read_books(account_id)?;
    let limit = page.limit()?;
    let mut q = ledger_entry::Entity::find()
        .filter(ledger_entry::Column::AccountId.eq(account_id))
        .order_by_desc(ledger_entry::Column::Id);
    if let Some(after) = page.after_id()? {
        q = q.filter(ledger_entry::Column::Id.lt(after));
    }
    let rows = q.limit(limit + 1).all(db.conn()).await?;
    Ok(Page::from_rows(rows, limit, |e| e.id))
}

#[derive(Debug, Clone, Default)]
pub struct ChargeFilter {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub user_id: Option<i32>,
    pub product_id: Option<i32>,
}

/// Charges whose window starts in `[from, to)`, newest first. A member's view is
/// always narrowed to their own charges.
pub async fn list_charges(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    mut filter: ChargeFilter,
    page: PageRequest,
) -> Result<Page<charge::Model>> {
    match filter.user_id {
        Some(user_id) => actor.can_see_usage_of(account_id, user_id)?,
        None => {
            actor.can_see_account(account_id)?;
            if actor.can_read_books(account_id).is_err() {
                filter.user_id = actor.user().map(|u| u.user_id);
            }
        }
    }
    let limit = page.limit()?;
    let mut q = charge::Entity::find()
        .filter(charge::Column::AccountId.eq(account_id))
        .order_by_desc(charge::Column::Id);
    if let Some(from) = filter.from {
        q = q.filter(charge::Column::WindowStartsAt.gte(from));
    }
    if let Some(to) = filter.to {
        q = q.filter(charge::Column::WindowStartsAt.lt(to));
    }
    if let Some(u) = filter.user_id {
        q = q.filter(charge::Column::UserId.eq(u));
    }
    if let Some(p) = filter.product_id {
        q = q.filter(charge::Column::ProductId.eq(p));
    }
    if let Some(after) = page.after_id()? {
        q = q.filter(charge::Column::Id.lt(after));
    }
    let rows = q.limit(limit + 1).all(db.conn()).await?;
    Ok(Page::from_rows(rows, limit, |c| c.id))
}

pub async fn charges_by_ids(db: &Db, ids: &[i32]) -> Result<Vec<charge::Model>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    Ok(charge::Entity::find()
        .filter(charge::Column::Id.is_in(ids.iter().copied()))
        .all(db.conn())
        .await?)
}
