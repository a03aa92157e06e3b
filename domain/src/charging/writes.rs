//! A charging batch's transaction: the accounts locked and read, the batch planned
//! ([`super::plan`]), then written with one multi-row statement per table.

use super::plan::{
    AccountLots, ChargeRequest, Decided, Decision, DrawnLot, Held, Planned, PlannedOpen, decide,
    plan,
};
use super::situation::{Asked, situations};
use super::{OpenOutcome, Outcome};
use crate::conditions;
use crate::error::{DomainError, Result};
use crate::notifications;
use crate::store::balance_feed::announce_balance_changes;
use crate::store::{Db, WriteTx};
use crate::units::{ChargeId, MinorUnits, Tokens};
use crate::vocabulary::{DenyReason, LedgerKind, LotStatus};
use chrono::{DateTime, Utc};
use daypass_entity::{charge, ledger_entry, lot, open, session, window};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set,
    sea_query::{Alias, Expr, ExprTrait, OnConflict},
};
use std::collections::{BTreeMap, HashMap};

/// The opens of one transaction: every account locked in id order and read with its
/// lots, plans and the users' windows in one query each; the batch planned in memory
/// ([`plan`]); then written with one multi-row statement per table. Each open keeps
/// its own charge, record and answer.
pub(super) async fn charge_together(db: &Db, items: &[&ChargeRequest]) -> Result<Vec<OpenOutcome>> {
    let Some(earliest) = items.iter().map(|i| i.record.now).min() else {
        return Ok(Vec::new());
    };
    let tx = db.begin_write().await?;
    let mut held = read_under_locks(db, &tx, items, earliest).await?;
    let planned = plan(items, &mut held)?;
    let charges = write_charges(&tx, items, &planned).await?;
    draw_from_lots(&tx, &held.drawn()).await?;
    write_ledger_and_windows(&tx, items, &planned, &charges).await?;
    let answers = record_outcomes(&tx, items, planned, &held, &charges).await?;
    announce_balance_changes(&*tx, &charges.accounts).await?;
    tx.commit().await?;
    Ok(answers)
}

/// Locks the batch's accounts in id order and reads them with their lots (those not
/// expired at the batch's first instant) and each open's situation again.
///
/// Rules 7–10 are decided again under the accounts' locks, which every change to who
/// may open what also takes: between the first read and now an admin may have taken
/// the user off pay-as-you-go, restricted the product or given a seat, a concurrent
/// open may have charged. The answer is what holds at the charge, so the open is
/// linearizable with those changes.
async fn read_under_locks(
    db: &Db,
    tx: &WriteTx,
    items: &[&ChargeRequest],
    earliest: DateTime<Utc>,
) -> Result<Held> {
    let mut account_ids: Vec<i32> = items.iter().map(|i| i.record.account_id).collect();
    account_ids.sort_unstable();
    account_ids.dedup();
    let accounts = db
        .lock_accounts(tx, &account_ids)
        .await?
        .into_iter()
        .map(|a| (a.id, a))
        .collect();
    let mut rows: HashMap<i32, Vec<lot::Model>> = HashMap::new();
    for lot in lot::Entity::find()
        .filter(lot::Column::AccountId.is_in(account_ids.iter().copied()))
        .filter(conditions::unexpired_lot(lot::Entity, earliest))
        .all(&**tx)
        .await?
    {
        rows.entry(lot.account_id).or_default().push(lot);
    }
    let lots: BTreeMap<i32, AccountLots> = account_ids
        .iter()
        .map(|&id| (id, AccountLots::new(rows.remove(&id).unwrap_or_default())))
        .collect();
    let asked: Vec<Asked> = items
        .iter()
        .map(|i| Asked {
            user_id: i.record.user_id,
            code: i.record.code.clone(),
            now: i.record.now,
        })
        .collect();
    let mut windows = HashMap::new();
    let mut decided = Vec::with_capacity(items.len());
    let renewing = crate::sessions::open_among(
        &**tx,
        items
            .iter()
            .filter(|i| i.renewal)
            .map(|i| (i.record.session_id.as_str(), i.record.now)),
    )
    .await?;
    for (item, found) in items.iter().zip(situations(&**tx, &asked).await?) {
        let (user, product, situation) =
            found.ok_or_else(|| DomainError::Internal("the user of an open vanished".into()))?;
        // A renewal of a session closed or lapsed meanwhile charges nothing.
        let decision = if item.renewal && !renewing.contains(item.record.session_id.as_str()) {
            Decision::Denied(DenyReason::SessionEnded)
        } else {
            decide(&user, product.as_ref(), &situation, item.record.now)
        };
        if let (Some(product), Some(window)) = (&product, situation.window) {
            windows.entry((user.id, product.id)).or_insert(window);
        }
        decided.push(Decided {
            decision,
            // The daily rate as the catalog has it now.
            rate: Tokens(product.map_or(item.product.daily_rate, |p| p.daily_rate)),
            plan_level: situation.plan_level,
        });
    }
    Ok(Held {
        accounts,
        lots,
        windows,
        decided,
    })
}

