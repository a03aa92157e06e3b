//! The notification outbox (rules 14 and 15). A notification is written in the
//! same transaction as the event that causes it, keyed so the event can create it
//! only once; delivery then leases it, sends it, and records the outcome, retrying
//! with exponential backoff up to a bound.

use crate::access::Actor;
use crate::alerts::{self, AlertRule};
use crate::conditions;
use crate::error::{DomainError, Result};
use crate::page::{Page, PageRequest};
use crate::store::{Db, WriteTx};
use crate::units::{ChargeId, NotificationId, Tokens};
use crate::vocabulary::Role;
use crate::webhooks::{self, WebhookEvent};
use chrono::{DateTime, Duration, Utc};
use daypass_entity::{account, lot, notification, user};
use sea_orm::{
    ActiveValue::NotSet,
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Set, TryInsertResult,
    sea_query::{Expr, ExprTrait},
};
use serde::{Deserialize, Serialize};

crate::vocabulary::vocabulary!(NotificationKind {
    LowBalance => "LOW_BALANCE",
    TokensExhausted => "TOKENS_EXHAUSTED",
    ExpiryReminder => "EXPIRY_REMINDER",
    WebhookDisabled => "WEBHOOK_DISABLED",
    ScheduledReport => "SCHEDULED_REPORT",
});
crate::vocabulary::vocabulary!(NotificationState { Pending => "PENDING", Sent => "SENT", Dead => "DEAD" });

/// Attempts before a notification is given up (marked DEAD).
pub const MAX_ATTEMPTS: i32 = 8;
/// Delay before the second attempt; each later one doubles it, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::seconds(5);
pub const MAX_BACKOFF: Duration = Duration::hours(1);
/// How long one sender holds a notification; after it, a crashed send is retried.
pub const LEASE: Duration = Duration::seconds(60);
/// Rule 14: the reminder comes this long before a lot expires.
pub const REMINDER_BEFORE_EXPIRY: Duration = Duration::days(90);

