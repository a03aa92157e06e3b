//! The `daypass` command line: the API's configuration (every flag works before or
//! after the subcommand) and the subcommands.

use clap::{Parser, Subcommand};
use daypass_api::config::Config;

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
    /// Make a new key sign offline leases and print its kid; the previous key stays
    /// published until the last lease it signed has expired (24 hours).
    RotateSigningKey,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_work_before_and_after_the_subcommand() {
        for argv in [
            &[
                "daypass",
                "--database-url",
                "sqlite://x.db",
                "migrate",
                "--listen",
                "0.0.0.0:1",
            ][..],
            &[
                "daypass",
                "migrate",
                "--database-url",
                "sqlite://x.db",
                "--listen",
                "0.0.0.0:1",
            ][..],
        ] {
            let cli = Cli::try_parse_from(argv).expect("parses");
            assert!(matches!(cli.command, Some(Command::Migrate)));
            assert_eq!(cli.config.shared.database_url, "sqlite://x.db");
            assert_eq!(cli.config.listen, "0.0.0.0:1");
        }
    }

    #[test]
    fn the_signing_key_file_is_a_flag_and_rotation_a_subcommand() {
        let cli = Cli::try_parse_from([
            "daypass",
            "rotate-signing-key",
            "--signing-key-file",
            "k.pem",
        ])
        .expect("parses");
        assert!(matches!(cli.command, Some(Command::RotateSigningKey)));
        assert_eq!(
            cli.config.signing_key_file.as_deref(),
            Some(std::path::Path::new("k.pem"))
        );
    }
}
