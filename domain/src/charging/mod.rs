//! Opening a product (rules 7–12): subscriptions first, then pay-as-you-go with its
//! assignment, restrictions, 24-hour windows and charges.
//!
//! An open is validated here, then decided on one batched read of its situation
//! ([`situation`]); one that moves no tokens is answered at once and its record joins
//! the next batch insert. A charging open joins its account's next batch
//! ([`batches`]): under the accounts' locks the batch is read again, planned in
//! memory by pure rules ([`plan`]), and written in one transaction ([`writes`]).

mod access_check;
mod batches;
mod plan;
mod situation;
mod writes;

pub use access_check::{AccessCheck, check_access};
pub(crate) use batches::renew;
pub(crate) use situation::{balance_sql, prefixed_columns, seat_ends_at_sql};

use crate::access::Actor;
use crate::error::{DomainError, Result};
use crate::store::Db;
use crate::units::{ChargeId, NotificationId, Tokens};
use crate::vocabulary::{AccessSource, DenyReason, PlanLevel, Role};
use batches::{batches, charge_queue};
use chrono::{DateTime, Utc};
use daypass_entity::{open, session};
use plan::{ChargeRequest, Decision, decide};
use sea_orm::Set;
use situation::Asked;

#[derive(Debug, Clone, Default)]
pub struct OpenRequest {
    pub product_code: String,
    pub version: Option<String>,
    /// The launcher's machine; `None`: "default".
    pub device_id: Option<String>,
    /// Ask for an offline lease (rule 23).
    pub offline: bool,
}

/// The answer to an open: granted or denied, never an error (rule 11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOutcome {
    pub granted: bool,
    pub source: Option<AccessSource>,
    pub tokens_charged: Tokens,
    pub window_ends_at: Option<DateTime<Utc>>,
    pub deny_reason: Option<DenyReason>,
    pub balance: Tokens,
    pub plan_level: PlanLevel,
    /// The charge this open made, if it made one.
    pub charge_id: Option<ChargeId>,
    /// The session a granted open started (rule 20).
    pub session: Option<session::Model>,
    /// The signed offline lease, when asked for and granted (rule 23).
    pub offline_lease: Option<String>,
    /// When the subscription seat the open used ends (rule 23's lease).
    pub(crate) seat_ends_at: Option<DateTime<Utc>>,
    /// Notifications this open created, handed to the deliveries after commit.
    pub(crate) notifications: Vec<NotificationId>,
}

/// Opens `product_code` for the calling user at `now`.
pub async fn open_product(
    db: &Db,
    actor: &Actor,
    now: DateTime<Utc>,
    req: OpenRequest,
) -> Result<OpenOutcome> {
    let asked = validate(actor, &req.product_code, now)?;
    let version = clean_text(req.version, "version", 100)?;
    let device_id = clean_text(req.device_id, "deviceId", 100)?.unwrap_or_else(|| "default".into());
    let code = asked.code.clone();
    let (user, product, situation) = batches(db)
        .situations
        .submit(db, 0, asked)
        .await?
        .ok_or(DomainError::Unauthenticated)?;
    let decision = decide(&user, product.as_ref(), &situation, now);
    let record = OpenRecord {
        account_id: user.account_id,
        user_id: user.id,
        product_id: product.as_ref().map(|p| p.id),
        code,
        version,
        now,
        session_id: uuid::Uuid::new_v4().to_string(),
        device_id,
    };
    let outcome = match (decision, &product) {
        (Decision::Charge, Some(product)) => {
            return charge(db, &user, product.clone(), record, req.offline).await;
        }
        (Decision::Charge, None) => {
            return Err(DomainError::Internal("a charge needs a product".into()));
        }
        (Decision::Denied(reason), _) => Outcome::Denied(reason),
        (Decision::Subscription, _) => Outcome::Subscription,
        (Decision::InsideWindow(window), _) => Outcome::Reopen(window),
    };
    // No lock of its own: the record (and the session of a granted open) joins the
    // next batch insert.
    let session = record.session(outcome);
    let recorded = batches(db)
        .records
        .submit(db, 0, (record.clone(), outcome))
        .await?;
    if let (false, Some(product)) = (recorded, product) {
        // A refund closed the window since it was read: decided again under the
        // account's lock, as a charging open.
        return charge(db, &user, product, record, req.offline).await;
    }
    let mut answer = OpenOutcome::of(outcome, situation.balance, situation.plan_level);
    answer.session = session;
    answer.seat_ends_at = situation.seat_ends_at;
    if req.offline {
        answer.offline_lease = lease_for(db, &answer, &user, &req.product_code).await?;
    }
    Ok(answer)
}

