//! The scenarios, each a test: faults under load, then the common check in `scenario`.

use std::time::{Duration, Instant};

use affinity_proto::pb;
use affinity_proto::pb::affinity_client::AffinityClient as RawClient;
use affinity_tests::requests;

use crate::{Run, scenario};

/// The other nodes of a 3-node cluster.
fn others(run: &Run, i: usize) -> Vec<usize> {
    run.cluster.all().into_iter().filter(|n| *n != i).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_five_times_in_a_row() {
    scenario("leader_sigkill_x5", async |run: &mut Run| {
        for round in 1..=5 {
            let leader = run.cluster.wait_leader(&run.cluster.all()).await;
            run.report
                .did(format!("round {round}: SIGKILL the leader, node {leader}"));
            let fault = Instant::now();
            run.cluster.kill(leader).await;
            let rest = others(run, leader);
            let new = run.cluster.wait_leader(&rest).await;
            run.report.elected(fault.elapsed(), new);
            run.writes_resume("after the kill").await;
            run.cluster.start_node(leader).await;
            run.cluster.wait_ready(leader).await;
            run.report.did(format!(
                "node {leader} restarted on its volume and caught up"
            ));
            run.under_load(300).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_paused_and_resumed() {
    scenario("follower_pause", async |run: &mut Run| {
        let leader = run.cluster.wait_leader(&run.cluster.all()).await;
        let follower = (leader + 1) % 3;
        run.report
            .did(format!("docker pause node {follower} (a follower)"));
        run.cluster.pause(follower).await;
        run.writes_resume("with a follower frozen").await;
        run.under_load(1500).await;
        run.report
            .did("the majority kept taking writes; docker unpause");
        run.cluster.unpause(follower).await;
        run.cluster.wait_ready(follower).await;
        run.report.did(format!("node {follower} caught up"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_isolated_in_a_minority() {
    scenario("leader_isolated", async |run: &mut Run| {
        let old = run.cluster.wait_leader(&run.cluster.all()).await;
        run.report
            .did(format!("cut the leader, node {old}, off its peers"));
        let fault = Instant::now();
        run.cluster.cut_off(old).await;
        let rest = others(run, old);
        let new = run.cluster.wait_leader(&rest).await;
        run.report.elected(fault.elapsed(), new);
        run.writes_resume("after the cut").await;
        // Out of quorum contact, the old leader leaves the load balancer's rotation.
        affinity_tests::wait::until(
            "the isolated old leader reports NOT_SERVING",
            Duration::from_secs(15),
            || async {
                match run.cluster.serving(old).await {
                    Ok(()) => Err("still SERVING".to_string()),
                    Err(why) => Ok(why),
                }
            },
        )
        .await;
        run.report.did(format!(
            "node {old} reports NOT_SERVING {} ms after the cut",
            fault.elapsed().as_millis()
        ));

        // The old leader is still reachable by clients: it must not accept a write, nor
        // answer a linearizable read, on its own.
        let mut client = RawClient::new(run.cluster.channel(old));
        let write = client
            .resolve(requests::with_deadline(
                requests::resolve(
                    "chaos/split-brain/0",
                    "198.51.100.7",
                    "minority:1",
                    Duration::from_secs(600),
                ),
                Duration::from_secs(3),
            ))
            .await;
        assert!(
            write.is_err(),
            "the isolated old leader acknowledged a write: {write:?}"
        );
        let read = client
            .lookup(requests::with_deadline(
                requests::lookup("chaos/long/0", "10.64.0.1"),
                Duration::from_secs(3),
            ))
            .await;
        assert!(
            read.is_err(),
            "the isolated old leader answered a linearizable read: {read:?}"
        );
        // Nor answer a Resolve from a lease it holds (the lease-read path): its leader lease
        // has lapsed, so it may not know of a newer decision.
        let kept = client
            .resolve(requests::with_deadline(
                requests::resolve(
                    affinity_tests::workload::LONG_SCOPE,
                    "10.64.0.0",
                    "minority:1",
                    Duration::from_secs(600),
                ),
                Duration::from_secs(3),
            ))
            .await;
        assert!(
            kept.is_err(),
            "the isolated old leader answered a Resolve from its own table: {kept:?}"
        );
        run.report.did(format!(
            "the isolated node refused a write ({}) and a linearizable read ({})",
            write
                .err()
                .map(|s| s.code())
                .map_or(String::new(), |c| format!("{c:?}")),
            read.err()
                .map(|s| s.code())
                .map_or(String::new(), |c| format!("{c:?}"))
        ));
        run.under_load(500).await;

        run.report.did(format!("reconnect node {old}"));
        run.cluster.reconnect(old).await;
        let agreed = run.cluster.wait_leader(&run.cluster.all()).await;
        let status = run
            .cluster
            .status(old)
            .await
            .expect("status of the old leader");
        assert_ne!(status.role, "leader", "the old leader did not step down");
        run.report.did(format!(
            "all three agree on node {agreed} as leader; node {old} is a {} in term {}",
            status.role, status.term
        ));
        // Nothing the minority saw was committed: the probe key has no lease.
        let probe = client
            .lookup(requests::with_deadline(
                requests::lookup("chaos/split-brain/0", "198.51.100.7"),
                Duration::from_secs(5),
            ))
            .await
            .expect("lookup after healing")
            .into_inner();
        assert_eq!(
            probe.lease, None,
            "a write sent only to the minority took effect"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load() {
    scenario("rolling_restart", async |run: &mut Run| {
        for i in run.cluster.all() {
            run.report.did(format!("stop node {i} (SIGTERM)"));
            let fault = Instant::now();
            run.cluster.stop(i).await;
            let code = run.cluster.exit_code(i).await;
            assert_eq!(code, Some(0), "node {i} did not exit cleanly on SIGTERM");
            let rest = others(run, i);
            let leader = run.cluster.wait_leader(&rest).await;
            run.report.elected(fault.elapsed(), leader);
            run.cluster.start_node(i).await;
            run.cluster.wait_ready(i).await;
            run.report.did(format!("node {i} back and caught up"));
            run.writes_resume("after the restart").await;
            run.under_load(300).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_stopped_and_started() {
    scenario("full_stop_start", async |run: &mut Run| {
        run.report.did("stop all three nodes (SIGTERM)");
        run.cluster.stop_all().await;
        for i in run.cluster.all() {
            assert_eq!(
                run.cluster.exit_code(i).await,
                Some(0),
                "node {i} did not exit cleanly"
            );
        }
        run.report.did("start all three");
        let start = Instant::now();
        run.cluster.start_all().await;
        let leader = run.cluster.wait_leader(&run.cluster.all()).await;
        run.report.elected(start.elapsed(), leader);
        run.writes_resume("after the start").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_replaced_keeps_its_disk() {
    scenario("replace_container", async |run: &mut Run| {
        let leader = run.cluster.wait_leader(&run.cluster.all()).await;
        let before: pb::StatusResponse = run.cluster.status(leader).await.expect("status");
        run.report.did(format!(
            "remove the leader's container (node {leader}, log at {}) and create a new one on its volume, cut off",
            before.last_log_index
        ));
        let fault = Instant::now();
        run.cluster.replace(leader, true).await;
        let rest = others(run, leader);
        let new = run.cluster.wait_leader(&rest).await;
        run.report.elected(fault.elapsed(), new);
        // Alone, the new container has only its volume: its log must be the old one.
        let alone = affinity_tests::wait::until(
            "the replacement answers Status",
            Duration::from_secs(30),
            || run.cluster.status(leader),
        )
        .await;
        assert!(
            alone.last_log_index >= before.last_log_index,
            "the replacement's log is at {}, the old container's was at {}",
            alone.last_log_index,
            before.last_log_index
        );
        run.report.did(format!(
            "the replacement, before meeting its peers, has its log up to {} (term {})",
            alone.last_log_index, alone.term
        ));
        run.cluster.reconnect(leader).await;
        run.cluster.wait_ready(leader).await;
        run.report.did("reconnected; it caught up");
        run.writes_resume("after the replacement").await;
    })
    .await;
}
