//! Offline leases (rule 23): JSON Web Tokens signed with EdDSA (Ed25519) that a
//! product checks without calling Daypass, against the public keys published as a
//! JWK set.
//!
//! Keys are shared by every process of one deployment through the database and
//! survive restarts (`leases/keys.rs`); the first is made when first needed, or installed
//! from the operator's file. The caller decides what a lease states, its `exp`
//! included; this module signs it and says which keys to publish.

mod jws;
mod keys;

use crate::error::{DomainError, Result};
use crate::store::Db;
use crate::vocabulary::AccessSource;
use chrono::{DateTime, Duration, Utc};
use daypass_entity::signing_key;
use serde_json::{Value, json};

/// The longest an offline lease lasts (rule 23: `exp` is at most 24 hours after
/// issue). [`issue_lease`] refuses a longer one, since how long a retired key stays
/// published depends on it.
pub const MAX_LEASE_LIFETIME: Duration = Duration::hours(24);

/// How long after the longest lease a retired key is still published: a process
/// keeps signing with the key it read for up to `CURRENT_KEY_TTL` (5 s)
/// after another process retired it, and the machines' clocks may disagree a little.
pub const RETIRED_KEY_MARGIN: Duration = Duration::minutes(1);

/// What an offline lease states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClaims {
    pub account_id: i32,
    pub user_id: i32,
    pub product_code: String,
    pub source: AccessSource,
    pub session_id: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Signs an offline lease (compact JWS, alg EdDSA, header has kid and typ JWT) with the deployment's current key.
///
/// The claims are `acct` and `sub` (the account and user ids, as strings), `prod`,
/// `src` (`FLEX` or `SUBSCRIPTION`), `sid`, and `iat` and `exp` in seconds. A lease
/// must end after it is issued and last at most [`MAX_LEASE_LIFETIME`]. When the
/// deployment has no key yet, one is made (at `issued_at`).
pub async fn issue_lease(db: &Db, claims: &LeaseClaims) -> Result<String> {
    let lifetime = claims.expires_at - claims.issued_at;
    if lifetime <= Duration::zero() || lifetime > MAX_LEASE_LIFETIME {
        return Err(DomainError::Internal(format!(
            "a lease must end after its issue and last at most 24 hours, not {}s",
            lifetime.num_seconds()
        )));
    }
    let key = keys::current_key(db, claims.issued_at).await?;
    Ok(jws::sign_jwt(&key.key, &key.kid, &jwt_claims(claims)))
}

/// The JWK set to publish at `now`: the current key and every retired key that may still have unexpired leases.
///
/// A key retired at `r` may still sign in a process that read it before `r`, until
/// that process reads the current key again (`CURRENT_KEY_TTL` later); each
/// lease it signs expires at most [`MAX_LEASE_LIFETIME`] after. So it is published
/// while `now < r + MAX_LEASE_LIFETIME + RETIRED_KEY_MARGIN`, the margin covering the
/// cache's TTL and clocks that disagree a little; then no lease it signed is valid.
/// When the deployment has no key yet, one is made (at `now`), so the set is never
/// empty. The current key comes first.
pub async fn jwk_set(db: &Db, now: DateTime<Utc>) -> Result<Value> {
    keys::current_key(db, now).await?;
    let all = keys::all_keys(db).await?;
    let keys: Vec<Value> = published_keys(&all, now)
        .into_iter()
        .map(|k| jws::public_jwk(&k.kid, &k.public_x))
        .collect();
    Ok(json!({ "keys": keys }))
}

/// Makes a new current key; the previous one is retired (still published, see below). Returns the new kid.
///
/// Retired keys stay published as [`jwk_set`] says. Every process signs with the new
/// key within `CURRENT_KEY_TTL`; this one at once.
pub async fn rotate_signing_key(db: &Db, now: DateTime<Utc>) -> Result<String> {
    keys::make_current(db, keys::LeaseKey::generate()?, now).await
}

/// Makes the key in `pem` (PKCS#8 Ed25519) the current key (idempotent: the same key again changes nothing); a different previous current key is retired.
///
/// The key is kept in the database like a generated one, so processes started
/// without the file sign with it too. A document that is not an Ed25519 PKCS#8 PEM
/// private key is BAD_INPUT and changes nothing. Returns the key's kid.
pub async fn install_signing_key(db: &Db, pem: &str, now: DateTime<Utc>) -> Result<String> {
    keys::make_current(db, keys::LeaseKey::from_pem(pem)?, now).await
}

