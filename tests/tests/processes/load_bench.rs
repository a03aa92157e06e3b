//! The load benchmark as a smoke run: `load-bench --smoke` drives the real
//! binary on SQLite (and on PostgreSQL too when `DAYPASS_TEST_DATABASE` names a
//! server), opens and then heartbeats, and runs its ceilings; it must finish
//! without a single failed request and report sane figures. A benchmark, not a
//! timed test: no target is checked.

use daypass_tests::{server::daypass_binary, target_database};
use serde_json::Value;
use std::process::Command;

fn number(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

#[test]
fn smoke_run_reports_sane_figures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load-bench.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_load-bench"));
    cmd.arg("--smoke")
        .arg("--daypass-bin")
        .arg(daypass_binary())
        .arg("--json")
        .arg(&json);
    let backends = match target_database() {
        Some(server) => {
            cmd.args(["--backend", "both", "--postgres", &server]);
            vec!["SQLite", "PostgreSQL"]
        }
        None => {
            cmd.args(["--backend", "sqlite"]);
            vec!["SQLite"]
        }
    };
    let out = cmd.output().expect("run load-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "load-bench --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("| backend | scenario | opens/s | p50 ms | p99 ms |"),
        "no table in:\n{stdout}"
    );
    assert!(
        stdout.contains("| backend | heartbeats/s | p50 ms | p99 ms |"),
        "no heartbeat table in:\n{stdout}"
    );

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = doc["runs"].as_array().expect("runs");
    let names: Vec<&str> = runs
        .iter()
        .map(|r| r["backend"].as_str().unwrap())
        .collect();
    assert_eq!(names, backends);
    for run in runs {
        let backend = &run["backend"];
        for (key, rate) in [
            ("one_charging", "opens_per_sec"),
            ("one_reopen", "opens_per_sec"),
            ("spread_charging", "opens_per_sec"),
            ("spread_reopen", "opens_per_sec"),
            ("heartbeats", "heartbeats_per_sec"),
        ] {
            let phase = &run["phases"][key];
            let what = format!("{backend} {key}");
            assert_eq!(phase["failures"], 0, "{what}: {phase}");
            assert!(phase["requests"].as_u64().unwrap() > 0, "{what}: {phase}");
            assert_eq!(phase["completed"], phase["requests"], "{what}: {phase}");
            assert!(number(&phase[rate], &what) > 0.0, "{what}: {phase}");
            let p50 = number(&phase["p50_ms"], &what);
            let p99 = number(&phase["p99_ms"], &what);
            assert!(p50 > 0.0 && p99 >= p50, "{what}: {phase}");
        }
        for key in ["one", "spread"] {
            let ceiling = &run["ceilings"][key];
            let what = format!("{backend} ceiling {key}");
            assert!(
                ceiling["transactions"].as_u64().unwrap() > 0,
                "{what}: {ceiling}"
            );
            assert!(
                number(&ceiling["tx_per_sec"], &what) > 0.0,
                "{what}: {ceiling}"
            );
        }
        let ratios = run["ratios"].as_array().expect("ratios");
        assert_eq!(ratios.len(), 4, "{backend}: {ratios:?}");
        for r in ratios {
            let ratio = number(&r["ratio"], "ratio");
            assert!(ratio.is_finite() && ratio > 0.0, "{backend}: {r}");
        }
        // One heartbeat for each session the four open phases started.
        let opens: u64 = [
            "one_charging",
            "one_reopen",
            "spread_charging",
            "spread_reopen",
        ]
        .iter()
        .map(|k| run["phases"][k]["requests"].as_u64().unwrap())
        .sum();
        assert_eq!(
            run["phases"]["heartbeats"]["requests"], opens,
            "{backend}: {run}"
        );
        let beats = &run["heartbeats"];
        let ratio = number(&beats["ratio"], "heartbeat ratio");
        assert!(ratio.is_finite() && ratio > 0.0, "{backend}: {beats}");
        let rss = &run["rss"];
        let peak = rss["peak_kb"].as_u64().unwrap();
        assert!(
            peak > 0 && peak >= rss["current_kb"].as_u64().unwrap(),
            "{backend}: {rss}"
        );
    }
}
