//! The deployment's lease signing keys in the database, and the current one kept
//! briefly per process.
//!
//! Every change of the current key (the first one made, a rotation, an install)
//! runs in one write transaction that first takes the keys' lock: SQLite's writer
//! lock (`BEGIN IMMEDIATE`), or on PostgreSQL an advisory lock held until commit.
//! Processes starting together on a new database therefore make one key: the first
//! makes it, the others wait and find it. The unique index on the current key
//! (migration `signing_keys`) holds even against a writer that skipped the lock.

use super::jws;
use crate::clock::to_stored_precision;
use crate::error::{DomainError, Result};
use crate::store::{Db, WriteTx};
use chrono::{DateTime, Utc};
use daypass_entity::signing_key::{self, Column, Entity};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, QueryFilter,
    QueryOrder, Statement, sea_query::Expr,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a process signs with the current key it read before reading it again:
/// another process's rotation is followed within this time.
pub(crate) const CURRENT_KEY_TTL: Duration = Duration::from_secs(5);

/// The PostgreSQL advisory lock key that serializes changes of the current key
/// ("dpkeys" in ASCII, read as a number; not the migrations' key).
const SIGNING_KEY_LOCK: i64 = 0x0000_6470_6b65_7973;

/// A signing key with its kid.
pub(crate) struct LeaseKey {
    pub kid: String,
    pub key: SigningKey,
}

impl LeaseKey {
    fn new(key: SigningKey) -> LeaseKey {
        let kid = jws::thumbprint(&jws::public_x(&key.verifying_key()));
        LeaseKey { kid, key }
    }

    fn from_row(row: &signing_key::Model) -> Result<LeaseKey> {
        let key = SigningKey::from_pkcs8_pem(&row.private_key).map_err(|e| {
            DomainError::Internal(format!("stored signing key {} is unreadable: {e}", row.kid))
        })?;
        Ok(LeaseKey::new(key))
    }

    /// A new key from the operating system's random source.
    pub fn generate() -> Result<LeaseKey> {
        use rand::TryRngCore;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut secret)
            .map_err(|e| DomainError::Internal(format!("no randomness for a signing key: {e}")))?;
        Ok(LeaseKey::new(SigningKey::from_bytes(&secret)))
    }

    /// The key of a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Result<LeaseKey> {
        let key = SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| {
            DomainError::bad_input(format!(
                "the signing key is not an Ed25519 private key in PKCS#8 PEM \
                 (`-----BEGIN PRIVATE KEY-----`, as `openssl genpkey -algorithm ed25519` writes): {e}"
            ))
        })?;
        Ok(LeaseKey::new(key))
    }

    fn to_row(&self, now: DateTime<Utc>) -> Result<signing_key::ActiveModel> {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| DomainError::Internal(format!("cannot encode a signing key: {e}")))?;
        Ok(signing_key::ActiveModel {
            kid: Set(self.kid.clone()),
            private_key: Set(pem.to_string()),
            public_x: Set(jws::public_x(&self.key.verifying_key())),
            created_at: Set(to_stored_precision(now)),
            retired_at: Set(None),
        })
    }
}

/// The current key as this process last read it, and when.
#[derive(Default)]
struct CurrentKeyCache(Mutex<Option<(Instant, Arc<LeaseKey>)>>);

impl CurrentKeyCache {
    fn get(&self) -> Option<Arc<LeaseKey>> {
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref()
            .filter(|(at, _)| at.elapsed() < CURRENT_KEY_TTL)
            .map(|(_, key)| key.clone())
    }

    fn put(&self, key: Arc<LeaseKey>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), key));
    }
}

/// The key that signs now: cached for [`CURRENT_KEY_TTL`], else read; made (once
/// per deployment, at `now`) when there is none.
pub(crate) async fn current_key(db: &Db, now: DateTime<Utc>) -> Result<Arc<LeaseKey>> {
    let cache = db.shared::<CurrentKeyCache>();
    if let Some(key) = cache.get() {
        return Ok(key);
    }
    let row = match find_current(db.conn()).await? {
        Some(row) => row,
        None => make_first_key(db, now).await?,
    };
    let key = Arc::new(LeaseKey::from_row(&row)?);
    cache.put(key.clone());
    Ok(key)
}

/// Every key ever made, retired ones included.
pub(crate) async fn all_keys(db: &Db) -> Result<Vec<signing_key::Model>> {
    Ok(Entity::find().all(db.conn()).await?)
}

/// Makes `key` the current key; a different current key is retired at `now`. The
/// current key again changes nothing. Returns its kid.
pub(crate) async fn make_current(db: &Db, key: LeaseKey, now: DateTime<Utc>) -> Result<String> {
    let tx = lock_keys(db).await?;
    let current = find_current(&*tx).await?;
    if current.is_none_or(|c| c.kid != key.kid) {
        Entity::update_many()
            .col_expr(Column::RetiredAt, Expr::value(to_stored_precision(now)))
            .filter(Column::RetiredAt.is_null())
            .exec(&*tx)
            .await?;
        if Entity::find_by_id(key.kid.clone())
            .one(&*tx)
            .await?
            .is_some()
        {
            // A key installed again after it was retired signs again.
            Entity::update_many()
                .col_expr(
                    Column::RetiredAt,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .filter(Column::Kid.eq(key.kid.clone()))
                .exec(&*tx)
                .await?;
        } else {
            Entity::insert(key.to_row(now)?).exec(&*tx).await?;
        }
    }
    tx.commit().await?;
    let kid = key.kid.clone();
    db.shared::<CurrentKeyCache>().put(Arc::new(key));
    Ok(kid)
}

/// The first key of the deployment, unless another process made it first.
async fn make_first_key(db: &Db, now: DateTime<Utc>) -> Result<signing_key::Model> {
    let tx = lock_keys(db).await?;
    if let Some(row) = find_current(&*tx).await? {
        tx.commit().await?;
        return Ok(row);
    }
    let key = LeaseKey::generate()?;
    Entity::insert(key.to_row(now)?).exec(&*tx).await?;
    let row = find_current(&*tx)
        .await?
        .ok_or_else(|| DomainError::Internal("a new signing key was not written".into()))?;
    tx.commit().await?;
    tracing::info!(kid = %row.kid, "made the deployment's lease signing key");
    Ok(row)
}

/// The current key: the newest not retired (the unique index allows one).
async fn find_current(conn: &impl ConnectionTrait) -> Result<Option<signing_key::Model>> {
    Ok(Entity::find()
        .filter(Column::RetiredAt.is_null())
        .order_by_desc(Column::CreatedAt)
        .order_by_asc(Column::Kid)
        .one(conn)
        .await?)
}

/// A write transaction that alone may change the current key until it ends.
async fn lock_keys(db: &Db) -> Result<WriteTx> {
    let tx = db.begin_write().await?;
    if db.is_postgres() {
        tx.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [SIGNING_KEY_LOCK.into()],
        ))
        .await?;
    }
    Ok(tx)
}
