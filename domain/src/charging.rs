//! Opening a product (rules 7–12): subscriptions first, then pay-as-you-go with its
//! assignment, restrictions, 24-hour windows and charges.

use crate::access::Actor;
use crate::accounts::{balance_at, find_account, plan_level_at};
use crate::db::{Db, WriteTx};
use crate::error::{DomainError, Result};
use crate::events::announce_balance_change;
use crate::kinds::{AccessSource, DenyReason, LedgerKind, LotStatus, PlanLevel, Role};
use crate::notifications;
use crate::rules::{self, SpendableLot};
use crate::subscriptions::active_seat;
use crate::users::allowed_product_ids;
use chrono::{DateTime, Utc};
use daypass_entity::{charge, ledger_entry, lot, open, product, user, window};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set,
    sea_query::{Expr, ExprTrait},
};

#[derive(Debug, Clone)]
pub struct OpenRequest {
    pub product_code: String,
    pub version: Option<String>,
}

/// The answer to an open: granted or denied, never an error (rule 11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOutcome {
    pub granted: bool,
    pub source: Option<AccessSource>,
    pub tokens_charged: i64,
    pub window_ends_at: Option<DateTime<Utc>>,
    pub deny_reason: Option<DenyReason>,
    pub balance: i64,
    pub plan_level: PlanLevel,
    /// The charge this open made, if it made one.
    pub charge_id: Option<i32>,
    /// Notifications this open created (to be delivered by the workers).
    pub notifications: Vec<i32>,
}

/// What the rules decided before any tokens move.
enum Decision {
    Deny(DenyReason),
    Subscription,
    InsideWindow(DateTime<Utc>),
    Charge,
}

/// Opens `product_code` for the calling user at `now`.
pub async fn open_product(
    db: &Db,
    actor: &Actor,
    now: DateTime<Utc>,
    req: OpenRequest,
) -> Result<OpenOutcome> {
    let me = match actor {
        Actor::Operator => {
            return Err(DomainError::forbidden(
                "openProduct opens a product for a user; operators are not users",
            ));
        }
        Actor::User(u) => u.clone(),
    };
    if me.role == Role::Analyst {
        return Err(DomainError::forbidden(
            "analysts read usage and change nothing",
        ));
    }
    let code = req.product_code.trim().to_owned();
    if code.is_empty() || code.len() > 64 {
        return Err(DomainError::bad_input(
            "productCode must be 1–64 characters",
        ));
    }
    let version = req
        .version
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    if version.as_ref().is_some_and(|v| v.len() > 100) {
        return Err(DomainError::bad_input(
            "version must be at most 100 characters",
        ));
    }
    let user = user::Entity::find_by_id(me.user_id)
        .one(db.conn())
        .await?
        .ok_or(DomainError::Unauthenticated)?;
    let product = product::Entity::find()
        .filter(product::Column::Code.eq(&code))
        .filter(product::Column::Active.eq(true))
        .one(db.conn())
        .await?;

    let decision = decide(db, &user, product.as_ref(), now).await?;
    let record = OpenRecord {
        user: &user,
        product: product.as_ref(),
        code: &code,
        version: version.as_deref(),
        now,
    };
    let outcome = match (decision, product.as_ref()) {
        (Decision::Charge, Some(product)) => return charge_and_open(db, record, product).await,
        (Decision::Charge, None) => {
            return Err(DomainError::Internal("a charge needs a product".into()));
        }
        (Decision::Deny(reason), _) => Outcome::Denied(reason),
        (Decision::Subscription, _) => Outcome::Subscription,
        (Decision::InsideWindow(ends_at), _) => Outcome::Reopen(ends_at),
    };
    record.write_alone(db, outcome).await?;
    answer(db.conn(), &user, now, outcome).await
}

/// Rules 7–10 in the order, without writing anything.
async fn decide(
    db: &Db,
    user: &user::Model,
    product: Option<&product::Model>,
    now: DateTime<Utc>,
) -> Result<Decision> {
    let Some(product) = product else {
        return Ok(Decision::Deny(DenyReason::UnknownProduct));
    };
    if !user.active {
        return Ok(Decision::Deny(DenyReason::UserDeactivated));
    }
    if active_seat(db.conn(), user.id, product.id, now)
        .await?
        .is_some()
    {
        return Ok(Decision::Subscription);
    }
    if !user.flex_assigned {
        return Ok(Decision::Deny(DenyReason::NotAssigned));
    }
    if !product_allowed(db.conn(), user, product.id).await? {
        return Ok(Decision::Deny(DenyReason::ProductRestricted));
    }
    if let Some(ends_at) = current_window(db.conn(), user.id, product.id, now).await? {
        return Ok(Decision::InsideWindow(ends_at));
    }
    Ok(Decision::Charge)
}

