//! The raw-SQL ceilings: the same charge, as SQL with no server in between, on the
//! database the server has just used (stopped by then), at the same concurrency.
//!
//! - PostgreSQL: `pgbench` with `tests/bench/charge.sql`, for one account and spread
//!   over the spread phase's accounts (and, for information, the same with the
//!   server's `pg_notify`).
//! - SQLite: the `sqlite3` shell running `tests/bench/charge-sqlite.sql` once per
//!   charge of the charging phase, on a copy of the server's database file, with the
//!   server's pragmas.
//!
//! Before either runs, every lot gets 100 million more tokens (quantity and
//! remaining alike, so `quantity = used + expired + remaining` holds): a ceiling
//! must never run dry.

use super::setup::{Fixture, Group};
use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::{ConnectionTrait, Database, Statement};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

pub const PGBENCH_SCRIPT: &str = include_str!("../../bench/charge.sql");
pub const SQLITE_SCRIPT: &str = include_str!("../../bench/charge-sqlite.sql");

const TOP_UP: &str =
    "UPDATE lots SET quantity = quantity + 100000000, remaining = remaining + 100000000";

/// The pragmas `Db::connect` gives the server's SQLite connections.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL;\nPRAGMA synchronous = FULL;\nPRAGMA busy_timeout = 30000;\nPRAGMA foreign_keys = ON;\n";

/// One ceiling's figure.
#[derive(Debug, Clone)]
pub struct Ceiling {
    pub name: String,
    pub tool: &'static str,
    pub transactions: u64,
    pub tx_per_sec: f64,
    /// pgbench's average latency (the shell runs one transaction at a time).
    pub latency_avg_ms: Option<f64>,
}

/// Adds the top-up to every lot of the database at `url` (`sqlite://…` or `postgres://…`).
pub async fn top_up_lots(url: &str) -> Result<()> {
    let conn = Database::connect(url)
        .await
        .with_context(|| format!("connect to {url}"))?;
    conn.execute_unprepared(TOP_UP)
        .await
        .context("top up lots")?;
    conn.close().await.ok();
    Ok(())
}

/// `pgbench -n -M prepared -c C -j min(2, C) -T seconds` with the charge script on
/// `group`'s accounts; checks that every transaction it counts wrote its charge.
pub async fn pgbench(
    url: &str,
    fixture: &Fixture,
    group: &Group,
    name: &str,
    notify: bool,
    concurrency: usize,
    seconds: u64,
) -> Result<Ceiling> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("charge.sql");
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let vars = [
        ("aid_first", group.account_ids[0]),
        ("accounts", group.account_ids.len() as i32),
        ("uid_first", group.users[0].id),
        ("per_account", group.per_account as i32),
        ("pid_first", fixture.products[0].id),
        ("products", fixture.products.len() as i32),
        ("notify", i32::from(notify)),
    ];
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-M", "prepared"])
        .arg("-c")
        .arg(concurrency.to_string())
        .arg("-j")
        .arg(concurrency.clamp(1, 2).to_string())
        .arg("-T")
        .arg(seconds.to_string())
        .arg("-f")
        .arg(&script);
    for (k, v) in vars {
        cmd.arg("-D").arg(format!("{k}={v}"));
    }
    cmd.arg(url);
    let charges_before = count_charges(url).await?;
    let out = cmd
        .output()
        .context("run pgbench (is it installed? /usr/bin/pgbench)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("pgbench failed ({}):\n{stdout}\n{stderr}", out.status);
    }
    let value = |prefix: &str| -> Result<f64> {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("no {prefix:?} in pgbench's output:\n{stdout}\n{stderr}"))
    };
    let failed = value("number of failed transactions:").unwrap_or(0.0);
    if failed > 0.0 {
        bail!("pgbench: {failed} failed transactions:\n{stdout}\n{stderr}");
    }
    let transactions = value("number of transactions actually processed:")? as u64;
    let written = count_charges(url).await? - charges_before;
    if written != transactions as i64 {
        bail!("pgbench counted {transactions} transactions but {written} charges were written");
    }
    Ok(Ceiling {
        name: name.to_owned(),
        tool: "pgbench",
        transactions,
        tx_per_sec: value("tps =")?,
        latency_avg_ms: Some(value("latency average =")?),
    })
}

