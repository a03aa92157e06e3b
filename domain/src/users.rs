//! Users of an account: creation, deactivation, pay-as-you-go assignment, product
//! restrictions (rules 7, 8, 19).

use crate::access::Actor;
use crate::auth;
use crate::error::{DomainError, Result};
use crate::page::{Page, PageRequest};
use crate::rules::clean_name;
use crate::store::Db;
use crate::store::find_account;
use crate::vocabulary::Role;
use chrono::{DateTime, Utc};
use daypass_entity::{account, allowed_product, product, user};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use std::collections::BTreeSet;

#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub name: String,
    pub role: Role,
}

/// A new user and their API key (shown this once).
#[derive(Debug, Clone)]
pub struct CreatedUser {
    pub user: user::Model,
    pub api_key: String,
}

/// A plausible e-mail address, trimmed and in lower case, or BAD_USER_INPUT.
pub fn email_address(text: &str) -> Result<String> {
    let email = text.trim().to_lowercase();
    // A dot-atom local part and a host name (RFC 5321), what mail systems accept
    // without quoting: a list typed into one field, or `a..b@x`, is refused here
    // rather than failing every e-mail later.
    let atom = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c))
    };
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let valid_email = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            local.len() <= 64
                && local.split('.').all(atom)
                && domain.split('.').count() >= 2
                && domain.split('.').all(label)
        });
    if !valid_email {
        let shown: String = text.chars().take(80).collect();
        return Err(DomainError::bad_input(format!(
            "{shown:?} is not a valid e-mail address"
        )));
    }
    Ok(email)
}

/// Parses what a new user needs: a plausible e-mail address (kept in lower case), a
/// name, and an account role.
pub(crate) fn validate_new_user(input: &NewUser) -> Result<NewUser> {
    let email = email_address(&input.email)?;
    let name = clean_name(&input.name, "a user's name")?;
    if input.role == Role::Operator {
        return Err(DomainError::bad_input(
            "OPERATOR is not an account role; operators hold DAYPASS_OPERATOR_KEY",
        ));
    }
    Ok(NewUser {
        email,
        name,
        role: input.role,
    })
}

