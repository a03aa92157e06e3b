//! Accounts: creation by an operator, balance, plan level, threshold.

use crate::access::Actor;
use crate::auth;
use crate::conditions;
use crate::error::{DomainError, Result};
use crate::page::{Page, PageRequest};
use crate::rules;
use crate::store::Db;
use crate::store::find_account;
use crate::units::Tokens;
use crate::users::{self, NewUser};
use crate::vocabulary::{PlanLevel, Role, parse};
use chrono::{DateTime, Utc};
use daypass_entity::{account, lot, subscription, user};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub name: String,
    pub admin_email: String,
    pub admin_name: String,
}

/// A new account, its first admin, and that admin's API key (shown this once).
#[derive(Debug, Clone)]
pub struct CreatedAccount {
    pub account: account::Model,
    pub admin: user::Model,
    pub admin_api_key: String,
}

pub async fn create_account(
    db: &Db,
    actor: &Actor,
    now: DateTime<Utc>,
    input: NewAccount,
) -> Result<CreatedAccount> {
    actor.require_operator()?;
    let name = rules::clean_name(&input.name, "an account name")?;
    let admin = NewUser {
        email: input.admin_email,
        name: input.admin_name,
        role: Role::Admin,
    };
    let admin = users::validate_new_user(&admin)?;
    let tx = db.begin_write().await?;
    let account = account::ActiveModel {
        name: Set(name),
        low_balance_threshold: Set(None),
        restricts_products: Set(false),
        created_at: Set(now),
        alert_rules: Set(0),
        ..Default::default()
    }
    .insert(&*tx)
    .await?;
    let admin_api_key = auth::generate_api_key();
    let admin = users::insert_user(&*tx, account.id, &admin, &admin_api_key, now).await?;
    tx.commit().await?;
    Ok(CreatedAccount {
        account,
        admin,
        admin_api_key,
    })
}

/// The account `id`, or the caller's own when `id` is `None` (operators: `None` gives `None`).
pub async fn get_account(
    db: &Db,
    actor: &Actor,
    id: Option<i32>,
) -> Result<Option<account::Model>> {
    let Some(id) = id.or(actor.own_account()) else {
        return Ok(None);
    };
    actor.can_see_account(id)?;
    match account::Entity::find_by_id(id).one(db.conn()).await? {
        Some(a) => Ok(Some(a)),
        None if matches!(actor, Actor::Operator) => Ok(None),
        None => Err(DomainError::not_found(format!("account {id}"))),
    }
}

/// The caller's own account (allowed even when deactivated: it is `viewer`).
pub async fn viewer_account(db: &Db, actor: &Actor) -> Result<Option<account::Model>> {
    match actor.own_account() {
        Some(id) => Ok(account::Entity::find_by_id(id).one(db.conn()).await?),
        None => Ok(None),
    }
}

pub async fn list_accounts(
    db: &Db,
    actor: &Actor,
    page: PageRequest,
) -> Result<Page<account::Model>> {
    actor.require_operator()?;
    let limit = page.limit()?;
    let mut q = account::Entity::find().order_by_asc(account::Column::Id);
    if let Some(after) = page.after_id()? {
        q = q.filter(account::Column::Id.gt(after));
    }
    let rows = q.limit(limit + 1).all(db.conn()).await?;
    Ok(Page::from_rows(rows, limit, |a| a.id))
}

/// Rule 2: the remaining tokens of unexpired lots, whether or not the sweep has run.
pub async fn balance_at(
    conn: &impl ConnectionTrait,
    account_id: i32,
    now: DateTime<Utc>,
) -> Result<Tokens> {
    let remaining: Vec<i64> = lot::Entity::find()
        .select_only()
        .column(lot::Column::Remaining)
        .filter(lot::Column::AccountId.eq(account_id))
        .filter(conditions::live_lot(lot::Entity, now))
        .into_tuple()
        .all(conn)
        .await?;
    Ok(remaining.into_iter().map(Tokens).sum())
}

pub async fn balance(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    now: DateTime<Utc>,
) -> Result<Tokens> {
    actor.can_see_account(account_id)?;
    balance_at(db.conn(), account_id, now).await
}

/// Rule 14: the explicit threshold, or 20% of the tokens in unexpired lots.
pub async fn threshold_at(
    conn: &impl ConnectionTrait,
    account: &account::Model,
    now: DateTime<Utc>,
) -> Result<Tokens> {
    if let Some(t) = account.low_balance_threshold {
        return Ok(Tokens(t));
    }
    Ok(rules::low_balance_threshold(
        None,
        bought_in_unexpired_lots(conn, account.id, now).await?,
    ))
}

