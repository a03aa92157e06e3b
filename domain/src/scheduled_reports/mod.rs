//! Scheduled reports (rule 27): admins and analysts subscribe addresses of their
//! account to a WEEKLY or MONTHLY usage e-mail. A worker's due pass records one
//! notification per subscription and period in the outbox (rule 15), so the e-mail
//! goes out once, never twice, whatever crashes or how many workers run; the
//! report itself is read when the e-mail is written.
//!
//! A report shows the account's usage and spending, which only its admins and
//! analysts may read (rule 19): recipients are addresses of the account's active
//! admins and analysts, checked when subscribed and again when each e-mail is
//! recorded. Analysts subscribe themselves; admins any of those addresses.

mod content;
mod due;
pub mod period;

pub use content::{ReportContent, ReportTotals, TOP, TopProduct, TopUser, report_content};
pub use due::record_due_reports;
pub use period::{Period, ReportSchedule, last_run_at_or_before, next_run_after, period_ending_at};

use crate::access::Actor;
use crate::error::{DomainError, Result};
use crate::store::Db;
use crate::users::email_address;
use crate::vocabulary::Role;
use chrono::{DateTime, Utc};
use daypass_entity::{report_subscription, user};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set,
};

/// At most this many subscriptions per account, and addresses per subscription.
pub const MAX_SUBSCRIPTIONS: u64 = 20;
pub const MAX_RECIPIENTS: usize = 10;

/// A subscription as the rules use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSubscription {
    pub id: i32,
    pub account_id: i32,
    pub schedule: ReportSchedule,
    pub recipients: Vec<String>,
    /// The user who subscribed.
    pub created_by: i32,
    pub created_at: DateTime<Utc>,
    /// When the next period's e-mail is due.
    pub next_run_at: DateTime<Utc>,
}

impl ReportSubscription {
    fn from_model(m: report_subscription::Model) -> Result<ReportSubscription> {
        Ok(ReportSubscription {
            id: m.id,
            account_id: m.account_id,
            schedule: m.schedule.parse()?,
            recipients: serde_json::from_str(&m.recipients)
                .map_err(|e| DomainError::Internal(format!("report subscription {}: {e}", m.id)))?,
            created_by: m.created_by,
            created_at: m.created_at,
            next_run_at: m.next_run_at,
        })
    }
}

/// The addresses asked for, each a plausible address in lower case, duplicates
/// (in any case) dropped, 1 to [`MAX_RECIPIENTS`]; `None` when none were named.
fn parse_recipients(asked: Option<&[String]>) -> Result<Option<Vec<String>>> {
    let Some(asked) = asked else { return Ok(None) };
    if asked.is_empty() {
        return Err(DomainError::bad_input(
            "recipients must name at least one address; leave it out to send to yourself",
        ));
    }
    let mut addresses: Vec<String> = Vec::new();
    for text in asked {
        let address = email_address(text)?;
        if !addresses.contains(&address) {
            // Stop at the first address too many: a long list costs no more.
            if addresses.len() == MAX_RECIPIENTS {
                return Err(DomainError::bad_input(format!(
                    "a report goes to at most {MAX_RECIPIENTS} addresses"
                )));
            }
            addresses.push(address);
        }
    }
    Ok(Some(addresses))
}

/// Whether `u` may receive the account's report: an active admin or analyst.
fn reads_books(u: &user::Model) -> bool {
    u.active && (u.role == Role::Admin.as_str() || u.role == Role::Analyst.as_str())
}

/// The recipients of a new subscription made by `caller`: those asked for, or the
/// caller's own address; `found` holds the account's users with those addresses.
fn decide_recipients(
    caller: &user::Model,
    asked: Option<Vec<String>>,
    found: &[user::Model],
) -> Result<Vec<String>> {
    let Some(addresses) = asked else {
        return Ok(vec![caller.email.clone()]);
    };
    if caller.role == Role::Analyst.as_str() && addresses.iter().any(|a| *a != caller.email) {
        return Err(DomainError::forbidden(
            "analysts subscribe their own address only; an admin may subscribe others",
        ));
    }
    for address in &addresses {
        let Some(user) = found.iter().find(|u| u.email == *address) else {
            return Err(DomainError::bad_input(format!(
                "{address} is not the address of a user of this account"
            )));
        };
        if !reads_books(user) {
            let why = if user.active {
                "is a member, and members see only their own usage"
            } else {
                "belongs to a deactivated user"
            };
            return Err(DomainError::bad_input(format!(
                "{address} {why}: a report goes to the account's admins and analysts"
            )));
        }
    }
    Ok(addresses)
}

