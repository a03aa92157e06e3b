//! The rollup job: each closed UTC day rolled into the daily tables and the week and
//! month distinct users, in write transactions short enough that charging never
//! waits long behind them.
//!
//! A closed day's raw opens no longer change, so they are read once without the
//! writer lock. The rows keyed by user are then written in chunks of at most
//! [`CHUNK_ROWS`] user × product rows, each chunk its own transaction; the last
//! transaction writes the rows of whole accounts (by product, totals, the packed user
//! blocks) and the period counts, and moves the watermark. Reports read the rolled
//! tables only through the watermark, so a day half written is never seen.
//!
//! Every transaction first checks, under the watermark's lock, that the watermark is
//! still where this roll of the day began. Two workers rolling the same day write the
//! same rows; one that falls behind (the other finished the day) stops writing. A
//! crash leaves a day half written and the watermark before it: the next run rolls it
//! again, each chunk replacing its own rows.

use super::{
    DayAggregate, DayRow, Grain, Period, ROLLUP_GRACE, UserDay, coarsen, day_aggregates,
    rolled_through,
};
use crate::error::{DomainError, Result};
use crate::store::stmt;
use crate::store::{Db, WriteTx};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use daypass_entity::{account, open};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QueryResult, QuerySelect,
    Value,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

/// The most user × product rows one write transaction of the job takes. At 27,000
/// such rows a day, a chunk holds the writer for well under 100 ms.
pub const CHUNK_ROWS: usize = 400;

const PERIODS: [Period; 2] = [Period::Week, Period::Month];

/// Rolls up every closed UTC day not rolled up yet and returns how many days it
/// rolled. Idempotent and safe to run from several workers at once.
pub async fn roll_up(db: &Db, now: DateTime<Utc>) -> Result<u32> {
    roll_up_in_chunks(db, now, CHUNK_ROWS).await
}

/// [`roll_up`] with at most about `chunk_rows` user × product rows per write
/// transaction (tests use tiny chunks, so every day spans many).
pub async fn roll_up_in_chunks(db: &Db, now: DateTime<Utc>, chunk_rows: usize) -> Result<u32> {
    roll_up_with(db, now, chunk_rows, None).await
}

/// [`roll_up_in_chunks`] that stops, as a crash would, once it has committed
/// `transactions` write transactions of a day (crash tests).
pub async fn roll_up_stopping_after(
    db: &Db,
    now: DateTime<Utc>,
    chunk_rows: usize,
    transactions: usize,
) -> Result<u32> {
    roll_up_with(db, now, chunk_rows, Some(transactions)).await
}

/// How a day's roll ended.
enum DayRolled {
    Rolled,
    /// Another worker moved the watermark meanwhile.
    Behind,
    /// Stopped after the transactions it was allowed (crash tests).
    Stopped,
}

async fn roll_up_with(
    db: &Db,
    now: DateTime<Utc>,
    chunk_rows: usize,
    stop_after: Option<usize>,
) -> Result<u32> {
    let chunk_rows = chunk_rows.max(1);
    let last_closed = (now - ROLLUP_GRACE).date_naive() - Duration::days(1);
    db.conn()
        .execute_raw(stmt(
            db.backend(),
            "INSERT INTO rollup_watermark (id, rolled_through) VALUES (1, NULL) \
             ON CONFLICT (id) DO NOTHING",
            vec![],
        ))
        .await?;
    let mut rolled = 0;
    loop {
        let watermark = rolled_through(db.conn()).await?;
        let next = match watermark {
            Some(w) => w + Duration::days(1),
            None => match first_open_day(db).await? {
                Some(day) => day,
                // Nothing to roll yet: later days start after the last closed one.
                None => last_closed + Duration::days(1),
            },
        };
        if next > last_closed {
            if watermark.is_none_or(|w| w < last_closed)
                && next == last_closed + Duration::days(1)
                && let Some(tx) = locked(db, watermark).await?
            {
                set_watermark(&*tx, last_closed).await?;
                tx.commit().await?;
            }
            return Ok(rolled);
        }
        match roll_day(db, watermark, next, chunk_rows, stop_after).await? {
            DayRolled::Rolled => rolled += 1,
            // Read the watermark again.
            DayRolled::Behind => {}
            DayRolled::Stopped => return Ok(rolled),
        }
    }
}

