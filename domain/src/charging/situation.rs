//! The batched situation read: what each of several opens is decided on, with its
//! user and active product, in one round trip.

use crate::conditions;
use crate::error::{DomainError, Result};
use crate::rules;
use crate::store::{BatchFuture, Db};
use crate::units::Tokens;
use crate::vocabulary::PlanLevel;
use chrono::{DateTime, Utc};
use daypass_entity::{product, user};
use sea_orm::{ConnectionTrait, DatabaseBackend, FromQueryResult, IdenStatic, Iterable, Statement};
use std::collections::HashMap;
use std::sync::Arc;

/// What an open is decided on besides the user and the product (read with them in
/// one round trip: the reads of rules 7–10 and the answer's balance and plan level).
pub(super) struct Situation {
    pub(super) account_restricts_products: bool,
    /// Rule 8: the product is on the account-wide list, and on the user's own list
    /// (read in the same statement as the flags, so a list being replaced is seen
    /// whole or not at all).
    pub(super) account_list_has_product: bool,
    pub(super) user_list_has_product: bool,
    /// The user's last window for the product, covering `now` or not.
    pub(super) window: Option<rules::Window>,
    /// Rule 9: the user holds a seat of a subscription to the product active at `now`.
    pub(super) has_seat: bool,
    /// When the latest of those subscriptions ends (rule 23's lease).
    pub(super) seat_ends_at: Option<DateTime<Utc>>,
    /// Rule 6 at `now`: tokens left in live lots.
    pub(super) balance: Tokens,
    /// Rule 13 at `now`.
    pub(super) plan_level: PlanLevel,
}

/// One open's question for [`situations`].
pub(super) struct Asked {
    pub(super) user_id: i32,
    pub(super) code: String,
    pub(super) now: DateTime<Utc>,
}

/// What an open is decided on, with its user and active product; `None`: no such user.
pub(super) type Found = Option<(user::Model, Option<product::Model>, Situation)>;

pub(super) fn run_situations(db: Db, _key: i32, asked: Vec<Asked>) -> BatchFuture<Found> {
    Box::pin(async move {
        Ok(situations(db.conn(), &asked)
            .await?
            .into_iter()
            .map(Ok)
            .collect())
    })
}

/// The text of [`situations`]' query for `n` opens in `backend`'s placeholders, built
/// once per backend and batch size (every charging batch reads it twice: before and
/// under the lock).
fn situations_sql(backend: DatabaseBackend, n: usize) -> Arc<str> {
    type Built = HashMap<(bool, usize), Arc<str>>;
    static BUILT: std::sync::OnceLock<std::sync::Mutex<Built>> = std::sync::OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    built
        .entry((backend == DatabaseBackend::Postgres, n))
        .or_insert_with(|| {
            crate::store::numbered(backend, &build_situations_sql(backend, n)).into()
        })
        .clone()
}

/// The query with `?` placeholders.
fn build_situations_sql(backend: DatabaseBackend, n: usize) -> String {
    use conditions::{active_subscription, column, text};
    use sea_orm::sea_query::Alias;
    let at = || column("asked", "at");
    let plan_active = text(backend, active_subscription(Alias::new("held"), at()));
    // The user's and the active product's columns, prefixed to tell them apart.
    let columns = prefixed_columns;
    // Which plans the account holds, one bit each; rule 13 picks from them.
    let flags: String = PlanLevel::ALL
        .iter()
        .enumerate()
        .map(|(i, plan)| format!(" WHEN '{}' THEN {}", plan.as_str(), 1_i64 << i))
        .collect();
    format!(
        "WITH asked(i, user_id, code, at) AS (VALUES {}) \
         SELECT asked.i AS asked, {}, {}, \
         (SELECT restricts_products FROM accounts WHERE id = u.account_id) \
          AS account_restricts, \
         EXISTS (SELECT 1 FROM allowed_products a WHERE a.account_id = u.account_id \
          AND a.user_id IS NULL AND a.product_id = p.id) AS account_lists, \
         EXISTS (SELECT 1 FROM allowed_products a WHERE a.account_id = u.account_id \
          AND a.user_id = u.id AND a.product_id = p.id) AS user_lists, \
         w.starts_at AS window_starts_at, w.ends_at AS window_ends_at, \
         {} AS seat_ends_at, {} AS balance, \
         (SELECT CAST(COALESCE(SUM(DISTINCT CASE held.plan_level{flags} ELSE 0 END), 0) \
          AS BIGINT) FROM subscriptions held \
          WHERE held.account_id = u.account_id AND {plan_active}) AS plans \
         FROM asked JOIN users u ON u.id = asked.user_id \
         LEFT JOIN products p ON p.code = asked.code AND p.active = ? \
         LEFT JOIN windows w ON w.user_id = u.id AND w.product_id = p.id",
        vec!["(?, ?, ?, ?)"; n].join(", "),
        columns(
            "u",
            "u_",
            user::Column::iter().map(|c| c.as_str()).collect()
        ),
        columns(
            "p",
            "p_",
            product::Column::iter().map(|c| c.as_str()).collect()
        ),
        seat_ends_at_sql(backend, "u.id", "p.id", at()),
        balance_sql(backend, "u.account_id", at()),
    )
}

