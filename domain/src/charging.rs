//! Opening a product (rules 7–12): subscriptions first, then pay-as-you-go with its
//! assignment, restrictions, 24-hour windows and charges.

use crate::access::Actor;
use crate::accounts::{balance_at, find_account, plan_level_at, plans_of};
use crate::db::{Db, WriteTx};
use crate::error::{DomainError, Result};
use crate::events::announce_balance_change;
use crate::group::{BatchFuture, GroupCommit};
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
use std::collections::HashMap;
use std::sync::Arc;

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
        account_id: user.account_id,
        user_id: user.id,
        product_id: product.as_ref().map(|p| p.id),
        code,
        version,
        now,
    };
    let outcome = match (decision, product) {
        (Decision::Charge, Some(product)) => {
            let request = ChargeRequest { record, product };
            return db
                .batches()
                .charges
                .submit(db, user.account_id, request)
                .await;
        }
        (Decision::Charge, None) => {
            return Err(DomainError::Internal("a charge needs a product".into()));
        }
        (Decision::Deny(reason), _) => Outcome::Denied(reason),
        (Decision::Subscription, _) => Outcome::Subscription,
        (Decision::InsideWindow(ends_at), _) => Outcome::Reopen(ends_at),
    };
    // No lock and no transaction of its own: the record joins the next batch insert.
    db.batches()
        .records
        .submit(db, 0, (record, outcome))
        .await?;
    answer(db.conn(), user.account_id, now, outcome).await
}

/// The opens and charges that wait for the next batch, per kind.
pub struct Batches {
    /// Charging opens, per account: one transaction under the account's lock each.
    charges: Arc<GroupCommit<ChargeRequest, OpenOutcome>>,
    /// Records of opens that move no tokens (reopens, subscriptions, denials).
    records: Arc<GroupCommit<(OpenRecord, Outcome), ()>>,
}

/// The most opens one transaction takes.
const MAX_BATCH: usize = 128;

impl Batches {
    pub(crate) fn new() -> Batches {
        Batches {
            charges: GroupCommit::new(run_charges, MAX_BATCH),
            records: GroupCommit::new(run_records, MAX_BATCH),
        }
    }
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batches")
    }
}

fn run_records(db: Db, _key: i32, items: Vec<(OpenRecord, Outcome)>) -> BatchFuture<()> {
    Box::pin(async move {
        let n = items.len();
        let tx = db.begin_write().await?;
        open::Entity::insert_many(items.iter().map(|(r, o)| r.model(*o)))
            .exec_without_returning(&*tx)
            .await?;
        tx.commit().await?;
        Ok((0..n).map(|_| Ok(())).collect())
    })
}