/// The day of the first open ever recorded, an account at a time along the index on
/// (account, time) (an ORDER BY over every open would scan them all).
async fn first_open_day(db: &Db) -> Result<Option<NaiveDate>> {
    let mut first: Option<DateTime<Utc>> = None;
    for account_id in account_ids(db).await? {
        let at = open::Entity::find()
            .select_only()
            .column(open::Column::At)
            .filter(open::Column::AccountId.eq(account_id))
            .order_by_asc(open::Column::At)
            .into_tuple::<DateTime<Utc>>()
            .one(db.conn())
            .await?;
        first = match (first, at) {
            (Some(f), Some(a)) => Some(f.min(a)),
            (f, a) => f.or(a),
        };
    }
    Ok(first.map(|at| at.date_naive()))
}

async fn account_ids(db: &Db) -> Result<Vec<i32>> {
    Ok(account::Entity::find()
        .select_only()
        .column(account::Column::Id)
        .order_by_asc(account::Column::Id)
        .into_tuple()
        .all(db.conn())
        .await?)
}

/// A write transaction of the job, or `None` when the watermark is no longer
/// `expected` (another worker rolled the day meanwhile).
async fn locked(db: &Db, expected: Option<NaiveDate>) -> Result<Option<WriteTx>> {
    let tx = db.begin_write().await?;
    if db.is_postgres() {
        tx.execute_raw(stmt(
            db.backend(),
            "SELECT id FROM rollup_watermark WHERE id = 1 FOR UPDATE",
            vec![],
        ))
        .await?;
    }
    Ok((rolled_through(&*tx).await? == expected).then_some(tx))
}

async fn set_watermark(conn: &impl ConnectionTrait, day: NaiveDate) -> Result<()> {
    conn.execute_raw(stmt(
        conn.get_database_backend(),
        "UPDATE rollup_watermark SET rolled_through = ? WHERE id = 1",
        vec![day.into()],
    ))
    .await?;
    Ok(())
}

/// Rolls `day`, the day after `watermark`.
async fn roll_day(
    db: &Db,
    watermark: Option<NaiveDate>,
    day: NaiveDate,
    chunk_rows: usize,
    stop_after: Option<usize>,
) -> Result<DayRolled> {
    let mut committed = 0;
    let stop = |committed: usize| stop_after.is_some_and(|n| committed >= n);
    let mut aggregates = Vec::new();
    // An account at a time, along the index on (account, time): one read of the
    // whole day would scan every open ever recorded.
    let accounts = account_ids(db).await?;
    for &account_id in &accounts {
        aggregates.extend(day_aggregates(db.conn(), day, account_id).await?);
    }
    aggregates.sort_unstable_by_key(|a| (a.account_id, a.user_id, a.product_id));

    // How long this roll held the writer at most (logged: the figure that matters
    // to charging on SQLite).
    let mut longest = std::time::Duration::ZERO;
    let Some(tx) = locked(db, watermark).await? else {
        return Ok(DayRolled::Behind);
    };
    let held = Instant::now();
    for period in PERIODS {
        rewind_period(&*tx, period, day).await?;
    }
    tx.commit().await?;
    longest = longest.max(held.elapsed());
    committed += 1;
    if stop(committed) {
        return Ok(DayRolled::Stopped);
    }

    // (period, account, product) → members first seen today.
    let mut first_seen: BTreeMap<(Period, i32, i32), i64> = BTreeMap::new();
    let chunks = user_chunks(&aggregates, chunk_rows);
    for chunk in &chunks {
        let Some(tx) = locked(db, watermark).await? else {
            return Ok(DayRolled::Behind);
        };
        let held = Instant::now();
        replace_user_rows(&*tx, day, chunk).await?;
        for period in PERIODS {
            add_members(&*tx, period, day, chunk.aggregates, &mut first_seen).await?;
        }
        tx.commit().await?;
        longest = longest.max(held.elapsed());
        committed += 1;
        if stop(committed) {
            return Ok(DayRolled::Stopped);
        }
    }

    let mut since = Vec::new();
    for period in PERIODS {
        since.push(users_since(db.conn(), period, period.start_of(day), &accounts).await?);
    }
    let Some(tx) = locked(db, watermark).await? else {
        return Ok(DayRolled::Behind);
    };
    let held = Instant::now();
    replace_account_rows(&*tx, day, &aggregates).await?;
    for period in PERIODS {
        store_period_counts(&*tx, period, day, &first_seen).await?;
    }
    for since in since {
        store_users_since(&*tx, since).await?;
    }
    set_watermark(&*tx, day).await?;
    tx.commit().await?;
    let last = held.elapsed();
    tracing::debug!(
        %day,
        rows = aggregates.len(),
        transactions = chunks.len() + 2,
        longest_write_ms = longest.max(last).as_secs_f64() * 1e3,
        last_write_ms = last.as_secs_f64() * 1e3,
        "rolled up a day"
    );

    for period in PERIODS {
        if day == period.end_of(period.start_of(day)) {
            drop_finished_members(db, period, period.start_of(day), chunk_rows).await?;
        }
    }
    Ok(DayRolled::Rolled)
}

