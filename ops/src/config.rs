//! The configuration both binaries read, declared once: defaults, then environment
//! variables, then flags (each variable has a flag twin). Secrets are never printed.
//!
//! `daypass` and `daypass-worker` each `#[command(flatten)]` [`SharedConfig`] beside
//! their own variables. The flags are `global`, so on `daypass` they work before or
//! after the subcommand (`daypass --database-url … migrate` or
//! `daypass migrate --database-url …`); a command without subcommands ignores that.

use clap::Args;

/// What the API and the workers both read.
#[derive(Args, Debug, Clone)]
pub struct SharedConfig {
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
    #[arg(
        long,
        env = "DAYPASS_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub public_url: String,
    /// `production`: introspection and suggestions off, internal errors masked, and
    /// webhooks kept off loopback, private and link-local addresses.
    #[arg(
        long,
        env = "DAYPASS_ENV",
        default_value = "development",
        global = true
    )]
    pub env: String,
    /// Comma-separated hosts a production deployment may deliver webhooks to
    /// although they resolve to loopback, private or link-local addresses.
    #[arg(long, env = "DAYPASS_WEBHOOK_ALLOW_HOSTS", global = true)]
    pub webhook_allow_hosts: Option<String>,
    /// `json` for structured logs.
    #[arg(long, env = "DAYPASS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,
}

impl SharedConfig {
    /// Where the job queue lives: DAYPASS_QUEUE_URL, or the database when it is unset
    /// or empty.
    pub fn queue_url(&self) -> &str {
        self.queue_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .unwrap_or(&self.database_url)
    }

    /// DAYPASS_QUEUE_NAME when set and not empty: processes that share a queue server
    /// but not a database (tests, staging beside production) need different names.
    pub fn queue_name(&self) -> Option<&str> {
        self.queue_name.as_deref().filter(|n| !n.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Process {
        #[command(flatten)]
        shared: SharedConfig,
    }

    fn parse(args: &[&str]) -> SharedConfig {
        let mut argv = vec!["process"];
        argv.extend_from_slice(args);
        Process::try_parse_from(argv).expect("parses").shared
    }

    #[test]
    fn the_queue_lives_in_the_database_unless_named() {
        // An empty value counts as unset; explicit flags keep the process's
        // environment out of the test.
        let c = parse(&[
            "--database-url",
            "sqlite://a.db",
            "--queue-url",
            "",
            "--queue-name",
            "",
        ]);
        assert_eq!(c.queue_url(), "sqlite://a.db");
        assert_eq!(c.queue_name(), None);
        let c = parse(&["--queue-url", "redis://q", "--queue-name", "staging"]);
        assert_eq!(c.queue_url(), "redis://q");
        assert_eq!(c.queue_name(), Some("staging"));
    }

    #[test]
    fn global_flags_are_harmless_without_subcommands() {
        use clap::CommandFactory;
        Process::command().debug_assert();
    }
}
