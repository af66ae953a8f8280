//! Paths by which a node could answer from old state, or apply a write twice, each shown
//! closed on a cluster of real processes: a leader restarted at once, a restarted follower
//! asked for its vote, calls queued on a frozen leader, and retried writes.

use std::time::Duration;

use affinity_proto::pb;
use affinity_proto::pb::raft_client::RaftClient;
use affinity_tests::requests::{lookup, policy, resolve, retry_unavailable, with_deadline};
use affinity_tests::{Cluster, ClusterOptions, wait};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const HOUR: Duration = Duration::from_secs(3600);

fn signal(cluster: &Cluster, id: u64, sig: Signal) {
    let pid = cluster.pid(id).expect("the node runs");
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), sig).unwrap();
}

fn others(cluster: &Cluster, id: u64) -> Vec<u64> {
    cluster.ids().into_iter().filter(|n| *n != id).collect()
}

/// A leader killed and started again within its lease must not come back as leader of its
/// old term (it would serve reads from a state machine rebuilt only up to the commit point
/// it last synced): it wins a new election first, or follows another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_at_once_does_not_resume_its_old_term() {
    let mut cluster = Cluster::start("restart-at-once", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&cluster.ids()).await;
    let mut client = cluster.client(leader);
    client
        .resolve(resolve("ns/restart/0", "10.0.0.1", "10.9.0.1:80", HOUR))
        .await
        .unwrap();
    let term = cluster.status(leader).await.unwrap().term;
    cluster.kill(leader);
    cluster.spawn(leader);
    let seen = wait::until(
        "the restarted node answers Status with a known leader",
        Duration::from_secs(30),
        || async {
            match cluster.status(leader).await {
                Ok(s) if s.leader_id != 0 => Ok(s),
                Ok(s) => Err(format!("{} in term {}, no leader known", s.role, s.term)),
                Err(e) => Err(e.message().to_string()),
            }
        },
    )
    .await;
    assert!(
        !(seen.role == "leader" && seen.term == term),
        "node {leader} came back as leader of its old term {term} without an election"
    );
    let agreed = cluster.wait_leader(&cluster.ids()).await;
    let now = cluster.status(agreed).await.unwrap();
    assert!(now.term > term, "no new term after the restart: {now:?}");
}

/// A restarted node does not remember the lease it granted a leader before it stopped, so
/// for one lease after it starts it refuses to vote: a leader it acknowledged just before
/// may still be answering reads from its own state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_does_not_vote_within_a_lease() {
    let mut cluster = Cluster::start("restarted-vote", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&cluster.ids()).await;
    let rest = others(&cluster, leader);
    let (follower, candidate) = (rest[0], rest[1]);
    // Freeze the leader, so the restarted follower hears no leader before the vote arrives.
    signal(&cluster, leader, Signal::SIGSTOP);
    cluster.kill(follower);
    cluster.spawn(follower);
    let status = wait::until(
        "the restarted follower answers Status",
        Duration::from_secs(20),
        || async { cluster.status(follower).await.map_err(|e| e.to_string()) },
    )
    .await;
    let mut raft = RaftClient::new(cluster.channel(follower));
    let ask = pb::RaftVoteRequest {
        vote: Some(pb::Vote {
            term: status.term + 1,
            node_id: candidate,
            committed: false,
        }),
        last_log_id: Some(pb::LogId {
            term: status.term,
            index: status.last_log_index + 1_000,
        }),
        leadership_transfer: false,
        pre_vote: false,
    };
    let answer = raft.vote(with_deadline(ask, Duration::from_secs(2))).await;
    signal(&cluster, leader, Signal::SIGCONT);
    match answer {
        Ok(resp) => assert!(
            !resp.into_inner().vote_granted,
            "node {follower} granted a vote right after it restarted"
        ),
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(status.message().contains("restarted"), "{status:?}");
        }
    }
    // A vote for a leadership handoff (authorized by the leader) is not held back.
    let handoff = pb::RaftVoteRequest {
        leadership_transfer: true,
        pre_vote: true,
        ..ask
    };
    let answer = raft
        .vote(with_deadline(handoff, Duration::from_secs(2)))
        .await;
    assert!(answer.is_ok(), "a handoff pre-vote was refused: {answer:?}");
    cluster.wait_leader(&cluster.ids()).await;
}

