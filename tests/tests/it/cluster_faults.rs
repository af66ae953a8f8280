//! Faults on a cluster of real processes: a SIGKILLed leader, every node stopped and
//! started again, a learner that joins through a snapshot and a node that leaves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use affinity_proto::pb;
use affinity_tests::requests::{lookup, resolve, retry_unavailable, with_deadline};
use affinity_tests::{Cluster, ClusterOptions, wait};
use tonic::Code;

const HOUR: Duration = Duration::from_secs(3600);

/// Resolve `count` distinct /24 prefixes through `node`; return prefix -> endpoint as
/// acknowledged (and the expiry of each).
async fn write_leases(
    cluster: &Cluster,
    node: u64,
    scope: &str,
    count: u32,
) -> BTreeMap<String, (String, i64)> {
    let client = cluster.client(node);
    let mut acked = BTreeMap::new();
    for i in 0..count {
        let ip = format!("10.{}.{}.7", i / 200, i % 200);
        let endpoint = format!("10.4.0.{}:8080", i % 7);
        let resp = retry_unavailable(Duration::from_secs(20), || {
            let mut client = client.clone();
            let req = with_deadline(
                resolve(scope, &ip, &endpoint, HOUR),
                Duration::from_secs(10),
            );
            async move { client.resolve(req).await }
        })
        .await
        .expect("writes succeed while a majority is up")
        .into_inner();
        let lease = resp.lease.unwrap();
        acked.insert(lease.prefix, (lease.endpoint, lease.expires_at_ms));
    }
    acked
}

