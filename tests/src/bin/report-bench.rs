//! Times the typical usage reports over a generated year (`generate-year`), read from
//! the rollups and, beside them, computed from the raw opens and charges; checks that
//! both give the same rows, and prints a Markdown table.
//!
//! `cargo run --release -p daypass-tests --bin report-bench -- --database URL [--runs 25]`

use anyhow::{Context, Result, anyhow, bail};
use chrono::{Duration, NaiveDate};
use clap::Parser;
use daypass_domain::{
    Db,
    reports::{Dimension, Source, UsageQuery, UsageRow, usage_rows},
    rollups,
};
use sea_orm::{ConnectionTrait, QueryResult, Value};
use std::time::{Duration as StdDuration, Instant};

#[derive(Parser)]
#[command(about = "Benchmark the typical usage reports, rollups against raw opens")]
struct Args {
    /// The generated database: `sqlite://…` or `postgres://…`.
    #[arg(long)]
    database: String,
    /// Timed runs of each report over the rollups (after one warm-up).
    #[arg(long, default_value_t = 25)]
    runs: usize,
    /// Timed runs of each report over the raw opens (0: skip the raw answers and the
    /// comparison, for quick runs while tuning).
    #[arg(long, default_value_t = 3)]
    raw_runs: usize,
    /// The account to report on (default: the last one named Globex).
    #[arg(long)]
    account: Option<i32>,
    /// The user of the one-user report (default: the account's busiest of the last 30 days).
    #[arg(long)]
    user: Option<i32>,
    /// Run the rollup job first (for a year generated with `--no-rollup`), timed.
    #[arg(long)]
    roll_up: bool,
}

struct Report {
    name: String,
    query: UsageQuery,
}

struct Timed {
    name: String,
    rows: usize,
    rollups: Vec<StdDuration>,
    raw: Vec<StdDuration>,
}