/// The JWT claims of a lease.
fn jwt_claims(c: &LeaseClaims) -> Value {
    json!({
        "acct": c.account_id.to_string(),
        "sub": c.user_id.to_string(),
        "prod": c.product_code,
        "src": c.source.as_str(),
        "sid": c.session_id,
        "iat": c.issued_at.timestamp(),
        "exp": c.expires_at.timestamp(),
    })
}

/// The keys to publish at `now` (see [`jwk_set`]): the current one first, then the
/// retired ones still published, the most recently retired first.
fn published_keys(all: &[signing_key::Model], now: DateTime<Utc>) -> Vec<&signing_key::Model> {
    let horizon = now - MAX_LEASE_LIFETIME - RETIRED_KEY_MARGIN;
    let mut published: Vec<&signing_key::Model> = all
        .iter()
        .filter(|k| k.retired_at.is_none_or(|retired| retired > horizon))
        .collect();
    // `None` (current) sorts after every instant: reversed, it comes first.
    published.sort_by(|a, b| {
        let retired = |k: &signing_key::Model| k.retired_at.map_or(DateTime::<Utc>::MAX_UTC, |r| r);
        retired(b).cmp(&retired(a)).then_with(|| a.kid.cmp(&b.kid))
    });
    published
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn key(kid: &str, retired_at: Option<&str>) -> signing_key::Model {
        signing_key::Model {
            kid: kid.into(),
            private_key: String::new(),
            public_x: format!("x-{kid}"),
            created_at: t("2026-01-01T00:00:00Z"),
            retired_at: retired_at.map(t),
        }
    }

    #[test]
    fn lease_claims_are_named_as_rule_23_says() {
        let claims = LeaseClaims {
            account_id: 3,
            user_id: 42,
            product_code: "CAD".into(),
            source: AccessSource::Flex,
            session_id: "s-1".into(),
            issued_at: t("2026-12-06T10:00:00.900Z"),
            expires_at: t("2026-12-07T10:00:00Z"),
        };
        assert_eq!(
            jwt_claims(&claims),
            json!({"acct": "3", "sub": "42", "prod": "CAD", "src": "FLEX", "sid": "s-1",
                   "iat": 1_796_551_200, "exp": 1_796_637_600})
        );
        let sub = LeaseClaims {
            source: AccessSource::Subscription,
            ..claims
        };
        assert_eq!(jwt_claims(&sub)["src"], "SUBSCRIPTION");
    }

    #[test]
    fn a_retired_key_is_published_until_its_last_lease_can_have_expired() {
        let retired = "2026-12-01T12:00:00Z";
        let keys = [key("old", Some(retired)), key("cur", None)];
        let kids = |now: &str| -> Vec<String> {
            published_keys(&keys, t(now))
                .into_iter()
                .map(|k| k.kid.clone())
                .collect()
        };
        assert_eq!(kids("2026-12-01T12:00:00Z"), ["cur", "old"]);
        // 24 hours and the margin (a minute) later, the last lease it signed is over.
        assert_eq!(kids("2026-12-02T12:00:59Z"), ["cur", "old"]);
        assert_eq!(kids("2026-12-02T12:01:00Z"), ["cur"]);
        assert_eq!(kids("2027-01-01T00:00:00Z"), ["cur"]);
    }

    #[test]
    fn the_current_key_comes_first_then_the_most_recently_retired() {
        let keys = [
            key("a", Some("2026-12-01T00:00:00Z")),
            key("b", Some("2026-12-01T06:00:00Z")),
            key("c", None),
        ];
        let kids: Vec<&str> = published_keys(&keys, t("2026-12-01T07:00:00Z"))
            .into_iter()
            .map(|k| k.kid.as_str())
            .collect();
        assert_eq!(kids, ["c", "b", "a"]);
    }

    #[test]
    fn a_bad_pem_is_bad_input() {
        for pem in [
            "",
            "not a key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            match keys::LeaseKey::from_pem(pem) {
                Err(DomainError::BadInput(msg)) => assert!(msg.contains("PKCS#8"), "{msg}"),
                Err(e) => panic!("{pem:?}: {e}"),
                Ok(_) => panic!("{pem:?} was accepted"),
            }
        }
    }

    #[test]
    fn a_pem_gives_its_own_kid() {
        // RFC 8037 appendix A.1's key as PKCS#8 (RFC 8410's fixed prefix, then the seed).
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n\
                   -----END PRIVATE KEY-----\n";
        let key = keys::LeaseKey::from_pem(pem).expect("a PKCS#8 Ed25519 key");
        assert_eq!(key.kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }
}
