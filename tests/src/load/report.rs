//! The figures of one run: each phase and ceiling as it comes, then the ratios to
//! the ceilings against the benchmark's targets, as a Markdown table, and as JSON.

use super::ceiling::Ceiling;
use super::drive::PhaseStats;
use super::server::Rss;
use serde_json::{Value, json};

/// The benchmark's targets (for the server-side work; missing one is not an error here).
pub const PG_ONE_TARGET: f64 = 1.0;
pub const PG_SPREAD_TARGET: f64 = 0.5;
pub const SQLITE_TARGET: f64 = 0.5;
pub const REOPEN_TARGET: f64 = 2.0;
pub const RSS_TARGET_MIB: f64 = 150.0;

/// Everything one backend's run measured.
pub struct BackendRun {
    /// "SQLite" or "PostgreSQL".
    pub backend: &'static str,
    pub accounts: usize,
    pub one_charge: PhaseStats,
    pub one_reopen: PhaseStats,
    pub spread_charge: PhaseStats,
    pub spread_reopen: PhaseStats,
    pub ceiling_one: Ceiling,
    pub ceiling_spread: Ceiling,
    /// Informative, beside the ceilings: pgbench with the server's `pg_notify`, for
    /// one account and spread.
    pub notify: Option<(Ceiling, Ceiling)>,
    pub rss: Rss,
}

/// One line of the table: a phase, what it is compared with, and the target.
pub struct Row<'a> {
    pub backend: &'static str,
    pub scenario: String,
    pub stats: &'a PhaseStats,
    pub against: String,
    pub against_value: f64,
    pub target: f64,
}

impl Row<'_> {
    pub fn ratio(&self) -> f64 {
        self.stats.per_sec() / self.against_value
    }

    pub fn met(&self) -> bool {
        self.ratio() >= self.target
    }
}

impl BackendRun {
    pub fn rows(&self) -> Vec<Row<'_>> {
        let target = if self.backend == "PostgreSQL" {
            (PG_ONE_TARGET, PG_SPREAD_TARGET)
        } else {
            (SQLITE_TARGET, SQLITE_TARGET)
        };
        let spread = format!("{} accounts", thousands(self.accounts as f64));
        let charging = |c: &Ceiling| format!("{} {:.0} tx/s", c.tool, c.tx_per_sec);
        vec![
            Row {
                backend: self.backend,
                scenario: "1 account, charging".into(),
                stats: &self.one_charge,
                against: charging(&self.ceiling_one),
                against_value: self.ceiling_one.tx_per_sec,
                target: target.0,
            },
            Row {
                backend: self.backend,
                scenario: "1 account, reopen".into(),
                stats: &self.one_reopen,
                against: format!("charging {:.0} opens/s", self.one_charge.per_sec()),
                against_value: self.one_charge.per_sec(),
                target: REOPEN_TARGET,
            },
            Row {
                backend: self.backend,
                scenario: format!("{spread}, charging"),
                stats: &self.spread_charge,
                against: charging(&self.ceiling_spread),
                against_value: self.ceiling_spread.tx_per_sec,
                target: target.1,
            },
            Row {
                backend: self.backend,
                scenario: format!("{spread}, reopen"),
                stats: &self.spread_reopen,
                against: format!("charging {:.0} opens/s", self.spread_charge.per_sec()),
                against_value: self.spread_charge.per_sec(),
                target: REOPEN_TARGET,
            },
        ]
    }

    pub fn peak_rss_mib(&self) -> f64 {
        self.rss.peak_kb as f64 / 1024.0
    }

    pub fn json(&self) -> Value {
        let phase = |s: &PhaseStats| {
            json!({
                "name": s.name,
                "requests": s.requests,
                "completed": s.latencies.len(),
                "failures": s.failures,
                "seconds": s.elapsed.as_secs_f64(),
                "opens_per_sec": s.per_sec(),
                "p50_ms": s.percentile_ms(0.50),
                "p99_ms": s.percentile_ms(0.99),
            })
        };
        let ceiling = |c: &Ceiling| {
            json!({
                "name": c.name,
                "tool": c.tool,
                "transactions": c.transactions,
                "tx_per_sec": c.tx_per_sec,
                "latency_avg_ms": c.latency_avg_ms,
            })
        };
        let rows: Vec<Value> = self
            .rows()
            .iter()
            .map(|r| {
                json!({
                    "scenario": r.scenario,
                    "against": r.against,
                    "ratio": r.ratio(),
                    "target": r.target,
                    "met": r.met(),
                })
            })
            .collect();
        json!({
            "backend": self.backend,
            "phases": {
                "one_charging": phase(&self.one_charge),
                "one_reopen": phase(&self.one_reopen),
                "spread_charging": phase(&self.spread_charge),
                "spread_reopen": phase(&self.spread_reopen),
            },
            "ceilings": {
                "one": ceiling(&self.ceiling_one),
                "spread": ceiling(&self.ceiling_spread),
                "notify_one": self.notify.as_ref().map(|n| ceiling(&n.0)),
                "notify_spread": self.notify.as_ref().map(|n| ceiling(&n.1)),
            },
            "ratios": rows,
            "rss": {
                "peak_kb": self.rss.peak_kb,
                "current_kb": self.rss.current_kb,
                "target_mib": RSS_TARGET_MIB,
                "met": self.peak_rss_mib() < RSS_TARGET_MIB,
            },
        })
    }
}

