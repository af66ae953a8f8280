//! Leader changes with a probe for stale answers: a handover (TransferLeader, or SIGTERM)
//! while the old leader hears its peers 0.6 s late; a leader SIGKILLed and started again at
//! once, five times; a lossy link to a follower, then a leader that hears nothing from its
//! peers while they still hear it. The network and restart faults are in
//! `affinity_tests::containers`; the probes in `probes.rs`.

use std::time::{Duration, Instant};

use affinity_tests::containers::network_tools_missing;
use affinity_tests::{requests, wait};

use crate::Run;
use crate::probes::{self, Verdict, note};

/// How late the old leader hears its peers.
const DELAY: Duration = Duration::from_millis(600);
/// How long the stale-answer probe runs once the new leader is known.
const PROBE_WINDOW: Duration = Duration::from_secs(2);
/// Planted leases: one per probe, 20 ms apart over the window, and some to spare.
const PLANTED: usize = 120;

/// How the old leader is made to hand over.
#[derive(Clone, Copy)]
enum Handover {
    /// `affinity.v1.Cluster/TransferLeader` on the old leader.
    Transfer,
    /// SIGTERM: it hands over before it stops.
    Sigterm,
}

/// How long one fresh write through node `on` takes (retrying UNAVAILABLE).
async fn one_write(run: &Run, on: usize, ip: &str) -> Duration {
    let started = Instant::now();
    let request = requests::resolve("chaos/timing/0", ip, "timing:1", Duration::from_secs(60));
    probes::resolve_retrying(&run.cluster.channel(on), request)
        .await
        .unwrap_or_else(|s| panic!("a timing write through node {on}: {s}"));
    started.elapsed()
}