/// The charges a batch wrote: each one's id by (user, product), and the accounts
/// whose balance moved.
struct Charges {
    ids: HashMap<(i32, i32), ChargeId>,
    accounts: Vec<i32>,
}

impl Charges {
    fn of(&self, item: &ChargeRequest) -> Result<ChargeId> {
        self.ids
            .get(&(item.record.user_id, item.product.id))
            .copied()
            .ok_or_else(|| DomainError::Internal("a planned charge was not written".into()))
    }
}

/// The charges, one row each; the batch has at most one per user and product.
async fn write_charges(
    tx: &WriteTx,
    items: &[&ChargeRequest],
    planned: &[PlannedOpen],
) -> Result<Charges> {
    let rows = items
        .iter()
        .zip(planned)
        .filter_map(|(item, p)| match &p.plan {
            Planned::Charge {
                tokens,
                draws,
                window_ends_at,
                ..
            } => Some(charge::ActiveModel {
                account_id: Set(item.record.account_id),
                user_id: Set(item.record.user_id),
                product_id: Set(item.product.id),
                version: Set(item.record.version.clone()),
                tokens: Set(tokens.get()),
                cost_minor: Set(draws.iter().map(|d| d.cost_minor).sum::<MinorUnits>().get()),
                window_starts_at: Set(item.record.now),
                window_ends_at: Set(*window_ends_at),
                session_id: Set(Some(item.record.session_id.clone())),
                refunded_at: Set(None),
                ..Default::default()
            }),
            _ => None,
        });
    let written = charge::Entity::insert_many(rows)
        .exec_with_returning(&**tx)
        .await?;
    let mut accounts: Vec<i32> = written.iter().map(|c| c.account_id).collect();
    accounts.sort_unstable();
    accounts.dedup();
    Ok(Charges {
        ids: written
            .iter()
            .map(|c| ((c.user_id, c.product_id), ChargeId(c.id)))
            .collect(),
        accounts,
    })
}

/// Each charge's ledger entries (one per lot drawn) and its user's window.
async fn write_ledger_and_windows(
    tx: &WriteTx,
    items: &[&ChargeRequest],
    planned: &[PlannedOpen],
    charges: &Charges,
) -> Result<()> {
    let mut entries = Vec::new();
    let mut moved = Vec::new();
    for (item, p) in items.iter().zip(planned) {
        let Planned::Charge {
            draws,
            window_ends_at,
            ..
        } = &p.plan
        else {
            continue;
        };
        let charge_id = charges.of(item)?;
        entries.extend(draws.iter().map(|draw| ledger_entry::ActiveModel {
            account_id: Set(item.record.account_id),
            kind: Set(LedgerKind::Charge.as_str().to_owned()),
            tokens: Set(-draw.tokens.get()),
            lot_id: Set(draw.lot_id.get()),
            charge_id: Set(Some(charge_id.get())),
            at: Set(item.record.now),
            ..Default::default()
        }));
        moved.push(window::ActiveModel {
            user_id: Set(item.record.user_id),
            product_id: Set(item.product.id),
            charge_id: Set(charge_id.get()),
            starts_at: Set(item.record.now),
            ends_at: Set(*window_ends_at),
        });
    }
    ledger_entry::Entity::insert_many(entries)
        .exec_without_returning(&**tx)
        .await?;
    move_windows(tx, &moved).await
}

/// Every open's record, the notifications its charge or denial calls for (rule 14:
/// at most one exhausted-balance notice an account per batch, the first denial's),
/// and its answer.
async fn record_outcomes(
    tx: &WriteTx,
    items: &[&ChargeRequest],
    planned: Vec<PlannedOpen>,
    held: &Held,
    charges: &Charges,
) -> Result<Vec<OpenOutcome>> {
    let mut answers = Vec::with_capacity(items.len());
    let mut records = Vec::with_capacity(items.len());
    let mut sessions = Vec::new();
    let mut exhausted_told: Vec<i32> = Vec::new();
    // Rule 25's alert rules of the accounts that charged and have some, read once
    // for the batch.
    let mut charged: Vec<i32> = items
        .iter()
        .zip(&planned)
        .filter(|(_, p)| matches!(p.plan, Planned::Charge { .. }))
        .map(|(item, _)| item.record.account_id)
        .filter(|id| held.accounts.get(id).is_some_and(|a| a.alert_rules > 0))
        .collect();
    charged.sort_unstable();
    charged.dedup();
    let mut alert_rules: HashMap<i32, Vec<crate::alerts::AlertRule>> = HashMap::new();
    for rule in crate::alerts::rules_of(&**tx, &charged).await? {
        alert_rules.entry(rule.account_id).or_default().push(rule);
    }
    for (item, p) in items.iter().zip(planned) {
        let now = item.record.now;
        let account = held
            .accounts
            .get(&item.record.account_id)
            .ok_or_else(|| DomainError::Internal("an open of a missing account".into()))?;
        let mut notes = Vec::new();
        let outcome = match p.plan {
            Planned::Denied(DenyReason::InsufficientTokens) => {
                if !exhausted_told.contains(&account.id) {
                    exhausted_told.push(account.id);
                    notes.extend(
                        notifications::on_exhausted(tx, account, p.balance_after, now).await?,
                    );
                }
                Outcome::Denied(DenyReason::InsufficientTokens)
            }
            Planned::Denied(reason) => Outcome::Denied(reason),
            Planned::Subscription => Outcome::Subscription,
            Planned::Reopen(window) => Outcome::Reopen(window),
            Planned::Charge {
                tokens,
                window_ends_at,
                balance_before,
                threshold,
                bought,
                ..
            } => {
                let charge_id = charges.of(item)?;
                notes.extend(
                    notifications::on_charge(
                        tx,
                        account,
                        balance_before,
                        balance_before - tokens,
                        threshold,
                        alert_rules.get(&account.id).map_or(&[], Vec::as_slice),
                        bought,
                        charge_id,
                        now,
                    )
                    .await?,
                );
                Outcome::Charged {
                    charge_id,
                    tokens,
                    window_ends_at,
                }
            }
        };
        let outcome = if item.renewal {
            renewed(tx, item, outcome).await?
        } else {
            outcome
        };
        let mut answer = OpenOutcome::of(outcome, p.balance_after, p.plan_level);
        answer.notifications = notes;
        if !item.renewal {
            answer.session = item.record.session(outcome);
            sessions.extend(answer.session.clone().map(session::ActiveModel::from));
            records.push(item.record.model(outcome));
        }
        answers.push(answer);
    }
    open::Entity::insert_many(records)
        .exec_without_returning(&**tx)
        .await?;
    session::Entity::insert_many(sessions)
        .exec_without_returning(&**tx)
        .await?;
    Ok(answers)
}

