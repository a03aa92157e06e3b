//! Rule 24: what an open would answer now, decided by the same code as an open
//! ([`super::plan::decide`] and the burn-order draw), with nothing recorded,
//! charged or started.

use super::batches::batches;
use super::plan::{AccountLots, Decision, decide};
use super::validate;
use crate::access::Actor;
use crate::conditions;
use crate::error::{DomainError, Result};
use crate::store::Db;
use crate::units::Tokens;
use crate::vocabulary::{AccessSource, DenyReason};
use chrono::{DateTime, Utc};
use daypass_entity::lot;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

/// The answer of [`check_access`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessCheck {
    pub granted: bool,
    pub source: Option<AccessSource>,
    /// What an open now would charge (0 inside a window or through a seat).
    pub tokens_to_charge: Tokens,
    /// The window an open now would use: the current one, or a new one from now.
    pub window_ends_at: Option<DateTime<Utc>>,
    pub deny_reason: Option<DenyReason>,
    pub balance: Tokens,
}

/// What `openProduct(product_code)` would answer at `now`, read-only.
pub async fn check_access(
    db: &Db,
    actor: &Actor,
    now: DateTime<Utc>,
    product_code: &str,
) -> Result<AccessCheck> {
    let asked = validate(actor, product_code, now)?;
    let (user, product, situation) = batches(db)
        .situations
        .submit(db, 0, asked)
        .await?
        .ok_or(DomainError::Unauthenticated)?;
    let balance = situation.balance;
    let answer = |granted, source, tokens, window_ends_at, deny_reason| AccessCheck {
        granted,
        source,
        tokens_to_charge: tokens,
        window_ends_at,
        deny_reason,
        balance,
    };
    Ok(
        match (decide(&user, product.as_ref(), &situation, now), product) {
            (Decision::Denied(reason), _) => answer(false, None, Tokens::ZERO, None, Some(reason)),
            (Decision::Subscription, _) => answer(
                true,
                Some(AccessSource::Subscription),
                Tokens::ZERO,
                None,
                None,
            ),
            (Decision::InsideWindow(window), _) => answer(
                true,
                Some(AccessSource::Flex),
                Tokens::ZERO,
                Some(window.ends_at),
                None,
            ),
            (Decision::Charge, None) => {
                return Err(DomainError::Internal("a charge needs a product".into()));
            }
            (Decision::Charge, Some(product)) => {
                let rate = Tokens(product.daily_rate);
                let lots = lot::Entity::find()
                    .filter(lot::Column::AccountId.eq(user.account_id))
                    .filter(conditions::unexpired_lot(lot::Entity, now))
                    .all(db.conn())
                    .await?;
                // The draw an open would make, on a copy of the lots.
                match AccountLots::new(lots).draw(rate, now)? {
                    Some(_) => answer(
                        true,
                        Some(AccessSource::Flex),
                        rate,
                        Some(now + crate::rules::WINDOW),
                        None,
                    ),
                    None => answer(
                        false,
                        None,
                        Tokens::ZERO,
                        None,
                        Some(DenyReason::InsufficientTokens),
                    ),
                }
            }
        },
    )
}