async fn count_charges(url: &str) -> Result<i64> {
    let conn = Database::connect(url)
        .await
        .with_context(|| format!("connect to {url}"))?;
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT COUNT(*) AS n FROM charges",
        ))
        .await?
        .context("no row from COUNT(*)")?;
    conn.close().await.ok();
    Ok(row.try_get("", "n")?)
}

/// Copies the (stopped) server's SQLite database to `dir`, with its WAL folded in,
/// and tops up the copy's lots. Returns the copy's path.
pub async fn copy_sqlite(database: &Path, dir: &Path) -> Result<std::path::PathBuf> {
    sqlite3(database, "PRAGMA wal_checkpoint(TRUNCATE);")?;
    let copy = dir.join("ceiling.db");
    std::fs::copy(database, &copy).context("copy the database file")?;
    top_up_lots(&format!("sqlite://{}", copy.display())).await?;
    Ok(copy)
}

/// The sqlite3 shell on `database` running the charge transaction once per charge of
/// `group`'s charging phase, one after the other (SQLite has one writer).
pub fn sqlite_shell(
    database: &Path,
    fixture: &Fixture,
    group: &Group,
    name: &str,
) -> Result<Ceiling> {
    let next_charge: i64 = sqlite3(database, "SELECT COALESCE(MAX(id), 0) + 1 FROM charges;")?
        .trim()
        .parse()
        .context("the next charge id")?;
    let template: String = SQLITE_SCRIPT
        .lines()
        .filter(|l| !l.starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    // Whole microseconds, as the domain stores instants.
    let start = daypass_domain::clock::to_stored_precision(Utc::now());
    let mut script = String::from(".bail on\n");
    script.push_str(SQLITE_PRAGMAS);
    for (i, &(u, p)) in group.pairs.iter().enumerate() {
        let user = &group.users[u];
        let product = &fixture.products[p];
        let lot = group
            .lot_of(user.account_id)
            .ok_or_else(|| anyhow!("no lot for account {}", user.account_id))?;
        // Distinct instants, stored as sqlx stores a DateTime<Utc> in SQLite.
        let now = start + chrono::Duration::microseconds(i as i64);
        let ends = now + chrono::Duration::hours(24);
        let mut tx = template.clone();
        for (k, v) in [
            ("{aid}", user.account_id.to_string()),
            ("{uid}", user.id.to_string()),
            ("{pid}", product.id.to_string()),
            ("{code}", product.code.clone()),
            ("{rate}", product.daily_rate.to_string()),
            (
                "{cost}",
                (product.daily_rate * lot.unit_price_minor).to_string(),
            ),
            ("{lot}", lot.lot_id.to_string()),
            ("{charge}", (next_charge + i as i64).to_string()),
            ("{now}", stored(now)),
            ("{ends}", stored(ends)),
        ] {
            tx = tx.replace(k, &v);
        }
        script.push_str(&tx);
    }
    let file = database.with_extension("charges.sql");
    std::fs::write(&file, &script)?;
    let started = Instant::now();
    let out = Command::new("sqlite3")
        .arg(database)
        .stdin(std::fs::File::open(&file)?)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("run sqlite3 (is it installed? /usr/bin/sqlite3)")?;
    let elapsed = started.elapsed();
    if !out.status.success() || !out.stderr.is_empty() {
        bail!(
            "sqlite3 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let transactions = group.pairs.len() as u64;
    let written: i64 = sqlite3(database, "SELECT MAX(id) FROM charges;")?
        .trim()
        .parse()
        .context("the last charge id")?;
    if written != next_charge + transactions as i64 - 1 {
        bail!("the sqlite3 shell wrote charges up to {written}, not all {transactions}");
    }
    Ok(Ceiling {
        name: name.to_owned(),
        tool: "sqlite3",
        transactions,
        tx_per_sec: transactions as f64 / elapsed.as_secs_f64(),
        latency_avg_ms: None,
    })
}

fn stored(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// Runs `sql` in the sqlite3 shell on `database`; its output.
fn sqlite3(database: &Path, sql: &str) -> Result<String> {
    let out = Command::new("sqlite3")
        .arg(database)
        .arg(sql)
        .output()
        .context("run sqlite3 (is it installed? /usr/bin/sqlite3)")?;
    if !out.status.success() {
        bail!(
            "sqlite3 {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
