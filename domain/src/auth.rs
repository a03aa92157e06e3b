//! API keys: 32 random bytes shown once, stored only as their SHA-256.

use crate::access::{Actor, UserActor};
use crate::error::{DomainError, Result};
use crate::store::{BatchFuture, Db, GroupCommit, KeyCache};
use crate::vocabulary::parse;
use base64::Engine;
use daypass_entity::user;
use rand::RngCore;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

const KEY_PREFIX: &str = "dp_";

/// A new API key: `dp_` and 32 random bytes in URL-safe base64.
pub fn generate_api_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What is stored of a key: its SHA-256 in hex.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The operator is whoever presents the key the server started with.
#[derive(Clone)]
pub struct OperatorKey {
    hash: Option<String>,
}

impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.hash.is_some() {
            "OperatorKey(set)"
        } else {
            "OperatorKey(none)"
        })
    }
}

impl OperatorKey {
    pub fn new(key: Option<&str>) -> Self {
        Self {
            hash: key.filter(|k| !k.is_empty()).map(hash_api_key),
        }
    }
}

/// Who presents `key`, read from the database. Comparing hashes keeps the comparison
/// independent of where the keys first differ.
pub async fn authenticate(db: &Db, operator: &OperatorKey, key: &str) -> Result<Actor> {
    let hash = hash_api_key(key.trim());
    if operator.hash.as_deref() == Some(hash.as_str()) {
        return Ok(Actor::Operator);
    }
    let mut users = key_users(db, std::slice::from_ref(&hash)).await?;
    match users.remove(&hash) {
        Some(user) => Ok(Actor::User(user?)),
        None => Err(DomainError::Unauthenticated),
    }
}

/// [`authenticate`], answered from the process's [`KeyCache`] when a read that began
/// less than [`KEY_CACHE_TTL`] ago found the key. Keys not remembered are looked up
/// together: the requests that miss while a lookup is under way share the next one.
///
/// [`KEY_CACHE_TTL`]: crate::store::key_cache::KEY_CACHE_TTL
pub async fn authenticate_cached(db: &Db, operator: &OperatorKey, key: &str) -> Result<Actor> {
    let hash = hash_api_key(key.trim());
    if operator.hash.as_deref() == Some(hash.as_str()) {
        return Ok(Actor::Operator);
    }
    if let Some(user) = key_cache(db).get(&hash) {
        return Ok(Actor::User(user));
    }
    let lookups = db.shared::<KeyLookups>();
    match lookups.0.submit(db, 0, hash).await? {
        Some(user) => Ok(Actor::User(user)),
        None => Err(DomainError::Unauthenticated),
    }
}

/// The process's cache of key users on `db`.
pub(crate) fn key_cache(db: &Db) -> std::sync::Arc<KeyCache<UserActor>> {
    db.shared::<KeyCache<UserActor>>()
}

/// Key hashes the cache did not know, waiting for the next lookup.
struct KeyLookups(Arc<GroupCommit<String, Option<UserActor>>>);

/// Keys looked up in one statement at most.
const MAX_LOOKUPS: usize = 128;

impl Default for KeyLookups {
    fn default() -> KeyLookups {
        KeyLookups(GroupCommit::new(run_lookups, MAX_LOOKUPS))
    }
}

/// One batch of [`authenticate_cached`]'s lookups; each user found is remembered
/// from the instant the read began, so the cache's bound holds from the read.
fn run_lookups(db: Db, _key: i32, hashes: Vec<String>) -> BatchFuture<Option<UserActor>> {
    Box::pin(async move {
        let read_at = Instant::now();
        let users = key_users(&db, &hashes).await?;
        let cache = key_cache(&db);
        Ok(hashes
            .into_iter()
            .map(|hash| match users.get(&hash) {
                None => Ok(None),
                Some(Err(e)) => Err(e.duplicate()),
                Some(Ok(user)) => {
                    let user = user.clone();
                    cache.put(hash, user.clone(), read_at);
                    Ok(Some(user))
                }
            })
            .collect())
    })
}

/// The users of the keys hashed in `hashes`, by hash, in one statement (no LIMIT:
/// SQLite prepares a statement with a bound LIMIT again on every run).
async fn key_users(db: &Db, hashes: &[String]) -> Result<HashMap<String, Result<UserActor>>> {
    let rows: Vec<(String, i32, i32, String, bool)> = user::Entity::find()
        .select_only()
        .columns([
            user::Column::ApiKeyHash,
            user::Column::Id,
            user::Column::AccountId,
            user::Column::Role,
            user::Column::Active,
        ])
        .filter(user::Column::ApiKeyHash.is_in(hashes.iter().map(String::as_str)))
        .into_tuple()
        .all(db.conn())
        .await?;
    Ok(rows
        .into_iter()
        .map(|(hash, user_id, account_id, role, active)| {
            let user = parse(&role).map(|role| UserActor {
                user_id,
                account_id,
                role,
                active,
            });
            (hash, user)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hashed() {
        let a = generate_api_key();
        let b = generate_api_key();
        assert_ne!(a, b);
        assert!(a.len() >= 3 + 43);
        assert_eq!(hash_api_key(&a).len(), 64);
        assert_ne!(hash_api_key(&a), a);
    }
}