/// A run of the day's aggregates, in (account, user) order, never splitting one
/// user's rows; for each account it touches, the users it owns.
struct UserChunk<'a> {
    aggregates: &'a [DayAggregate],
    ranges: Vec<UserRange>,
}

/// (account, lowest user, highest user) a chunk owns: `None` ends are open, so the
/// chunks of an account cover every user id between them.
type UserRange = (i32, Option<i32>, Option<i32>);

/// Splits `aggregates` (sorted by account, user, product) into chunks of about
/// `rows` rows, at user boundaries.
fn user_chunks(aggregates: &[DayAggregate], rows: usize) -> Vec<UserChunk<'_>> {
    let mut bounds = Vec::new();
    let mut start = 0;
    while start < aggregates.len() {
        let mut end = (start + rows).min(aggregates.len());
        // Finish the user the chunk ends in.
        while end < aggregates.len()
            && (aggregates[end].account_id, aggregates[end].user_id)
                == (aggregates[end - 1].account_id, aggregates[end - 1].user_id)
        {
            end += 1;
        }
        bounds.push((start, end));
        start = end;
    }
    bounds
        .iter()
        .map(|&(start, end)| {
            let part = &aggregates[start..end];
            let mut ranges: Vec<UserRange> = Vec::new();
            for a in part {
                match ranges.last_mut() {
                    Some((account, _, high)) if *account == a.account_id => *high = Some(a.user_id),
                    _ => ranges.push((a.account_id, Some(a.user_id), Some(a.user_id))),
                }
            }
            // The account's first chunk owns the users below it; a later one, those
            // after the previous chunk's last; its last chunk, those above.
            if let Some(first) = ranges.first_mut() {
                first.1 = match start.checked_sub(1).map(|i| &aggregates[i]) {
                    Some(prev) if prev.account_id == first.0 => {
                        Some(prev.user_id.saturating_add(1))
                    }
                    _ => None,
                };
            }
            for r in ranges.iter_mut().skip(1) {
                r.1 = None;
            }
            let n = ranges.len();
            if let Some(last) = ranges.last_mut()
                && (end == aggregates.len() || aggregates[end].account_id != last.0)
            {
                last.2 = None;
            }
            for r in ranges.iter_mut().take(n.saturating_sub(1)) {
                r.2 = None;
            }
            UserChunk {
                aggregates: part,
                ranges,
            }
        })
        .collect()
}

/// `day`'s rows of the user grains (user × product, user) for the chunk's users,
/// replacing whatever an earlier roll of the day left there.
async fn replace_user_rows(
    conn: &impl ConnectionTrait,
    day: NaiveDate,
    chunk: &UserChunk<'_>,
) -> Result<()> {
    let backend = conn.get_database_backend();
    for grain in [Grain::USER_PRODUCT, Grain::USER] {
        for &(account_id, low, high) in &chunk.ranges {
            let mut sql = format!(
                "DELETE FROM {} WHERE account_id = ? AND day = ?",
                grain.table()
            );
            let mut values: Vec<Value> = vec![account_id.into(), day.into()];
            if let Some(low) = low {
                sql.push_str(" AND user_id >= ?");
                values.push(low.into());
            }
            if let Some(high) = high {
                sql.push_str(" AND user_id <= ?");
                values.push(high.into());
            }
            conn.execute_raw(stmt(backend, &sql, values)).await?;
        }
        insert_rows(conn, grain, &rows_at(day, chunk.aggregates, grain)).await?;
    }
    Ok(())
}

