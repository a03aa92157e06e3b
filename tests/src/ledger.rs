//! Rule 6 and rule 10 read straight from the tables, for tests that drive the real
//! binary and then look at what it stored: crashes and the model workload share it.

use daypass_domain::Db;
use sea_orm::{ConnectionTrait, DatabaseBackend, QueryResult, Statement};

/// The rows of a raw query (panics with the SQL on error).
pub async fn rows(db: &Db, sql: &str) -> Vec<QueryResult> {
    db.conn()
        .query_all_raw(Statement::from_string(db.backend(), sql.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The first column of the first row, as a number.
pub async fn count(db: &Db, sql: &str) -> i64 {
    rows(db, sql).await[0].try_get_by_index::<i64>(0).unwrap()
}

/// What every database must satisfy at every instant, whatever happened before:
/// SQLite's integrity check; each lot's quantity = used + expired + remaining with
/// nothing negative; each account's ledger sums to what its lots hold; no two
/// charges of one user and product overlap in time (one charge per window); each
/// charge has ledger entries for exactly its tokens, and a refunded one refund
/// entries for them; each lot's ledger entries sum to
/// what it holds.
pub async fn check_ledger(db: &Db) {
    if db.backend() == DatabaseBackend::Sqlite {
        let ok: String = rows(db, "PRAGMA integrity_check").await[0]
            .try_get_by_index(0)
            .unwrap();
        assert_eq!(ok, "ok", "SQLite integrity check");
    }
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM lots WHERE quantity <> used + expired + remaining \
             OR remaining < 0 OR used < 0 OR expired < 0"
        )
        .await,
        0,
        "every lot: quantity = used + expired + remaining, nothing negative"
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM accounts a WHERE \
             (SELECT COALESCE(SUM(tokens), 0) FROM ledger_entries e WHERE e.account_id = a.id) <> \
             (SELECT COALESCE(SUM(remaining), 0) FROM lots l WHERE l.account_id = a.id)"
        )
        .await,
        0,
        "each account's ledger sums to what its lots hold"
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM lots l WHERE l.remaining <> \
             (SELECT COALESCE(SUM(tokens), 0) FROM ledger_entries e WHERE e.lot_id = l.id)"
        )
        .await,
        0,
        "each lot's ledger entries sum to what it holds"
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM charges a JOIN charges b ON a.user_id = b.user_id \
             AND a.product_id = b.product_id AND a.id < b.id \
             AND a.window_starts_at < b.window_ends_at AND b.window_starts_at < a.window_ends_at \
             AND a.refunded_at IS NULL"
        )
        .await,
        0,
        "one charge per user, product and window (a refund closes its window to later charges)"
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM charges c WHERE c.tokens <> -(SELECT COALESCE(SUM(tokens), 0) \
             FROM ledger_entries e WHERE e.charge_id = c.id AND e.kind = 'CHARGE')"
        )
        .await,
        0,
        "every charge has ledger entries for exactly its tokens"
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM charges c WHERE \
             (SELECT COALESCE(SUM(tokens), 0) FROM ledger_entries e \
              WHERE e.charge_id = c.id AND e.kind = 'REFUND') \
             <> CASE WHEN c.refunded_at IS NULL THEN 0 ELSE c.tokens END"
        )
        .await,
        0,
        "a refunded charge gave back exactly its tokens, once; no other charge gave any back"
    );
}
