//! A follower whose wall clock is 10 s ahead (or behind) becomes leader after the leader is
//! killed: the store's time must not jump with it. Leases the skewed leader creates are
//! stamped within 1 s (plus slack) of real time and live no longer in real time than their
//! policy plus that, and a lease the old leader made does not end more than that early.
//! (The bound is `affinityd --max-clock-step`, default 1 s.)

use std::time::Duration;

use affinity_proto::pb;
use affinity_proto::pb::affinity_client::AffinityClient as RawClient;
use affinity_tests::containers::LIBFAKETIME;
use affinity_tests::{requests, workload};

use crate::Run;
use crate::probes::{self, Planted, Verdict, note};

/// How far store time may move beyond real time at a leader change.
const MAX_CLOCK_STEP_MS: i64 = 1000;
/// What the measurement itself may add: call latency, polling, a sweep.
const SLACK_MS: i64 = 500;
/// Lifetime of the leases the skewed leader creates.
const NEW_LIFETIME: Duration = Duration::from_secs(3);
/// Lifetime of the lease the old leader creates before it is killed.
const OLD_LIFETIME: Duration = Duration::from_secs(8);
/// Leases the skewed leader creates.
const NEW_LEASES: usize = 10;

fn libfaketime_missing() -> Option<String> {
    (!std::path::Path::new(LIBFAKETIME).exists())
        .then(|| format!("{LIBFAKETIME} (apt-get install faketime)"))
}

/// A lease the skewed leader created, with the real time around its call.
struct Stamped {
    key: Planted,
    sent_ms: i64,
    answered_ms: i64,
}

/// Whether node `on` still answers `key`'s lease (a linearizable Lookup); errors count as
/// "don't know yet".
async fn still_there(
    client: &mut RawClient<tonic::transport::Channel>,
    key: &Planted,
) -> Option<bool> {
    let limit = Duration::from_secs(1);
    let answer = probes::within(
        limit,
        client.lookup(requests::with_deadline(
            requests::lookup(probes::PROBE_SCOPE, &key.ip),
            limit,
        )),
    )
    .await
    .ok()?;
    Some(
        answer
            .lease
            .is_some_and(|l| l.created_at_ms == key.lease.created_at_ms),
    )
}

