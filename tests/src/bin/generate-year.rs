//! Writes one realistic year of usage into a database: see
//! `daypass_tests::generate`.
//!
//! `cargo run --release -p daypass-tests --bin generate-year -- --database sqlite:///path/year.db?mode=rwc`

use anyhow::Result;
use chrono::NaiveDate;
use clap::Parser;
use daypass_domain::Db;
use daypass_tests::generate::{YearSpec, generate_year};

#[derive(Parser)]
#[command(about = "Generate a year of Daypass usage into SQLite or PostgreSQL")]
struct Args {
    /// `sqlite://…?mode=rwc` or `postgres://…` (an existing database).
    #[arg(long)]
    database: String,
    /// Charges of the big account.
    #[arg(long, default_value_t = 10_000_000)]
    charges: u64,
    /// Users of the big account.
    #[arg(long, default_value_t = 5_000)]
    users: u32,
    #[arg(long, default_value_t = 50)]
    products: u32,
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// The last day of usage (default: yesterday, UTC).
    #[arg(long)]
    end: Option<NaiveDate>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Do not run the rollup job afterwards.
    #[arg(long)]
    no_rollup: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let year = YearSpec::year();
    let spec = YearSpec {
        charges: args.charges,
        users: args.users,
        products: args.products,
        days: args.days,
        end: args.end.unwrap_or(year.end),
        seed: args.seed,
        roll_up: !args.no_rollup,
        progress: true,
    };
    let db = Db::connect(&args.database).await?;
    db.migrate().await?;
    println!(
        "generating {} charges for {} users over {} days ({} to {}), seed {}",
        spec.charges,
        spec.users,
        spec.days,
        spec.first_day(),
        spec.end,
        spec.seed
    );
    let g = generate_year(&db, &spec).await?;
    println!(
        "done: {} charges, {} opens ({} denied), {} ledger entries, {} lots; big account id {}",
        g.charges, g.opens, g.denials, g.ledger_entries, g.lots, g.big_account_id
    );
    Ok(())
}
