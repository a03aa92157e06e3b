//! `daypass-worker`: the background workers alone, for other machines than the API.

use clap::Parser;
use daypass_domain::{Db, SystemClock};
use daypass_worker::{WorkerDeps, run_until};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "daypass-worker",
    about = "Daypass background workers (expiry sweeps)"
)]
struct Args {
    /// `sqlite://…` or `postgres://…`
    #[arg(
        long,
        env = "DAYPASS_DATABASE_URL",
        default_value = "sqlite://daypass.db?mode=rwc"
    )]
    database_url: String,
    /// `json` for structured logs.
    #[arg(long, env = "DAYPASS_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let db = Db::connect(&args.database_url).await?;
    db.migrate().await?;
    let deps = WorkerDeps {
        db,
        clock: Arc::new(SystemClock),
    };
    tracing::info!("daypass-worker running");
    run_until(deps, async {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing running jobs");
    })
    .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
