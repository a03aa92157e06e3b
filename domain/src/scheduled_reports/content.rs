//! What a scheduled report says, read when its e-mail is written: the period's
//! totals, its top users and products, and the export of its rows.

use super::period::ReportSchedule;
use crate::catalog;
use crate::error::{DomainError, Result};
use crate::notifications::Facts;
use crate::reports::usage_csv::account_usage_csv;
use crate::reports::{Dimension, Source, UsageQuery, UsageRow, usage_rows};
use crate::store::Db;
use crate::users;
use chrono::NaiveDate;
use std::cmp::Reverse;

/// How many users and products a report lists.
pub const TOP: usize = 5;

/// The period's totals (rule 16), spending in integer minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportTotals {
    pub tokens: i64,
    pub opens: i64,
    pub charges: i64,
    pub distinct_users: i64,
    pub denials: i64,
    pub spending_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUser {
    pub email: String,
    pub name: String,
    pub tokens: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopProduct {
    pub code: String,
    pub name: String,
    pub tokens: i64,
}

/// Everything a scheduled report's e-mail shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportContent {
    pub account_name: String,
    pub schedule: ReportSchedule,
    /// The UTC days covered, both included.
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub totals: ReportTotals,
    /// The currency of the price list, for the spending.
    pub currency: String,
    /// By tokens charged, most first; only those charged any.
    pub top_users: Vec<TopUser>,
    pub top_products: Vec<TopProduct>,
    /// The same file as `GET /reports/usage.csv` for the period.
    pub csv: Vec<u8>,
    pub csv_filename: String,
}

/// The rows of `rows` charged any tokens, most first (ties by id), at most [`TOP`].
fn top_by_tokens(
    mut rows: Vec<UsageRow>,
    id: impl Fn(&UsageRow) -> Option<i32>,
) -> Vec<(i32, i64)> {
    rows.retain(|r| r.tokens > 0);
    let mut ranked: Vec<(i32, i64)> = rows
        .iter()
        .filter_map(|r| id(r).map(|id| (id, r.tokens)))
        .collect();
    ranked.sort_by_key(|&(id, tokens)| (Reverse(tokens), id));
    ranked.truncate(TOP);
    ranked
}

/// The content of the scheduled report whose notification holds `facts`, from the
/// reports of rule 16 (which read the rollups and the raw tail alike, rule 17).
pub async fn report_content(db: &Db, facts: &Facts) -> Result<ReportContent> {
    let report = facts
        .report
        .as_ref()
        .ok_or_else(|| DomainError::Internal("a scheduled report without its period".into()))?;
    let account_id = facts.account_id;
    let (from, to) = (report.from, report.to);
    let grouped = |group_by: Vec<Dimension>| UsageQuery {
        from,
        to,
        group_by,
        user_id: None,
        product_id: None,
    };
    // An ungrouped report has its one row, zero when nothing happened.
    let totals = usage_rows(db, account_id, &grouped(vec![]), Source::Rollups)
        .await?
        .first()
        .map(|t| ReportTotals {
            tokens: t.tokens,
            opens: t.opens,
            charges: t.charges,
            distinct_users: t.distinct_users,
            denials: t.denials,
            spending_minor: t.cost_minor,
        })
        .unwrap_or_default();
    let by_user = usage_rows(
        db,
        account_id,
        &grouped(vec![Dimension::User]),
        Source::Rollups,
    )
    .await?;
    let by_product = usage_rows(
        db,
        account_id,
        &grouped(vec![Dimension::Product]),
        Source::Rollups,
    )
    .await?;
    let top_users = top_by_tokens(by_user, |r| r.user_id);
    let top_products = top_by_tokens(by_product, |r| r.product_id);
    let user_ids: Vec<i32> = top_users.iter().map(|(id, _)| *id).collect();
    let product_ids: Vec<i32> = top_products.iter().map(|(id, _)| *id).collect();
    let users = users::users_by_ids(db, &user_ids).await?;
    let products = catalog::products_by_ids(db, &product_ids).await?;
    let csv = account_usage_csv(db, account_id, from, to)
        .await?
        .into_bytes();
    Ok(ReportContent {
        account_name: facts.account_name.clone(),
        schedule: report.schedule.parse()?,
        from,
        to,
        totals,
        currency: catalog::load_price_list(db.conn()).await?.currency,
        top_users: top_users
            .into_iter()
            .filter_map(|(id, tokens)| {
                let u = users.iter().find(|u| u.id == id)?;
                Some(TopUser {
                    email: u.email.clone(),
                    name: u.name.clone(),
                    tokens,
                })
            })
            .collect(),
        top_products: top_products
            .into_iter()
            .filter_map(|(id, tokens)| {
                let p = products.iter().find(|p| p.id == id)?;
                Some(TopProduct {
                    code: p.code.clone(),
                    name: p.name.clone(),
                    tokens,
                })
            })
            .collect(),
        csv,
        csv_filename: format!("daypass-usage-{from}_{to}.csv"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i32, tokens: i64) -> UsageRow {
        UsageRow {
            period: None,
            user_id: Some(id),
            product_id: None,
            tokens,
            opens: 1,
            charges: 1,
            denials: 0,
            distinct_users: 1,
            cost_minor: tokens * 100,
        }
    }

    #[test]
    fn the_top_five_by_tokens_ties_by_id_none_uncharged() {
        let rows = vec![
            row(1, 5),
            row(2, 50),
            row(3, 0),
            row(4, 20),
            row(5, 20),
            row(6, 7),
            row(7, 6),
            row(8, 1),
        ];
        assert_eq!(
            top_by_tokens(rows, |r| r.user_id),
            vec![(2, 50), (4, 20), (5, 20), (6, 7), (7, 6)]
        );
        assert!(top_by_tokens(vec![row(3, 0)], |r| r.user_id).is_empty());
    }
}
