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
//!
//! The week and month distinct users, written in the same transactions, are kept as
//! `periods` describes.

use super::{
    DayAggregate, DayRow, Grain, Period, ROLLUP_GRACE, UsageSums, coarsen, day_aggregates,
    rolled_through, user_blocks,
};
use crate::error::Result;
use crate::store::stmt;
use crate::store::{Db, WriteTx};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use daypass_entity::{account, open};
use periods::{
    FirstSeen, add_members, drop_finished_members, rewind_period, store_period_counts,
    store_users_since, users_since,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QueryResult, QuerySelect,
    Value,
};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Instant;

mod corrections;
mod periods;

pub(crate) use corrections::after_refund;

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

/// Rolls `day`, the day after `watermark`: the day's usage read once, then the
/// periods rewound, the user rows a chunk at a time, and the rows of whole accounts
/// with the watermark last, each step its own write transaction.
async fn roll_day(
    db: &Db,
    watermark: Option<NaiveDate>,
    day: NaiveDate,
    chunk_rows: usize,
    stop_after: Option<usize>,
) -> Result<DayRolled> {
    let accounts = account_ids(db).await?;
    let aggregates = read_day(db, day, &accounts).await?;
    let mut roll = DayRoll {
        db,
        watermark,
        day,
        stop_after,
        committed: 0,
        longest: std::time::Duration::ZERO,
    };
    if let ControlFlow::Break(end) = roll.rewind_periods().await? {
        return Ok(end);
    }
    let mut first_seen = FirstSeen::new();
    let chunks = user_chunks(&aggregates, chunk_rows);
    for chunk in &chunks {
        if let ControlFlow::Break(end) = roll.write_user_chunk(chunk, &mut first_seen).await? {
            return Ok(end);
        }
    }
    let Some(last) = roll
        .write_accounts(&accounts, &aggregates, &first_seen)
        .await?
    else {
        return Ok(DayRolled::Behind);
    };
    tracing::debug!(
        %day,
        rows = aggregates.len(),
        transactions = chunks.len() + 2,
        longest_write_ms = roll.longest.max(last).as_secs_f64() * 1e3,
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

/// Every account's aggregates of `day`, sorted by account, user and product.
async fn read_day(db: &Db, day: NaiveDate, accounts: &[i32]) -> Result<Vec<DayAggregate>> {
    let mut aggregates = Vec::new();
    // An account at a time, along the index on (account, time): one read of the
    // whole day would scan every open ever recorded.
    for &account_id in accounts {
        aggregates.extend(day_aggregates(db.conn(), day, account_id).await?);
    }
    aggregates.sort_unstable_by_key(|a| (a.account_id, a.user_id, a.product_id));
    Ok(aggregates)
}

/// One roll of `day`: the watermark it began from and the write transactions it
/// has committed.
struct DayRoll<'a> {
    db: &'a Db,
    watermark: Option<NaiveDate>,
    day: NaiveDate,
    /// Stop, as a crash would, after this many transactions (crash tests).
    stop_after: Option<usize>,
    committed: usize,
    /// How long this roll held the writer at most (logged: the figure that matters
    /// to charging on SQLite).
    longest: std::time::Duration,
}

impl DayRoll<'_> {
    /// A write transaction of this roll and when it took the writer, or `None` when
    /// another worker moved the watermark meanwhile.
    async fn begin(&self) -> Result<Option<(WriteTx, Instant)>> {
        Ok(locked(self.db, self.watermark)
            .await?
            .map(|tx| (tx, Instant::now())))
    }

    /// Commits a transaction of the roll, and breaks when the roll is to stop there.
    async fn commit(&mut self, tx: WriteTx, held: Instant) -> Result<ControlFlow<DayRolled>> {
        tx.commit().await?;
        self.longest = self.longest.max(held.elapsed());
        self.committed += 1;
        Ok(match self.stop_after.is_some_and(|n| self.committed >= n) {
            true => ControlFlow::Break(DayRolled::Stopped),
            false => ControlFlow::Continue(()),
        })
    }

    /// The first transaction: weeks and months this day was rolled into before lose
    /// what that roll counted.
    async fn rewind_periods(&mut self) -> Result<ControlFlow<DayRolled>> {
        let Some((tx, held)) = self.begin().await? else {
            return Ok(ControlFlow::Break(DayRolled::Behind));
        };
        for period in PERIODS {
            rewind_period(&*tx, period, self.day).await?;
        }
        self.commit(tx, held).await
    }

    /// A transaction per chunk: the chunk's rows of the user grains, and its users as
    /// members of the day's week and month (counted in `first_seen` when new).
    async fn write_user_chunk(
        &mut self,
        chunk: &UserChunk<'_>,
        first_seen: &mut FirstSeen,
    ) -> Result<ControlFlow<DayRolled>> {
        let Some((tx, held)) = self.begin().await? else {
            return Ok(ControlFlow::Break(DayRolled::Behind));
        };
        replace_user_rows(&*tx, self.day, chunk).await?;
        for period in PERIODS {
            add_members(&*tx, period, self.day, chunk.aggregates, first_seen).await?;
        }
        self.commit(tx, held).await
    }

    /// The last transaction: the rows of whole accounts, the week and month counts,
    /// and the watermark moved to the day. Returns how long it held the writer, or
    /// `None` when another worker moved the watermark meanwhile.
    async fn write_accounts(
        &mut self,
        accounts: &[i32],
        aggregates: &[DayAggregate],
        first_seen: &FirstSeen,
    ) -> Result<Option<std::time::Duration>> {
        let day = self.day;
        let mut since = Vec::new();
        for period in PERIODS {
            since.push(users_since(self.db.conn(), period, period.start_of(day), accounts).await?);
        }
        let Some((tx, held)) = self.begin().await? else {
            return Ok(None);
        };
        replace_account_rows(&*tx, day, aggregates).await?;
        corrections::apply(&*tx, day).await?;
        for period in PERIODS {
            store_period_counts(&*tx, period, day, first_seen).await?;
        }
        for since in since {
            store_users_since(&*tx, since).await?;
        }
        set_watermark(&*tx, day).await?;
        tx.commit().await?;
        Ok(Some(held.elapsed()))
    }
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
    let mut blocks: BTreeMap<i32, Vec<(i32, UsageSums)>> = BTreeMap::new();
    for (account_id, r) in rows {
        let Some(user_id) = r.user_id else { continue };
        blocks
            .entry(*account_id)
            .or_default()
            .push((user_id, r.sums));
    }
    let values = blocks
        .into_iter()
        .map(|(account_id, users)| {
            let packed = user_blocks::pack(day, users)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