/// A charging open: decided again and charged in its account's next batch.
async fn charge(
    db: &Db,
    user: &daypass_entity::user::Model,
    product: daypass_entity::product::Model,
    record: OpenRecord,
    offline: bool,
) -> Result<OpenOutcome> {
    let code = record.code.clone();
    let request = ChargeRequest {
        record,
        product,
        renewal: false,
    };
    let mut answer = batches(db)
        .charges
        .submit(db, charge_queue(db, user.account_id), request)
        .await?;
    db.deliveries().committed(&answer.notifications).await;
    if offline {
        answer.offline_lease = lease_for(db, &answer, user, &code).await?;
    }
    Ok(answer)
}

/// Who may open (or ask about) a product, and the product code they named.
fn validate(actor: &Actor, product_code: &str, now: DateTime<Utc>) -> Result<Asked> {
    let me = match actor {
        Actor::Operator => {
            return Err(DomainError::forbidden(
                "opening a product is for users; operators are not users",
            ));
        }
        Actor::User(u) => u.clone(),
    };
    if me.role == Role::Analyst {
        return Err(DomainError::forbidden(
            "analysts read usage and change nothing",
        ));
    }
    let code = product_code.trim().to_owned();
    if code.is_empty() || code.len() > 64 {
        return Err(DomainError::bad_input(
            "productCode must be 1–64 characters",
        ));
    }
    Ok(Asked {
        user_id: me.user_id,
        code,
        now,
    })
}

/// A launcher's optional text, trimmed; empty is none.
fn clean_text(text: Option<String>, field: &str, max: usize) -> Result<Option<String>> {
    let text = text.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if text.as_ref().is_some_and(|v| v.chars().count() > max) {
        return Err(DomainError::bad_input(format!(
            "{field} must be at most {max} characters"
        )));
    }
    Ok(text)
}

/// Rule 23: the offline lease of a granted open, signed after its commit.
async fn lease_for(
    db: &Db,
    answer: &OpenOutcome,
    user: &daypass_entity::user::Model,
    product_code: &str,
) -> Result<Option<String>> {
    let (Some(session), Some(source)) = (&answer.session, answer.source) else {
        return Ok(None);
    };
    let issued_at = session.last_heartbeat_at.unwrap_or(session.started_at);
    crate::sessions::lease_for(
        db,
        session,
        user.account_id,
        product_code.trim(),
        source,
        issued_at,
        answer.window_ends_at,
        answer.seat_ends_at,
    )
    .await
}

impl OpenOutcome {
    fn of(outcome: Outcome, balance: Tokens, plan_level: PlanLevel) -> OpenOutcome {
        let (granted, source, deny_reason) = outcome.access();
        let (tokens_charged, window_ends_at, charge_id) = match outcome {
            Outcome::Charged {
                charge_id,
                tokens,
                window_ends_at,
            } => (tokens, Some(window_ends_at), Some(charge_id)),
            Outcome::Reopen(window) => (Tokens::ZERO, Some(window.ends_at), None),
            Outcome::Denied(_) | Outcome::Subscription => (Tokens::ZERO, None, None),
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
            session: None,
            offline_lease: None,
            seat_ends_at: None,
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
    /// Inside this window: granted, free.
    Reopen(crate::rules::Window),
    Charged {
        charge_id: ChargeId,
        tokens: Tokens,
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
#[derive(Clone)]
struct OpenRecord {
    account_id: i32,
    user_id: i32,
    /// `None`: the code named no catalog product.
    product_id: Option<i32>,
    code: String,
    version: Option<String>,
    now: DateTime<Utc>,
    /// The session a granted open starts (made here, so a batch knows its ids).
    session_id: String,
    device_id: String,
}

impl OpenRecord {
    /// The session a granted open starts (rule 20), as stored.
    fn session(&self, outcome: Outcome) -> Option<session::Model> {
        let (granted, source, _) = outcome.access();
        let (Some(source), Some(product_id), true) = (source, self.product_id, granted) else {
            return None;
        };
        Some(session::Model {
            id: self.session_id.clone(),
            account_id: self.account_id,
            user_id: self.user_id,
            product_id,
            device_id: self.device_id.clone(),
            version: self.version.clone(),
            source: source.as_str().to_owned(),
            state: crate::vocabulary::SessionState::Open.as_str().to_owned(),
            active: true,
            started_at: match outcome {
                Outcome::Reopen(window) => window.grants_at(self.now),
                _ => self.now,
            },
            last_heartbeat_at: None,
            ended_at: None,
            deny_reason: None,
            open_charge_id: match outcome {
                Outcome::Charged { charge_id, .. } => Some(charge_id.get()),
                _ => None,
            },
        })
    }

    fn model(&self, outcome: Outcome) -> open::ActiveModel {
        let (granted, source, deny_reason) = outcome.access();
        let (charge_id, tokens) = match outcome {
            Outcome::Charged {
                charge_id, tokens, ..
            } => (Some(charge_id.get()), tokens.get()),
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
}