/// `day`'s rows of the grains without users (by product, totals) and the packed user
/// blocks, for every account with usage that day.
async fn replace_account_rows(
    conn: &impl ConnectionTrait,
    day: NaiveDate,
    aggregates: &[DayAggregate],
) -> Result<()> {
    let backend = conn.get_database_backend();
    let accounts: Vec<i32> = by_account(aggregates).map(|(a, _)| a).collect();
    for table in [
        Grain::PRODUCT.table(),
        Grain::TOTAL.table(),
        "usage_day_user_blocks",
    ] {
        for ids in accounts.chunks(500) {
            let sql = format!(
                "DELETE FROM {table} WHERE day = ? AND account_id IN ({})",
                vec!["?"; ids.len()].join(", ")
            );
            let mut values: Vec<Value> = vec![day.into()];
            values.extend(ids.iter().map(|a| Value::from(*a)));
            conn.execute_raw(stmt(backend, &sql, values)).await?;
        }
    }
    for grain in [Grain::PRODUCT, Grain::TOTAL, Grain::USER] {
        let rows = rows_at(day, aggregates, grain);
        if grain == Grain::USER {
            insert_user_blocks(conn, day, &rows).await?;
        } else {
            insert_rows(conn, grain, &rows).await?;
        }
    }
    Ok(())
}

/// Each account's rows of `grain` for `day` from its aggregates.
fn rows_at(day: NaiveDate, aggregates: &[DayAggregate], grain: Grain) -> Vec<(i32, DayRow)> {
    by_account(aggregates)
        .flat_map(|(account_id, run)| {
            coarsen(day, run, grain)
                .into_iter()
                .map(move |r| (account_id, r))
        })
        .collect()
}

/// Consecutive runs of one account in `aggregates` (sorted by account).
fn by_account(aggregates: &[DayAggregate]) -> impl Iterator<Item = (i32, &[DayAggregate])> {
    aggregates
        .chunk_by(|a, b| a.account_id == b.account_id)
        .map(|run| (run[0].account_id, run))
}

/// Packs each account's rows of `usage_day_users` for `day` (in user order) into one
/// value: a report by user then reads a value per day, not a row per user and day.
async fn insert_user_blocks(
    conn: &impl ConnectionTrait,
    day: NaiveDate,
    rows: &[(i32, DayRow)],
) -> Result<()> {
    let mut blocks: BTreeMap<i32, Vec<UserDay>> = BTreeMap::new();
    for (account_id, r) in rows {
        let Some(user_id) = r.user_id else { continue };
        blocks.entry(*account_id).or_default().push(UserDay {
            user_id,
            tokens: r.sums.tokens,
            opens: r.sums.opens,
            charges: r.sums.charges,
            denials: r.sums.denials,
            cost_minor: r.sums.cost_minor,
        });
    }
    let values = blocks
        .into_iter()
        .map(|(account_id, users)| {
            let packed = postcard::to_allocvec(&users)
                .map_err(|e| DomainError::Internal(format!("packing usage of {day}: {e}")))?;
            Ok(vec![account_id.into(), day.into(), packed.into()])
        })
        .collect::<Result<Vec<Vec<Value>>>>()?;
    // A few hundred kilobytes each: a few per statement.
    for chunk in values.chunks(16) {
        insert_many(
            conn,
            "usage_day_user_blocks",
            &["account_id", "day", "users"],
            chunk.to_vec(),
            "",
        )
        .await?;
    }
    Ok(())
}

