//! Alert rules (rule 25): thresholds beside rule 14's, each with its recipients,
//! decided in the charge's own transaction with rule 14's threshold.

use crate::access::Actor;
use crate::error::{DomainError, Result};
use crate::rules;
use crate::store::Db;
use crate::units::Tokens;
use chrono::{DateTime, Utc};
use daypass_entity::alert_rule;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};

crate::vocabulary::vocabulary!(AlertUnit { Tokens => "TOKENS", Percent => "PERCENT" });

/// Rule 25: at most this many rules per account, and extra addresses per rule.
pub const MAX_RULES: usize = 10;
pub const MAX_EXTRA_RECIPIENTS: usize = 10;

/// A rule as the rules use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRule {
    pub id: i32,
    pub account_id: i32,
    /// Tokens, or percent of the tokens bought in unexpired lots.
    pub setting: i64,
    pub unit: AlertUnit,
    pub include_admins: bool,
    pub extra_recipients: Vec<String>,
}

impl AlertRule {
    fn from_model(m: alert_rule::Model) -> Result<AlertRule> {
        Ok(AlertRule {
            id: m.id,
            account_id: m.account_id,
            setting: m.threshold,
            unit: m.unit.parse()?,
            include_admins: m.include_admins,
            extra_recipients: serde_json::from_str(&m.extra_recipients)
                .map_err(|e| DomainError::Internal(format!("alert rule {}: {e}", m.id)))?,
        })
    }

    /// The rule's threshold in tokens, given the tokens bought in unexpired lots
    /// (their quantities, as rule 14's default): a percentage is rounded down.
    pub fn threshold(&self, bought: Tokens) -> Tokens {
        match self.unit {
            AlertUnit::Tokens => Tokens(self.setting),
            AlertUnit::Percent => Tokens(bought.get().saturating_mul(self.setting) / 100),
        }
    }
}

/// A threshold a charge took the balance below: rule 14's own (`rule: None`) or an
/// alert rule's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing<'a> {
    pub rule: Option<&'a AlertRule>,
    pub threshold: Tokens,
}

/// Rules 14 and 25: every threshold a charge from `before` to `after` crossed from
/// at or above to below, rule 14's first, then the account's rules in id order. A
/// threshold is re-armed once the balance is back at or above it, so nothing but
/// the balance is kept.
pub fn crossings<'a>(
    before: Tokens,
    after: Tokens,
    low_balance_threshold: Tokens,
    rules: &'a [AlertRule],
    bought: Tokens,
) -> Vec<Crossing<'a>> {
    let crossed = |t: Tokens| crate::notifications::crossed_threshold(before, after, t);
    let mut found = Vec::new();
    if crossed(low_balance_threshold) {
        found.push(Crossing {
            rule: None,
            threshold: low_balance_threshold,
        });
    }
    for rule in rules {
        let threshold = rule.threshold(bought);
        if crossed(threshold) {
            found.push(Crossing {
                rule: Some(rule),
                threshold,
            });
        }
    }
    found
}

/// The rules of `account_ids`, in id order: one read for a whole charging batch.
pub(crate) async fn rules_of(
    conn: &impl ConnectionTrait,
    account_ids: &[i32],
) -> Result<Vec<AlertRule>> {
    if account_ids.is_empty() {
        return Ok(Vec::new());
    }
    alert_rule::Entity::find()
        .filter(alert_rule::Column::AccountId.is_in(account_ids.iter().copied()))
        .order_by_asc(alert_rule::Column::Id)
        .all(conn)
        .await?
        .into_iter()
        .map(AlertRule::from_model)
        .collect()
}

/// Keeps the account's count of rules (read by charging batches) equal to its
/// rules, under the account's lock.
async fn count_rules(tx: &crate::store::WriteTx, account_id: i32) -> Result<()> {
    let count = rules_of(&**tx, &[account_id]).await?.len();
    daypass_entity::account::Entity::update_many()
        .col_expr(
            daypass_entity::account::Column::AlertRules,
            sea_orm::sea_query::Expr::value(count as i32),
        )
        .filter(daypass_entity::account::Column::Id.eq(account_id))
        .exec(&**tx)
        .await?;
    Ok(())
}

/// What an admin asks for.
#[derive(Debug, Clone)]
pub struct NewAlertRule {
    pub threshold: i64,
    pub unit: AlertUnit,
    pub include_admins: bool,
    pub extra_recipients: Vec<String>,
}

fn validate(input: NewAlertRule) -> Result<NewAlertRule> {
    match input.unit {
        // 0 could never be crossed: no balance is below it.
        AlertUnit::Tokens
            if !(1..=rules::MAX_PURCHASE_QUANTITY * 1000).contains(&input.threshold) =>
        {
            return Err(DomainError::bad_input(
                "a threshold in tokens must be between 1 and 50,000,000",
            ));
        }
        AlertUnit::Percent if !(1..=100).contains(&input.threshold) => {
            return Err(DomainError::bad_input(
                "a threshold in percent must be between 1 and 100",
            ));
        }
        _ => {}
    }
    if input.extra_recipients.len() > MAX_EXTRA_RECIPIENTS {
        return Err(DomainError::bad_input(format!(
            "at most {MAX_EXTRA_RECIPIENTS} extra recipients per rule"
        )));
    }
    let mut extra: Vec<String> = Vec::with_capacity(input.extra_recipients.len());
    for address in &input.extra_recipients {
        let address = crate::users::email_address(address)?;
        if !extra.contains(&address) {
            extra.push(address);
        }
    }
    if !input.include_admins && extra.is_empty() {
        return Err(DomainError::bad_input(
            "a rule needs recipients: keep the admins or give extra addresses",
        ));
    }
    Ok(NewAlertRule {
        extra_recipients: extra,
        ..input
    })
}