/// `table`'s columns `names`, each as `prefix` + its name, for a select list that
/// reads several tables' models from one row.
pub(crate) fn prefixed_columns(table: &str, prefix: &str, names: Vec<&'static str>) -> String {
    names
        .into_iter()
        .map(|c| format!("{table}.{c} AS {prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rule 9 as a scalar subquery: when the latest subscription to `product` whose
/// seat `user` holds, active at `at`, ends (NULL: no such seat). The opens' and
/// the heartbeats' reads both embed it.
pub(crate) fn seat_ends_at_sql(
    backend: DatabaseBackend,
    user: &str,
    product: &str,
    at: sea_orm::sea_query::Expr,
) -> String {
    let active = conditions::text(
        backend,
        conditions::active_subscription(sea_orm::sea_query::Alias::new("sub"), at),
    );
    format!(
        "(SELECT MAX(sub.ends_at) FROM subscription_seats seat \
         JOIN subscriptions sub ON sub.id = seat.subscription_id \
         WHERE seat.user_id = {user} AND sub.product_id = {product} AND {active})"
    )
}

/// Rule 6 as a scalar subquery: the tokens in `account`'s live lots at `at`.
pub(crate) fn balance_sql(
    backend: DatabaseBackend,
    account: &str,
    at: sea_orm::sea_query::Expr,
) -> String {
    let live = conditions::text(
        backend,
        conditions::live_lot(sea_orm::sea_query::Alias::new("l"), at),
    );
    format!(
        "(SELECT CAST(COALESCE(SUM(l.remaining), 0) AS BIGINT) FROM lots l \
         WHERE l.account_id = {account} AND {live})"
    )
}

/// What each of several opens is decided on (the reads of rules 7–10 and the
/// answer's balance and plan level), with its user and product, in one round trip:
/// concurrent opens ask together.
pub(super) async fn situations(conn: &impl ConnectionTrait, asked: &[Asked]) -> Result<Vec<Found>> {
    let backend = conn.get_database_backend();
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(asked.len() * 4 + 1);
    for (i, a) in asked.iter().enumerate() {
        values.extend([
            (i as i32).into(),
            a.user_id.into(),
            a.code.as_str().into(),
            a.now.into(),
        ]);
    }
    values.push(true.into());
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            situations_sql(backend, asked.len()).as_ref(),
            values,
        ))
        .await?;
    let mut found: Vec<Found> = (0..asked.len()).map(|_| None).collect();
    for row in rows {
        let i: i32 = row.try_get("", "asked")?;
        let user = user::Model::from_query_result(&row, "u_")?;
        let product = match row.try_get::<Option<i32>>("", "p_id")? {
            Some(_) => Some(product::Model::from_query_result(&row, "p_")?),
            None => None,
        };
        let plans: i64 = row.try_get("", "plans")?;
        let seat_ends_at: Option<DateTime<Utc>> = row.try_get("", "seat_ends_at")?;
        let held = PlanLevel::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| plans & (1 << i) != 0)
            .map(|(_, plan)| *plan);
        let situation = Situation {
            account_restricts_products: row
                .try_get::<Option<bool>>("", "account_restricts")?
                .unwrap_or(false),
            account_list_has_product: row.try_get("", "account_lists")?,
            user_list_has_product: row.try_get("", "user_lists")?,
            window: match (
                row.try_get::<Option<DateTime<Utc>>>("", "window_starts_at")?,
                row.try_get::<Option<DateTime<Utc>>>("", "window_ends_at")?,
            ) {
                (Some(starts_at), Some(ends_at)) => Some(rules::Window { starts_at, ends_at }),
                _ => None,
            },
            has_seat: seat_ends_at.is_some(),
            seat_ends_at,
            balance: Tokens(row.try_get("", "balance")?),
            plan_level: rules::plan_level_of(held),
        };
        let slot = usize::try_from(i)
            .ok()
            .and_then(|i| found.get_mut(i))
            .ok_or_else(|| DomainError::Internal("a situation nobody asked for".into()))?;
        *slot = Some((user, product, situation));
    }
    Ok(found)
}
