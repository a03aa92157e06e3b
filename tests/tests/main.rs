//! One integration-test binary; each module is one area. Every test runs on the
//! database `DAYPASS_TEST_DATABASE` names (SQLite when unset).

mod analytics;
mod authz;
mod concurrency;
mod console;
mod crashes;
mod docker;
mod e2e;
mod harness;
mod hostile;
mod invariants;
mod live;
mod load_bench;
mod model;
mod notifications;
mod ops;
mod reports;
mod rules;
mod scale;
mod scale_out;
mod startup;