/// Rule 25: a new rule for the account (admins; operators name the account).
/// Setting it sends nothing by itself.
pub async fn create_alert_rule(
    db: &Db,
    actor: &Actor,
    account_id: Option<i32>,
    input: NewAlertRule,
    now: DateTime<Utc>,
) -> Result<AlertRuleView> {
    let account_id = actor.target_account(account_id)?;
    actor.can_manage(account_id)?;
    let input = validate(input)?;
    let tx = db.begin_write().await?;
    crate::store::find_account(&*tx, account_id).await?;
    // Under the account's lock, so two admins cannot both add the tenth rule.
    db.lock_account(&tx, account_id).await?;
    let existing = rules_of(&*tx, &[account_id]).await?;
    if existing.len() >= MAX_RULES {
        return Err(DomainError::conflict(format!(
            "an account has at most {MAX_RULES} alert rules; delete one first"
        )));
    }
    let created = alert_rule::ActiveModel {
        account_id: Set(account_id),
        threshold: Set(input.threshold),
        unit: Set(input.unit.as_str().to_owned()),
        include_admins: Set(input.include_admins),
        extra_recipients: Set(serde_json::to_string(&input.extra_recipients)
            .map_err(|e| DomainError::Internal(e.to_string()))?),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(&*tx)
    .await?;
    count_rules(&tx, account_id).await?;
    tx.commit().await?;
    let rule = AlertRule::from_model(created)?;
    armed(db, account_id, vec![rule], now)
        .await?
        .pop()
        .ok_or_else(|| DomainError::Internal("a rule without its view".into()))
}

/// Deletes a rule of the caller's account (admins; operators any).
pub async fn delete_alert_rule(db: &Db, actor: &Actor, id: i32) -> Result<bool> {
    let not_found = || DomainError::not_found(format!("alert rule {id}"));
    let rule = alert_rule::Entity::find_by_id(id)
        .one(db.conn())
        .await?
        .ok_or_else(not_found)?;
    actor
        .can_see_account(rule.account_id)
        .map_err(|_| not_found())?;
    actor.can_manage(rule.account_id)?;
    let tx = db.begin_write().await?;
    db.lock_account(&tx, rule.account_id).await?;
    let deleted = alert_rule::Entity::delete_by_id(id).exec(&*tx).await?;
    count_rules(&tx, rule.account_id).await?;
    tx.commit().await?;
    Ok(deleted.rows_affected == 1)
}

/// A rule with whether it is armed now: the balance is at or above its threshold,
/// so the next charge that takes it below sends.
#[derive(Debug, Clone)]
pub struct AlertRuleView {
    pub rule: AlertRule,
    pub armed: bool,
}

/// The account's rules (admins, analysts, operators).
pub async fn list_alert_rules(
    db: &Db,
    actor: &Actor,
    account_id: i32,
    now: DateTime<Utc>,
) -> Result<Vec<AlertRuleView>> {
    actor.can_read_books(account_id)?;
    let rules = rules_of(db.conn(), &[account_id]).await?;
    armed(db, account_id, rules, now).await
}

/// The rules with whether each is armed at `now`.
async fn armed(
    db: &Db,
    account_id: i32,
    rules: Vec<AlertRule>,
    now: DateTime<Utc>,
) -> Result<Vec<AlertRuleView>> {
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let balance = crate::accounts::balance_at(db.conn(), account_id, now).await?;
    let bought = crate::accounts::bought_in_unexpired_lots(db.conn(), account_id, now).await?;
    Ok(rules
        .into_iter()
        .map(|rule| AlertRuleView {
            armed: balance >= rule.threshold(bought),
            rule,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: i32, setting: i64, unit: AlertUnit) -> AlertRule {
        AlertRule {
            id,
            account_id: 1,
            setting,
            unit,
            include_admins: true,
            extra_recipients: vec![],
        }
    }

    #[test]
    fn a_percentage_is_of_the_tokens_bought_rounded_down() {
        assert_eq!(rule(1, 15, AlertUnit::Percent).threshold(Tokens(333)), 49);
        assert_eq!(rule(1, 100, AlertUnit::Percent).threshold(Tokens(7)), 7);
        assert_eq!(rule(1, 40, AlertUnit::Tokens).threshold(Tokens(7)), 40);
    }

    #[test]
    fn a_charge_crossing_several_thresholds_crosses_each_once() {
        let rules = [
            rule(1, 50, AlertUnit::Tokens),
            rule(2, 10, AlertUnit::Percent),
            rule(3, 5, AlertUnit::Tokens),
        ];
        // 1,000 bought: rule 14's 200, then 50, 100 and 5.
        let found = crossings(Tokens(210), Tokens(60), Tokens(200), &rules, Tokens(1000));
        let ids: Vec<Option<i32>> = found.iter().map(|c| c.rule.map(|r| r.id)).collect();
        assert_eq!(ids, vec![None, Some(2)]);
        let found = crossings(Tokens(60), Tokens(0), Tokens(200), &rules, Tokens(1000));
        let ids: Vec<Option<i32>> = found.iter().map(|c| c.rule.map(|r| r.id)).collect();
        assert_eq!(ids, vec![Some(1), Some(3)], "already below 200 and 100");
        assert!(
            crossings(Tokens(50), Tokens(50), Tokens(200), &rules, Tokens(1000)).is_empty(),
            "landing on a threshold is not below it"
        );
    }
}
