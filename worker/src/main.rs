//! `daypass-worker`: the background workers alone, for other machines than the API.

use anyhow::Context as _;
use clap::Parser;
use daypass_domain::{Db, SystemClock};
use daypass_ops::config::SharedConfig;
use daypass_ops::{init_tracing, shutdown_signal};
use daypass_queue::JobQueue;
use daypass_worker::{WorkerDeps, run_until};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "daypass-worker",
    version,
    about = "Daypass background workers: expiry sweeps and e-mail"
)]
struct Args {
    #[command(flatten)]
    shared: SharedConfig,
    /// Address of an HTTP listener for `/metrics`, `/healthz` and `/readyz` (port 0
    /// picks a free port, printed at start); unset: no listener.
    #[arg(long, env = "DAYPASS_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = args.shared;
    init_tracing(&config.log_format);
    let db = Db::connect(&config.database_url).await?;
    db.migrate().await?;
    let queue = JobQueue::connect_configured(&config).await?;
    let deps = WorkerDeps::new(db, Arc::new(SystemClock), queue, &config)?;
    daypass_ops::metrics_handle();
    let listener = match args.metrics_listen.as_deref().filter(|a| !a.is_empty()) {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on DAYPASS_METRICS_LISTEN {addr}"))?,
        ),
        None => None,
    };
    let metrics_addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
    tracing::info!(
        queue = deps.queue.backend_name(),
        mail = %deps.mailer.describe(),
        metrics = %metrics_addr.map_or("off".to_owned(), |a| a.to_string()),
        "daypass-worker running"
    );
    match metrics_addr {
        Some(addr) => println!("daypass-worker running; metrics on {addr}"),
        None => println!("daypass-worker running"),
    }
    let ops = listener.map(|listener| {
        let app = daypass_ops::router(deps.db.clone(), Arc::new(deps.queue.clone()));
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
        })
    });
    let result = run_until(deps, async {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing running jobs");
    })
    .await;
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    result
}
