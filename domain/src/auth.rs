//! API keys: 32 random bytes shown once, stored only as their SHA-256.

use crate::access::{Actor, UserActor};
use crate::error::{DomainError, Result};
use crate::store::{Db, KeyCache};
use crate::vocabulary::parse;
use base64::Engine;
use daypass_entity::user;
use rand::RngCore;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};

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

/// [`authenticate`], answered from the process's [`KeyCache`] when it saw the key in
/// the last [`KEY_CACHE_TTL`].
pub async fn authenticate_cached(db: &Db, operator: &OperatorKey, key: &str) -> Result<Actor> {
    let hash = hash_api_key(key.trim());
    if operator.hash.as_deref() == Some(hash.as_str()) {
        return Ok(Actor::Operator);
    }
    if let Some(user) = key_cache(db).get(&hash) {
        return Ok(Actor::User(user));
    }
    let actor = authenticate(db, operator, key).await?;
    if let Actor::User(user) = &actor {
        key_cache(db).put(hash, user.clone());
    }
    Ok(actor)
}

/// The process's cache of key users on `db`.
pub(crate) fn key_cache(db: &Db) -> std::sync::Arc<KeyCache<UserActor>> {
    db.shared::<KeyCache<UserActor>>()
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