/// Rule 8: a user's own list overrides the account's; no list allows everything.
async fn product_allowed(
    conn: &impl ConnectionTrait,
    user: &user::Model,
    product_id: i32,
) -> Result<bool> {
    let list = if user.restricts_products {
        allowed_product_ids(conn, user.account_id, Some(user.id)).await?
    } else if find_account(conn, user.account_id)
        .await?
        .restricts_products
    {
        allowed_product_ids(conn, user.account_id, None).await?
    } else {
        return Ok(true);
    };
    Ok(list.contains(&product_id))
}

/// The end of the window covering `now` for this user and product, if one does.
async fn current_window(
    conn: &impl ConnectionTrait,
    user_id: i32,
    product_id: i32,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    let w = window::Entity::find_by_id((user_id, product_id))
        .one(conn)
        .await?;
    Ok(w.map(|w| w.ends_at)
        .filter(|&ends_at| rules::window_covers(ends_at, now)))
}

/// Rules 3, 6, 10–12: under the account's lock, re-check the window, then draw the
/// daily rate from the lots in burn order or deny for lack of tokens.
async fn charge_and_open(
    db: &Db,
    record: OpenRecord<'_>,
    product: &product::Model,
) -> Result<OpenOutcome> {
    let (user, now) = (record.user, record.now);
    let tx = db.begin_write().await?;
    db.lock_account(&tx, user.account_id).await?;

    // A concurrent open of the same product may have charged while we waited.
    if let Some(ends_at) = current_window(&*tx, user.id, product.id, now).await? {
        record.write(&*tx, Outcome::Reopen(ends_at)).await?;
        tx.commit().await?;
        return answer(db.conn(), user, now, Outcome::Reopen(ends_at)).await;
    }

    let lots: Vec<lot::Model> = lot::Entity::find()
        .filter(lot::Column::AccountId.eq(user.account_id))
        .filter(lot::Column::Remaining.gt(0))
        .filter(lot::Column::ExpiresAt.gt(now))
        .all(&*tx)
        .await?;
    let spendable: Vec<SpendableLot> = lots
        .iter()
        .map(|l| SpendableLot {
            id: l.id,
            remaining: l.remaining,
            quantity: l.quantity,
            expires_at: l.expires_at,
            unit_price_minor: l.unit_price_minor,
        })
        .collect();
    let account = find_account(&*tx, user.account_id).await?;
    let balance_before: i64 = spendable.iter().map(|l| l.remaining).sum();
    let Some(draws) = rules::allocate_from_lots(&spendable, product.daily_rate, now) else {
        let denied = Outcome::Denied(DenyReason::InsufficientTokens);
        record.write(&*tx, denied).await?;
        let exhausted = notifications::on_exhausted(&*tx, &account, balance_before, now).await?;
        tx.commit().await?;
        let mut outcome = answer(db.conn(), user, now, denied).await?;
        outcome.notifications.extend(exhausted);
        return Ok(outcome);
    };

    let window_ends_at = now + rules::WINDOW;
    let charge = charge::ActiveModel {
        account_id: Set(user.account_id),
        user_id: Set(user.id),
        product_id: Set(product.id),
        version: Set(record.version.map(str::to_owned)),
        tokens: Set(product.daily_rate),
        cost_minor: Set(draws.iter().map(|d| d.cost_minor).sum()),
        window_starts_at: Set(now),
        window_ends_at: Set(window_ends_at),
        ..Default::default()
    }
    .insert(&*tx)
    .await?;
    for draw in &draws {
        let before = spendable
            .iter()
            .find(|l| l.id == draw.lot_id)
            .map_or(0, |l| l.remaining);
        let status = if before == draw.tokens {
            LotStatus::Depleted
        } else {
            LotStatus::Active
        };
        let updated = lot::Entity::update_many()
            .col_expr(
                lot::Column::Remaining,
                Expr::col(lot::Column::Remaining).sub(draw.tokens),
            )
            .col_expr(
                lot::Column::Used,
                Expr::col(lot::Column::Used).add(draw.tokens),
            )
            .col_expr(lot::Column::Status, Expr::value(status.as_str()))
            .filter(lot::Column::Id.eq(draw.lot_id))
            .filter(lot::Column::Remaining.eq(before))
            .exec(&*tx)
            .await?;
        if updated.rows_affected != 1 {
            // Only possible if something changed the lot outside the account's lock.
            return Err(DomainError::Internal(format!(
                "lot {} changed during a charge",
                draw.lot_id
            )));
        }
        ledger_entry::ActiveModel {
            account_id: Set(user.account_id),
            kind: Set(LedgerKind::Charge.as_str().to_owned()),
            tokens: Set(-draw.tokens),
            lot_id: Set(draw.lot_id),
            charge_id: Set(Some(charge.id)),
            at: Set(now),
            ..Default::default()
        }
        .insert(&*tx)
        .await?;
    }
    move_window(&tx, user.id, product.id, charge.id, now, window_ends_at).await?;
    let charged = Outcome::Charged {
        charge_id: charge.id,
        tokens: product.daily_rate,
        window_ends_at,
    };
    record.write(&*tx, charged).await?;
    let balance_after = balance_before - product.daily_rate;
    let low = notifications::on_charge(
        &*tx,
        &account,
        balance_before,
        balance_after,
        charge.id,
        now,
    )
    .await?;
    announce_balance_change(&*tx, user.account_id).await?;
    tx.commit().await?;
    let mut outcome = answer(db.conn(), user, now, charged).await?;
    outcome.notifications.extend(low);
    Ok(outcome)
}

