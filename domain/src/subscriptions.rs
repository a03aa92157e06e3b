//! Subscriptions and their seats (rule 9): a subscription never has more users
//! than seats.

use crate::access::Actor;
use crate::error::{DomainError, Result};
use crate::store::Db;
use crate::store::find_account;
use crate::vocabulary::PlanLevel;
use chrono::{DateTime, Utc};
use daypass_entity::{product, subscription, subscription_seat, user};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, ModelTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};

#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub product_id: i32,
    pub plan_level: PlanLevel,
    pub seats: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub account_id: Option<i32>,
}

pub async fn add_subscription(
    db: &Db,
    actor: &Actor,
    input: NewSubscription,
) -> Result<subscription::Model> {
    let account_id = actor.target_account(input.account_id)?;
    actor.can_manage(account_id)?;
    if !(1..=1_000_000).contains(&input.seats) {
        return Err(DomainError::bad_input(
            "seats must be between 1 and 1,000,000",
        ));
    }
    if input.ends_at <= input.starts_at {
        return Err(DomainError::bad_input("endsAt must be after startsAt"));
    }
    let tx = db.begin_write().await?;
    find_account(&*tx, account_id).await?;
    // The account's plan level changes with it; opens read it under this lock.
    db.lock_account(&tx, account_id).await?;
    product::Entity::find_by_id(input.product_id)
        .one(&*tx)
        .await?
        .ok_or_else(|| DomainError::not_found(format!("product {}", input.product_id)))?;
    let saved = subscription::ActiveModel {
        account_id: Set(account_id),
        product_id: Set(input.product_id),
        plan_level: Set(input.plan_level.as_str().to_owned()),
        seats: Set(input.seats),
        starts_at: Set(crate::clock::to_stored_precision(input.starts_at)),
        ends_at: Set(crate::clock::to_stored_precision(input.ends_at)),
        ..Default::default()
    }
    .insert(&*tx)
    .await?;
    tx.commit().await?;
    Ok(saved)
}

/// Gives a seat to a user of the same account, or takes it back. A full
/// subscription refuses another user (CONFLICT).
pub async fn assign_subscription(
    db: &Db,
    actor: &Actor,
    subscription_id: i32,
    user_id: i32,
    assigned: bool,
) -> Result<subscription::Model> {
    let tx = db.begin_write().await?;
    let sub = subscription::Entity::find_by_id(subscription_id)
        .one(&*tx)
        .await?
        .ok_or_else(|| DomainError::not_found(format!("subscription {subscription_id}")))?;
    actor.can_manage(sub.account_id)?;
    db.lock_account(&tx, sub.account_id).await?;
    let user = user::Entity::find_by_id(user_id).one(&*tx).await?;
    if user.is_none_or(|u| u.account_id != sub.account_id) {
        return Err(DomainError::not_found(format!(
            "user {user_id} in this account"
        )));
    }
    let seat = subscription_seat::Entity::find_by_id((subscription_id, user_id))
        .one(&*tx)
        .await?;
    match (assigned, seat) {
        (true, None) => {
            let taken = subscription_seat::Entity::find()
                .filter(subscription_seat::Column::SubscriptionId.eq(subscription_id))
                .count(&*tx)
                .await?;
            if taken >= sub.seats as u64 {
                return Err(DomainError::conflict(format!(
                    "all {} seats of this subscription are taken",
                    sub.seats
                )));
            }
            subscription_seat::ActiveModel {
                subscription_id: Set(subscription_id),
                user_id: Set(user_id),
            }
            .insert(&*tx)
            .await?;
        }
        (false, Some(seat)) => {
            seat.delete(&*tx).await?;
        }
        _ => {}
    }
    tx.commit().await?;
    Ok(sub)
}

pub async fn list_subscriptions(
    db: &Db,
    actor: &Actor,
    account_id: i32,
) -> Result<Vec<subscription::Model>> {
    actor.can_see_account(account_id)?;
    Ok(subscription::Entity::find()
        .filter(subscription::Column::AccountId.eq(account_id))
        .order_by_asc(subscription::Column::Id)
        .all(db.conn())
        .await?)
}

/// The users holding seats; a member sees only whether they hold one themself.
pub async fn assigned_users(
    db: &Db,
    actor: &Actor,
    sub: &subscription::Model,
) -> Result<Vec<user::Model>> {
    actor.can_see_account(sub.account_id)?;
    let ids: Vec<i32> = subscription_seat::Entity::find()
        .select_only()
        .column(subscription_seat::Column::UserId)
        .filter(subscription_seat::Column::SubscriptionId.eq(sub.id))
        .into_tuple()
        .all(db.conn())
        .await?;
    let visible: Vec<i32> = match actor {
        Actor::User(u) if actor.can_read_books(sub.account_id).is_err() => {
            ids.into_iter().filter(|&id| id == u.user_id).collect()
        }
        _ => ids,
    };
    let mut users = crate::users::users_by_ids(db, &visible).await?;
    users.sort_by_key(|u| u.id);
    Ok(users)
}
