//! The load benchmark (`load-bench`): the real `daypass` binary driven
//! with `openProduct` over HTTP by concurrent keep-alive connections, beside the
//! raw-SQL ceilings (pgbench, the sqlite3 shell) of the same charge, in one run.
//!
//! - [`setup`] writes the data through the domain before the server starts;
//! - [`server`] builds, starts, measures and stops the binary;
//! - [`drive`] is the load generator;
//! - [`ceiling`] runs pgbench and the sqlite3 shell;
//! - [`report`] prints the figures, the ratios and the Markdown table.

pub mod ceiling;
pub mod drive;
pub mod report;
pub mod server;
pub mod setup;
