//! The week and month distinct users the rollup job keeps, so a report counts a
//! period's users without reading each of its days.
//!
//! Each user who opened a product in a week or month is a member of it under that
//! product and under 0 (any product), with the first and last day they were seen
//! (`usage_period_members`). From the members the job stores, as each day is rolled,
//! the users from the period's first day through that day (`usage_period_users`) and
//! the users since each of its days (`usage_period_users_since`). A day rolled again
//! (the watermark was rewound) first rewinds its periods: their members are rebuilt
//! from the daily rollups of the days before it. Once a period is over its counts are
//! whole and its members are dropped.

use super::insert_many;
use crate::error::Result;
use crate::rollups::{DayAggregate, Period};
use crate::store::Db;
use crate::store::stmt;
use chrono::{Duration, NaiveDate};
use sea_orm::{ConnectionTrait, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// (period, account, product) → the members first seen on the day being rolled.
pub(super) type FirstSeen = BTreeMap<(Period, i32, i32), i64>;

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
pub(super) async fn rewind_period(
    conn: &impl ConnectionTrait,
    period: Period,
    day: NaiveDate,
) -> Result<()> {
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
pub(super) async fn add_members(
    conn: &impl ConnectionTrait,
    period: Period,
    day: NaiveDate,
    aggregates: &[DayAggregate],
    first_seen: &mut FirstSeen,
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
pub(super) async fn store_period_counts(
    conn: &impl ConnectionTrait,
    period: Period,
    day: NaiveDate,
    first_seen: &FirstSeen,
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
pub(super) async fn drop_finished_members(
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
pub(super) struct UsersSince {
    period: Period,
    start: NaiveDate,
    accounts: Vec<i32>,
    rows: Vec<Vec<Value>>,
}

pub(super) async fn users_since(
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
pub(super) async fn store_users_since(
    conn: &impl ConnectionTrait,
    since: UsersSince,
) -> Result<()> {
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