/// `  name: 1234 opens/s, p50 1.23 ms, p99 4.56 ms (n requests in s)`.
pub fn print_phase(s: &PhaseStats) {
    println!(
        "  {}: {:.0} opens/s, p50 {:.2} ms, p99 {:.2} ms ({} requests in {:.1} s)",
        s.name,
        s.per_sec(),
        s.percentile_ms(0.50),
        s.percentile_ms(0.99),
        s.latencies.len(),
        s.elapsed.as_secs_f64()
    );
}

pub fn print_ceiling(c: &Ceiling) {
    let latency = c
        .latency_avg_ms
        .map(|l| format!(", latency average {l:.2} ms"))
        .unwrap_or_default();
    println!(
        "  {} ({}): {:.0} tx/s ({} transactions{latency})",
        c.name, c.tool, c.tx_per_sec, c.transactions
    );
}

/// The ratios, then the Markdown table with the date.
pub fn print_summary(runs: &[BackendRun], date: &str, settings: &str) {
    println!();
    println!("== ratios");
    for run in runs {
        for r in run.rows() {
            println!(
                "  {} {}: {:.0} opens/s / {} = {:.2}x (target >= {:.1}x: {})",
                r.backend,
                r.scenario,
                r.stats.per_sec(),
                r.against,
                r.ratio(),
                r.target,
                if r.met() { "met" } else { "not met" }
            );
        }
        if let Some((one, spread)) = &run.notify {
            for (phase, c) in [(&run.one_charge, one), (&run.spread_charge, spread)] {
                println!(
                    "  {} {} / {} {:.0} tx/s = {:.2}x (informative)",
                    run.backend,
                    phase.name,
                    c.name,
                    c.tx_per_sec,
                    phase.per_sec() / c.tx_per_sec
                );
            }
        }
        println!(
            "  {} server peak RSS {:.1} MiB (now {:.1} MiB; target < {RSS_TARGET_MIB:.0} MiB: {})",
            run.backend,
            run.peak_rss_mib(),
            run.rss.current_kb as f64 / 1024.0,
            if run.peak_rss_mib() < RSS_TARGET_MIB {
                "met"
            } else {
                "not met"
            }
        );
    }
    println!();
    println!("Measured {date} ({settings}):");
    println!();
    println!(
        "| backend | scenario | opens/s | p50 ms | p99 ms | ceiling | ratio | target | met? |"
    );
    println!("|---|---|---:|---:|---:|---|---:|---:|---|");
    for run in runs {
        for r in run.rows() {
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {} | {:.2}x | >= {:.1}x | {} |",
                r.backend,
                r.scenario,
                thousands(r.stats.per_sec()),
                r.stats.percentile_ms(0.50),
                r.stats.percentile_ms(0.99),
                r.against,
                r.ratio(),
                r.target,
                if r.met() { "yes" } else { "no" }
            );
        }
    }
    println!();
    println!("| backend | server peak RSS (VmHWM) | RSS at the end | target | met? |");
    println!("|---|---:|---:|---:|---|");
    for run in runs {
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | < {RSS_TARGET_MIB:.0} MiB | {} |",
            run.backend,
            run.peak_rss_mib(),
            run.rss.current_kb as f64 / 1024.0,
            if run.peak_rss_mib() < RSS_TARGET_MIB {
                "yes"
            } else {
                "no"
            }
        );
    }
}

/// 12345.6 → "12,346".
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
