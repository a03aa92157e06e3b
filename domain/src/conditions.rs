//! Rules as SQL conditions, for every query that selects by them: sea-orm queries
//! filter with them, and the statements written by hand embed their text (see
//! [`text`]). Each is the twin of a Rust rule in [`crate::rules`]; a property test over
//! a real database holds each pair together.

use crate::vocabulary::LotStatus;
use daypass_entity::{lot, session, subscription};
use sea_orm::DatabaseBackend;
use sea_orm::sea_query::{
    Condition, DynIden, Expr, ExprTrait, IntoIden, PostgresQueryBuilder, Query, SqliteQueryBuilder,
};

/// Rule 2: a lot of `lots` (the table, or an alias of it) has not expired at `at`
/// ([`crate::rules::lot_is_unexpired`]).
pub fn unexpired_lot(lots: impl IntoIden, at: impl Into<Expr>) -> Expr {
    Expr::col((lots.into_iden(), lot::Column::ExpiresAt)).gt(at)
}

/// Rules 2 and 6: a lot counts toward the balance at `at`: it holds tokens and has
/// not expired ([`crate::rules::lot_is_live`]).
pub fn live_lot(lots: impl IntoIden, at: impl Into<Expr>) -> Expr {
    let lots: DynIden = lots.into_iden();
    Expr::col((lots.clone(), lot::Column::Remaining))
        .gt(0)
        .and(unexpired_lot(lots, at))
}

/// Rule 2 before the sweep: a lot past its expiry that still holds tokens
/// ([`crate::rules::lot_holds_expired_tokens`]).
pub fn lot_holding_expired_tokens(lots: impl IntoIden, at: impl Into<Expr>) -> Expr {
    let lots: DynIden = lots.into_iden();
    Expr::col((lots.clone(), lot::Column::Remaining))
        .gt(0)
        .and(unexpired_lot(lots, at).not())
}

/// A lot shows `status` at `at` ([`crate::rules::lot_status`] of
/// [`crate::rules::lot_counts_at`]), so a list filtered by status pages in SQL.
pub fn lot_status_is(status: LotStatus, at: impl Into<Expr>) -> Condition {
    let column = |c: lot::Column| Expr::col((lot::Entity, c));
    match status {
        LotStatus::Active => Condition::all().add(live_lot(lot::Entity, at)),
        // Not live, and some tokens expired: swept already, or due to be.
        LotStatus::Expired => Condition::all().add(live_lot(lot::Entity, at).not()).add(
            Condition::any()
                .add(column(lot::Column::Expired).gt(0))
                .add(column(lot::Column::Remaining).gt(0)),
        ),
        LotStatus::Depleted => Condition::all()
            .add(column(lot::Column::Remaining).eq(0))
            .add(column(lot::Column::Expired).eq(0)),
    }
}

/// Rule 9: a subscription of `subscriptions` (the table or an alias) is active at
/// `at`, in `[starts_at, ends_at)` ([`crate::rules::subscription_active`]).
pub fn active_subscription(subscriptions: impl IntoIden, at: impl Into<Expr>) -> Expr {
    let subscriptions: DynIden = subscriptions.into_iden();
    let at = at.into();
    Expr::col((subscriptions.clone(), subscription::Column::StartsAt))
        .lte(at.clone())
        .and(Expr::col((subscriptions, subscription::Column::EndsAt)).gt(at))
}

/// Rule 20: a session of `sessions` (the table or an alias) has lapsed
/// ([`crate::rules::session_lapsed`]), given the cutoffs of
/// [`crate::rules::lapse_cutoffs`] for the instant asked about.
pub fn lapsed_session(
    sessions: impl IntoIden,
    heartbeat_cutoff: impl Into<Expr>,
    unwatched_cutoff: impl Into<Expr>,
) -> Expr {
    let sessions: DynIden = sessions.into_iden();
    let last = || Expr::col((sessions.clone(), session::Column::LastHeartbeatAt));
    last()
        .is_not_null()
        .and(last().lte(heartbeat_cutoff))
        .or(last()
            .is_null()
            .and(Expr::col((sessions.clone(), session::Column::StartedAt)).lte(unwatched_cutoff)))
}

/// A session of `sessions` (the table or an alias) is stored as open. The state is
/// written inline, not bound, so both planners match it to the partial index of open
/// sessions (`ix_sessions_open`) whatever the statement's parameters.
pub fn stored_open_session(sessions: impl IntoIden) -> Expr {
    Expr::col((sessions.into_iden(), session::Column::State)).eq(Expr::cust(format!(
        "'{}'",
        crate::vocabulary::SessionState::Open.as_str()
    )))
}

/// A column of a table or alias in a statement written by hand, as a condition's `at`.
pub fn column(table: &str, column: &str) -> Expr {
    Expr::col((
        sea_orm::sea_query::Alias::new(table),
        sea_orm::sea_query::Alias::new(column),
    ))
}

/// A condition as `backend` writes it, for statements written by hand. Its `at`
/// should be a column (see [`column`]): values are written inline.
pub fn text(backend: DatabaseBackend, condition: Expr) -> String {
    let select = Query::select().expr(condition).to_owned();
    let sql = match backend {
        DatabaseBackend::Postgres => select.to_string(PostgresQueryBuilder),
        _ => select.to_string(SqliteQueryBuilder),
    };
    format!("({})", sql.strip_prefix("SELECT ").unwrap_or(&sql))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_statements_get_the_same_condition_on_both_backends() {
        let live = |backend| {
            text(
                backend,
                live_lot(sea_orm::sea_query::Alias::new("l"), column("asked", "at")),
            )
        };
        assert_eq!(
            live(DatabaseBackend::Sqlite),
            r#"("l"."remaining" > 0 AND "l"."expires_at" > "asked"."at")"#
        );
        assert_eq!(
            live(DatabaseBackend::Postgres),
            live(DatabaseBackend::Sqlite)
        );
        let active = text(
            DatabaseBackend::Postgres,
            active_subscription(sea_orm::sea_query::Alias::new("s"), column("asked", "at")),
        );
        assert_eq!(
            active,
            r#"("s"."starts_at" <= "asked"."at" AND "s"."ends_at" > "asked"."at")"#
        );
    }
}
