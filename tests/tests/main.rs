//! One integration-test binary; each module is one area. Every test runs on the
//! database `DAYPASS_TEST_DATABASE` names (SQLite when unset).

mod concurrency;
mod e2e;
mod invariants;
mod notifications;
mod rules;
