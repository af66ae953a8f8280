//! `affinityctl` against a real cluster: every command once, JSON that parses, and a
//! one-line error with a non-zero exit on failure.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use affinity_tests::{Cluster, ClusterOptions, bins, wait};
use serde_json::Value;

fn ctl(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(bins::affinityctl())
        .arg("--endpoints")
        .arg(cluster.endpoints())
        .args(args)
        .env_remove("AFFINITY_ENDPOINTS")
        .output()
        .expect("affinityctl runs")
}

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(cluster, &all);
    assert!(
        out.status.success(),
        "affinityctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "affinityctl {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_affinityctl_command_against_a_cluster() {
    let mut cluster = Cluster::start("ctl", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;

    let status = json(&cluster, &["status"]);
    assert_eq!(status["leader_id"], leader);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);

    // A watch started first sees the resolve below.
    let watcher = Command::new(bins::affinityctl())
        .args([
            "--endpoints",
            &cluster.addr(2).to_string(),
            "--json",
            "watch",
            "--count",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait::until(
        "the watch is subscribed",
        Duration::from_secs(10),
        || async {
            match cluster.metric(2, "affinity_watch_subscribers") {
                Some(n) if n >= 1.0 => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;

    let created = json(
        &cluster,
        &[
            "resolve",
            "ns/ctl/0",
            "203.0.113.9",
            "10.4.0.1:80",
            "--ipv4-mask",
            "24",
            "--timeout",
            "10m",
        ],
    );
    assert_eq!(created["created"], true);
    assert_eq!(created["lease"]["prefix"], "203.0.113.0/24");
    assert_eq!(created["lease"]["endpoint"], "10.4.0.1:80");

    let event = watcher.wait_with_output().unwrap();
    assert!(event.status.success());
    let event: Value = serde_json::from_slice(&event.stdout).unwrap();
    assert_eq!(event["kind"], "CREATED");
    assert_eq!(event["lease"]["prefix"], "203.0.113.0/24");

    let looked = json(
        &cluster,
        &["lookup", "ns/ctl/0", "203.0.113.200", "--ipv4-mask", "24"],
    );
    assert_eq!(looked["lease"]["endpoint"], "10.4.0.1:80");
    let stale = json(
        &cluster,
        &[
            "lookup",
            "ns/ctl/0",
            "203.0.113.200",
            "--ipv4-mask",
            "24",
            "--stale",
        ],
    );
    assert!(stale["lease"].is_object() || stale["lease"].is_null());

    let eligible = json(
        &cluster,
        &[
            "resolve",
            "ns/ctl/0",
            "203.0.113.9",
            "10.4.0.2:80",
            "--ipv4-mask",
            "24",
            "--eligible",
            "10.4.0.2:80,10.4.0.3:80",
        ],
    );
    assert_eq!(eligible["replaced"], true);
    assert_eq!(eligible["lease"]["endpoint"], "10.4.0.2:80");

    let swapped = json(
        &cluster,
        &[
            "reassign",
            "ns/ctl/0",
            "203.0.113.9",
            "10.4.0.2:80",
            "10.4.0.3:80",
            "--ipv4-mask",
            "24",
        ],
    );
    assert_eq!(swapped["swapped"], true);

    let listed = json(&cluster, &["list", "--scope", "ns/ctl/0"]);
    assert_eq!(listed["leases"].as_array().unwrap().len(), 1);

    let released = json(
        &cluster,
        &["release", "ns/ctl/0", "203.0.113.9", "--ipv4-mask", "24"],
    );
    assert_eq!(released["released"], true);

    json(
        &cluster,
        &["resolve", "ns/ctl/1", "10.9.9.9", "10.4.0.5:80"],
    );
    let drained = json(&cluster, &["drain", "10.4.0.5:80"]);
    assert_eq!(drained["removed"], 1);

    let snapshot = json(&cluster, &["snapshot"]);
    assert!(snapshot["last_log_index"].as_u64().unwrap() > 0);

    let other = (1..=3).find(|id| *id != leader).unwrap();
    let moved = json(&cluster, &["transfer-leader", &other.to_string()]);
    assert_eq!(moved["leader_id"], other);

    cluster.start_joiner(4);
    let added = json(
        &cluster,
        &["members", "add", "4", &cluster.addr(4).to_string()],
    );
    assert!(
        added["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == 4 && m["voter"] == false)
    );
    let promoted = json(&cluster, &["members", "promote", "4"]);
    assert!(
        promoted["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == 4 && m["voter"] == true)
    );
    let removed = json(&cluster, &["members", "remove", "4"]);
    assert!(
        removed["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["id"] != 4)
    );

    // Human output is a table.
    let table = ctl(&cluster, &["status"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NODE"), "{text}");

    // Failure: one line on stderr, non-zero exit.
    let bad = ctl(&cluster, &["resolve", "", "10.0.0.1", "a:80"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("invalid scope"),
        "{err}"
    );
}
