//! The API: its configuration, startup, HTTP and the GraphQL layer. Resolvers
//! translate GraphQL to `domain` calls and back. The `daypass` binary (the `server`
//! package) runs it, with or without the workers beside it.

pub mod config;
pub mod console;
pub mod graphql;
pub mod http;
pub mod jwks;
pub mod state;
pub mod telemetry;
pub mod usage_csv;
pub mod ws_limits;

use config::Config;
use daypass_domain::{Db, leases};
use state::{AppState, Connected, RunMaintenance};
use std::path::Path;
use std::sync::Arc;

/// Checks the configuration, connects to and migrates the database, and connects to
/// the job queue, and installs the lease signing key of `DAYPASS_SIGNING_KEY_FILE`
/// when it is set. The workers the process embeds are built on what this returns.
pub async fn connect(config: &Config) -> anyhow::Result<Connected> {
    if config.test_clock && config.shared.env == "production" {
        anyhow::bail!("DAYPASS_TEST_CLOCK cannot be used with DAYPASS_ENV=production");
    }
    // Read before anything else, so a missing file fails the start at once.
    let signing_key = match &config.signing_key_file {
        Some(path) => Some((path, read_signing_key_file(path).await?)),
        None => None,
    };
    daypass_ops::metrics_handle();
    let db = Db::connect(&config.shared.database_url).await?;
    db.migrate().await?;
    let connected = Connected::new(db, config).await?;
    if let Some((path, pem)) = signing_key {
        let kid = leases::install_signing_key(&connected.db, &pem, connected.clock.now())
            .await
            .map_err(|e| anyhow::anyhow!("DAYPASS_SIGNING_KEY_FILE {}: {e}", path.display()))?;
        tracing::info!(%kid, "lease signing key installed from DAYPASS_SIGNING_KEY_FILE");
    }
    Ok(connected)
}

async fn read_signing_key_file(path: &Path) -> anyhow::Result<String> {
    tokio::fs::read_to_string(path).await.map_err(|e| {
        anyhow::anyhow!(
            "DAYPASS_SIGNING_KEY_FILE {}: cannot read it: {e}",
            path.display()
        )
    })
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