/// The account's users with any of `addresses` (stored in lower case).
async fn users_with_addresses(
    conn: &impl ConnectionTrait,
    account_id: i32,
    addresses: &[String],
) -> Result<Vec<user::Model>> {
    if addresses.is_empty() {
        return Ok(Vec::new());
    }
    Ok(user::Entity::find()
        .filter(user::Column::AccountId.eq(account_id))
        .filter(user::Column::Email.is_in(addresses.iter().cloned()))
        .all(conn)
        .await?)
}

/// Rule 27: a new subscription of the caller's account (its admins and analysts).
/// Its first e-mail comes at the first run after `now`.
pub async fn subscribe(
    db: &Db,
    actor: &Actor,
    schedule: ReportSchedule,
    recipients: Option<Vec<String>>,
    now: DateTime<Utc>,
) -> Result<ReportSubscription> {
    let Some(me) = actor.user() else {
        return Err(DomainError::forbidden(
            "a report subscription belongs to an account and goes to its users; \
             an account's admin or analyst subscribes",
        ));
    };
    let account_id = me.account_id;
    actor.can_read_books(account_id)?;
    let asked = parse_recipients(recipients.as_deref())?;
    let tx = db.begin_write().await?;
    // Under the account's lock, so two callers cannot both add the last one allowed.
    db.lock_account(&tx, account_id).await?;
    let caller = user::Entity::find_by_id(me.user_id)
        .one(&*tx)
        .await?
        .ok_or_else(|| DomainError::not_found(format!("user {}", me.user_id)))?;
    let found =
        users_with_addresses(&*tx, account_id, asked.as_deref().unwrap_or_default()).await?;
    let recipients = decide_recipients(&caller, asked, &found)?;
    let existing = report_subscription::Entity::find()
        .filter(report_subscription::Column::AccountId.eq(account_id))
        .count(&*tx)
        .await?;
    if existing >= MAX_SUBSCRIPTIONS {
        return Err(DomainError::conflict(format!(
            "an account has at most {MAX_SUBSCRIPTIONS} report subscriptions; remove one first"
        )));
    }
    let created = report_subscription::ActiveModel {
        account_id: Set(account_id),
        schedule: Set(schedule.as_str().to_owned()),
        recipients: Set(
            serde_json::to_string(&recipients).map_err(|e| DomainError::Internal(e.to_string()))?
        ),
        created_by: Set(caller.id),
        created_at: Set(now),
        next_run_at: Set(next_run_after(schedule, now)),
        ..Default::default()
    }
    .insert(&*tx)
    .await?;
    tx.commit().await?;
    ReportSubscription::from_model(created)
}

/// Another tenant's subscriptions do not exist for a user.
fn hide_other_tenants(actor: &Actor, account_id: i32, what: impl Fn() -> String) -> Result<()> {
    match actor.user() {
        Some(u) if u.account_id != account_id => Err(DomainError::not_found(what())),
        _ => Ok(()),
    }
}

/// Ends a subscription: admins of its account (operators any), and the analyst who
/// made it. Nothing more is recorded for it; an e-mail already recorded still goes.
pub async fn unsubscribe(db: &Db, actor: &Actor, id: i32) -> Result<bool> {
    let what = || format!("report subscription {id}");
    let sub = report_subscription::Entity::find_by_id(id)
        .one(db.conn())
        .await?
        .ok_or_else(|| DomainError::not_found(what()))?;
    hide_other_tenants(actor, sub.account_id, what)?;
    if actor.can_manage(sub.account_id).is_err() {
        actor.can_read_books(sub.account_id)?;
        if actor.user().map(|u| u.user_id) != Some(sub.created_by) {
            return Err(DomainError::forbidden(
                "analysts remove only the subscriptions they made; an admin may remove any",
            ));
        }
    }
    let tx = db.begin_write().await?;
    let deleted = report_subscription::Entity::delete_by_id(id)
        .exec(&*tx)
        .await?;
    tx.commit().await?;
    Ok(deleted.rows_affected == 1)
}

