//! The load benchmark: the real `daypass` binary on SQLite and on PostgreSQL,
//! driven with `openProduct` over HTTP by 16 concurrent keep-alive connections —
//! charging opens (each a distinct user–product pair), reopens inside the window,
//! for one account with thousands of flex users and for users spread over 1,000
//! accounts — then `heartbeat` (in use, inside the window) once for each session
//! those opens started, with the server's peak RSS and, in the same run, the
//! raw-SQL ceilings of the same charge: pgbench (one account, 1,000 accounts) and
//! the sqlite3 shell. Prints each figure, each ratio to its ceiling (heartbeats: to
//! the faster charging phase) and Markdown tables. Missing a target is not an
//! error; any failed request is.
//!
//! ```sh
//! cargo run --release -p daypass-tests --bin load-bench -- \
//!   [--backend sqlite|postgres|both] [--users 4000] [--products 40] [--accounts 1000] \
//!   [--requests 10000] [--heartbeats 40000] [--concurrency 16] [--ceiling-seconds 10] [--smoke] \
//!   [--postgres postgres://root@127.0.0.1:5432/postgres] [--daypass-bin PATH] [--json FILE]
//! ```

use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::{Parser, ValueEnum};
use daypass_tests::load;
use load::ceiling::{self, Ceiling};
use load::drive::{self, Expect, Phase, PhaseStats};
use load::report::{self, BackendRun};
use load::server::{Rss, Server};
use load::setup::{self, Fixture, Group, Spec};
use reqwest::header::HeaderValue;
use sea_orm::{ConnectionTrait, Database};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Parser)]
#[command(about = "The load benchmark: openProduct over HTTP against raw-SQL ceilings")]
struct Args {
    #[arg(long, value_enum, default_value_t = Backend::Both)]
    backend: Backend,
    /// Flex users of the one account; as many again spread over --accounts
    /// [default: 4000; smoke: 40].
    #[arg(long)]
    users: Option<usize>,
    /// Catalog products [default: 40; smoke: 4].
    #[arg(long)]
    products: Option<usize>,
    /// Accounts of the spread phase [default: 1000; smoke: 8].
    #[arg(long)]
    accounts: Option<usize>,
    /// Charging opens per phase, each a distinct user–product pair; the reopen
    /// phase sends them again [default: 10000; smoke: 120].
    #[arg(long)]
    requests: Option<usize>,
    /// Heartbeats of the heartbeat phase, each of a different session the four
    /// open phases started [default and at most: 4 × --requests].
    #[arg(long)]
    heartbeats: Option<usize>,
    /// Concurrent connections (and pgbench clients).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of each pgbench run [default: 10; smoke: 1].
    #[arg(long)]
    ceiling_seconds: Option<u64>,
    /// Tiny numbers: a check that the harness works, in well under a minute.
    #[arg(long)]
    smoke: bool,
    /// A PostgreSQL server (URL of any database on it) where the run may create and
    /// drop its database [default: DAYPASS_TEST_DATABASE when it is a postgres URL,
    /// else postgres://root@127.0.0.1:5432/postgres].
    #[arg(long)]
    postgres: Option<String>,
    /// The daypass binary [default: cargo build --release, target/release/daypass].
    #[arg(long)]
    daypass_bin: Option<PathBuf>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Settings {
    spec: Spec,
    heartbeats: usize,
    concurrency: usize,
    ceiling_seconds: u64,
    smoke: bool,
    postgres: String,
    bin: PathBuf,
}

impl Settings {
    fn describe(&self) -> String {
        let s = &self.spec;
        format!(
            "{} cores, {} flex users in 1 account and {} over {} accounts, {} products, \
             {} charging opens per phase, {} heartbeats, {} connections, pgbench -T {} s, \
             daypass {}{}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            report::thousands(s.users as f64),
            report::thousands((s.per_account() * s.accounts) as f64),
            report::thousands(s.accounts as f64),
            s.products,
            report::thousands(s.requests as f64),
            report::thousands(self.heartbeats as f64),
            self.concurrency,
            self.ceiling_seconds,
            self.bin.display(),
            if self.smoke { ", smoke run" } else { "" }
        )
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let smoke = args.smoke;
    let pick = |given: Option<usize>, full: usize, small: usize| {
        given.unwrap_or(if smoke { small } else { full })
    };
    let spec = Spec {
        users: pick(args.users, 4_000, 40),
        products: pick(args.products, 40, 4),
        accounts: pick(args.accounts, 1_000, 8),
        requests: pick(args.requests, 10_000, 120),
    };
    spec.check()?;
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let sessions = 4 * spec.requests;
    let heartbeats = args.heartbeats.unwrap_or(sessions);
    if heartbeats == 0 || heartbeats > sessions {
        bail!(
            "--heartbeats must be 1 to {sessions}: one for each session the four open phases start"
        );
    }
    let bin = match args.daypass_bin {
        Some(bin) => bin,
        None => {
            println!("building daypass (release)…");
            load::server::build_release_binary()?
        }
    };
    let settings = Settings {
        spec,
        heartbeats,
        concurrency: args.concurrency,
        ceiling_seconds: args.ceiling_seconds.unwrap_or(if smoke { 1 } else { 10 }),
        smoke,
        postgres: args
            .postgres
            .or_else(daypass_tests::target_database)
            .unwrap_or_else(|| "postgres://root@127.0.0.1:5432/postgres".into()),
        bin,
    };
    let date = Utc::now().format("%Y-%m-%d").to_string();
    println!("load-bench {date}: {}", settings.describe());

    let mut runs = Vec::new();
    if matches!(args.backend, Backend::Sqlite | Backend::Both) {
        runs.push(run_sqlite(&settings).await.context("SQLite run")?);
    }
    if matches!(args.backend, Backend::Postgres | Backend::Both) {
        runs.push(run_postgres(&settings).await.context("PostgreSQL run")?);
    }
    report::print_summary(&runs, &date, &settings.describe());
    if let Some(path) = args.json {
        let doc = serde_json::json!({
            "date": date,
            "settings": settings.describe(),
            "runs": runs.iter().map(BackendRun::json).collect::<Vec<_>>(),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

async fn run_sqlite(s: &Settings) -> Result<BackendRun> {
    println!("== SQLite");
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("daypass.db");
    let url = format!("sqlite://{}?mode=rwc", file.display());
    let (fixture, measured) = measure(&url, s).await?;
    let copy = ceiling::copy_sqlite(&file, dir.path()).await?;
    let one = ceiling::sqlite_shell(&copy, &fixture, &fixture.one, "sqlite3 shell, 1 account")?;
    report::print_ceiling(&one);
    let spread = ceiling::sqlite_shell(
        &copy,
        &fixture,
        &fixture.spread,
        &format!("sqlite3 shell, {}", spread_label(s)),
    )?;
    report::print_ceiling(&spread);
    Ok(measured.into_run("SQLite", s, one, spread, None))
}

async fn run_postgres(s: &Settings) -> Result<BackendRun> {
    println!("== PostgreSQL");
    let prefix = if s.smoke {
        // The test suite's prefix: CI drops what a killed run leaves behind.
        "daypass_test_loadbench"
    } else {
        "daypass_loadbench"
    };
    let url = daypass_tests::create_postgres_database(&s.postgres, prefix).await?;
    let result = postgres_on(&url, s).await;
    let dropped = drop_database(&s.postgres, &url).await;
    let run = result?;
    dropped?;
    Ok(run)
}

async fn postgres_on(url: &str, s: &Settings) -> Result<BackendRun> {
    let (fixture, measured) = measure(url, s).await?;
    ceiling::top_up_lots(url).await?;
    let bench = |group, name, notify| pgbench(url, s, &fixture, group, name, notify);
    let one = bench(&fixture.one, "pgbench, 1 account".into(), false).await?;
    let spread_name = format!("pgbench, {}", spread_label(s));
    let spread = bench(&fixture.spread, spread_name, false).await?;
    let notify_name = format!("pgbench + pg_notify, {}", spread_label(s));
    let notify = (
        bench(&fixture.one, "pgbench + pg_notify, 1 account".into(), true).await?,
        bench(&fixture.spread, notify_name, true).await?,
    );
    Ok(measured.into_run("PostgreSQL", s, one, spread, Some(notify)))
}

async fn pgbench(
    url: &str,
    s: &Settings,
    fixture: &Fixture,
    group: &Group,
    name: String,
    notify: bool,
) -> Result<Ceiling> {
    let c = ceiling::pgbench(
        url,
        fixture,
        group,
        &name,
        notify,
        s.concurrency,
        s.ceiling_seconds,
    )
    .await?;
    report::print_ceiling(&c);
    Ok(c)
}

/// `DROP DATABASE … WITH (FORCE)` of the run's database.
async fn drop_database(server: &str, url: &str) -> Result<()> {
    let name = url.rsplit('/').next().unwrap_or_default();
    let admin = Database::connect(server)
        .await
        .with_context(|| format!("connect to {server} to drop {name}"))?;
    let dropped = admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .with_context(|| format!("drop database {name}"));
    admin.close().await.ok();
    dropped.map(|_| ())
}

/// "1,000 accounts".
fn spread_label(s: &Settings) -> String {
    format!("{} accounts", report::thousands(s.spec.accounts as f64))
}

/// The server's five phases and its memory.
struct Measured {
    one_charge: PhaseStats,
    one_reopen: PhaseStats,
    spread_charge: PhaseStats,
    spread_reopen: PhaseStats,
    heartbeats: PhaseStats,
    rss: Rss,
}

impl Measured {
    fn into_run(
        self,
        backend: &'static str,
        s: &Settings,
        ceiling_one: Ceiling,
        ceiling_spread: Ceiling,
        notify: Option<(Ceiling, Ceiling)>,
    ) -> BackendRun {
        BackendRun {
            backend,
            accounts: s.spec.accounts,
            one_charge: self.one_charge,
            one_reopen: self.one_reopen,
            spread_charge: self.spread_charge,
            spread_reopen: self.spread_reopen,
            heartbeats: self.heartbeats,
            ceiling_one,
            ceiling_spread,
            notify,
            rss: self.rss,
        }
    }
}

/// Writes the fixture into the empty database at `url`, starts the server on it,
/// runs the four open phases and the heartbeats of the sessions they started, reads
/// the server's memory and stops it.
async fn measure(url: &str, s: &Settings) -> Result<(Fixture, Measured)> {
    let fixture = setup::prepare(url, &s.spec).await?;
    let server = Server::start(&s.bin, url, &daypass_domain::auth::generate_api_key()).await?;
    let clients = drive::clients(s.concurrency)?;
    drive::warm_up(&clients, &server.base_url, &fixture.one.users[0].key).await?;
    let spread = spread_label(s);
    let mut stats = Vec::new();
    let mut opened = Vec::new();
    for (group, label) in [
        (&fixture.one, "1 account"),
        (&fixture.spread, spread.as_str()),
    ] {
        for expect in [Expect::Charge, Expect::Reopen] {
            let name = match expect {
                Expect::Charge => format!("{label}, charging"),
                Expect::Reopen => format!("{label}, reopen"),
            };
            let phase = phase(&fixture, group, name, expect)?;
            let st = drive::run(&clients, &server.base_url, &phase).await;
            report::print_phase(&st);
            succeeded(&st)?;
            opened.push(started_sessions(&phase, &st)?);
            stats.push(st);
        }
    }
    let beats = Phase::heartbeats("heartbeats".into(), interleave(opened, s.heartbeats))?;
    let st = drive::run(&clients, &server.base_url, &beats).await;
    report::print_phase(&st);
    succeeded(&st)?;
    stats.push(st);
    let rss = server.rss()?;
    println!(
        "  server (pid {}): peak RSS {:.1} MiB, now {:.1} MiB",
        server.pid(),
        rss.peak_kb as f64 / 1024.0,
        rss.current_kb as f64 / 1024.0
    );
    drop(clients);
    server.stop().await?;
    let mut stats = stats.into_iter();
    let mut next = || stats.next().context("a phase is missing");
    let measured = Measured {
        one_charge: next()?,
        one_reopen: next()?,
        spread_charge: next()?,
        spread_reopen: next()?,
        heartbeats: next()?,
        rss,
    };
    Ok((fixture, measured))
}

fn phase(fixture: &Fixture, group: &Group, name: String, expect: Expect) -> Result<Phase> {
    Phase::new(
        name,
        expect,
        group.pairs.iter().map(|&(u, p)| {
            let product = &fixture.products[p];
            (
                group.users[u].key.as_str(),
                product.code.as_str(),
                product.daily_rate,
            )
        }),
    )
}

/// Any failed request fails the run.
fn succeeded(st: &PhaseStats) -> Result<()> {
    if st.failures > 0 {
        bail!(
            "{}: {} of {} {} failed; the first:\n  {}",
            st.name,
            st.failures,
            st.latencies.len(),
            st.unit,
            st.samples.join("\n  ")
        );
    }
    Ok(())
}

/// The sessions an open phase started, each with its user's `Authorization`, in
/// the phase's order.
fn started_sessions(phase: &Phase, st: &PhaseStats) -> Result<Vec<(HeaderValue, String)>> {
    if st.sessions.len() != phase.requests.len() {
        bail!(
            "{}: {} sessions from {} opens",
            st.name,
            st.sessions.len(),
            phase.requests.len()
        );
    }
    Ok(st
        .sessions
        .iter()
        .map(|(i, id)| (phase.requests[*i].auth.clone(), id.clone()))
        .collect())
}

/// The first `n` sessions taking one from each phase in turn, so consecutive
/// heartbeats are of different users and accounts.
fn interleave(
    phases: Vec<Vec<(HeaderValue, String)>>,
    n: usize,
) -> impl Iterator<Item = (HeaderValue, String)> {
    let mut iters: Vec<_> = phases.into_iter().map(Vec::into_iter).collect();
    std::iter::from_fn(move || {
        let mut any = false;
        let mut round = Vec::with_capacity(iters.len());
        for it in &mut iters {
            if let Some(x) = it.next() {
                any = true;
                round.push(x);
            }
        }
        any.then_some(round)
    })
    .flatten()
    .take(n)
}