fn run_charges(db: Db, account_id: i32, items: Vec<ChargeRequest>) -> BatchFuture<OpenOutcome> {
    Box::pin(async move { charge_batch(&db, account_id, items).await })
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

/// A charging open waiting for its account's next batch.
struct ChargeRequest {
    record: OpenRecord,
    product: product::Model,
}

/// Rules 3, 6, 10–12 for the charging opens of one account that arrived together:
/// one transaction under the account's lock, then each open in arrival order exactly
/// as if alone — re-check its window (a concurrent open, in this batch or another
/// process, may have charged), draw the daily rate from the lots in burn order or
/// deny for lack of tokens. Each open gets its own charge, record and answer.
async fn charge_batch(
    db: &Db,
    account_id: i32,
    items: Vec<ChargeRequest>,
) -> Result<Vec<Result<OpenOutcome>>> {
    let Some(earliest) = items.iter().map(|i| i.record.now).min() else {
        return Ok(Vec::new());
    };
    let tx = db.begin_write().await?;
    db.lock_account(&tx, account_id).await?;
    let account = find_account(&*tx, account_id).await?;
    let lots: Vec<lot::Model> = lot::Entity::find()
        .filter(lot::Column::AccountId.eq(account_id))
        .filter(lot::Column::Remaining.gt(0))
        .filter(lot::Column::ExpiresAt.gt(earliest))
        .all(&*tx)
        .await?;
    // The lots as this batch leaves them, updated after each charge.
    let mut spendable: Vec<SpendableLot> = lots
        .iter()
        .map(|l| SpendableLot {
            id: l.id,
            remaining: l.remaining,
            quantity: l.quantity,
            expires_at: l.expires_at,
            unit_price_minor: l.unit_price_minor,
        })
        .collect();
    let live_balance = |lots: &[SpendableLot], now| -> i64 {
        lots.iter()
            .filter(|l| rules::lot_is_live(l.expires_at, now))
            .map(|l| l.remaining)
            .sum()
    };
    let plans = plans_of(&*tx, account_id, earliest).await?;
    // Windows this batch opened, which the database shows only to this transaction.
    let mut opened: HashMap<(i32, i32), DateTime<Utc>> = HashMap::new();
    let mut answers = Vec::with_capacity(items.len());
    let mut charged_any = false;
    for ChargeRequest { record, product } in &items {
        let (user_id, now) = (record.user_id, record.now);
        let key = (user_id, product.id);
        let window = match opened
            .get(&key)
            .copied()
            .filter(|&ends_at| rules::window_covers(ends_at, now))
        {
            Some(ends_at) => Some(ends_at),
            None => current_window(&*tx, user_id, product.id, now).await?,
        };
        let balance_before = live_balance(&spendable, now);
        let mut notifications = Vec::new();
        let outcome = if let Some(ends_at) = window {
            Outcome::Reopen(ends_at)
        } else if let Some(draws) = rules::allocate_from_lots(&spendable, product.daily_rate, now) {
            let window_ends_at = now + rules::WINDOW;
            let charge = charge::ActiveModel {
                account_id: Set(account_id),
                user_id: Set(user_id),
                product_id: Set(product.id),
                version: Set(record.version.clone()),
                tokens: Set(product.daily_rate),
                cost_minor: Set(draws.iter().map(|d| d.cost_minor).sum()),
                window_starts_at: Set(now),
                window_ends_at: Set(window_ends_at),
                ..Default::default()
            }
            .insert(&*tx)
            .await?;
            for draw in &draws {
                let lot = spendable
                    .iter_mut()
                    .find(|l| l.id == draw.lot_id)
                    .ok_or_else(|| DomainError::Internal("a draw from an unknown lot".into()))?;
                draw_from_lot(&tx, lot, draw.tokens).await?;
                ledger_entry::ActiveModel {
                    account_id: Set(account_id),
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
            move_window(&tx, user_id, product.id, charge.id, now, window_ends_at).await?;
            opened.insert(key, window_ends_at);
            charged_any = true;
            let balance_after = balance_before - product.daily_rate;
            notifications.extend(
                notifications::on_charge(
                    &*tx,
                    &account,
                    balance_before,
                    balance_after,
                    charge.id,
                    now,
                )
                .await?,
            );
            Outcome::Charged {
                charge_id: charge.id,
                tokens: product.daily_rate,
                window_ends_at,
            }
        } else {
            notifications
                .extend(notifications::on_exhausted(&*tx, &account, balance_before, now).await?);
            Outcome::Denied(DenyReason::InsufficientTokens)
        };
        record.write(&*tx, outcome).await?;
        let mut answer = OpenOutcome::of(outcome, live_balance(&spendable, now), plans.at(now));
        answer.notifications = notifications;
        answers.push(Ok(answer));
    }
    if charged_any {
        announce_balance_change(&*tx, account_id).await?;
    }
    tx.commit().await?;
    Ok(answers)
}

/// Takes `tokens` from `lot` (as this transaction last left it), in the database
/// and in memory. The update is conditional on the remaining tokens it started from.
async fn draw_from_lot(tx: &WriteTx, lot: &mut SpendableLot, tokens: i64) -> Result<()> {
    let before = lot.remaining;
    let status = if before == tokens {
        LotStatus::Depleted
    } else {
        LotStatus::Active
    };
    let updated = lot::Entity::update_many()
        .col_expr(
            lot::Column::Remaining,
            Expr::col(lot::Column::Remaining).sub(tokens),
        )
        .col_expr(lot::Column::Used, Expr::col(lot::Column::Used).add(tokens))
        .col_expr(lot::Column::Status, Expr::value(status.as_str()))
        .filter(lot::Column::Id.eq(lot.id))
        .filter(lot::Column::Remaining.eq(before))
        .exec(&**tx)
        .await?;
    if updated.rows_affected != 1 {
        // Only possible if something changed the lot outside the account's lock.
        return Err(DomainError::Internal(format!(
            "lot {} changed during a charge",
            lot.id
        )));
    }
    lot.remaining -= tokens;
    Ok(())
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

/// The answer to the caller of an open that moved no tokens, with the balance and
/// plan level at its time.
async fn answer(
    conn: &impl ConnectionTrait,
    account_id: i32,
    now: DateTime<Utc>,
    outcome: Outcome,
) -> Result<OpenOutcome> {
    Ok(OpenOutcome::of(
        outcome,
        balance_at(conn, account_id, now).await?,
        plan_level_at(conn, account_id, now).await?,
    ))
}

impl OpenOutcome {
    fn of(outcome: Outcome, balance: i64, plan_level: PlanLevel) -> OpenOutcome {
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
        OpenOutcome {
            granted,
            source,
            tokens_charged,
            window_ends_at,
            deny_reason,
            balance,
            plan_level,
            charge_id,
            notifications: Vec::new(),
        }
    }
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
struct OpenRecord {
    account_id: i32,
    user_id: i32,
    /// `None`: the code named no catalog product.
    product_id: Option<i32>,
    code: String,
    version: Option<String>,
    now: DateTime<Utc>,
}

impl OpenRecord {
    fn model(&self, outcome: Outcome) -> open::ActiveModel {
        let (granted, source, deny_reason) = outcome.access();
        let (charge_id, tokens) = match outcome {
            Outcome::Charged {
                charge_id, tokens, ..
            } => (Some(charge_id), tokens),
            _ => (None, 0),
        };
        open::ActiveModel {
            account_id: Set(self.account_id),
            user_id: Set(self.user_id),
            product_id: Set(self.product_id),
            product_code: Set(self.code.clone()),
            version: Set(self.version.clone()),
            at: Set(self.now),
            granted: Set(granted),
            source: Set(source.map(|s| s.as_str().to_owned())),
            deny_reason: Set(deny_reason.map(|r| r.as_str().to_owned())),
            charge_id: Set(charge_id),
            tokens: Set(tokens),
            ..Default::default()
        }
    }

    async fn write(&self, conn: &impl ConnectionTrait, outcome: Outcome) -> Result<()> {
        open::Entity::insert(self.model(outcome))
            .exec_without_returning(conn)
            .await?;
        Ok(())
    }
}
