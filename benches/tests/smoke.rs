//! A short run of `affinity-bench` so the load generator cannot rot: a local 3-node
//! cluster, every workload for a moment, closed and open loop, figures that add up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str], json: &std::path::Path) -> Vec<Value> {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_affinity-bench"))
        .arg("--spawn")
        .arg("3")
        .arg("--affinityd")
        .arg(affinity_tests::bins::affinityd())
        .arg("--data-root")
        .arg(data.path())
        .arg("--json-out")
        .arg(json)
        .args(args)
        .output()
        .expect("affinity-bench runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "affinity-bench {args:?}: {said}");
    let printed = String::from_utf8_lossy(&out.stdout);
    let records: Vec<Value> = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    let ratios = printed.lines().filter(|l| l.starts_with("ratio ")).count();
    assert_eq!(
        printed.lines().count() - ratios,
        records.len(),
        "one line per run:\n{printed}"
    );
    assert_eq!(
        std::fs::read_dir(data.path()).unwrap().count(),
        0,
        "the spawned cluster's data is removed"
    );
    records
}

#[test]
fn every_workload_runs_against_a_spawned_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("runs.json");
    let records = bench(
        &[
            "--workload",
            "create,hit,cached,mixed,churn",
            "--callers",
            "4",
            "--duration",
            "1s",
            "--keys",
            "200",
        ],
        &json,
    );
    assert_eq!(records.len(), 5);
    for record in &records {
        let workload = &record["settings"]["workload"];
        assert!(record["ok"].as_u64().unwrap() > 0, "{workload}: {record}");
        assert_eq!(
            record["errors"],
            serde_json::json!({}),
            "{workload}: {record}"
        );
        let latency = &record["latency_us"];
        assert!(latency["p50"].as_u64().unwrap() <= latency["p99"].as_u64().unwrap());
        assert!(latency["p99"].as_u64().unwrap() <= latency["max"].as_u64().unwrap());
        assert!(record["ops_per_sec"].as_f64().unwrap() > 0.0);
    }

    let open = bench(
        &[
            "--workload",
            "hit",
            "--rate",
            "200",
            "--ops",
            "100",
            "--keys",
            "50",
        ],
        &json,
    );
    assert_eq!(open[0]["ok"], 100, "{}", open[0]);
    assert_eq!(open[0]["settings"]["mode"], "open");
}

#[test]
fn a_peer_runs_the_same_workload_when_installed() {
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| p.join("redis-server").is_file())
    });
    if !on_path {
        eprintln!(
            "\n*** SKIPPED a_peer_runs_the_same_workload_when_installed: redis-server is not installed (apt-get install redis-server) ***\n"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("runs.json");
    let records = bench(
        &[
            "--workload",
            "create,hit",
            "--callers",
            "2",
            "--duration",
            "1s",
            "--keys",
            "50",
            "--peer",
            "redis",
        ],
        &json,
    );
    let systems: Vec<&str> = records
        .iter()
        .map(|r| r["settings"]["system"].as_str().unwrap())
        .collect();
    assert_eq!(systems, ["affinity", "redis", "affinity", "redis"]);
    for record in &records {
        assert!(record["ok"].as_u64().unwrap() > 0, "{record}");
        assert_eq!(record["errors"], serde_json::json!({}), "{record}");
    }
}
