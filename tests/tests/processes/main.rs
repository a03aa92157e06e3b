//! The suites that start the built binaries many times over, kill them, or drive
//! them from outside: crashes under load, several APIs and workers at once, the
//! console in a browser, the load benchmark's smoke run, the deployment files
//! against the binaries, and simultaneous starts on a new database. A target of
//! their own, so that `cargo test --test main` runs without them; `cargo test
//! --workspace` runs both. Every test runs on the database `DAYPASS_TEST_DATABASE`
//! names (SQLite when unset).

mod console;
mod crashes;
mod docker;
mod load_bench;
mod scale_out;
mod startup;