/// A renewal's session afterwards (rule 22): heard from and in use when the renewal
/// was granted, ended with the reason when it was denied. A renewal of a session an
/// earlier renewal of the same batch ended answers that it has ended.
async fn renewed(tx: &WriteTx, item: &ChargeRequest, outcome: Outcome) -> Result<Outcome> {
    let id = item.record.session_id.as_str();
    match outcome {
        Outcome::Denied(DenyReason::SessionEnded) => Ok(outcome),
        Outcome::Denied(reason) => Ok(
            match crate::sessions::mark_denied(&**tx, id, reason, item.record.now).await? {
                true => outcome,
                false => Outcome::Denied(DenyReason::SessionEnded),
            },
        ),
        Outcome::Subscription | Outcome::Reopen(_) | Outcome::Charged { .. } => {
            crate::sessions::touch_one(&**tx, id, item.record.now, true).await?;
            Ok(outcome)
        }
    }
}

/// Sets each drawn lot's remaining tokens from `before` to `after`, in one statement,
/// conditional on it still holding `before`.
async fn draw_from_lots(tx: &WriteTx, drawn: &[DrawnLot]) -> Result<()> {
    if drawn.is_empty() {
        return Ok(());
    }
    let rows = vec!["(?, ?, ?, ?)"; drawn.len()].join(", ");
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(drawn.len() * 4);
    for &DrawnLot {
        lot_id,
        before,
        after,
    } in drawn
    {
        let status = if after == 0 {
            LotStatus::Depleted
        } else {
            LotStatus::Active
        };
        values.extend([
            lot_id.get().into(),
            before.get().into(),
            after.get().into(),
            status.as_str().into(),
        ]);
    }
    let sql = format!(
        "WITH drawn(id, before, after, status) AS (VALUES {rows}) \
         UPDATE lots SET remaining = drawn.after, used = lots.used + (drawn.before - drawn.after), \
         status = drawn.status FROM drawn \
         WHERE lots.id = drawn.id AND lots.remaining = drawn.before"
    );
    let updated = tx
        .execute_raw(crate::store::stmt(tx.get_database_backend(), &sql, values))
        .await?;
    if updated.rows_affected() != drawn.len() as u64 {
        // Only possible if something changed a lot outside its account's lock.
        return Err(DomainError::Internal(
            "a lot changed during a charge".into(),
        ));
    }
    Ok(())
}

/// Points each user's window for the product at its new charge, in one statement. A
/// window is replaced only when it has ended, and the primary key allows one row,
/// so two racing charges cannot both open a window.
async fn move_windows(tx: &WriteTx, moved: &[window::ActiveModel]) -> Result<()> {
    if moved.is_empty() {
        return Ok(());
    }
    let mut on_conflict = OnConflict::columns([window::Column::UserId, window::Column::ProductId]);
    on_conflict
        .update_columns([
            window::Column::ChargeId,
            window::Column::StartsAt,
            window::Column::EndsAt,
        ])
        .action_and_where(
            Expr::col((window::Entity, window::Column::EndsAt)).lte(Expr::col((
                Alias::new("excluded"),
                window::Column::StartsAt,
            ))),
        );
    let written = window::Entity::insert_many(moved.iter().cloned())
        .on_conflict(on_conflict)
        .exec_without_returning(&**tx)
        .await?;
    if written != moved.len() as u64 {
        return Err(DomainError::Internal(
            "a window still open was about to be replaced".into(),
        ));
    }
    Ok(())
}
