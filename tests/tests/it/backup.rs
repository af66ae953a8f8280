//! Backup, restore and disaster recovery against real processes: `affinityctl snapshot
//! --out` from a live cluster, `affinityctl restore` into a new one, and `affinityd export`
//! from the one node left after a majority is lost.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use affinity_proto::pb;
use affinity_tests::workload::list_all;
use affinity_tests::{Cluster, ClusterOptions, bins, requests, wait};
use serde_json::Value;

const SCOPE: &str = "backup";

fn ctl(endpoints: &str, args: &[&str]) -> Output {
    Command::new(bins::affinityctl())
        .args(["--json", "--endpoints", endpoints])
        .args(args)
        .env_remove("AFFINITY_ENDPOINTS")
        .output()
        .expect("affinityctl runs")
}

fn ctl_json(endpoints: &str, args: &[&str]) -> Value {
    let out = ctl(endpoints, args);
    assert!(
        out.status.success(),
        "affinityctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("affinityctl prints JSON")
}

/// The client IP of lease `i`: each in its own /24, so each is its own key.
fn ip(i: u32) -> String {
    format!("10.{}.{}.1", i / 256, i % 256)
}

/// Write `n` one-hour leases, lease `i` on endpoint `backend-i:80`.
async fn write(cluster: &Cluster, n: u32) {
    let mut client = cluster.client(1);
    for i in 0..n {
        let request = requests::resolve(
            SCOPE,
            &ip(i),
            &format!("backend-{i}:80"),
            Duration::from_secs(3600),
        );
        client
            .resolve(requests::with_deadline(request, Duration::from_secs(10)))
            .await
            .expect("the write is acknowledged");
    }
}

/// Every lease of the scope, by prefix.
async fn leases(cluster: &Cluster, id: u64) -> BTreeMap<String, pb::Lease> {
    list_all(cluster.channel(id), SCOPE)
        .await
        .expect("List answers")
        .into_iter()
        .map(|l| (l.prefix.clone(), l))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster_without_extending_or_overwriting() {
    let old = Cluster::start("backup-old", ClusterOptions::default()).await;
    write(&old, 300).await;
    let mut client = old.client(1);
    let short = client
        .resolve(requests::resolve(
            SCOPE,
            "192.0.2.1",
            "short:80",
            Duration::from_secs(1),
        ))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();

    // Asked of every node in turn: node 1 answers, leader or follower.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("affinity.backup");
    let file_arg = file.to_str().unwrap();
    let taken = ctl_json(&old.endpoints(), &["snapshot", "--out", file_arg]);
    assert_eq!(taken["lease_count"], 301, "{taken}");
    assert!(!dir.path().join("affinity.backup.partial").exists());
    let piped = Command::new(bins::affinityctl())
        .args(["--endpoints", &old.endpoints(), "snapshot", "--out", "-"])
        .output()
        .unwrap();
    assert!(piped.status.success());
    assert!(
        piped.stdout.starts_with(b"AFFSNAP\0"),
        "a snapshot file on stdout"
    );
    let before = leases(&old, 1).await;

    // A damaged backup is refused whole, naming the problem, and changes nothing.
    let mut damaged = std::fs::read(&file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    let damaged_file = dir.path().join("damaged.backup");
    std::fs::write(&damaged_file, damaged).unwrap();

    let new = Cluster::start(
        "backup-new",
        ClusterOptions {
            nodes: 1,
            ..ClusterOptions::default()
        },
    )
    .await;
    let refused = ctl(
        &new.endpoints(),
        &["restore", damaged_file.to_str().unwrap()],
    );
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("not a usable backup"), "{said}");
    assert!(leases(&new, 1).await.is_empty());

    // The new cluster already decided one of the keys: that decision stands.
    let mut new_client = new.client(1);
    new_client
        .resolve(requests::resolve(
            SCOPE,
            &ip(0),
            "elsewhere:80",
            Duration::from_secs(3600),
        ))
        .await
        .unwrap();
    wait::until_wall_clock(short.expires_at_ms).await;

    let restored = ctl_json(&new.endpoints(), &["restore", file_arg, "--batch", "64"]);
    assert_eq!(restored["leases_in_backup"], 301, "{restored}");
    assert_eq!(restored["imported"], 299, "{restored}");
    assert_eq!(restored["present"], 1, "{restored}");
    assert_eq!(
        restored["expired"], 1,
        "the ended lease is not brought back"
    );

    let after = leases(&new, 1).await;
    assert_eq!(after.len(), 300);
    for (prefix, lease) in &after {
        let original = &before[prefix];
        if lease.endpoint == "elsewhere:80" {
            continue;
        }
        assert_eq!(lease.endpoint, original.endpoint, "{prefix}");
        assert_eq!(lease.created_at_ms, original.created_at_ms, "{prefix}");
        assert_eq!(
            lease.expires_at_ms, original.expires_at_ms,
            "{prefix}: never extended"
        );
    }
    let kept = new_client
        .resolve(requests::resolve(
            SCOPE,
            &ip(7),
            "rival:80",
            Duration::from_secs(60),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!kept.created);
    assert_eq!(
        kept.lease.unwrap().endpoint,
        "backend-7:80",
        "first writer still wins"
    );

    let again = ctl_json(&new.endpoints(), &["restore", file_arg]);
    assert_eq!(
        again["imported"], 0,
        "a second restore changes nothing: {again}"
    );
    assert_eq!(again["present"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_majority_is_recovered_from_the_survivors_data() {
    let mut old = Cluster::start("recover-old", ClusterOptions::default()).await;
    write(&old, 120).await;
    wait::until(
        "node 3 has applied every write",
        Duration::from_secs(20),
        || async {
            let status = old.status(3).await.map_err(|s| s.to_string())?;
            if status.lease_count >= 120 {
                Ok(())
            } else {
                Err(status.lease_count.to_string())
            }
        },
    )
    .await;
    old.kill(1);
    old.kill(2);

    // Node 3 alone cannot take writes.
    let mut survivor = old.client(3);
    let refused = survivor
        .resolve(requests::with_deadline(
            requests::resolve(SCOPE, "198.51.100.1", "x:80", Duration::from_secs(60)),
            Duration::from_secs(3),
        ))
        .await;
    assert!(refused.is_err(), "a minority must not accept writes");

    // Export needs the node stopped: a running node holds its directory.
    let data_dir = old.data_dir(3).to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("survivor.snapshot");
    let export = |out: &std::path::Path| {
        Command::new(bins::affinityd())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["export", "--out"])
            .arg(out)
            .env_remove("AFFINITY_CONFIG")
            .output()
            .expect("affinityd runs")
    };
    let busy = export(&file);
    assert!(
        !busy.status.success(),
        "export of a running node's directory"
    );
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use"));
    assert!(old.stop(3).await.success());
    let exported = export(&file);
    assert!(
        exported.status.success(),
        "export: {}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let summary: Value = serde_json::from_slice(&exported.stdout).unwrap();
    assert_eq!(summary["lease_count"], 120, "{summary}");
    let streamed = export(std::path::Path::new("-"));
    assert!(streamed.status.success());
    assert_eq!(
        streamed.stdout,
        std::fs::read(&file).unwrap(),
        "--out - streams the same file"
    );

    let new = Cluster::start(
        "recover-new",
        ClusterOptions {
            nodes: 1,
            ..ClusterOptions::default()
        },
    )
    .await;
    let restored = ctl_json(&new.endpoints(), &["restore", file.to_str().unwrap()]);
    assert_eq!(restored["imported"], 120, "{restored}");
    let after = leases(&new, 1).await;
    assert_eq!(after.len(), 120);
    for i in 0..120 {
        let endpoint = after
            .values()
            .find(|l| l.prefix == format!("10.{}.{}.0/24", i / 256, i % 256))
            .map(|l| l.endpoint.clone());
        assert_eq!(endpoint, Some(format!("backend-{i}:80")), "lease {i}");
    }
}