/// The account's subscriptions, oldest first (admins, analysts, operators).
pub async fn list(db: &Db, actor: &Actor, account_id: i32) -> Result<Vec<ReportSubscription>> {
    hide_other_tenants(actor, account_id, || format!("account {account_id}"))?;
    actor.can_read_books(account_id)?;
    report_subscription::Entity::find()
        .filter(report_subscription::Column::AccountId.eq(account_id))
        .order_by_asc(report_subscription::Column::Id)
        .all(db.conn())
        .await?
        .into_iter()
        .map(ReportSubscription::from_model)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i32, email: &str, role: Role, active: bool) -> user::Model {
        user::Model {
            id,
            account_id: 1,
            email: email.into(),
            name: email.into(),
            role: role.as_str().into(),
            flex_assigned: false,
            active,
            restricts_products: false,
            api_key_hash: format!("hash-{id}"),
            created_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn code(e: DomainError) -> &'static str {
        match e {
            DomainError::BadInput(_) => "BAD_USER_INPUT",
            DomainError::Forbidden(_) => "FORBIDDEN",
            _ => "OTHER",
        }
    }

    #[test]
    fn recipients_are_trimmed_lower_cased_deduplicated_and_bounded() {
        assert_eq!(parse_recipients(None).unwrap(), None);
        let asked = strings(&[" Ann@Acme.test", "ann@acme.TEST", "bob@acme.test"]);
        assert_eq!(
            parse_recipients(Some(&asked)).unwrap(),
            Some(strings(&["ann@acme.test", "bob@acme.test"]))
        );
        assert_eq!(
            code(parse_recipients(Some(&[])).unwrap_err()),
            "BAD_USER_INPUT"
        );
        let ten: Vec<String> = (0..10).map(|i| format!("u{i}@acme.test")).collect();
        assert_eq!(parse_recipients(Some(&ten)).unwrap().unwrap().len(), 10);
        // Duplicates do not count toward the ten.
        let mut with_copies = ten.clone();
        with_copies.extend(ten.iter().map(|a| a.to_uppercase()));
        assert_eq!(
            parse_recipients(Some(&with_copies)).unwrap().unwrap().len(),
            10
        );
        let eleven: Vec<String> = (0..11).map(|i| format!("u{i}@acme.test")).collect();
        assert_eq!(
            code(parse_recipients(Some(&eleven)).unwrap_err()),
            "BAD_USER_INPUT"
        );
        for bad in [
            "",
            "no-at-sign",
            "a@b",
            "a@b.test\r\nBcc: x@evil.test",
            &"x".repeat(300),
        ] {
            let e = parse_recipients(Some(&strings(&[bad]))).unwrap_err();
            assert_eq!(code(e), "BAD_USER_INPUT", "{bad:?}");
        }
    }

    #[test]
    fn recipients_are_the_accounts_admins_and_analysts() {
        let admin = user(1, "ann@acme.test", Role::Admin, true);
        let analyst = user(2, "ali@acme.test", Role::Analyst, true);
        let member = user(3, "mo@acme.test", Role::Member, true);
        let gone = user(4, "gus@acme.test", Role::Analyst, false);
        let all = [admin.clone(), analyst.clone(), member, gone];
        assert_eq!(
            decide_recipients(&analyst, None, &all).unwrap(),
            strings(&["ali@acme.test"]),
            "the caller's own address by default"
        );
        assert_eq!(
            decide_recipients(
                &admin,
                Some(strings(&["ali@acme.test", "ann@acme.test"])),
                &all
            )
            .unwrap(),
            strings(&["ali@acme.test", "ann@acme.test"])
        );
        for (asked, expected) in [
            ("nobody@acme.test", "not the address of a user"),
            ("mo@acme.test", "is a member"),
            ("gus@acme.test", "deactivated"),
        ] {
            let e = decide_recipients(&admin, Some(strings(&[asked])), &all).unwrap_err();
            assert!(
                e.to_string().contains(asked) && e.to_string().contains(expected),
                "{e}"
            );
            assert_eq!(code(e), "BAD_USER_INPUT");
        }
        let e = decide_recipients(&analyst, Some(strings(&["ann@acme.test"])), &all).unwrap_err();
        assert_eq!(code(e), "FORBIDDEN");
        assert!(decide_recipients(&analyst, Some(strings(&["ali@acme.test"])), &all).is_ok());
    }
}