/// Calls a leader received before it froze are served once it thaws, although by then
/// another node leads: each is sent on to the new leader, within its deadline, and applied
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queued_on_a_frozen_leader_are_forwarded_to_the_new_one() {
    let cluster = Cluster::start("frozen-leader", ClusterOptions::default()).await;
    let old = cluster.wait_leader(&cluster.ids()).await;
    let client = cluster.client(old);
    // Connected before the freeze, so the calls reach its socket.
    client
        .clone()
        .resolve(resolve("ns/frozen/0", "10.0.0.1", "10.9.0.1:80", HOUR))
        .await
        .unwrap();
    signal(&cluster, old, Signal::SIGSTOP);
    let calls: Vec<_> = (1..=8)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let ip = format!("10.0.{i}.1");
                let endpoint = format!("10.9.0.{i}:80");
                let req = with_deadline(
                    resolve("ns/frozen/0", &ip, &endpoint, HOUR),
                    Duration::from_secs(20),
                );
                (ip, endpoint, client.resolve(req).await)
            })
        })
        .collect();
    let new = cluster.wait_leader(&others(&cluster, old)).await;
    signal(&cluster, old, Signal::SIGCONT);
    let mut check = cluster.client(new);
    for call in calls {
        let (ip, endpoint, answer) = call.await.unwrap();
        let lease = answer
            .unwrap_or_else(|s| panic!("a call queued on the frozen leader failed: {s:?}"))
            .into_inner()
            .lease
            .unwrap();
        assert_eq!(lease.endpoint, endpoint);
        let stored = check
            .lookup(lookup("ns/frozen/0", &ip))
            .await
            .unwrap()
            .into_inner()
            .lease
            .unwrap();
        assert_eq!(stored, lease, "the answer is what the store holds");
    }
}

/// A write retried with its request id after its answer was lost is answered with the first
/// outcome: a retried Release does not delete the lease another gateway created since, a
/// retried Reassign reports its own swap. Through a follower too (forwarded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_writes_with_a_request_id_apply_once() {
    let cluster = Cluster::start("request-ids", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&cluster.ids()).await;
    let follower = others(&cluster, leader)[0];
    for node in [leader, follower] {
        let mut client = cluster.client(node);
        let scope = format!("ns/retry/{node}");
        let resolve_at = |endpoint: &str| resolve(&scope, "10.0.0.1", endpoint, HOUR);
        client.resolve(resolve_at("10.9.0.1:80")).await.unwrap();
        let release = pb::ReleaseRequest {
            scope: scope.clone(),
            client_ip: "10.0.0.1".into(),
            policy: Some(policy(24, HOUR)),
            request_id: format!("release-{node}"),
        };
        let first = retry_unavailable(Duration::from_secs(10), || {
            let mut client = client.clone();
            let req = release.clone();
            async move { client.release(req).await }
        })
        .await
        .unwrap()
        .into_inner();
        assert!(first.released);
        // Another gateway creates a new lease for the key.
        let created = client
            .resolve(resolve_at("10.9.0.2:80"))
            .await
            .unwrap()
            .into_inner();
        assert!(created.created);
        // The retry answers as the first try did, and the new lease stays.
        let retried = client.release(release.clone()).await.unwrap().into_inner();
        assert_eq!(retried, first);
        let kept = client
            .lookup(lookup(&scope, "10.0.0.1"))
            .await
            .unwrap()
            .into_inner()
            .lease;
        assert_eq!(
            kept.map(|l| l.endpoint).as_deref(),
            Some("10.9.0.2:80"),
            "the retried Release deleted a lease created after it"
        );
        let reassign = pb::ReassignRequest {
            scope: scope.clone(),
            client_ip: "10.0.0.1".into(),
            policy: Some(policy(24, HOUR)),
            expected_endpoint: "10.9.0.2:80".into(),
            endpoint: "10.9.0.3:80".into(),
            request_id: format!("reassign-{node}"),
        };
        let first = client
            .reassign(reassign.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(first.swapped);
        let retried = client.reassign(reassign).await.unwrap().into_inner();
        assert_eq!(
            retried, first,
            "a retried Reassign must report its own swap"
        );
        // A request id reused for a write of another kind is refused, naming the rule.
        let misuse = client
            .release(pb::ReleaseRequest {
                request_id: format!("reassign-{node}"),
                ..release
            })
            .await
            .unwrap_err();
        assert_eq!(misuse.code(), tonic::Code::FailedPrecondition, "{misuse:?}");
        assert!(misuse.message().contains("request_id"), "{misuse:?}");
    }
}
