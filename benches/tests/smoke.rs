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
    let summaries = printed
        .lines()
        .filter(|l| l.starts_with("ratio ") || l.starts_with("failover: "))
        .count();
    assert_eq!(
        printed.lines().count() - summaries,
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
    // cached also runs its HashMap floor.
    let systems: Vec<&str> = records
        .iter()
        .map(|r| r["settings"]["system"].as_str().unwrap())
        .collect();
    assert_eq!(
        systems,
        [
            "affinity", "affinity", "affinity", "hashmap", "affinity", "affinity"
        ]
    );
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

fn installed(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()))
}

#[test]
fn the_peers_run_the_same_workload_when_installed() {
    let mut peers = Vec::new();
    for (peer, binary, package) in [
        ("etcd", "etcd", "etcd-server"),
        ("redis", "redis-server", "redis-server"),
    ] {
        if installed(binary) {
            peers.push(peer);
        } else {
            eprintln!(
                "\n*** SKIPPED the {peer} peer: {binary} is not installed (apt-get install {package}) ***\n"
            );
        }
    }
    if peers.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("runs.json");
    let table = dir.path().join("table.md");
    let plot = dir.path().join("plot.png");
    let font = std::path::Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
    let peer_list = peers.join(",");
    let mut args = vec![
        "--workload",
        "create,hit",
        "--callers",
        "2",
        "--duration",
        "1s",
        "--keys",
        "50",
        "--peer",
        &peer_list,
        "--table-out",
        table.to_str().unwrap(),
    ];
    if font.is_file() {
        args.extend(["--plot", plot.to_str().unwrap()]);
    } else {
        eprintln!(
            "\n*** not drawing the plot: no DejaVu font (apt-get install fonts-dejavu-core) ***\n"
        );
    }
    let records = bench(&args, &json);
    let systems: Vec<&str> = records
        .iter()
        .map(|r| r["settings"]["system"].as_str().unwrap())
        .collect();
    let mut expected = Vec::new();
    for _workload in 0..2 {
        expected.push("affinity");
        expected.extend(peers.iter().copied());
    }
    assert_eq!(systems, expected);
    for record in &records {
        assert!(record["ok"].as_u64().unwrap() > 0, "{record}");
        assert_eq!(record["errors"], serde_json::json!({}), "{record}");
    }
    let table = std::fs::read_to_string(&table).unwrap();
    assert_eq!(
        table.lines().count(),
        4,
        "a header, a rule, a row per workload:\n{table}"
    );
    for peer in &peers {
        assert!(
            table
                .lines()
                .next()
                .unwrap()
                .contains(&format!("vs {peer}")),
            "{table}"
        );
    }
    assert!(table.lines().skip(2).all(|l| l.ends_with("x |")), "{table}");
    if font.is_file() {
        let png = std::fs::read(&plot).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "the plot is a PNG");
    }
}

#[test]
fn killing_the_leader_under_load_reports_the_failover_time() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("runs.json");
    let records = bench(
        &[
            "--workload",
            "create",
            "--callers",
            "4",
            "--duration",
            "4s",
            "--target",
            "all",
            "--kill-leader-after",
            "1s",
        ],
        &json,
    );
    let failover = records[0]["failover_ms"].as_u64().unwrap();
    assert!(failover > 0 && failover < 60_000, "{}", records[0]);
    assert!(records[0]["ok"].as_u64().unwrap() > 0, "{}", records[0]);
}
