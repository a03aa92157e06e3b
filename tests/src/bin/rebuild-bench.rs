//! Charging while the rollups are rebuilt: the latency of charging opens over HTTP
//! (16 keep-alive connections) against the real `daypass` binary, first with nothing
//! else running, then while the same binary rebuilds the rollups of a generated year
//! from the start (as after an upgrade that rewinds the watermark). Each binary named
//! with `--daypass-bin` is measured in turn on the same database, so two builds
//! compare in one run.
//!
//! ```sh
//! cargo run --release -p daypass-tests --bin generate-year -- --database URL --no-rollup
//! cargo run --release -p daypass-tests --bin rebuild-bench -- --database URL \
//!   --daypass-bin OLD --daypass-bin NEW [--users 2000] [--products 20] [--requests 20000]
//! ```

use anyhow::{Context, Result, bail};
use clap::Parser;
use daypass_domain::{Db, rollups};
use daypass_tests::load;
use load::drive::{self, Expect, Phase, PhaseStats};
use load::server::Server;
use load::setup::{self, Spec};
use sea_orm::{ConnectionTrait, Statement};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Charging-open latency while the rollups of a generated year are rebuilt")]
struct Args {
    /// A database holding a generated year (`generate-year`).
    #[arg(long)]
    database: String,
    /// The `daypass` binaries to measure, in turn [default: this build's].
    #[arg(long = "daypass-bin")]
    daypass_bins: Vec<PathBuf>,
    /// Flex users of the benchmark's account (new for each binary).
    #[arg(long, default_value_t = 2_000)]
    users: usize,
    #[arg(long, default_value_t = 20)]
    products: usize,
    /// Charging opens per binary: half before the rebuild, half during it.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The longest the phase during the rebuild runs: a build that holds the writer
    /// for a whole day's rollup answers few opens a second meanwhile.
    #[arg(long, default_value_t = 30)]
    rebuild_seconds: u64,
}

const OPERATOR_KEY: &str = "rebuild-bench-operator-key-0123456789abcdef";

/// The tables the rollup job derives from the raw opens.
const ROLLUP_TABLES: [&str; 8] = [
    "usage_days",
    "usage_day_users",
    "usage_day_products",
    "usage_day_totals",
    "usage_day_user_blocks",
    "usage_period_users",
    "usage_period_users_since",
    "usage_period_members",
];

/// Empties the rollups and rewinds the watermark, as an upgrade with new rollup
/// tables does, so the next rollup rebuilds every day.
async fn rewind_rollups(db: &Db) -> Result<()> {
    for table in ROLLUP_TABLES {
        let sql = if db.is_postgres() {
            format!("TRUNCATE {table}")
        } else {
            format!("DELETE FROM {table}")
        };
        db.conn()
            .execute_raw(Statement::from_string(db.backend(), sql))
            .await
            .with_context(|| format!("empty {table}"))?;
    }
    db.conn()
        .execute_raw(Statement::from_string(
            db.backend(),
            "UPDATE rollup_watermark SET rolled_through = NULL",
        ))
        .await?;
    Ok(())
}

struct Run {
    bin: PathBuf,
    quiet: PhaseStats,
    rebuilding: PhaseStats,
    days_rolled: i64,
}

async fn measure(args: &Args, bin: &Path) -> Result<Run> {
    println!("== {}", bin.display());
    let db = Db::connect(&args.database).await?;
    rewind_rollups(&db).await?;
    let spec = Spec {
        users: args.users,
        products: args.products,
        accounts: 1,
        requests: args.requests,
    };
    let fixture = setup::prepare(&args.database, &spec).await?;
    let group = &fixture.one;
    let half = group.pairs.len() / 2;
    let phase = |name: &str, pairs: &[(usize, usize)]| {
        Phase::new(
            name.to_owned(),
            Expect::Charge,
            pairs.iter().map(|&(u, p)| {
                let product = &fixture.products[p];
                (
                    group.users[u].key.as_str(),
                    product.code.as_str(),
                    product.daily_rate,
                )
            }),
        )
    };
    let quiet = phase("charging, quiet", &group.pairs[..half])?;
    let rebuilding = phase("charging, during the rebuild", &group.pairs[half..])?;

    // External workers: nothing rolls up but the rebuild started below.
    let server = Server::start_with(
        bin,
        &args.database,
        OPERATOR_KEY,
        &[
            ("DAYPASS_TEST_CLOCK", "1"),
            ("DAYPASS_WORKERS", "external"),
            // Builds that log each rolled day's longest write transaction show it.
            ("RUST_LOG", "warn,daypass_domain::rollups=debug"),
        ],
    )
    .await?;
    let clients = drive::clients(args.concurrency)?;
    drive::warm_up(&clients, &server.base_url, &group.users[0].key).await?;
    let quiet = drive::run(&clients, &server.base_url, &quiet).await;
    load::report::print_phase(&quiet);

    // The rebuild: `runMaintenance` rolls every closed day up, the whole year.
    let url = format!("{}/graphql", server.base_url);
    let rebuild = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(OPERATOR_KEY)
            .json(&serde_json::json!({"query": "mutation { runMaintenance }"}))
            .timeout(Duration::from_secs(3_600))
            .send()
            .await
    });
    let started = Instant::now();
    while rollups::rolled_through(db.conn()).await?.is_none() {
        if started.elapsed() > Duration::from_secs(120) || rebuild.is_finished() {
            bail!("the rebuild did not roll a first day within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = rollups::rolled_through(db.conn()).await?;
    let deadline = Instant::now() + Duration::from_secs(args.rebuild_seconds);
    let rebuilding =
        drive::run_until(&clients, &server.base_url, &rebuilding, Some(deadline)).await;
    let last = rollups::rolled_through(db.conn()).await?;
    load::report::print_phase(&rebuilding);
    let days_rolled = match (first, last) {
        (Some(f), Some(l)) => (l - f).num_days(),
        _ => 0,
    };
    println!("  days rolled during the phase: {days_rolled}");
    if rebuild.is_finished() {
        bail!("the rebuild finished before the phase did: measure with more --requests");
    }
    rebuild.abort();
    drop(server);
    for stats in [&quiet, &rebuilding] {
        if stats.failures > 0 {
            bail!(
                "{}: {} failed requests: {:?}",
                stats.name,
                stats.failures,
                stats.samples
            );
        }
    }
    Ok(Run {
        bin: bin.to_path_buf(),
        quiet,
        rebuilding,
        days_rolled,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.daypass_bins.is_empty() {
        args.daypass_bins
            .push(load::server::build_release_binary()?);
    }
    let mut runs = Vec::new();
    for bin in args.daypass_bins.clone() {
        runs.push(measure(&args, &bin).await?);
    }
    println!();
    println!("| binary | phase | opens/s | p50 ms | p99 ms | max ms | days rolled |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &runs {
        for (stats, days) in [(&r.quiet, None), (&r.rebuilding, Some(r.days_rolled))] {
            println!(
                "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
                r.bin.display(),
                stats.name,
                stats.per_sec(),
                stats.percentile_ms(0.50),
                stats.percentile_ms(0.99),
                stats.percentile_ms(1.0),
                days.map(|d| d.to_string()).unwrap_or_default()
            );
        }
    }
    Ok(())
}
