//! The due pass: one SCHEDULED_REPORT notification per subscription and period.

use super::period::{last_run_at_or_before, next_run_after, period_ending_at};
use super::{ReportSubscription, reads_books, users_with_addresses};
use crate::error::Result;
use crate::notifications::{Facts, NotificationKind, Recipients, ReportFact, insert_once};
use crate::store::{Db, WriteTx, find_account};
use chrono::{DateTime, Utc};
use daypass_entity::report_subscription;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, sea_query::Expr};

/// Rule 27: for every subscription whose run has come (`next_run_at <= now`),
/// records the e-mail of the period that ended at the latest run at or before
/// `now`, and moves `next_run_at` to the first run after `now`, both in one write
/// transaction. Returns the notifications it created.
///
/// The move is conditional on `next_run_at` still being what this pass read, so of
/// several workers running the pass at once exactly one records a period; the
/// dedupe key (`report:{subscription}:{first day}`) refuses a second record of a
/// period in any case. A crash before the commit leaves the subscription due, and
/// the next pass records the same period. One subscription that fails does not
/// hold up the others; the first failure is returned after all were tried.
///
/// Periods missed entirely (no worker ran across several runs) are not backfilled:
/// only the latest ended period is sent, as its recipients would otherwise get a
/// burst of stale reports at once; the export covers any range on demand.
pub async fn record_due_reports(db: &Db, now: DateTime<Utc>) -> Result<Vec<i32>> {
    let due = report_subscription::Entity::find()
        .filter(report_subscription::Column::NextRunAt.lte(now))
        .order_by_asc(report_subscription::Column::Id)
        .all(db.conn())
        .await?;
    let mut created = Vec::new();
    let mut first_failure = None;
    for model in due {
        let id = model.id;
        let recorded = async {
            let sub = ReportSubscription::from_model(model)?;
            let tx = db.begin_write().await?;
            let created = record_period(&tx, &sub, now).await?;
            tx.commit().await?;
            Ok::<_, crate::error::DomainError>(created)
        };
        match recorded.await {
            Ok(Some(notification)) => created.push(notification),
            Ok(None) => {}
            Err(error) => {
                tracing::error!(subscription = id, %error, "scheduled report not recorded");
                first_failure.get_or_insert(error);
            }
        }
    }
    match first_failure {
        Some(error) => Err(error),
        None => Ok(created),
    }
}

/// Claims `sub`'s period in `tx` and records its e-mail; `None` when another pass
/// claimed it first, or nobody may receive it any more.
async fn record_period(
    tx: &WriteTx,
    sub: &ReportSubscription,
    now: DateTime<Utc>,
) -> Result<Option<i32>> {
    let claimed = report_subscription::Entity::update_many()
        .col_expr(
            report_subscription::Column::NextRunAt,
            Expr::value(next_run_after(sub.schedule, now)),
        )
        .filter(report_subscription::Column::Id.eq(sub.id))
        .filter(report_subscription::Column::NextRunAt.eq(sub.next_run_at))
        .exec(&**tx)
        .await?;
    if claimed.rows_affected != 1 {
        return Ok(None);
    }
    let recipients = current_recipients(tx, sub).await?;
    if recipients.is_empty() {
        tracing::info!(
            subscription = sub.id,
            "scheduled report skipped: none of its recipients may read the account's reports now"
        );
        return Ok(None);
    }
    let period = period_ending_at(sub.schedule, last_run_at_or_before(sub.schedule, now));
    let account = find_account(&**tx, sub.account_id).await?;
    let facts = Facts {
        account_id: account.id,
        account_name: account.name,
        at: now,
        report: Some(ReportFact {
            subscription_id: sub.id,
            schedule: sub.schedule.as_str().to_owned(),
            from: period.from,
            to: period.to,
        }),
        ..Facts::default()
    };
    insert_once(
        &**tx,
        NotificationKind::ScheduledReport,
        dedupe_key(sub.id, period.from),
        &facts,
        &Recipients {
            admins: false,
            extra: recipients,
        },
        now,
    )
    .await
}

/// One notification per subscription and period.
fn dedupe_key(subscription_id: i32, period_start: chrono::NaiveDate) -> String {
    format!("report:{subscription_id}:{period_start}")
}

/// The subscription's addresses whose users may still read the account's reports
/// (rule 19): someone deactivated, or no longer an admin or analyst, gets nothing.
async fn current_recipients(tx: &WriteTx, sub: &ReportSubscription) -> Result<Vec<String>> {
    let users = users_with_addresses(&**tx, sub.account_id, &sub.recipients).await?;
    Ok(sub
        .recipients
        .iter()
        .filter(|a| users.iter().any(|u| u.email == **a && reads_books(u)))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_names_the_subscription_and_the_first_day() {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        assert_eq!(dedupe_key(7, day), "report:7:2026-11-30");
    }
}