async fn insert_rows(
    conn: &impl ConnectionTrait,
    grain: Grain,
    rows: &[(i32, DayRow)],
) -> Result<()> {
    let mut columns = vec!["account_id", "day"];
    if grain.user {
        columns.push("user_id");
    }
    if grain.product {
        columns.push("product_id");
    }
    columns.extend(["tokens", "opens", "charges", "denials", "cost_minor"]);
    if grain.stores_distinct_users() {
        columns.push("distinct_users");
    }
    let rows = rows
        .iter()
        .map(|(account_id, r)| {
            let mut values: Vec<Value> = vec![(*account_id).into(), r.day.into()];
            if grain.user {
                values.push(r.user_id.into());
            }
            if grain.product {
                values.push(r.product_id.into());
            }
            values.extend([
                r.sums.tokens.into(),
                r.sums.opens.into(),
                r.sums.charges.into(),
                r.sums.denials.into(),
                r.sums.cost_minor.into(),
            ]);
            if grain.stores_distinct_users() {
                values.push(r.distinct_users.into());
            }
            values
        })
        .collect();
    insert_many(conn, grain.table(), &columns, rows, "").await?;
    Ok(())
}

/// Inserts `rows` into `table` with multi-row statements, well under SQLite's and
/// PostgreSQL's limits on bound values. `suffix` ends each statement (say, `ON
/// CONFLICT … RETURNING …`); the rows it returns are collected.
async fn insert_many(
    conn: &impl ConnectionTrait,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Value>>,
    suffix: &str,
) -> Result<Vec<QueryResult>> {
    let row_sql = format!("({})", vec!["?"; columns.len()].join(", "));
    let mut returned = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Value>> = rows.by_ref().take(2_000).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES {} {suffix}",
            columns.join(", "),
            vec![row_sql.as_str(); chunk.len()].join(", ")
        );
        let values = chunk.into_iter().flatten().collect();
        returned.extend(
            conn.query_all_raw(stmt(conn.get_database_backend(), &sql, values))
                .await?,
        );
    }
    Ok(returned)
}

/// A row of `usage_period_members` in [`MEMBER_COLUMNS`]' order: (account, product,
/// user) seen in the period from `first_day` to `last_day`.
fn member_row(
    period: Period,
    start: NaiveDate,
    (account_id, product_id, user_id): (i32, i32, i32),
    first_day: NaiveDate,
    last_day: NaiveDate,
) -> Vec<Value> {
    vec![
        account_id.into(),
        period.grain().into(),
        start.into(),
        product_id.into(),
        user_id.into(),
        first_day.into(),
        last_day.into(),
    ]
}

const MEMBER_COLUMNS: [&str; 7] = [
    "account_id",
    "grain",
    "period",
    "product_id",
    "user_id",
    "first_day",
    "last_day",
];

/// A week or month rolled through `day` or later before (the watermark was rewound):
/// its members are rebuilt from the daily rollups of the days before `day`, and its
/// counts from `day` on are dropped, so rolling on from `day` counts as the first time.
async fn rewind_period(conn: &impl ConnectionTrait, period: Period, day: NaiveDate) -> Result<()> {
    let backend = conn.get_database_backend();
    let start = period.start_of(day);
    let key = || -> Vec<Value> { vec![period.grain().into(), start.into(), day.into()] };
    let rolled_before = conn
        .query_one_raw(stmt(
            backend,
            "SELECT 1 AS rolled FROM usage_period_users \
             WHERE grain = ? AND period = ? AND through_day >= ? LIMIT 1",
            key(),
        ))
        .await?
        .is_some();
    if rolled_before {
        restore_period_members(conn, period, start, day).await?;
        conn.execute_raw(stmt(
            backend,
            "DELETE FROM usage_period_users \
             WHERE grain = ? AND period = ? AND through_day >= ?",
            key(),
        ))
        .await?;
    }
    Ok(())
}

