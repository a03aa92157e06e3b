//! Configuration: defaults, then environment variables, then flags (each variable
//! has a flag twin). Secrets are never printed.

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "daypass",
    version,
    about = "Daypass: token-metered software licensing (GraphQL API)"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run migrations, then serve GraphQL (the default).
    Serve,
    /// Apply migrations and exit.
    Migrate,
    /// Print the served GraphQL SDL and exit.
    Schema,
    /// Create an account and print its admin's API key.
    CreateAccount {
        #[arg(long)]
        name: String,
        #[arg(long)]
        admin_email: String,
        #[arg(long)]
        admin_name: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct Config {
    /// `sqlite://…` or `postgres://…`
    #[arg(
        long,
        env = "DAYPASS_DATABASE_URL",
        default_value = "sqlite://daypass.db?mode=rwc",
        global = true
    )]
    pub database_url: String,
    /// Where the job queue lives (defaults to the database URL).
    #[arg(long, env = "DAYPASS_QUEUE_URL", global = true)]
    pub queue_url: Option<String>,
    /// The job queue's name (default `daypass.send_notification`).
    #[arg(long, env = "DAYPASS_QUEUE_NAME", global = true)]
    pub queue_name: Option<String>,
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
    #[arg(long, env = "DAYPASS_SMTP_URL", hide_env_values = true, global = true)]
    pub smtp_url: Option<String>,
    #[arg(
        long,
        env = "DAYPASS_MAIL_DIR",
        default_value = "./outbox",
        global = true
    )]
    pub mail_dir: String,
    #[arg(
        long,
        env = "DAYPASS_MAIL_FROM",
        default_value = "Daypass <no-reply@localhost>",
        global = true
    )]
    pub mail_from: String,
    /// Comma-separated origins allowed to call the API from a browser.
    #[arg(long, env = "DAYPASS_CORS_ORIGINS", global = true)]
    pub cors_origins: Option<String>,
    #[arg(
        long,
        env = "DAYPASS_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub public_url: String,
    /// `production`: introspection and suggestions off, internal errors masked.
    #[arg(
        long,
        env = "DAYPASS_ENV",
        default_value = "development",
        global = true
    )]
    pub env: String,
    /// Mutations a minute per API key, bursts included (0: no limit). Stops scripted
    /// or leaked keys from hammering purchases, user creation and opens.
    #[arg(
        long,
        env = "DAYPASS_MUTATION_RATE",
        default_value_t = 1200,
        global = true
    )]
    pub mutation_rate: u32,
    /// `json` for structured logs.
    #[arg(long, env = "DAYPASS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,
    /// `1`: the test clock mutations exist (never in production).
    #[arg(long, env = "DAYPASS_TEST_CLOCK", default_value = "", global = true, value_parser = parse_flag, action = clap::ArgAction::Set)]
    pub test_clock: bool,
}

impl Config {
    pub fn worker_config(&self) -> daypass_worker::WorkerConfig {
        daypass_worker::WorkerConfig {
            queue_url: self.queue_url.clone(),
            queue_name: self.queue_name.clone(),
            database_url: self.database_url.clone(),
            smtp_url: self.smtp_url.clone(),
            mail_dir: self.mail_dir.clone(),
            mail_from: self.mail_from.clone(),
            public_url: self.public_url.clone(),
        }
    }
}

fn parse_flag(s: &str) -> Result<bool, String> {
    match s {
        "" | "0" | "false" => Ok(false),
        "1" | "true" => Ok(true),
        other => Err(format!("expected 1 or 0, not {other:?}")),
    }
}