fn percentile(samples: &[StdDuration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort();
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1e3
}

async fn one(db: &Db, sql: &str, values: Vec<Value>) -> Result<QueryResult> {
    db.conn()
        .query_one_raw(daypass_domain::store::stmt(db.backend(), sql, values))
        .await?
        .ok_or_else(|| anyhow!("no row"))
}

async fn time_report(
    db: &Db,
    account_id: i32,
    q: &UsageQuery,
    source: Source,
    runs: usize,
) -> Result<(Vec<UsageRow>, Vec<StdDuration>)> {
    let mut rows = Vec::new();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        rows = usage_rows(db, account_id, q, source).await?;
        times.push(start.elapsed());
    }
    Ok((rows, times))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let db = Db::connect(&args.database).await?;
    db.migrate().await?;
    let kind = if db.is_postgres() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    if args.roll_up {
        let t = Instant::now();
        let days = rollups::roll_up(&db, chrono::Utc::now()).await?;
        println!(
            "{kind}: rolled up {days} days in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        if db.is_postgres() {
            // What autovacuum would soon do: planner statistics for the new rows.
            db.conn().execute_unprepared("ANALYZE").await?;
        }
    }
    let account_id: i32 = match args.account {
        Some(a) => a,
        None => one(
            &db,
            "SELECT id FROM accounts WHERE name = ? ORDER BY id DESC LIMIT 1",
            vec!["Globex".into()],
        )
        .await
        .context("no account named Globex: run generate-year first, or pass --account")?
        .try_get("", "id")?,
    };
    let last_at: Option<chrono::DateTime<chrono::Utc>> = one(
        &db,
        "SELECT MAX(at) AS last FROM opens WHERE account_id = ?",
        vec![account_id.into()],
    )
    .await?
    .try_get("", "last")?;
    let Some(last_at) = last_at else {
        bail!("account {account_id} has no opens");
    };
    let to: NaiveDate = last_at.date_naive();
    let year_from = to - Duration::days(364);
    let month_from = to - Duration::days(29);
    let count = |sql: &'static str, values: Vec<Value>| {
        let db = &db;
        async move {
            one(db, sql, values)
                .await?
                .try_get::<i64>("", "n")
                .map_err(anyhow::Error::from)
        }
    };
    let t = Instant::now();
    let charges = count("SELECT COUNT(*) AS n FROM charges", vec![]).await?;
    let account_charges = count(
        "SELECT COUNT(*) AS n FROM charges WHERE account_id = ?",
        vec![account_id.into()],
    )
    .await?;
    let opens = count("SELECT COUNT(*) AS n FROM opens", vec![]).await?;
    let counted_in = t.elapsed();
    let user_id: i32 = match args.user {
        Some(u) => u,
        None => one(
            &db,
            "SELECT user_id FROM charges WHERE account_id = ? AND window_starts_at >= ? \
             GROUP BY user_id ORDER BY COUNT(*) DESC, user_id LIMIT 1",
            vec![account_id.into(), rollups::day_start(month_from).into()],
        )
        .await?
        .try_get("", "user_id")?,
    };
    let watermark = rollups::rolled_through(db.conn()).await?;
    println!(
        "{kind}: {charges} charges ({account_charges} of account {account_id}), {opens} opens \
         (counted in {:.1} s); rolled up through {}; reports end {to}; one-user report for user {user_id}",
        counted_in.as_secs_f64(),
        watermark.map_or("never".to_owned(), |d| d.to_string())
    );

    let reports = [
        Report {
            name: format!("a year by month and product ({year_from} – {to})"),
            query: UsageQuery {
                from: year_from,
                to,
                group_by: vec![Dimension::Month, Dimension::Product],
                user_id: None,
                product_id: None,
            },
        },
        Report {
            name: format!("30 days by day and user ({month_from} – {to})"),
            query: UsageQuery {
                from: month_from,
                to,
                group_by: vec![Dimension::Day, Dimension::User],
                user_id: None,
                product_id: None,
            },
        },
        Report {
            name: format!("one user's year by month and product (user {user_id})"),
            query: UsageQuery {
                from: year_from,
                to,
                group_by: vec![Dimension::Month, Dimension::Product],
                user_id: Some(user_id),
                product_id: None,
            },
        },
    ];
    let mut timed = Vec::new();
    let mut mismatches = 0;
    for r in &reports {
        // One warm-up run, not timed.
        usage_rows(&db, account_id, &r.query, Source::Rollups).await?;
        let (rolled, rollup_times) =
            time_report(&db, account_id, &r.query, Source::Rollups, args.runs.max(1)).await?;
        let (raw, raw_times) = if args.raw_runs == 0 {
            (rolled.clone(), Vec::new())
        } else {
            time_report(&db, account_id, &r.query, Source::Raw, args.raw_runs).await?
        };
        if rolled != raw {
            mismatches += 1;
            eprintln!(
                "MISMATCH in {}: {} rows from the rollups, {} from the raw opens",
                r.name,
                rolled.len(),
                raw.len()
            );
            for (a, b) in rolled.iter().zip(&raw).filter(|(a, b)| a != b).take(5) {
                eprintln!("  rollups {a:?}\n  raw     {b:?}");
            }
        }
        println!(
            "  {}: {} rows, rollups p50 {:.1} ms, raw p50 {:.0} ms",
            r.name,
            rolled.len(),
            percentile(&rollup_times, 0.5),
            percentile(&raw_times, 0.5)
        );
        timed.push(Timed {
            name: r.name.clone(),
            rows: rolled.len(),
            rollups: rollup_times,
            raw: raw_times,
        });
    }

    println!();
    println!(
        "{kind}, {charges} charges ({account_charges} in the reported account), {opens} opens; \
         {} runs over the rollups, {} over the raw opens:",
        args.runs.max(1),
        args.raw_runs
    );
    println!();
    println!("| report | rows | rollups p50 ms | rollups p95 ms | raw p50 ms | raw/rollup ratio |");
    println!("|---|---:|---:|---:|---:|---:|");
    for t in &timed {
        let (p50, p95, raw) = (
            percentile(&t.rollups, 0.5),
            percentile(&t.rollups, 0.95),
            percentile(&t.raw, 0.5),
        );
        println!(
            "| {} | {} | {p50:.1} | {p95:.1} | {raw:.0} | {:.0}× |",
            t.name,
            t.rows,
            raw / p50.max(1e-3)
        );
    }
    if mismatches > 0 {
        bail!("{mismatches} report(s) differ between the rollups and the raw opens");
    }
    Ok(())
}
