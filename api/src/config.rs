//! The API's configuration: what both binaries read ([`SharedConfig`], declared in
//! `daypass-ops`), and the variables only the API reads. Defaults, then environment
//! variables, then flags (each variable has a flag twin). Secrets are never printed.

use clap::Args;
pub use daypass_ops::config::SharedConfig;

#[derive(Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub shared: SharedConfig,
    /// API address; port 0 picks a free port (printed at start).
    #[arg(
        long,
        env = "DAYPASS_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: String,
    /// `embedded`: serve runs the workers too; `external`: it does not.
    #[arg(long, env = "DAYPASS_WORKERS", default_value = "embedded", value_parser = ["embedded", "external"], global = true)]
    pub workers: String,
    /// The operator's bearer key; without it no operator exists.
    #[arg(
        long,
        env = "DAYPASS_OPERATOR_KEY",
        hide_env_values = true,
        global = true
    )]
    pub operator_key: Option<String>,
    /// Comma-separated origins allowed to call the API from a browser.
    #[arg(long, env = "DAYPASS_CORS_ORIGINS", global = true)]
    pub cors_origins: Option<String>,
    /// Mutations a minute per API key, bursts included (0: no limit). Stops scripted
    /// or leaked keys from hammering purchases, user creation and opens.
    #[arg(
        long,
        env = "DAYPASS_MUTATION_RATE",
        default_value_t = 1200,
        global = true
    )]
    pub mutation_rate: u32,
    /// PKCS#8 PEM file of the Ed25519 key that signs offline leases, installed as the
    /// current key at start (shared through the database with every process); unset:
    /// a key is made once and kept in the database.
    #[arg(long, env = "DAYPASS_SIGNING_KEY_FILE", global = true)]
    pub signing_key_file: Option<std::path::PathBuf>,
    /// `1`: the test clock mutations exist (never in production).
    #[arg(long, env = "DAYPASS_TEST_CLOCK", default_value = "", global = true, value_parser = parse_flag, action = clap::ArgAction::Set)]
    pub test_clock: bool,
}

fn parse_flag(s: &str) -> Result<bool, String> {
    match s {
        "" | "0" | "false" => Ok(false),
        "1" | "true" => Ok(true),
        other => Err(format!("expected 1 or 0, not {other:?}")),
    }
}