/// The tokens bought in lots unexpired at `now` (their quantities): what rule 14's
/// default threshold and rule 25's percentages are shares of.
pub async fn bought_in_unexpired_lots(
    conn: &impl ConnectionTrait,
    account_id: i32,
    now: DateTime<Utc>,
) -> Result<Tokens> {
    let quantities: Vec<i64> = lot::Entity::find()
        .select_only()
        .column(lot::Column::Quantity)
        .filter(lot::Column::AccountId.eq(account_id))
        .filter(conditions::unexpired_lot(lot::Entity, now))
        .into_tuple()
        .all(conn)
        .await?;
    Ok(quantities.into_iter().map(Tokens).sum())
}

pub async fn low_balance_threshold(
    db: &Db,
    actor: &Actor,
    account: &account::Model,
    now: DateTime<Utc>,
) -> Result<Tokens> {
    actor.can_see_account(account.id)?;
    threshold_at(db.conn(), account, now).await
}

/// Sets an absolute low-balance threshold; sends nothing by itself (rule 14).
/// Rule 14: an absolute threshold for the caller's account (an operator names the
/// account).
pub async fn set_low_balance_threshold(
    db: &Db,
    actor: &Actor,
    account_id: Option<i32>,
    tokens: i64,
) -> Result<account::Model> {
    let account_id = actor.target_account(account_id)?;
    actor.can_manage(account_id)?;
    if tokens < 0 {
        return Err(DomainError::bad_input("a threshold cannot be negative"));
    }
    let tx = db.begin_write().await?;
    let account = find_account(&*tx, account_id).await?;
    let mut am: account::ActiveModel = account.into();
    am.low_balance_threshold = Set(Some(tokens));
    let saved = am.update(&*tx).await?;
    tx.commit().await?;
    Ok(saved)
}

/// Rule 13, read from the account's subscriptions active at `now`.
pub async fn plan_level_at(
    conn: &impl ConnectionTrait,
    account_id: i32,
    now: DateTime<Utc>,
) -> Result<PlanLevel> {
    Ok(plans_of(conn, account_id, now).await?.at(now))
}

/// An account's subscriptions still running at or after some instant.
#[derive(Debug, Default)]
pub struct Plans(Vec<(PlanLevel, DateTime<Utc>, DateTime<Utc>)>);

impl Plans {
    /// Rule 13 at `now` (not before the instant the plans were read for).
    pub fn at(&self, now: DateTime<Utc>) -> PlanLevel {
        rules::plan_level_of(
            self.0
                .iter()
                .filter(|(_, starts_at, ends_at)| {
                    rules::subscription_active(*starts_at, *ends_at, now)
                })
                .map(|(plan, _, _)| *plan),
        )
    }
}

/// The account's subscriptions that have not ended at `from`.
pub async fn plans_of(
    conn: &impl ConnectionTrait,
    account_id: i32,
    from: DateTime<Utc>,
) -> Result<Plans> {
    Ok(plans_of_accounts(conn, &[account_id], from)
        .await?
        .remove(&account_id)
        .unwrap_or_default())
}

/// [`plans_of`] for several accounts in one query; an account without any is absent.
pub async fn plans_of_accounts(
    conn: &impl ConnectionTrait,
    account_ids: &[i32],
    from: DateTime<Utc>,
) -> Result<HashMap<i32, Plans>> {
    let rows: Vec<(i32, String, DateTime<Utc>, DateTime<Utc>)> = subscription::Entity::find()
        .select_only()
        .column(subscription::Column::AccountId)
        .column(subscription::Column::PlanLevel)
        .column(subscription::Column::StartsAt)
        .column(subscription::Column::EndsAt)
        .filter(subscription::Column::AccountId.is_in(account_ids.iter().copied()))
        .filter(subscription::Column::EndsAt.gt(from))
        .into_tuple()
        .all(conn)
        .await?;
    let mut plans: HashMap<i32, Plans> = HashMap::new();
    for (account_id, plan, starts_at, ends_at) in rows {
        plans
            .entry(account_id)
            .or_insert_with(|| Plans(Vec::new()))
            .0
            .push((parse::<PlanLevel>(&plan)?, starts_at, ends_at));
    }
    Ok(plans)
}

pub async fn plan_level(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    now: DateTime<Utc>,
) -> Result<PlanLevel> {
    // Part of `viewer`, so a deactivated user may still read their own account's plan.
    if actor.own_account().is_some_and(|own| own != account_id) {
        return Err(DomainError::forbidden(
            "that account belongs to another tenant",
        ));
    }
    plan_level_at(db.conn(), account_id, now).await
}
