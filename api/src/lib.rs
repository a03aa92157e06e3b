//! The API: its configuration, startup, HTTP and the GraphQL layer. Resolvers
//! translate GraphQL to `domain` calls and back. The `daypass` binary (the `server`
//! package) runs it, with or without the workers beside it.

pub mod config;
pub mod console;
pub mod graphql;
pub mod http;
pub mod state;
pub mod telemetry;
pub mod usage_csv;
pub mod ws_limits;

use config::Config;
use daypass_domain::Db;
use state::{AppState, Connected, RunMaintenance};
use std::sync::Arc;

/// Checks the configuration, connects to and migrates the database, and connects to
/// the job queue. The workers the process embeds are built on what this returns.
pub async fn connect(config: &Config) -> anyhow::Result<Connected> {
    if config.test_clock && config.env == "production" {
        anyhow::bail!("DAYPASS_TEST_CLOCK cannot be used with DAYPASS_ENV=production");
    }
    daypass_ops::metrics_handle();
    let db = Db::connect(&config.shared.database_url).await?;
    db.migrate().await?;
    Connected::new(db, config).await
}

/// Builds the state to serve (the queue installed as where committed notifications
/// go, the balance feed started) and binds. Returns the bound address, the state,
/// and the listener.
pub async fn start(
    connected: Connected,
    config: &Config,
    maintenance: Arc<dyn RunMaintenance>,
) -> anyhow::Result<(std::net::SocketAddr, AppState, tokio::net::TcpListener)> {
    let state = AppState::new(connected, config, maintenance).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    Ok((listener.local_addr()?, state, listener))
}