pub(crate) async fn insert_user(
    conn: &impl ConnectionTrait,
    account_id: i32,
    input: &NewUser,
    api_key: &str,
    now: DateTime<Utc>,
) -> Result<user::Model> {
    let taken = user::Entity::find()
        .filter(user::Column::AccountId.eq(account_id))
        .filter(user::Column::Email.eq(&input.email))
        .count(conn)
        .await?;
    if taken > 0 {
        return Err(DomainError::conflict(format!(
            "{} is already a user of this account",
            input.email
        )));
    }
    Ok(user::ActiveModel {
        account_id: Set(account_id),
        email: Set(input.email.clone()),
        name: Set(input.name.clone()),
        role: Set(input.role.as_str().to_owned()),
        flex_assigned: Set(false),
        active: Set(true),
        restricts_products: Set(false),
        api_key_hash: Set(auth::hash_api_key(api_key)),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(conn)
    .await?)
}

pub async fn create_user(
    db: &Db,
    actor: &Actor,
    now: DateTime<Utc>,
    account_id: Option<i32>,
    input: NewUser,
) -> Result<CreatedUser> {
    let account_id = actor.target_account(account_id)?;
    actor.can_manage(account_id)?;
    let input = validate_new_user(&input)?;
    let tx = db.begin_write().await?;
    find_account(&*tx, account_id).await?;
    db.lock_account(&tx, account_id).await?;
    let api_key = auth::generate_api_key();
    let user = insert_user(&*tx, account_id, &input, &api_key, now).await?;
    tx.commit().await?;
    Ok(CreatedUser { user, api_key })
}

/// A user of the account the caller may manage, or NOT_FOUND.
async fn managed_user(
    conn: &impl ConnectionTrait,
    actor: &Actor,
    user_id: i32,
) -> Result<user::Model> {
    let user = user::Entity::find_by_id(user_id)
        .one(conn)
        .await?
        .ok_or_else(|| DomainError::not_found(format!("user {user_id}")))?;
    actor.can_manage(user.account_id)?;
    Ok(user)
}

/// Deactivates a user: their key still identifies them, but they may do nothing.
/// The last active admin of an account cannot be deactivated (nobody could manage it).
pub async fn deactivate_user(db: &Db, actor: &Actor, user_id: i32) -> Result<user::Model> {
    let tx = db.begin_write().await?;
    let user = managed_user(&*tx, actor, user_id).await?;
    db.lock_account(&tx, user.account_id).await?;
    if !user.active {
        return Ok(user);
    }
    if user.role == Role::Admin.as_str() {
        let other_admins = user::Entity::find()
            .filter(user::Column::AccountId.eq(user.account_id))
            .filter(user::Column::Role.eq(Role::Admin.as_str()))
            .filter(user::Column::Active.eq(true))
            .filter(user::Column::Id.ne(user.id))
            .count(&*tx)
            .await?;
        if other_admins == 0 {
            return Err(DomainError::conflict(
                "cannot deactivate the last active admin of an account",
            ));
        }
    }
    let mut am: user::ActiveModel = user.into();
    am.active = Set(false);
    let saved = am.update(&*tx).await?;
    tx.commit().await?;
    // Other processes see it within the cache's time to live; this one at once.
    crate::auth::key_cache(db).clear();
    Ok(saved)
}

/// Assigns users to pay-as-you-go, or takes them off it (rule 7). All or nothing.
pub async fn assign_flex(
    db: &Db,
    actor: &Actor,
    user_ids: &[i32],
    assigned: bool,
) -> Result<Vec<user::Model>> {
    if user_ids.len() > 1000 {
        return Err(DomainError::bad_input("at most 1000 users at once"));
    }
    let tx = db.begin_write().await?;
    let mut users = Vec::with_capacity(user_ids.len());
    for &id in user_ids {
        users.push(managed_user(&*tx, actor, id).await?);
    }
    // Opens decide under their account's lock; taking it here orders this change
    // before or after each of them, never in the middle.
    let mut accounts: Vec<i32> = users.iter().map(|u| u.account_id).collect();
    accounts.sort_unstable();
    accounts.dedup();
    db.lock_accounts(&tx, &accounts).await?;
    let mut saved = Vec::with_capacity(users.len());
    for user in users {
        let mut am: user::ActiveModel = user.into();
        am.flex_assigned = Set(assigned);
        saved.push(am.update(&*tx).await?);
    }
    tx.commit().await?;
    Ok(saved)
}

/// Rule 8: `user_id` None sets the account-wide list (of `account_id`, which only an
/// operator names); `product_ids` None lifts the restriction. An empty list allows
/// nothing.
pub async fn set_allowed_products(
    db: &Db,
    actor: &Actor,
    user_id: Option<i32>,
    account_id: Option<i32>,
    product_ids: Option<Vec<i32>>,
) -> Result<()> {
    let tx = db.begin_write().await?;
    let (account_id, user) = match user_id {
        Some(id) => {
            let u = managed_user(&*tx, actor, id).await?;
            if account_id.is_some_and(|named| named != u.account_id) {
                return Err(DomainError::bad_input(
                    "accountId names another account than the user's",
                ));
            }
            (u.account_id, Some(u))
        }
        None => {
            let account_id = actor.target_account(account_id)?;
            actor.can_manage(account_id)?;
            (account_id, None)
        }
    };
    // Ordered with the opens of the account (see `assign_flex`).
    db.lock_account(&tx, account_id).await?;
    let wanted: Option<BTreeSet<i32>> = product_ids.map(|ids| ids.into_iter().collect());
    if let Some(ids) = &wanted {
        let found = product::Entity::find()
            .filter(product::Column::Id.is_in(ids.iter().copied()))
            .count(&*tx)
            .await?;
        if found != ids.len() as u64 {
            return Err(DomainError::not_found(
                "one or more of the products named do not exist",
            ));
        }
    }
    let mut delete = allowed_product::Entity::delete_many()
        .filter(allowed_product::Column::AccountId.eq(account_id));
    delete = match user_id {
        Some(id) => delete.filter(allowed_product::Column::UserId.eq(id)),
        None => delete.filter(allowed_product::Column::UserId.is_null()),
    };
    delete.exec(&*tx).await?;
    for &product_id in wanted.iter().flatten() {
        allowed_product::ActiveModel {
            account_id: Set(account_id),
            user_id: Set(user_id),
            product_id: Set(product_id),
            ..Default::default()
        }
        .insert(&*tx)
        .await?;
    }
    let restricts = wanted.is_some();
    match user {
        Some(u) => {
            let mut am: user::ActiveModel = u.into();
            am.restricts_products = Set(restricts);
            am.update(&*tx).await?;
        }
        None => {
            let mut am: account::ActiveModel = find_account(&*tx, account_id).await?.into();
            am.restricts_products = Set(restricts);
            am.update(&*tx).await?;
        }
    }
    tx.commit().await
}

/// The product ids of a list: the account-wide one (`user_id` None) or a user's.
pub(crate) async fn allowed_product_ids(
    conn: &impl ConnectionTrait,
    account_id: i32,
    user_id: Option<i32>,
) -> Result<Vec<i32>> {
    let mut q = allowed_product::Entity::find()
        .select_only()
        .column(allowed_product::Column::ProductId)
        .filter(allowed_product::Column::AccountId.eq(account_id));
    q = match user_id {
        Some(id) => q.filter(allowed_product::Column::UserId.eq(id)),
        None => q.filter(allowed_product::Column::UserId.is_null()),
    };
    Ok(q.into_tuple().all(conn).await?)
}

/// The account-wide list, or None when every catalog product is open.
pub async fn account_allowed_products(
    db: &Db,
    actor: &Actor,
    account: &account::Model,
) -> Result<Option<Vec<i32>>> {
    actor.can_see_account(account.id)?;
    if !account.restricts_products {
        return Ok(None);
    }
    Ok(Some(
        allowed_product_ids(db.conn(), account.id, None).await?,
    ))
}

/// A user's own list, or None when the account-wide setting applies.
pub async fn user_allowed_products(
    db: &Db,
    actor: &Actor,
    user: &user::Model,
) -> Result<Option<Vec<i32>>> {
    actor
        .can_see_usage_of(user.account_id, user.id)
        .or_else(|e| match actor {
            Actor::User(u) if u.user_id == user.id => Ok(()),
            _ => Err(e),
        })?;
    if !user.restricts_products {
        return Ok(None);
    }
    Ok(Some(
        allowed_product_ids(db.conn(), user.account_id, Some(user.id)).await?,
    ))
}

pub async fn list_users(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    flex_assigned: Option<bool>,
    page: PageRequest,
) -> Result<Page<user::Model>> {
    actor.can_read_books(account_id)?;
    let limit = page.limit()?;
    let mut q = user::Entity::find()
        .filter(user::Column::AccountId.eq(account_id))
        .order_by_asc(user::Column::Id);
    if let Some(f) = flex_assigned {
        q = q.filter(user::Column::FlexAssigned.eq(f));
    }
    if let Some(after) = page.after_id()? {
        q = q.filter(user::Column::Id.gt(after));
    }
    let rows = q.limit(limit + 1).all(db.conn()).await?;
    Ok(Page::from_rows(rows, limit, |u| u.id))
}

/// The caller's own user record (allowed even when deactivated: it is `viewer`).
pub async fn viewer_user(db: &Db, actor: &Actor) -> Result<Option<user::Model>> {
    match actor.user() {
        Some(u) => Ok(user::Entity::find_by_id(u.user_id).one(db.conn()).await?),
        None => Ok(None),
    }
}

/// Users by id, for resolving references from records the caller may already see.
pub async fn users_by_ids(db: &Db, ids: &[i32]) -> Result<Vec<user::Model>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    Ok(user::Entity::find()
        .filter(user::Column::Id.is_in(ids.iter().copied()))
        .all(db.conn())
        .await?)
}

#[cfg(test)]
mod tests {
    use super::email_address;

    #[test]
    fn an_address_is_what_mail_systems_take_unquoted() {
        assert_eq!(
            email_address(" Ann.O'Neil+x@Acme-1.example ").unwrap(),
            "ann.o'neil+x@acme-1.example"
        );
        for bad in [
            "ann",
            "@acme.test",
            "ann@",
            "ann@acme",
            "a b@acme.test",
            "ann@acme..test",
            "a..b@acme.test",
            ".a@acme.test",
            "a.@acme.test",
            "a@-acme.test",
            "a@acme.test,b@acme.test",
            "a@acme.test;",
            "a@acme.test\r\nBcc: x@y.test",
            "\"quoted\"@acme.test",
            "anné@acme.test",
        ] {
            assert!(email_address(bad).is_err(), "{bad:?}");
        }
    }
}