/// The facts an e-mail is written from, frozen when the event happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Facts {
    pub account_id: i32,
    pub account_name: String,
    pub balance: i64,
    pub threshold: Option<i64>,
    pub lots: Vec<LotFact>,
    pub at: DateTime<Utc>,
    /// The alert rule (rule 25) whose threshold a low-balance e-mail is about; none
    /// for rule 14's own threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<AlertFact>,
    /// The endpoint a webhook-disabled e-mail is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookFact>,
    /// The period a scheduled report covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportFact>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AlertFact {
    pub rule_id: i32,
    /// "TOKENS" or "PERCENT", and the rule's setting in that unit.
    pub unit: String,
    pub setting: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WebhookFact {
    pub endpoint_id: i32,
    pub url: String,
    pub failing_since: DateTime<Utc>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportFact {
    pub subscription_id: i32,
    /// "WEEKLY" or "MONTHLY".
    pub schedule: String,
    /// The UTC days covered, both included.
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
}

/// Who a notification goes to: the account's active admins, extra addresses, or
/// both (duplicates removed, admins first).
#[derive(Debug, Clone, Default)]
pub struct Recipients {
    pub admins: bool,
    pub extra: Vec<String>,
}

impl Recipients {
    pub fn admins() -> Recipients {
        Recipients {
            admins: true,
            extra: Vec::new(),
        }
    }

    async fn resolve(&self, conn: &impl ConnectionTrait, account_id: i32) -> Result<Vec<String>> {
        let mut all = if self.admins {
            active_admin_emails(conn, account_id).await?
        } else {
            Vec::new()
        };
        for e in &self.extra {
            if !all.iter().any(|a| a.eq_ignore_ascii_case(e)) {
                all.push(e.clone());
            }
        }
        Ok(all)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LotFact {
    pub lot_id: i32,
    pub remaining: i64,
    pub expires_at: DateTime<Utc>,
}

/// Backoff before attempt `attempts + 1`, after `attempts` failed ones.
pub fn backoff_after(attempts: i32) -> Duration {
    let exp = (Ord::max(attempts, 1) - 1).clamp(0, 16) as u32;
    Ord::min(FIRST_BACKOFF * 2i32.pow(exp), MAX_BACKOFF)
}

/// Rule 14: a charge crossed the threshold when it took the balance from at or above
/// it to below it.
pub fn crossed_threshold(before: Tokens, after: Tokens, threshold: Tokens) -> bool {
    before >= threshold && after < threshold
}

async fn active_admin_emails(conn: &impl ConnectionTrait, account_id: i32) -> Result<Vec<String>> {
    Ok(user::Entity::find()
        .select_only()
        .column(user::Column::Email)
        .filter(user::Column::AccountId.eq(account_id))
        .filter(user::Column::Role.eq(Role::Admin.as_str()))
        .filter(user::Column::Active.eq(true))
        .order_by_asc(user::Column::Id)
        .into_tuple()
        .all(conn)
        .await?)
}

/// Inserts the notification unless one with the same key exists; returns its id
/// when this call created it.
pub(crate) async fn insert_once(
    conn: &impl ConnectionTrait,
    kind: NotificationKind,
    dedupe_key: String,
    facts: &Facts,
    recipients: &Recipients,
    now: DateTime<Utc>,
) -> Result<Option<i32>> {
    let recipients = recipients.resolve(conn, facts.account_id).await?;
    let am = notification::ActiveModel {
        id: NotSet,
        account_id: Set(facts.account_id),
        kind: Set(kind.as_str().to_owned()),
        dedupe_key: Set(dedupe_key),
        recipients: Set(
            serde_json::to_string(&recipients).map_err(|e| DomainError::Internal(e.to_string()))?
        ),
        payload: Set(
            serde_json::to_string(facts).map_err(|e| DomainError::Internal(e.to_string()))?
        ),
        state: Set(NotificationState::Pending.as_str().to_owned()),
        attempts: Set(0),
        next_attempt_at: Set(now),
        lease_until: Set(None),
        sent_at: Set(None),
        last_error: Set(None),
        created_at: Set(now),
    };
    let res = notification::Entity::insert(am)
        .on_conflict_do_nothing_on([notification::Column::DedupeKey])
        .exec(conn)
        .await?;
    Ok(match res {
        TryInsertResult::Inserted(r) => Some(r.last_insert_id),
        TryInsertResult::Conflicted | TryInsertResult::Empty => None,
    })
}

/// Called inside a charge's transaction (rules 14 and 25): for every threshold the
/// charge took the balance below, rule 14's and each alert rule's, one e-mail to
/// its recipients and one BALANCE_LOW event.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn on_charge(
    tx: &WriteTx,
    account: &account::Model,
    before: Tokens,
    after: Tokens,
    threshold: Tokens,
    rules: &[AlertRule],
    bought: Tokens,
    charge_id: ChargeId,
    now: DateTime<Utc>,
) -> Result<Vec<NotificationId>> {
    let mut created = Vec::new();
    for crossing in alerts::crossings(before, after, threshold, rules, bought) {
        let facts = Facts {
            account_id: account.id,
            account_name: account.name.clone(),
            balance: after.get(),
            threshold: Some(crossing.threshold.get()),
            at: now,
            alert: crossing.rule.map(|r| AlertFact {
                rule_id: r.id,
                unit: r.unit.as_str().to_owned(),
                setting: r.setting,
            }),
            ..Facts::default()
        };
        let (key, recipients) = match crossing.rule {
            None => (
                format!("low-balance:charge:{charge_id}"),
                Recipients::admins(),
            ),
            Some(rule) => (
                format!("alert:{}:charge:{charge_id}", rule.id),
                Recipients {
                    admins: rule.include_admins,
                    extra: rule.extra_recipients.clone(),
                },
            ),
        };
        let Some(id) = insert_once(
            &**tx,
            NotificationKind::LowBalance,
            key,
            &facts,
            &recipients,
            now,
        )
        .await?
        else {
            continue;
        };
        created.push(NotificationId(id));
        let data = serde_json::json!({
            "balance": after.get(),
            "threshold": crossing.threshold.get(),
            "alertRuleId": crossing.rule.map(|r| r.id.to_string()),
            "chargeId": charge_id.get().to_string(),
        });
        webhooks::record_event(
            tx,
            account.id,
            WebhookEvent::BalanceLow,
            async { Ok(data) },
            now,
        )
        .await?;
    }
    Ok(created)
}

/// Called inside a denial's transaction: at most one "tokens exhausted" e-mail and
/// TOKENS_EXHAUSTED event per account and UTC day.
pub(crate) async fn on_exhausted(
    tx: &WriteTx,
    account: &account::Model,
    balance: Tokens,
    now: DateTime<Utc>,
) -> Result<Option<NotificationId>> {
    let day = now.date_naive();
    let facts = Facts {
        account_id: account.id,
        account_name: account.name.clone(),
        balance: balance.get(),
        threshold: None,
        lots: vec![],
        at: now,
        ..Facts::default()
    };
    let id = insert_once(
        &**tx,
        NotificationKind::TokensExhausted,
        format!("exhausted:{}:{day}", account.id),
        &facts,
        &Recipients::admins(),
        now,
    )
    .await?;
    if id.is_some() {
        let data = serde_json::json!({ "balance": balance.get() });
        webhooks::record_event(
            tx,
            account.id,
            WebhookEvent::TokensExhausted,
            async { Ok(data) },
            now,
        )
        .await?;
    }
    Ok(id.map(NotificationId))
}

/// Rule 14: one reminder per lot with tokens left, from 90 days before its expiry.
/// Safe to run from many workers at once. Returns the notifications it created.
pub async fn record_expiry_reminders(db: &Db, now: DateTime<Utc>) -> Result<Vec<i32>> {
    let due: Vec<lot::Model> = lot::Entity::find()
        .filter(conditions::live_lot(lot::Entity, now))
        .filter(lot::Column::ExpiresAt.lte(now + REMINDER_BEFORE_EXPIRY))
        .order_by_asc(lot::Column::Id)
        .all(db.conn())
        .await?;
    let mut created = Vec::new();
    for lot in due {
        let key = format!("expiry-reminder:lot:{}", lot.id);
        let exists = notification::Entity::find()
            .filter(notification::Column::DedupeKey.eq(&key))
            .one(db.conn())
            .await?;
        if exists.is_some() {
            continue;
        }
        let tx = db.begin_write().await?;
        let account = crate::store::find_account(&*tx, lot.account_id).await?;
        let facts = Facts {
            account_id: account.id,
            account_name: account.name.clone(),
            balance: crate::accounts::balance_at(&*tx, account.id, now)
                .await?
                .get(),
            threshold: None,
            lots: vec![LotFact {
                lot_id: lot.id,
                remaining: lot.remaining,
                expires_at: lot.expires_at,
            }],
            at: now,
            ..Facts::default()
        };
        if let Some(id) = insert_once(
            &*tx,
            NotificationKind::ExpiryReminder,
            key,
            &facts,
            &Recipients::admins(),
            now,
        )
        .await?
        {
            created.push(id);
            let data = serde_json::json!({
                "lotId": lot.id.to_string(),
                "remaining": lot.remaining,
                "expiresAt": lot.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            });
            webhooks::record_event(
                &tx,
                account.id,
                WebhookEvent::LotExpiring,
                async { Ok(data) },
                now,
            )
            .await?;
        }
        tx.commit().await?;
    }
    Ok(created)
}

/// Notifications waiting for an attempt now: pending, due, and not held by a sender.
pub async fn due_notifications(db: &Db, now: DateTime<Utc>, limit: u64) -> Result<Vec<i32>> {
    Ok(notification::Entity::find()
        .select_only()
        .column(notification::Column::Id)
        .filter(notification::Column::State.eq(NotificationState::Pending.as_str()))
        .filter(notification::Column::NextAttemptAt.lte(now))
        .filter(
            Condition::any()
                .add(notification::Column::LeaseUntil.is_null())
                .add(notification::Column::LeaseUntil.lte(now)),
        )
        .order_by_asc(notification::Column::Id)
        .limit(limit)
        .into_tuple()
        .all(db.conn())
        .await?)
}

/// How many notifications a sender holds right now (an attempt under way).
pub async fn in_flight(db: &Db, now: DateTime<Utc>) -> Result<u64> {
    use sea_orm::PaginatorTrait;
    Ok(notification::Entity::find()
        .filter(notification::Column::State.eq(NotificationState::Pending.as_str()))
        .filter(notification::Column::LeaseUntil.gt(now))
        .count(db.conn())
        .await?)
}

/// A notification leased to one sender for one attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i32,
    pub kind: NotificationKind,
    pub recipients: Vec<String>,
    pub facts: Facts,
    pub attempt: i32,
}

/// Takes the notification for one attempt, or `None` when it is sent, dead, not due,
/// or another sender holds it. The conditional update decides between racing senders.
pub async fn lease_for_delivery(db: &Db, id: i32, now: DateTime<Utc>) -> Result<Option<Delivery>> {
    // A sender that died during the last allowed attempt left it pending: give up.
    notification::Entity::update_many()
        .col_expr(
            notification::Column::State,
            Expr::value(NotificationState::Dead.as_str()),
        )
        .col_expr(
            notification::Column::LeaseUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(notification::Column::Id.eq(id))
        .filter(notification::Column::State.eq(NotificationState::Pending.as_str()))
        .filter(notification::Column::Attempts.gte(MAX_ATTEMPTS))
        .filter(
            Condition::any()
                .add(notification::Column::LeaseUntil.is_null())
                .add(notification::Column::LeaseUntil.lte(now)),
        )
        .exec(db.conn())
        .await?;
    let claimed = notification::Entity::update_many()
        .col_expr(notification::Column::LeaseUntil, Expr::value(now + LEASE))
        .col_expr(
            notification::Column::Attempts,
            Expr::col(notification::Column::Attempts).add(1),
        )
        .filter(notification::Column::Id.eq(id))
        .filter(notification::Column::State.eq(NotificationState::Pending.as_str()))
        .filter(notification::Column::NextAttemptAt.lte(now))
        .filter(notification::Column::Attempts.lt(MAX_ATTEMPTS))
        .filter(
            Condition::any()
                .add(notification::Column::LeaseUntil.is_null())
                .add(notification::Column::LeaseUntil.lte(now)),
        )
        .exec(db.conn())
        .await?;
    if claimed.rows_affected != 1 {
        return Ok(None);
    }
    let n = notification::Entity::find_by_id(id)
        .one(db.conn())
        .await?
        .ok_or_else(|| DomainError::not_found(format!("notification {id}")))?;
    fn parse<T: serde::de::DeserializeOwned>(id: i32, s: &str) -> Result<T> {
        serde_json::from_str(s)
            .map_err(|e| DomainError::Internal(format!("notification {id}: {e}")))
    }
    Ok(Some(Delivery {
        id,
        kind: n.kind.parse()?,
        recipients: parse(id, &n.recipients)?,
        facts: parse(id, &n.payload)?,
        attempt: n.attempts,
    }))
}

/// Ends an attempt: the lease is released and the notification moves to `state`
/// with `last_error` (None on success). Only a pending notification changes.
fn end_attempt(
    id: i32,
    state: NotificationState,
    last_error: Option<String>,
) -> sea_orm::UpdateMany<notification::Entity> {
    notification::Entity::update_many()
        .col_expr(notification::Column::State, Expr::value(state.as_str()))
        .col_expr(
            notification::Column::LeaseUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(notification::Column::LastError, Expr::value(last_error))
        .filter(notification::Column::Id.eq(id))
        .filter(notification::Column::State.eq(NotificationState::Pending.as_str()))
}

pub async fn mark_sent(db: &Db, id: i32, now: DateTime<Utc>) -> Result<()> {
    end_attempt(id, NotificationState::Sent, None)
        .col_expr(notification::Column::SentAt, Expr::value(Some(now)))
        .exec(db.conn())
        .await?;
    Ok(())
}

/// Records a failed attempt: retried after a growing delay, or DEAD after
/// [`MAX_ATTEMPTS`]. Returns the new state.
pub async fn mark_failed(
    db: &Db,
    delivery: &Delivery,
    error: &str,
    now: DateTime<Utc>,
) -> Result<NotificationState> {
    let state = if delivery.attempt >= MAX_ATTEMPTS {
        NotificationState::Dead
    } else {
        NotificationState::Pending
    };
    let error: String = error.chars().take(1000).collect();
    end_attempt(delivery.id, state, Some(error))
        .col_expr(
            notification::Column::NextAttemptAt,
            Expr::value(now + backoff_after(delivery.attempt)),
        )
        .exec(db.conn())
        .await?;
    Ok(state)
}

/// A notification with nobody to send to is given up at once.
pub async fn mark_dead(db: &Db, id: i32, reason: &str) -> Result<()> {
    end_attempt(id, NotificationState::Dead, Some(reason.to_owned()))
        .exec(db.conn())
        .await?;
    Ok(())
}

/// The account's notifications, newest first (admins, analysts, operators).
pub async fn list_notifications(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    page: PageRequest,
) -> Result<Page<notification::Model>> {
    actor.can_read_books(account_id)?;
    let limit = page.limit()?;
    let mut q = notification::Entity::find()
        .filter(notification::Column::AccountId.eq(account_id))
        .order_by_desc(notification::Column::Id);
    if let Some(after) = page.after_id()? {
        q = q.filter(notification::Column::Id.lt(after));
    }
    let rows = q.limit(limit + 1).all(db.conn()).await?;
    Ok(Page::from_rows(rows, limit, |n| n.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossing_is_from_at_or_above_to_below() {
        let crossed_threshold = |before, after, threshold| {
            crossed_threshold(Tokens(before), Tokens(after), Tokens(threshold))
        };
        assert!(crossed_threshold(20, 19, 20));
        assert!(crossed_threshold(30, 5, 20));
        assert!(
            !crossed_threshold(19, 10, 20),
            "already below: no new crossing"
        );
        assert!(
            !crossed_threshold(30, 20, 20),
            "landing on the threshold is not below it"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_after(1), Duration::seconds(5));
        assert_eq!(backoff_after(2), Duration::seconds(10));
        assert_eq!(backoff_after(3), Duration::seconds(20));
        assert_eq!(backoff_after(30), MAX_BACKOFF);
    }
}
