//! `daypass`: the one place that puts the API and the workers together. `serve`
//! runs the API and, with DAYPASS_WORKERS=embedded, every worker in the same process.

use clap::Parser;
use daypass_api::http;
use daypass_domain::{Actor, Clock, Db, SystemClock, accounts, leases};
use daypass_ops::{init_tracing, shutdown_signal};
use daypass_server::cli::{Cli, Command};
use daypass_server::workers_beside;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.config;
    init_tracing(&config.shared.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Schema => {
            let schema = daypass_api::graphql::AppSchema::build(config.test_clock, false, 0);
            print!("{}", schema.sdl());
        }
        Command::Migrate => {
            let db = Db::connect(&config.shared.database_url).await?;
            db.migrate().await?;
            eprintln!("migrations applied");
        }
        Command::CreateAccount {
            name,
            admin_email,
            admin_name,
        } => {
            let db = Db::connect(&config.shared.database_url).await?;
            db.migrate().await?;
            let input = accounts::NewAccount {
                name,
                admin_email,
                admin_name,
            };
            let created = accounts::create_account(&db, &Actor::Operator, SystemClock.now(), input)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!(
                "account {} created; admin {} (user {})",
                created.account.id, created.admin.email, created.admin.id
            );
            println!("{}", created.admin_api_key);
        }
        Command::RotateSigningKey => {
            if let Some(path) = &config.signing_key_file {
                anyhow::bail!(
                    "DAYPASS_SIGNING_KEY_FILE is set ({}): every start installs that key again, \
                     so rotate by putting a new key in that file and restarting",
                    path.display()
                );
            }
            let db = Db::connect(&config.shared.database_url).await?;
            db.migrate().await?;
            let kid = leases::rotate_signing_key(&db, SystemClock.now())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!("lease signing key rotated; the previous key stays published for 24 hours");
            println!("{kid}");
        }
        Command::Serve => {
            let connected = daypass_api::connect(&config).await?;
            let (deps, maintenance) = workers_beside(&connected, &config.shared)?;
            let (addr, state, listener) =
                daypass_api::start(connected, &config, maintenance).await?;
            let workers = (config.workers == "embedded")
                .then(|| tokio::spawn(daypass_worker::run_until(deps, shutdown_signal())));
            let app = http::router(state, config.cors_origins.as_deref());
            tracing::info!(%addr, workers = %config.workers, "daypass listening; GraphiQL at http://{addr}/graphql");
            println!("listening on {addr}");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
            if let Some(w) = workers {
                let _ = w.await;
            }
        }
    }
    Ok(())
}