async fn skewed_follower_becomes_leader(run: &mut Run, offset_s: i64, verdict: &Verdict) {
    // The skewed leader may move store time by up to the step: the checker allows as much.
    run.clock_tolerance_ms = MAX_CLOCK_STEP_MS + SLACK_MS;
    let old = run.cluster.wait_leader(&run.cluster.all()).await;
    let skewed = (old + 1) % 3;
    let survivors = [skewed, (old + 2) % 3];
    run.cluster.skew_wall_clock(skewed, offset_s).await;
    note(
        run,
        format!("node {skewed} (a follower) restarted with its wall clock {offset_s:+} s off"),
    );
    let before = probes::plant(&run.cluster, old, 0..1, Some(OLD_LIFETIME))
        .await
        .remove(0);
    let before_answered_ms = workload::now_ms();
    run.report.did(format!(
        "node {old} (leader) created a lease ending at {} (in {} ms)",
        before.lease.expires_at_ms,
        before.lease.expires_at_ms - workload::now_ms()
    ));
    run.report.did(format!("SIGKILL the leader, node {old}"));
    let fault = std::time::Instant::now();
    run.cluster.kill(old).await;
    let mut new = run.cluster.wait_leader(&survivors).await;
    run.report.elected(fault.elapsed(), new);
    if new != skewed {
        let moved = requests::retry_unavailable(Duration::from_secs(10), || {
            probes::transfer_leader(&run.cluster, new, skewed)
        })
        .await;
        new = run.cluster.wait_leader(&survivors).await;
        run.report.did(format!(
            "TransferLeader to node {skewed}: {moved:?}; node {new} leads"
        ));
    }
    assert_eq!(new, skewed, "the skewed node did not become leader");
    let status = run.cluster.status(skewed).await.expect("Status");
    note(
        run,
        format!(
            "node {skewed}, {offset_s:+} s off, leads in term {}",
            status.term
        ),
    );

    // Leases from the skewed leader, and the real time around each call.
    let channel = run.cluster.channel(skewed);
    let mut client = RawClient::new(channel.clone());
    let mut stamped = Vec::new();
    for k in 1..=NEW_LEASES {
        let ip = probes::probe_ip(k);
        let sent_ms = workload::now_ms();
        let request = requests::resolve(
            probes::PROBE_SCOPE,
            &ip,
            &format!("skewed:{k}"),
            NEW_LIFETIME,
        );
        let answer = probes::resolve_retrying(&channel, request)
            .await
            .unwrap_or_else(|s| panic!("a Resolve on the skewed leader: {s}"));
        let answered_ms = workload::now_ms();
        let lease: pb::Lease = answer.lease.expect("a lease");
        stamped.push(Stamped {
            key: Planted { ip, lease },
            sent_ms,
            answered_ms,
        });
    }
    // How far each stamp is outside the real time of its call (0 inside it): a call that
    // was retried for seconds while the new leader settled has a wide window, and the
    // lease may have been made anywhere in it.
    let offsets: Vec<i64> = stamped
        .iter()
        .map(|s| {
            let at = s.key.lease.created_at_ms;
            if at < s.sent_ms {
                at - s.sent_ms
            } else {
                (at - s.answered_ms).max(0)
            }
        })
        .collect();
    let (low, high) = (
        offsets.iter().copied().min().unwrap_or(0),
        offsets.iter().copied().max().unwrap_or(0),
    );
    note(
        run,
        format!(
            "{NEW_LEASES} leases created by the skewed leader: stamped {low}..{high} ms outside the real time of their calls (0: inside)"
        ),
    );

    // When each lease is gone, by the real clock, asking the skewed leader.
    let mut pending: Vec<(usize, &Planted)> = std::iter::once(&before)
        .chain(stamped.iter().map(|s| &s.key))
        .enumerate()
        .collect();
    let mut gone_ms = vec![0_i64; pending.len()];
    let deadline = std::time::Instant::now() + OLD_LIFETIME + Duration::from_secs(20);
    let mut pace = tokio::time::interval(Duration::from_millis(25));
    while !pending.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} probed leases never ended",
            pending.len()
        );
        pace.tick().await;
        let mut left = Vec::new();
        for (n, key) in pending.drain(..) {
            match still_there(&mut client, key).await {
                Some(false) => gone_ms[n] = workload::now_ms(),
                _ => left.push((n, key)),
            }
        }
        pending = left;
    }
    // How long each lease certainly lived by the real clock (from the answer that showed
    // it to when it was seen gone: it may have been made earlier in its call, so this is
    // the least it lived, and a lease living too long shows in it whatever the call's
    // latency), and how far from its stated end it ended.
    let before_lived = gone_ms[0] - before_answered_ms;
    let early_ms = before.lease.expires_at_ms - gone_ms[0];
    let lived: Vec<i64> = stamped
        .iter()
        .zip(&gone_ms[1..])
        .map(|(s, gone)| gone - s.answered_ms)
        .collect();
    let longest = lived.iter().copied().max().unwrap_or(0);
    let off_end: Vec<i64> = stamped
        .iter()
        .zip(&gone_ms[1..])
        .map(|(s, gone)| gone - s.key.lease.expires_at_ms)
        .collect();
    note(
        run,
        format!(
            "the old leader's {} s lease lived {before_lived} ms in real time, ending {} ms {} its stated end; the skewed leader's {} s leases lived up to {longest} ms in real time, ending {}..{} ms from their stated ends (negative: before)",
            OLD_LIFETIME.as_secs(),
            early_ms.abs(),
            if early_ms >= 0 { "before" } else { "after" },
            NEW_LIFETIME.as_secs(),
            off_end.iter().copied().min().unwrap_or(0),
            off_end.iter().copied().max().unwrap_or(0),
        ),
    );

    run.cluster.start_node(old).await;
    run.cluster.wait_ready(old).await;
    run.cluster.unskew_wall_clock(skewed).await;
    note(
        run,
        format!("node {old} started again; node {skewed}'s clock set right"),
    );
    run.writes_resume("after the clock was set right").await;

    let bound_ms = MAX_CLOCK_STEP_MS + SLACK_MS;
    let policy_ms = i64::try_from(NEW_LIFETIME.as_millis()).unwrap_or(0);
    verdict.expect(run, low >= -bound_ms && high <= bound_ms, || {
        format!("leases stamped {low}..{high} ms off real time (allowed: {bound_ms} ms)")
    });
    verdict.expect(run, longest <= policy_ms + bound_ms, || {
        format!(
            "a {policy_ms} ms lease lived {longest} ms in real time (allowed: {} ms)",
            policy_ms + bound_ms
        )
    });
    let old_policy_ms = i64::try_from(OLD_LIFETIME.as_millis()).unwrap_or(0);
    verdict.expect(run, before_lived <= old_policy_ms + bound_ms, || {
        format!(
            "a {old_policy_ms} ms lease made before the leader change lived {before_lived} ms in real time (allowed: {} ms)",
            old_policy_ms + bound_ms
        )
    });
    verdict.expect(run, early_ms <= bound_ms, || {
        format!(
            "a lease made before the leader change ended {early_ms} ms early (allowed: {bound_ms} ms)"
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_clock_ahead_becomes_leader() {
    let name = "clock_ahead_leader";
    probes::checked(
        name,
        libfaketime_missing(),
        async |run: &mut Run, verdict: &Verdict| {
            skewed_follower_becomes_leader(run, 10, verdict).await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_clock_behind_becomes_leader() {
    let name = "clock_behind_leader";
    probes::checked(
        name,
        libfaketime_missing(),
        async |run: &mut Run, verdict: &Verdict| {
            skewed_follower_becomes_leader(run, -10, verdict).await;
        },
    )
    .await;
}