/// Every acknowledged lease is still there, with the same endpoint and the same expiry.
async fn assert_all_present(
    cluster: &Cluster,
    node: u64,
    scope: &str,
    acked: &BTreeMap<String, (String, i64)>,
) {
    let client = cluster.client(node);
    for (prefix, (endpoint, expires)) in acked {
        let ip = prefix.replace(".0/24", ".99");
        let lease = retry_unavailable(Duration::from_secs(20), || {
            let mut client = client.clone();
            let req = with_deadline(lookup(scope, &ip), Duration::from_secs(10));
            async move { client.lookup(req).await }
        })
        .await
        .expect("lookups succeed while a majority is up")
        .into_inner()
        .lease
        .unwrap_or_else(|| panic!("acknowledged lease {scope} {prefix} is gone"));
        assert_eq!(&lease.endpoint, endpoint, "{prefix} moved");
        assert_eq!(lease.expires_at_ms, *expires, "{prefix} expiry changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_leader_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start("sigkill", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut acked = write_leases(&cluster, follower, "ns/kill/0", 60).await;
    acked.extend(write_leases(&cluster, leader, "ns/kill/0", 120).await);

    let killed = Instant::now();
    cluster.kill(leader);
    let rest: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_leader(&rest).await;
    let failover = killed.elapsed();
    eprintln!("leader {leader} killed; node {new_leader} leads after {failover:?}");
    assert!(
        failover < Duration::from_secs(10),
        "no new leader within 10 s: {failover:?}"
    );

    assert_all_present(&cluster, rest[0], "ns/kill/0", &acked).await;
    // Writes resume, through either survivor.
    for id in &rest {
        let resp = cluster
            .client(*id)
            .resolve(with_deadline(
                resolve("ns/kill/1", "192.0.2.1", "10.4.1.1:80", HOUR),
                Duration::from_secs(10),
            ))
            .await
            .expect("writes resume after failover")
            .into_inner();
        assert_eq!(resp.lease.unwrap().endpoint, "10.4.1.1:80");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_keeps_every_lease_and_expiry_stays_absolute() {
    let mut cluster = Cluster::start("restart", ClusterOptions::default()).await;
    let acked = write_leases(&cluster, 1, "ns/restart/0", 80).await;
    let short = cluster
        .client(2)
        .resolve(resolve(
            "ns/restart/1",
            "198.51.100.1",
            "10.4.2.2:80",
            Duration::from_secs(2),
        ))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();

    for id in 1..=3 {
        let status = cluster.stop(id).await;
        assert!(
            status.success(),
            "node {id} exits 0 on SIGTERM, got {status}"
        );
    }
    // The short lease ends while every node is down.
    wait::until_wall_clock(short.expires_at_ms).await;
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    assert_all_present(&cluster, leader, "ns/restart/0", &acked).await;

    let mut client = cluster.client(3);
    let gone = client
        .lookup(lookup("ns/restart/1", "198.51.100.1"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        gone.lease.is_none(),
        "a lease that expired while the cluster was down is dead"
    );
    let again = client
        .resolve(resolve("ns/restart/1", "198.51.100.1", "10.4.3.3:80", HOUR))
        .await
        .unwrap()
        .into_inner();
    assert!(again.created, "its key is decided again");
    assert_eq!(again.lease.unwrap().endpoint, "10.4.3.3:80");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_through_a_snapshot_and_a_node_leaves_while_serving() {
    let options = ClusterOptions {
        snapshot_threshold: 100,
        logs_kept: 0,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start("membership", options).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let acked = write_leases(&cluster, leader, "ns/members/0", 300).await;
    wait::until(
        "the leader has a snapshot and purged its log",
        Duration::from_secs(20),
        || async {
            let s = cluster.status(leader).await.map_err(|e| e.to_string())?;
            if s.snapshot_index >= 100 {
                Ok(())
            } else {
                Err(format!("snapshot index {}", s.snapshot_index))
            }
        },
    )
    .await;

    // Keep writing through node 2 and 3 while the membership changes.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let clients = [cluster.client(2), cluster.client(3)];
        tokio::spawn(async move {
            let mut written = BTreeMap::new();
            let mut longest_gap = Duration::ZERO;
            let mut last_ok = Instant::now();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let mut client = clients[(i % 2) as usize].clone();
                let ip = format!("172.{}.{}.1", 16 + i / 250, i % 250);
                let req = resolve("ns/members/live", &ip, "10.4.9.9:80", HOUR);
                match client
                    .resolve(with_deadline(req, Duration::from_secs(5)))
                    .await
                {
                    Ok(resp) => {
                        let lease = resp.into_inner().lease.unwrap();
                        written.insert(lease.prefix, (lease.endpoint, lease.expires_at_ms));
                        longest_gap = longest_gap.max(last_ok.elapsed());
                        last_ok = Instant::now();
                        i += 1;
                    }
                    Err(status)
                        if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) => {}
                    Err(status) => {
                        panic!("unexpected error while the membership changes: {status:?}")
                    }
                }
            }
            (written, longest_gap.max(last_ok.elapsed()))
        })
    };

    cluster.start_joiner(4);
    let mut admin = cluster.admin(2);
    admin
        .add_learner(with_deadline(
            pb::AddLearnerRequest {
                node_id: 4,
                address: cluster.addr(4).to_string(),
                blocking: true,
                ..Default::default()
            },
            Duration::from_secs(30),
        ))
        .await
        .expect("the learner is added and catches up");
    wait::until(
        "node 4 installed a snapshot and holds every lease",
        Duration::from_secs(30),
        || async {
            let installed = cluster
                .metric(4, "affinity_snapshots_installed_total")
                .unwrap_or(0.0);
            let s = cluster.status(4).await.map_err(|e| e.to_string())?;
            if installed >= 1.0 && s.lease_count >= 300 && s.role == "learner" {
                Ok(())
            } else {
                Err(format!(
                    "installed {installed}, leases {}, role {}",
                    s.lease_count, s.role
                ))
            }
        },
    )
    .await;

    admin
        .change_membership(pb::ChangeMembershipRequest {
            add_voters: vec![4],
            ..Default::default()
        })
        .await
        .expect("the learner is promoted");
    admin
        .change_membership(with_deadline(
            pb::ChangeMembershipRequest {
                remove_voters: vec![1],
                ..Default::default()
            },
            Duration::from_secs(20),
        ))
        .await
        .expect("node 1 is removed");
    let new_leader = cluster.wait_leader(&[2, 3, 4]).await;
    let status = cluster.status(new_leader).await.unwrap();
    let mut members: Vec<(u64, bool)> = status.members.iter().map(|m| (m.id, m.voter)).collect();
    members.sort_unstable();
    assert_eq!(members, [(2, true), (3, true), (4, true)]);
    cluster.kill(1);

    // The writer kept going; nothing it was told is lost, and node 4 serves it all.
    let _more = write_leases(&cluster, 4, "ns/members/1", 5).await;
    stop.store(true, Ordering::Relaxed);
    let (written, longest_gap) = writer.await.unwrap();
    eprintln!(
        "{} writes during the changes; longest gap between successes {longest_gap:?}",
        written.len()
    );
    assert!(!written.is_empty(), "the writer made progress");
    assert!(
        longest_gap < Duration::from_secs(10),
        "writes stalled for {longest_gap:?}"
    );
    assert_all_present(&cluster, 4, "ns/members/0", &acked).await;
    assert_all_present(&cluster, 4, "ns/members/live", &written).await;
}