/// Adds the users who opened something in `aggregates` to the members of the period
/// holding `day`, under their product and under 0 (any product), with the first and
/// last day each was seen; counts in `first_seen` those seen for the first time today.
async fn add_members(
    conn: &impl ConnectionTrait,
    period: Period,
    day: NaiveDate,
    aggregates: &[DayAggregate],
    first_seen: &mut BTreeMap<(Period, i32, i32), i64>,
) -> Result<()> {
    let start = period.start_of(day);
    let members: BTreeSet<(i32, i32, i32)> = aggregates
        .iter()
        .filter(|a| a.sums.counts_user())
        .flat_map(|a| {
            [
                (a.account_id, a.product_id, a.user_id),
                (a.account_id, 0, a.user_id),
            ]
        })
        .collect();
    let members = members
        .into_iter()
        .map(|(account_id, product_id, user_id)| {
            member_row(period, start, (account_id, product_id, user_id), day, day)
        })
        .collect();
    // Members seen before keep their first day and move their last day here. One
    // first seen today by an earlier, interrupted roll of this day is new today still.
    let seen = insert_many(
        conn,
        "usage_period_members",
        &MEMBER_COLUMNS,
        members,
        "ON CONFLICT (account_id, grain, period, user_id, product_id) \
         DO UPDATE SET last_day = excluded.last_day \
         RETURNING account_id, product_id, first_day",
    )
    .await?;
    for r in seen {
        if r.try_get::<NaiveDate>("", "first_day")? == day {
            *first_seen
                .entry((
                    period,
                    r.try_get("", "account_id")?,
                    r.try_get("", "product_id")?,
                ))
                .or_default() += 1;
        }
    }
    Ok(())
}

/// Stores the distinct users of the period holding `day` from its first day through
/// `day`: those through the day before, plus the members first seen today.
async fn store_period_counts(
    conn: &impl ConnectionTrait,
    period: Period,
    day: NaiveDate,
    first_seen: &BTreeMap<(Period, i32, i32), i64>,
) -> Result<()> {
    let backend = conn.get_database_backend();
    let start = period.start_of(day);
    let mut counts: BTreeMap<(i32, i32), i64> = BTreeMap::new();
    if day > start {
        let rows = conn
            .query_all_raw(stmt(
                backend,
                "SELECT account_id, product_id, distinct_users FROM usage_period_users \
                 WHERE grain = ? AND period = ? AND through_day = ?",
                vec![
                    period.grain().into(),
                    start.into(),
                    (day - Duration::days(1)).into(),
                ],
            ))
            .await?;
        for r in rows {
            counts.insert(
                (r.try_get("", "account_id")?, r.try_get("", "product_id")?),
                r.try_get("", "distinct_users")?,
            );
        }
    }
    for ((p, account_id, product_id), n) in first_seen {
        if *p == period {
            *counts.entry((*account_id, *product_id)).or_default() += n;
        }
    }
    conn.execute_raw(stmt(
        backend,
        "DELETE FROM usage_period_users WHERE grain = ? AND period = ? AND through_day = ?",
        vec![period.grain().into(), start.into(), day.into()],
    ))
    .await?;
    let counts = counts
        .into_iter()
        .map(|((account_id, product_id), n)| {
            vec![
                account_id.into(),
                period.grain().into(),
                start.into(),
                day.into(),
                product_id.into(),
                n.into(),
            ]
        })
        .collect();
    insert_many(
        conn,
        "usage_period_users",
        &[
            "account_id",
            "grain",
            "period",
            "through_day",
            "product_id",
            "distinct_users",
        ],
        counts,
        "",
    )
    .await?;
    Ok(())
}

