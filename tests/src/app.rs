//! The application in this process: a fresh database, the real schema and state of
//! the `daypass-api` library, requests run through the same function the HTTP
//! handler calls, the jobs run when the test asks, and the e-mails on a real SMTP
//! server the test reads. No binary to build or start, no port, no HTTP: for tests
//! that need only GraphQL answers.

use crate::server::OPERATOR_KEY;
use crate::smtp::{ReceivedMail, SmtpServer};
use crate::{Api, TestDb};
use chrono::{DateTime, Utc};
use clap::Parser;
use daypass_api::config::Config;
use daypass_api::state::{AppState, Connected};
use daypass_domain::Db;
use daypass_worker::{MaintenanceReport, WorkerDeps};
use serde_json::{Value, json};

pub struct TestApp {
    /// The database's URL (the same database [`db`](Self::db) reaches).
    pub database_url: String,
    state: AppState,
    workers: WorkerDeps,
    mail: SmtpServer,
    db: TestDb,
}

impl TestApp {
    /// The application with the test clock on, as [`TestServer::start`](crate::TestServer::start).
    pub async fn start() -> TestApp {
        Self::start_with(&[("DAYPASS_TEST_CLOCK", "1")]).await
    }

    /// The application configured as `daypass serve` would be with the variables
    /// `env` added to the harness's own (the database, the operator key, the SMTP
    /// server), as [`TestServer::start_with`](crate::TestServer::start_with).
    /// No worker runs in the background, whatever `DAYPASS_WORKERS` says: jobs run
    /// when the test calls [`run_maintenance`](Self::run_maintenance) (or the
    /// `runMaintenance` mutation).
    pub async fn start_with(env: &[(&str, &str)]) -> TestApp {
        let db = TestDb::new().await;
        let mail = SmtpServer::start().await;
        let mut settings = vec![
            ("DAYPASS_DATABASE_URL", db.url.clone()),
            ("DAYPASS_OPERATOR_KEY", OPERATOR_KEY.to_owned()),
            ("DAYPASS_SMTP_URL", mail.url()),
        ];
        for (var, value) in env {
            settings.retain(|(known, _)| known != var);
            settings.push((var, value.to_string()));
        }
        let (state, workers) = app_state(&db.db, &settings).await;
        TestApp {
            database_url: db.url.clone(),
            state,
            workers,
            mail,
            db,
        }
    }

    pub fn db(&self) -> &Db {
        &self.db.db
    }

    /// What every request handler gets.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The application's current instant.
    pub fn now(&self) -> DateTime<Utc> {
        self.state.clock.now()
    }

    /// Moves the test clock forward (it must be on) and returns the new instant.
    pub fn advance(&self, hours: i64) -> DateTime<Utc> {
        self.state
            .test_clock
            .as_ref()
            .expect("the test clock is on (DAYPASS_TEST_CLOCK=1)")
            .advance(chrono::Duration::hours(hours))
    }

    /// Runs the periodic jobs now and returns when they are done: the expiry sweep,
    /// the usage rollup, and every due notification sent or failed.
    pub async fn run_maintenance(&self) -> MaintenanceReport {
        daypass_worker::run_maintenance_now(&self.workers)
            .await
            .expect("maintenance runs")
    }

    /// Every e-mail the application has sent, in the order they arrived.
    pub fn mail(&self) -> Vec<ReceivedMail> {
        self.mail.messages()
    }

    /// The SMTP server the application sends to (to take it down, or slow it).
    pub fn mail_server(&self) -> &SmtpServer {
        &self.mail
    }
}

/// The API's command line as `daypass` reads it (its defaults included).
#[derive(Parser)]
#[command(name = "daypass")]
struct Flags {
    #[command(flatten)]
    config: Config,
}

/// The one place the harness builds the application's state, and the workers'
/// dependencies beside it, as `daypass serve` does: from `settings`, the
/// `DAYPASS_*` variables of `daypass serve`, passed as their flag twins so that the
/// API's own parser fills in its defaults.
async fn app_state(db: &Db, settings: &[(&str, String)]) -> (AppState, WorkerDeps) {
    let args = settings.iter().map(|(var, value)| {
        let name = var
            .strip_prefix("DAYPASS_")
            .unwrap_or_else(|| panic!("{var} is not a DAYPASS_ variable"));
        format!("--{}={value}", name.to_lowercase().replace('_', "-"))
    });
    let config = Flags::try_parse_from(std::iter::once("daypass".to_owned()).chain(args))
        .unwrap_or_else(|e| panic!("settings {settings:?}: {e}"))
        .config;
    let built = async {
        let connected = Connected::new(db.clone(), &config).await?;
        let (workers, maintenance) = daypass_server::workers_beside(&connected, &config.shared)?;
        let state = AppState::new(connected, &config, maintenance).await?;
        anyhow::Ok((state, workers))
    };
    built
        .await
        .unwrap_or_else(|e| panic!("the application's state: {e}"))
}

/// A request as the HTTP handler receives it, run through the handler's own
/// function; the answer as the handler writes it.
impl Api for TestApp {
    async fn gql(&self, key: Option<&str>, query: &str, variables: Value) -> Value {
        let request = serde_json::from_value(json!({"query": query, "variables": variables}))
            .expect("a GraphQL request");
        let resp = daypass_api::http::execute(&self.state, key, request).await;
        serde_json::to_value(&resp).expect("a JSON answer")
    }
}
