//! The `daypass` binary's library: configuration, startup, HTTP and the GraphQL
//! layer. Resolvers translate GraphQL to `domain` calls and back.

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
use state::AppState;

/// Connects, migrates, and binds. Returns the bound address and the server future.
pub async fn start(
    config: &Config,
) -> anyhow::Result<(std::net::SocketAddr, AppState, tokio::net::TcpListener)> {
    if config.test_clock && config.env == "production" {
        anyhow::bail!("DAYPASS_TEST_CLOCK cannot be used with DAYPASS_ENV=production");
    }
    daypass_worker::ops::metrics_handle();
    let db = Db::connect(&config.database_url).await?;
    db.migrate().await?;
    let state = AppState::new(db, config).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    Ok((listener.local_addr()?, state, listener))
}

/// Logs to stderr: human-readable lines, or with `json` one JSON object a line whose
/// `span` and `spans` fields carry the enclosing spans' fields (a request's
/// `request_id` among them).
pub fn init_tracing(format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
    } else {
        builder.try_init()
    };
}

pub use daypass_worker::shutdown_signal;