/// Round `round` (from 1): delay the leader's incoming peer traffic, make it hand over,
/// probe it for stale answers, heal.
async fn handover_with_a_delayed_old_leader(
    run: &mut Run,
    how: Handover,
    round: usize,
    verdict: &Verdict,
) {
    let old = run.cluster.wait_leader(&run.cluster.all()).await;
    let to = (old + 1) % 3;
    let others: Vec<usize> = run
        .cluster
        .all()
        .into_iter()
        .filter(|n| *n != old)
        .collect();
    let keys = probes::plant(
        &run.cluster,
        old,
        (round - 1) * PLANTED..round * PLANTED,
        None,
    )
    .await;
    let quick = one_write(run, old, &format!("10.99.{round}.1")).await;
    note(
        run,
        format!(
            "round {round}: planted {PLANTED} leases through the leader, node {old}; a write takes {} ms",
            quick.as_millis()
        ),
    );

    run.cluster.delay_incoming_peer_traffic(old, DELAY).await;
    let slow = one_write(run, old, &format!("10.98.{round}.1")).await;
    note(
        run,
        format!(
            "node {old} hears its peers {} ms late: a write through it now takes {} ms",
            DELAY.as_millis(),
            slow.as_millis()
        ),
    );
    run.under_load(8).await;

    let fault = Instant::now();
    let asked = match how {
        Handover::Transfer => format!("TransferLeader to node {to} on node {old}"),
        Handover::Sigterm => format!("SIGTERM node {old}"),
    };
    note(run, asked.clone());
    let cluster = &run.cluster;
    let handing = async {
        match how {
            Handover::Transfer => match probes::transfer_leader(cluster, old, to).await {
                Ok(id) => format!(
                    "answered leader {id} after {} ms",
                    fault.elapsed().as_millis()
                ),
                Err(s) => format!(
                    "failed after {} ms: {:?} {}",
                    fault.elapsed().as_millis(),
                    s.code(),
                    s.message()
                ),
            },
            Handover::Sigterm => {
                cluster.stop(old).await;
                let code = cluster.exit_code(old).await;
                assert_eq!(code, Some(0), "node {old} did not exit cleanly on SIGTERM");
                format!("exited 0 after {} ms", fault.elapsed().as_millis())
            }
        }
    };
    let probing = async {
        let (new, seen) = probes::first_leader(cluster, &others, fault).await;
        let probe =
            probes::release_then_ask_old(cluster, new, old, &keys, PROBE_WINDOW, fault).await;
        (new, seen, probe)
    };
    let (handed, (new, seen, probe)) = tokio::join!(handing, probing);
    run.report.elected(seen, new);
    note(run, format!("{asked}: {handed}"));
    let healed = run.cluster.heal_network(old).await;
    note(run, format!("healed node {old}'s delay: {healed}"));
    if matches!(how, Handover::Sigterm) {
        run.cluster.start_node(old).await;
        run.cluster.wait_ready(old).await;
        note(run, format!("node {old} started again and caught up"));
    }
    run.writes_resume("after the handover").await;
    note(run, format!("stale-answer probe: {probe}"));
    verdict.expect(run, probe.stale() == 0, || {
        format!(
            "round {round}: the old leader, node {old}, answered {} times with a lease already released on the new leader, node {new}",
            probe.stale()
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_transfer_with_a_delayed_old_leader() {
    let name = "leader_transfer_delayed";
    probes::checked(
        name,
        network_tools_missing(),
        async |run: &mut Run, verdict: &Verdict| {
            // Two rounds: whether the old leader still holds its leader lease when the probe
            // reaches it depends on when its delayed acknowledgements last came in.
            for round in 1..=2 {
                handover_with_a_delayed_old_leader(run, Handover::Transfer, round, verdict).await;
                run.under_load(100).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigterm_with_a_delayed_old_leader() {
    let name = "leader_sigterm_delayed";
    probes::checked(
        name,
        network_tools_missing(),
        async |run: &mut Run, verdict: &Verdict| {
            handover_with_a_delayed_old_leader(run, Handover::Sigterm, 1, verdict).await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_and_immediate_restart_five_times() {
    let name = "leader_kill_restart_x5";
    probes::checked(name, None, async |run: &mut Run, verdict: &Verdict| {
        for round in 1..=5 {
            let leader = run.cluster.wait_leader(&run.cluster.all()).await;
            let before = run.cluster.status(leader).await.expect("the leader's Status");
            let key = probes::plant(&run.cluster, leader, round..round + 1, None)
                .await
                .remove(0);
            run.report.did(format!(
                "round {round}: node {leader} leads in term {}; a write acknowledged, then SIGKILL and start again at once",
                before.term
            ));
            let fault = Instant::now();
            run.cluster.kill(leader).await;
            run.cluster.start_node(leader).await;
            let back = wait::until(
                &format!("the restarted node {leader} answers Status"),
                Duration::from_secs(30),
                || run.cluster.status(leader),
            )
            .await;
            let restored = back.role == "leader" && back.term == before.term;
            let (lookups, resolves) =
                probes::read_back(&run.cluster, leader, &key, 5, Duration::from_secs(10)).await;
            let agreed = run.cluster.wait_leader(&run.cluster.all()).await;
            run.report.elected(fault.elapsed(), agreed);
            let settled = run.cluster.status(leader).await.expect("Status");
            note(
                run,
                format!(
                    "round {round}: restarted node {leader} first answered {} ms after the kill as {} in term {} (before: leader in term {}){}; once agreed: node {agreed} leads, node {leader} is {} in term {}; read-back on it: Lookup {lookups}; Resolve {resolves}",
                    fault.elapsed().as_millis(),
                    back.role,
                    back.term,
                    before.term,
                    if restored {
                        " - LEADER RESTORED IN THE SAME TERM"
                    } else {
                        ""
                    },
                    settled.role,
                    settled.term
                ),
            );
            verdict.expect(run, lookups.wrong + resolves.wrong == 0, || {
                format!(
                    "round {round}: the restarted node {leader} answered without the write acknowledged before its kill"
                )
            });
            run.writes_resume("after the restart").await;
            run.under_load(200).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_follower_then_deaf_leader() {
    let name = "peer_loss";
    probes::checked(name, network_tools_missing(), async |run: &mut Run, verdict: &Verdict| {
        let old = run.cluster.wait_leader(&run.cluster.all()).await;
        let follower = (old + 1) % 3;
        let others: Vec<usize> = run
            .cluster
            .all()
            .into_iter()
            .filter(|n| *n != old)
            .collect();

        // A follower loses 30 % of what the leader sends it: writes go on.
        run.cluster.drop_incoming_from(follower, old, 0.3).await;
        note(
            run,
            format!("node {follower} (a follower) drops 30 % of the packets from the leader, node {old}"),
        );
        run.writes_resume("with the lossy link").await;
        run.under_load(1000).await;
        let healed = run.cluster.heal_network(follower).await;
        note(run, format!("healed node {follower}: {healed}"));
        run.cluster.wait_ready(follower).await;

        // The leader hears nothing from its peers, while they still hear it: a new
        // leader is elected, and the old one must not answer from its table.
        let keys = probes::plant(&run.cluster, old, 0..PLANTED, None).await;
        let fault = Instant::now();
        run.cluster.drop_incoming_from_peers(old, 1.0).await;
        note(
            run,
            format!("node {old} (the leader) drops every packet from its peers; they still hear it"),
        );
        let (new, seen) = probes::first_leader(&run.cluster, &others, fault).await;
        run.report.elected(seen, new);
        let probe =
            probes::release_then_ask_old(&run.cluster, new, old, &keys, PROBE_WINDOW, fault).await;
        let serving = run.cluster.serving(old).await;
        run.writes_resume("with the old leader deaf").await;
        let healed = run.cluster.heal_network(old).await;
        note(
            run,
            format!(
                "node {old} deaf for {} ms (health then: {serving:?}); healed: {healed}",
                fault.elapsed().as_millis()
            ),
        );
        note(run, format!("stale-answer probe: {probe}"));
        verdict.expect(run, probe.stale() == 0, || {
            format!(
                "the deaf old leader, node {old}, answered {} times with a lease released on the new leader, node {new}",
                probe.stale()
            )
        });
    })
    .await;
}
