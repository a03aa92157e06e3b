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
/// Heartbeats against the faster charging phase of the same run, and their p99.
pub const HEARTBEAT_TARGET: f64 = 2.0;
pub const HEARTBEAT_P99_TARGET_MS: f64 = 20.0;

/// Everything one backend's run measured.
pub struct BackendRun {
    /// "SQLite" or "PostgreSQL".
    pub backend: &'static str,
    pub accounts: usize,
    pub one_charge: PhaseStats,
    pub one_reopen: PhaseStats,
    pub spread_charge: PhaseStats,
    pub spread_reopen: PhaseStats,
    /// One heartbeat of each of the sessions the four phases opened.
    pub heartbeats: PhaseStats,
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

/// The heartbeat phase against the run's faster charging phase.
pub struct HeartbeatRow<'a> {
    pub stats: &'a PhaseStats,
    pub charging: &'a PhaseStats,
}

impl HeartbeatRow<'_> {
    pub fn ratio(&self) -> f64 {
        self.stats.per_sec() / self.charging.per_sec()
    }

    pub fn p99_ms(&self) -> f64 {
        self.stats.percentile_ms(0.99)
    }

    pub fn met(&self) -> bool {
        self.ratio() >= HEARTBEAT_TARGET && self.p99_ms() < HEARTBEAT_P99_TARGET_MS
    }

    /// "charging 1,903 opens/s (1,000 accounts, charging)".
    pub fn against(&self) -> String {
        format!(
            "charging {} opens/s ({})",
            thousands(self.charging.per_sec()),
            self.charging.name
        )
    }
}

impl BackendRun {
    /// Heartbeats against the faster of the two charging phases: the stricter
    /// comparison.
    pub fn heartbeat_row(&self) -> HeartbeatRow<'_> {
        let charging = if self.one_charge.per_sec() >= self.spread_charge.per_sec() {
            &self.one_charge
        } else {
            &self.spread_charge
        };
        HeartbeatRow {
            stats: &self.heartbeats,
            charging,
        }
    }

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
                format!("{}_per_sec", s.unit): s.per_sec(),
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
        let hb = self.heartbeat_row();
        json!({
            "backend": self.backend,
            "phases": {
                "one_charging": phase(&self.one_charge),
                "one_reopen": phase(&self.one_reopen),
                "spread_charging": phase(&self.spread_charge),
                "spread_reopen": phase(&self.spread_reopen),
                "heartbeats": phase(&self.heartbeats),
            },
            "heartbeats": {
                "against": hb.charging.name,
                "charging_opens_per_sec": hb.charging.per_sec(),
                "ratio": hb.ratio(),
                "target": HEARTBEAT_TARGET,
                "p99_ms": hb.p99_ms(),
                "p99_target_ms": HEARTBEAT_P99_TARGET_MS,
                "met": hb.met(),
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
        "  {}: {:.0} {}/s, p50 {:.2} ms, p99 {:.2} ms ({} requests in {:.1} s)",
        s.name,
        s.per_sec(),
        s.unit,
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
        let hb = run.heartbeat_row();
        println!(
            "  {} heartbeats: {:.0} heartbeats/s / {} = {:.2}x, p99 {:.2} ms \
             (target >= {HEARTBEAT_TARGET:.1}x, p99 < {HEARTBEAT_P99_TARGET_MS:.0} ms: {})",
            run.backend,
            hb.stats.per_sec(),
            hb.against(),
            hb.ratio(),
            hb.p99_ms(),
            if hb.met() { "met" } else { "not met" }
        );
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
    print_heartbeat_table(runs);
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

fn print_heartbeat_table(runs: &[BackendRun]) {
    println!();
    println!("| backend | heartbeats/s | p50 ms | p99 ms | against | ratio | target | met? |");
    println!("|---|---:|---:|---:|---|---:|---|---|");
    for run in runs {
        let hb = run.heartbeat_row();
        println!(
            "| {} | {} | {:.2} | {:.2} | {} | {:.2}x | >= {HEARTBEAT_TARGET:.1}x, p99 < {HEARTBEAT_P99_TARGET_MS:.0} ms | {} |",
            run.backend,
            thousands(hb.stats.per_sec()),
            hb.stats.percentile_ms(0.50),
            hb.p99_ms(),
            hb.against(),
            hb.ratio(),
            if hb.met() { "yes" } else { "no" }
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
