//! `daypass-worker`: the background workers alone, for other machines than the API.

use anyhow::Context as _;
use clap::Parser;
use daypass_domain::{Db, SystemClock};
use daypass_worker::{WorkerConfig, WorkerDeps, run_until};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "daypass-worker",
    version,
    about = "Daypass background workers: expiry sweeps and e-mail"
)]
struct Args {
    /// `sqlite://…` or `postgres://…`
    #[arg(
        long,
        env = "DAYPASS_DATABASE_URL",
        default_value = "sqlite://daypass.db?mode=rwc"
    )]
    database_url: String,
    /// Where the job queue lives (defaults to the database URL).
    #[arg(long, env = "DAYPASS_QUEUE_URL")]
    queue_url: Option<String>,
    /// The queue's name (default `daypass.send_notification`).
    #[arg(long, env = "DAYPASS_QUEUE_NAME")]
    queue_name: Option<String>,
    #[arg(long, env = "DAYPASS_SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,
    #[arg(long, env = "DAYPASS_MAIL_DIR", default_value = "./outbox")]
    mail_dir: String,
    #[arg(
        long,
        env = "DAYPASS_MAIL_FROM",
        default_value = "Daypass <no-reply@localhost>"
    )]
    mail_from: String,
    #[arg(
        long,
        env = "DAYPASS_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    public_url: String,
    /// Address of an HTTP listener for `/metrics`, `/healthz` and `/readyz` (port 0
    /// picks a free port, printed at start); unset: no listener.
    #[arg(long, env = "DAYPASS_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// `json` for structured logs.
    #[arg(long, env = "DAYPASS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let db = Db::connect(&args.database_url).await?;
    db.migrate().await?;
    let config = WorkerConfig {
        queue_url: args.queue_url,
        queue_name: args.queue_name,
        database_url: args.database_url,
        smtp_url: args.smtp_url,
        mail_dir: args.mail_dir,
        mail_from: args.mail_from,
        public_url: args.public_url,
    };
    let deps = WorkerDeps::connect(db, Arc::new(SystemClock), &config).await?;
    daypass_worker::ops::metrics_handle();
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
        queue = deps.queue.as_ref().map_or("none", |q| q.backend_name()),
        mail = %deps.mailer.describe(),
        metrics = %metrics_addr.map_or("off".to_owned(), |a| a.to_string()),
        "daypass-worker running"
    );
    match metrics_addr {
        Some(addr) => println!("daypass-worker running; metrics on {addr}"),
        None => println!("daypass-worker running"),
    }
    let ops = listener.map(|listener| {
        let app = daypass_worker::ops::router(deps.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(daypass_worker::shutdown_signal())
                .await
        })
    });
    let result = run_until(deps, async {
        daypass_worker::shutdown_signal().await;
        tracing::info!("shutting down: finishing running jobs");
    })
    .await;
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    result
}