/// Points the user's window for the product at the new charge. The update only
/// replaces a window that has ended, and the primary key allows one row, so two
/// racing charges cannot both open a window.
async fn move_window(
    tx: &WriteTx,
    user_id: i32,
    product_id: i32,
    charge_id: i32,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
) -> Result<()> {
    let updated = window::Entity::update_many()
        .col_expr(window::Column::ChargeId, Expr::value(charge_id))
        .col_expr(window::Column::StartsAt, Expr::value(starts_at))
        .col_expr(window::Column::EndsAt, Expr::value(ends_at))
        .filter(window::Column::UserId.eq(user_id))
        .filter(window::Column::ProductId.eq(product_id))
        .filter(window::Column::EndsAt.lte(starts_at))
        .exec(&**tx)
        .await?;
    if updated.rows_affected == 0 {
        window::ActiveModel {
            user_id: Set(user_id),
            product_id: Set(product_id),
            charge_id: Set(charge_id),
            starts_at: Set(starts_at),
            ends_at: Set(ends_at),
        }
        .insert(&**tx)
        .await?;
    }
    Ok(())
}

/// The answer to the caller, for what the open came to, with the balance and plan
/// level after it.
async fn answer(
    conn: &impl ConnectionTrait,
    user: &user::Model,
    now: DateTime<Utc>,
    outcome: Outcome,
) -> Result<OpenOutcome> {
    let (granted, source, deny_reason) = outcome.access();
    let (tokens_charged, window_ends_at, charge_id) = match outcome {
        Outcome::Charged {
            charge_id,
            tokens,
            window_ends_at,
        } => (tokens, Some(window_ends_at), Some(charge_id)),
        Outcome::Reopen(ends_at) => (0, Some(ends_at), None),
        Outcome::Denied(_) | Outcome::Subscription => (0, None, None),
    };
    Ok(OpenOutcome {
        granted,
        source,
        tokens_charged,
        window_ends_at,
        deny_reason,
        balance: balance_at(conn, user.account_id, now).await?,
        plan_level: plan_level_at(conn, user.account_id, now).await?,
        charge_id,
        notifications: Vec::new(),
    })
}

/// What an open came to: both the record kept for reports and the caller's answer
/// are read from it.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Denied(DenyReason),
    Subscription,
    /// Inside the window ending then: granted, free.
    Reopen(DateTime<Utc>),
    Charged {
        charge_id: i32,
        tokens: i64,
        window_ends_at: DateTime<Utc>,
    },
}

impl Outcome {
    fn access(self) -> (bool, Option<AccessSource>, Option<DenyReason>) {
        match self {
            Outcome::Denied(r) => (false, None, Some(r)),
            Outcome::Subscription => (true, Some(AccessSource::Subscription), None),
            Outcome::Reopen(_) | Outcome::Charged { .. } => (true, Some(AccessSource::Flex), None),
        }
    }
}

/// Every open, granted or denied, is kept for reports (rule 11).
struct OpenRecord<'a> {
    user: &'a user::Model,
    product: Option<&'a product::Model>,
    code: &'a str,
    version: Option<&'a str>,
    now: DateTime<Utc>,
}

impl OpenRecord<'_> {
    async fn write(&self, conn: &impl ConnectionTrait, outcome: Outcome) -> Result<()> {
        let (granted, source, deny_reason) = outcome.access();
        let (charge_id, tokens) = match outcome {
            Outcome::Charged {
                charge_id, tokens, ..
            } => (Some(charge_id), tokens),
            _ => (None, 0),
        };
        open::ActiveModel {
            account_id: Set(self.user.account_id),
            user_id: Set(self.user.id),
            product_id: Set(self.product.map(|p| p.id)),
            product_code: Set(self.code.to_owned()),
            version: Set(self.version.map(str::to_owned)),
            at: Set(self.now),
            granted: Set(granted),
            source: Set(source.map(|s| s.as_str().to_owned())),
            deny_reason: Set(deny_reason.map(|r| r.as_str().to_owned())),
            charge_id: Set(charge_id),
            tokens: Set(tokens),
            ..Default::default()
        }
        .insert(conn)
        .await?;
        Ok(())
    }

    async fn write_alone(&self, db: &Db, outcome: Outcome) -> Result<()> {
        let tx = db.begin_write().await?;
        self.write(&*tx, outcome).await?;
        tx.commit().await
    }
}
