//! API keys: 32 random bytes shown once, stored only as their SHA-256.

use crate::access::{Actor, UserActor};
use crate::db::Db;
use crate::error::{DomainError, Result};
use crate::kinds::parse;
use base64::Engine;
use daypass_entity::user;
use rand::RngCore;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Who presents `key`. Comparing hashes keeps the comparison independent of where
/// the keys first differ.
pub async fn authenticate(db: &Db, operator: &OperatorKey, key: &str) -> Result<Actor> {
    let hash = hash_api_key(key.trim());
    if operator.hash.as_deref() == Some(hash.as_str()) {
        return Ok(Actor::Operator);
    }
    let found = user::Entity::find()
        .filter(user::Column::ApiKeyHash.eq(hash))
        .one(db.conn())
        .await?;
    match found {
        Some(u) => Ok(Actor::User(UserActor {
            user_id: u.id,
            account_id: u.account_id,
            role: parse(&u.role)?,
            active: u.active,
        })),
        None => Err(DomainError::Unauthenticated),
    }
}

/// How long a key's user is remembered. A deactivated user loses access within this
/// time in every process (at once in the process that deactivated them).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(2);

/// The most keys remembered; past it the cache starts over.
const KEY_CACHE_SIZE: usize = 100_000;

/// Users of recently seen keys, so a request does not cost a database round trip to
/// say who sent it. Unknown keys are never remembered: a new key works at once.
#[derive(Debug, Default)]
pub struct KeyCache {
    users: Mutex<HashMap<String, (Instant, UserActor)>>,
}

impl KeyCache {
    fn get(&self, hash: &str) -> Option<UserActor> {
        let users = self.users.lock().expect("key cache");
        users
            .get(hash)
            .filter(|(at, _)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(_, user)| user.clone())
    }

    fn put(&self, hash: String, user: UserActor) {
        let mut users = self.users.lock().expect("key cache");
        if users.len() >= KEY_CACHE_SIZE {
            users.clear();
        }
        users.insert(hash, (Instant::now(), user));
    }

    /// Forgets every key, after a change to who may do what.
    pub fn clear(&self) {
        self.users.lock().expect("key cache").clear();
    }
}

/// [`authenticate`], answered from the process's [`KeyCache`] when it saw the key in
/// the last [`KEY_CACHE_TTL`].
pub async fn authenticate_cached(db: &Db, operator: &OperatorKey, key: &str) -> Result<Actor> {
    let hash = hash_api_key(key.trim());
    if operator.hash.as_deref() == Some(hash.as_str()) {
        return Ok(Actor::Operator);
    }
    if let Some(user) = db.key_cache().get(&hash) {
        return Ok(Actor::User(user));
    }
    let actor = authenticate(db, operator, key).await?;
    if let Actor::User(user) = &actor {
        db.key_cache().put(hash, user.clone());
    }
    Ok(actor)
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