/// Drops the members of a finished period (and of any earlier one an interrupted run
/// left), about `chunk_rows` of them per transaction: its counts are stored whole.
async fn drop_finished_members(
    db: &Db,
    period: Period,
    start: NaiveDate,
    chunk_rows: usize,
) -> Result<()> {
    let backend = db.backend();
    let mut users: Vec<(i32, i32, i64)> = db
        .conn()
        .query_all_raw(stmt(
            backend,
            "SELECT account_id, user_id, COUNT(*) AS n FROM usage_period_members \
             WHERE grain = ? AND period <= ? GROUP BY account_id, user_id",
            vec![period.grain().into(), start.into()],
        ))
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("", "account_id")?,
                r.try_get("", "user_id")?,
                r.try_get("", "n")?,
            ))
        })
        .collect::<Result<_>>()?;
    users.sort_unstable();
    // Transactions of (account, first user, last user) ranges, about `chunk_rows` each.
    let mut batches: Vec<Vec<(i32, i32, i32)>> = vec![Vec::new()];
    let mut rows = 0;
    for (account_id, user_id, n) in users {
        if rows >= chunk_rows {
            batches.push(Vec::new());
            rows = 0;
        }
        let batch = batches.last_mut().expect("one batch at least");
        match batch.last_mut() {
            Some(range) if range.0 == account_id => range.2 = user_id,
            _ => batch.push((account_id, user_id, user_id)),
        }
        rows += usize::try_from(n).unwrap_or(1);
    }
    for batch in batches.iter().filter(|b| !b.is_empty()) {
        let tx = db.begin_write().await?;
        for &(account_id, low, high) in batch {
            tx.execute_raw(stmt(
                backend,
                "DELETE FROM usage_period_members WHERE account_id = ? AND grain = ? \
                 AND period <= ? AND user_id >= ? AND user_id <= ?",
                vec![
                    account_id.into(),
                    period.grain().into(),
                    start.into(),
                    low.into(),
                    high.into(),
                ],
            ))
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// The distinct users of each account's `period` since each of its days, from its
/// members: the users since a day are those last seen on it or later. Read once every
/// chunk of the day is written, outside the writer lock: the members hold what every
/// roll of the day writes alike.
struct UsersSince {
    period: Period,
    start: NaiveDate,
    accounts: Vec<i32>,
    rows: Vec<Vec<Value>>,
}

async fn users_since(
    conn: &impl ConnectionTrait,
    period: Period,
    start: NaiveDate,
    accounts: &[i32],
) -> Result<UsersSince> {
    let rows = conn
        .query_all_raw(stmt(
            conn.get_database_backend(),
            "SELECT account_id, product_id, last_day, COUNT(*) AS n FROM usage_period_members \
             WHERE grain = ? AND period = ? GROUP BY account_id, product_id, last_day",
            vec![period.grain().into(), start.into()],
        ))
        .await?;
    // (account, product) → last day → members last seen that day.
    let mut last_seen: BTreeMap<(i32, i32), BTreeMap<NaiveDate, i64>> = BTreeMap::new();
    for r in rows {
        last_seen
            .entry((r.try_get("", "account_id")?, r.try_get("", "product_id")?))
            .or_default()
            .insert(r.try_get("", "last_day")?, r.try_get("", "n")?);
    }
    let mut since = Vec::new();
    for ((account_id, product_id), days) in last_seen {
        let Some(last) = days.keys().next_back().copied() else {
            continue;
        };
        let mut users = 0;
        let mut from = last;
        while from >= start {
            users += days.get(&from).copied().unwrap_or(0);
            since.push(vec![
                account_id.into(),
                period.grain().into(),
                start.into(),
                from.into(),
                product_id.into(),
                users.into(),
            ]);
            from -= Duration::days(1);
        }
    }
    // Every account's rows are replaced, those with no members (left by a roll before
    // the watermark was rewound) included.
    Ok(UsersSince {
        period,
        start,
        accounts: accounts.to_vec(),
        rows: since,
    })
}

/// Replaces the stored users since each day of the period with `since`'s, an
/// account at a time (each by its key's prefix), for every account.
async fn store_users_since(conn: &impl ConnectionTrait, since: UsersSince) -> Result<()> {
    let UsersSince {
        period,
        start,
        accounts,
        rows,
    } = since;
    for account_id in accounts {
        conn.execute_raw(stmt(
            conn.get_database_backend(),
            "DELETE FROM usage_period_users_since \
             WHERE account_id = ? AND grain = ? AND period = ?",
            vec![account_id.into(), period.grain().into(), start.into()],
        ))
        .await?;
    }
    insert_many(
        conn,
        "usage_period_users_since",
        &[
            "account_id",
            "grain",
            "period",
            "from_day",
            "product_id",
            "distinct_users",
        ],
        rows,
        "",
    )
    .await?;
    Ok(())
}

/// The members of `period` from its first day up to (not including) `before`, rebuilt
/// from the daily rollups.
async fn restore_period_members(
    conn: &impl ConnectionTrait,
    period: Period,
    start: NaiveDate,
    before: NaiveDate,
) -> Result<()> {
    conn.execute_raw(stmt(
        conn.get_database_backend(),
        "DELETE FROM usage_period_members WHERE grain = ? AND period = ?",
        vec![period.grain().into(), start.into()],
    ))
    .await?;
    if before <= start {
        return Ok(());
    }
    let seen = days_seen(conn, start, before - Duration::days(1)).await?;
    let mut members: Vec<(i32, i32, i32, NaiveDate, NaiveDate)> = Vec::new();
    let mut any_product: BTreeMap<(i32, i32), (NaiveDate, NaiveDate)> = BTreeMap::new();
    for ((account_id, product_id, user_id), (first, last)) in seen {
        members.push((account_id, product_id, user_id, first, last));
        let any = any_product
            .entry((account_id, user_id))
            .or_insert((first, last));
        *any = (any.0.min(first), any.1.max(last));
    }
    members.extend(
        any_product
            .into_iter()
            .map(|((account_id, user_id), (first, last))| (account_id, 0, user_id, first, last)),
    );
    let members = members
        .into_iter()
        .map(|(account_id, product_id, user_id, first_day, last_day)| {
            member_row(
                period,
                start,
                (account_id, product_id, user_id),
                first_day,
                last_day,
            )
        })
        .collect();
    insert_many(conn, "usage_period_members", &MEMBER_COLUMNS, members, "").await?;
    Ok(())
}

/// The first and last rolled day in `from..=to` each user opened each product.
async fn days_seen(
    conn: &impl ConnectionTrait,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<HashMap<(i32, i32, i32), (NaiveDate, NaiveDate)>> {
    let rows = conn
        .query_all_raw(stmt(
            conn.get_database_backend(),
            "SELECT account_id, product_id, user_id, MIN(day) AS first_day, MAX(day) AS last_day \
             FROM usage_days WHERE day >= ? AND day <= ? AND opens > 0 \
             GROUP BY account_id, product_id, user_id",
            vec![from.into(), to.into()],
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                (
                    r.try_get("", "account_id")?,
                    r.try_get("", "product_id")?,
                    r.try_get("", "user_id")?,
                ),
                (r.try_get("", "first_day")?, r.try_get("", "last_day")?),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollups::UsageSums;

    fn agg(account_id: i32, user_id: i32, product_id: i32) -> DayAggregate {
        DayAggregate {
            account_id,
            user_id,
            product_id,
            sums: UsageSums::default(),
        }
    }

    #[test]
    fn chunks_split_at_users_and_tile_each_account() {
        let aggs = [
            agg(1, 1, 1),
            agg(1, 1, 2),
            agg(1, 1, 3),
            agg(1, 2, 1),
            agg(1, 3, 1),
            agg(2, 1, 1),
            agg(3, 5, 1),
            agg(3, 6, 1),
        ];
        let chunks = user_chunks(&aggs, 2);
        let shape: Vec<(usize, Vec<UserRange>)> = chunks
            .iter()
            .map(|c| (c.aggregates.len(), c.ranges.clone()))
            .collect();
        assert_eq!(
            shape,
            vec![
                // User 1's three rows stay together; the first chunk of account 1
                // owns every user below its last.
                (3, vec![(1, None, Some(1))]),
                // The rest of account 1 (and everything above), then account 2
                // whole, then account 3 from its first user.
                (2, vec![(1, Some(2), None)]),
                (2, vec![(2, None, None), (3, None, Some(5))]),
                (1, vec![(3, Some(6), None)]),
            ]
        );
        assert!(user_chunks(&[], 2).is_empty());
        // Users 2–4 had no usage: the second chunk owns them all the same.
        let gap = [agg(1, 1, 1), agg(1, 5, 1)];
        let ranges: Vec<Vec<UserRange>> = user_chunks(&gap, 1)
            .iter()
            .map(|c| c.ranges.clone())
            .collect();
        assert_eq!(
            ranges,
            vec![vec![(1, None, Some(1))], vec![(1, Some(2), None)]]
        );
        let one = user_chunks(&aggs, 100);
        assert_eq!(one.len(), 1);
        assert_eq!(
            one[0].ranges,
            vec![(1, None, None), (2, None, None), (3, None, None)]
        );
    }
}
