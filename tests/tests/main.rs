//! The integration tests of the rules, the API and the jobs; each module is one
//! area. The suites that run the built binaries many times over, kill them or drive
//! a browser are the `processes` target (`processes/main.rs`). Every test runs on
//! the database `DAYPASS_TEST_DATABASE` names (SQLite when unset).

mod alerts;
mod analytics;
mod authz;
mod concurrency;
mod conditions;
mod e2e;
mod harness;
mod hostile;
mod invariants;
mod leases;
mod live;
mod model;
mod notifications;
mod ops;
mod reports;
mod rules;
mod scale;
mod scheduled_reports;
mod sessions;
mod webhooks;
