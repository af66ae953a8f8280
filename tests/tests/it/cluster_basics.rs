//! A 3-node cluster of real `affinityd` processes: election, one winner per key, absolute
//! expiry, and every kind of change as `Watch` reports it.

use std::collections::BTreeSet;
use std::time::Duration;

use affinity_proto::pb;
use affinity_proto::pb::watch_event::Kind;
use affinity_proto::pb::watch_event::Kind::{
    Created as C, Drained as D, Expired as X, Released as R, Replaced as P,
};
use affinity_tests::requests::{lookup, policy, resolve, with_deadline};
use affinity_tests::{Cluster, ClusterOptions, wait};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_from_peers_agree_on_one_leader() {
    let cluster = Cluster::start("agree", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let mut voters = BTreeSet::new();
    for id in 1..=3 {
        let status = cluster.status(id).await.unwrap();
        assert_eq!(status.node_id, id);
        assert_eq!(status.leader_id, leader);
        assert_eq!(
            status.role,
            if id == leader { "leader" } else { "follower" }
        );
        assert_eq!(status.members.len(), 3);
        assert_eq!(status.address, cluster.addr(id).to_string());
        voters = status
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
    }
    assert_eq!(voters, BTreeSet::from([1, 2, 3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_resolves_on_three_nodes_have_one_winner() {
    let cluster = Cluster::start("one-winner", ClusterOptions::default()).await;
    let mut calls = Vec::new();
    for i in 0..50u64 {
        let mut client = cluster.client(i % 3 + 1);
        calls.push(tokio::spawn(async move {
            let req = resolve(
                "ns/web/0",
                "203.0.113.7",
                &format!("10.4.0.{i}:8080"),
                MINUTE,
            );
            client
                .resolve(with_deadline(req, Duration::from_secs(10)))
                .await
        }));
    }
    let mut endpoints = BTreeSet::new();
    let mut created = 0;
    for call in calls {
        let resp = call
            .await
            .unwrap()
            .expect("every resolve succeeds")
            .into_inner();
        let lease = resp.lease.unwrap();
        assert_eq!(lease.prefix, "203.0.113.0/24");
        endpoints.insert(lease.endpoint);
        created += usize::from(resp.created);
        assert!(!resp.replaced);
    }
    assert_eq!(
        endpoints.len(),
        1,
        "all 50 callers got the same endpoint: {endpoints:?}"
    );
    assert_eq!(created, 1, "exactly one call created the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_share_log_entries_and_each_gets_its_own_lease() {
    let cluster = Cluster::start("batched", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let entries = "affinity_proposal_entries_total";
    let writes = "affinity_proposal_writes_total";
    let entries_before = cluster.metric(leader, entries).unwrap_or(0.0);
    let writes_before = cluster.metric(leader, writes).unwrap_or(0.0);
    let mut calls = Vec::new();
    for i in 0..200u32 {
        let mut client = cluster.client(leader);
        calls.push(tokio::spawn(async move {
            let ip = format!("198.51.{i}.7");
            let endpoint = format!("10.5.0.{}:8080", i % 250);
            let req = resolve("ns/batch/0", &ip, &endpoint, MINUTE);
            let resp = client
                .resolve(with_deadline(req, Duration::from_secs(10)))
                .await
                .expect("every resolve succeeds")
                .into_inner();
            (endpoint, resp)
        }));
    }
    let mut prefixes = BTreeSet::new();
    for call in calls {
        let (endpoint, resp) = call.await.unwrap();
        assert!(resp.created, "a new key is created");
        let lease = resp.lease.unwrap();
        assert_eq!(lease.endpoint, endpoint, "each caller's own endpoint");
        prefixes.insert(lease.prefix);
    }
    assert_eq!(prefixes.len(), 200);
    let entries = cluster.metric(leader, entries).unwrap() - entries_before;
    let writes = cluster.metric(leader, writes).unwrap() - writes_before;
    assert!(
        (writes - 200.0).abs() < 0.5,
        "200 client writes proposed, got {writes}"
    );
    assert!(
        entries < writes,
        "writes that queued behind each other shared entries: {entries} entries for {writes} writes"
    );
}

/// Read changes from a Watch stream until `n` have arrived (PROGRESS events are skipped).
async fn next_events(
    stream: &mut tonic::Streaming<pb::WatchEvent>,
    n: usize,
) -> Vec<pb::WatchEvent> {
    let mut events = Vec::new();
    while events.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a watch event within 10s")
            .expect("the stream stays open")
            .expect("the stream has not ended");
        if event.kind() != Kind::Progress {
            events.push(event);
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_absolute_end_to_end() {
    let cluster = Cluster::start("expiry", ClusterOptions::default()).await;
    let mut client = cluster.client(2);
    let mut watch = cluster
        .client(3)
        .watch(pb::WatchRequest {
            scope: "ns/exp/0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let short = Duration::from_millis(1500);
    let first = client
        .resolve(resolve("ns/exp/0", "198.51.100.10", "a:80", short))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let first_lease = first.lease.unwrap();
    // A second key that nobody touches again: only a sweep can remove it.
    client
        .resolve(resolve(
            "ns/exp/0",
            "198.51.101.200",
            "b:80",
            Duration::from_millis(500),
        ))
        .await
        .unwrap();

    // Resolving the live lease again returns it unchanged: same endpoint, same expiry.
    for (ip, endpoint) in [("198.51.100.11", "c:80"), ("198.51.100.12", "c:80")] {
        let again = client
            .resolve(resolve("ns/exp/0", ip, endpoint, MINUTE))
            .await
            .unwrap()
            .into_inner();
        let lease = again.lease.unwrap();
        assert!(!again.created);
        assert_eq!(
            (lease.endpoint.as_str(), lease.expires_at_ms),
            ("a:80", first_lease.expires_at_ms)
        );
    }
    // Reading it never moves its expiry either, up to the moment it ends.
    let mut reads = 0;
    while let Some(lease) = client
        .lookup(lookup("ns/exp/0", "198.51.100.99"))
        .await
        .unwrap()
        .into_inner()
        .lease
    {
        assert_eq!(lease.expires_at_ms, first_lease.expires_at_ms);
        reads += 1;
        assert!(reads < 100_000, "the lease never expired");
    }
    assert!(
        affinity_server::clock::now_ms() >= first_lease.expires_at_ms - 50,
        "the lease vanished before its expiry"
    );

    // After expiry a Resolve creates a new lease.
    let fresh = client
        .resolve(resolve("ns/exp/0", "198.51.100.13", "d:80", MINUTE))
        .await
        .unwrap()
        .into_inner();
    assert!(fresh.created);
    assert_eq!(fresh.lease.as_ref().unwrap().endpoint, "d:80");

    // The watch saw the untouched lease expire (only a sweep removes it), and the first
    // lease expire before its key was created again.
    let position = |events: &[(String, i32)], endpoint: &str, kind: Kind| {
        events
            .iter()
            .position(|(e, k)| e == endpoint && *k == kind as i32)
    };
    let mut seen: Vec<(String, i32)> = Vec::new();
    while position(&seen, "b:80", Kind::Expired).is_none()
        || position(&seen, "d:80", Kind::Created).is_none()
    {
        for e in next_events(&mut watch, 1).await {
            seen.push((e.lease.unwrap().endpoint, e.kind));
        }
    }
    let a_expired =
        position(&seen, "a:80", Kind::Expired).expect("the first lease is reported expired");
    let d_created = position(&seen, "d:80", Kind::Created).expect("the new lease is reported");
    assert!(
        a_expired < d_created,
        "expiry comes before re-creation: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacement_cas_drain_list_and_watch_in_order() {
    let cluster = Cluster::start("kinds", ClusterOptions::default()).await;
    let mut client = cluster.client(1);
    let mut watch = cluster
        .client(2)
        .watch(pb::WatchRequest {
            scope: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // CREATED.
    client
        .resolve(resolve("ns/a/0", "10.0.0.1", "a:80", MINUTE))
        .await
        .unwrap();
    // REPLACED: the live lease's endpoint is no longer eligible.
    let mut req = resolve("ns/a/0", "10.0.0.2", "b:80", MINUTE);
    req.eligible_endpoints = vec!["b:80".into(), "c:80".into()];
    let replaced = client.resolve(req).await.unwrap().into_inner();
    assert!(replaced.replaced && !replaced.created);
    assert_eq!(replaced.lease.unwrap().endpoint, "b:80");

    // Reassign: a failed CAS changes nothing, a matching one swaps (REPLACED).
    let reassign = |expected: &str, endpoint: &str| pb::ReassignRequest {
        scope: "ns/a/0".into(),
        client_ip: "10.0.0.3".into(),
        policy: Some(policy(24, MINUTE)),
        expected_endpoint: expected.into(),
        endpoint: endpoint.into(),
        request_id: String::new(),
    };
    let miss = client
        .reassign(reassign("a:80", "c:80"))
        .await
        .unwrap()
        .into_inner();
    assert!(!miss.swapped);
    assert_eq!(miss.lease.unwrap().endpoint, "b:80");
    let hit = client
        .reassign(reassign("b:80", "c:80"))
        .await
        .unwrap()
        .into_inner();
    assert!(hit.swapped);
    assert_eq!(hit.lease.unwrap().endpoint, "c:80");

    // RELEASED.
    let released = client
        .release(pb::ReleaseRequest {
            scope: "ns/a/0".into(),
            client_ip: "10.0.0.4".into(),
            policy: Some(policy(24, MINUTE)),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(released.released);

    // DRAINED: three leases on d:80 in two scopes, one on e:80 that stays.
    for (scope, ip, endpoint) in [
        ("ns/a/0", "10.1.0.1", "d:80"),
        ("ns/b/0", "10.1.0.1", "d:80"),
        ("ns/b/0", "10.2.0.1", "d:80"),
        ("ns/b/0", "10.3.0.1", "e:80"),
    ] {
        client
            .resolve(resolve(scope, ip, endpoint, MINUTE))
            .await
            .unwrap();
    }
    let drained = client
        .drain_endpoint(pb::DrainEndpointRequest {
            scope: "ns/b/0".into(),
            endpoint: "d:80".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drained.removed, 2);
    let drained = client
        .drain_endpoint(pb::DrainEndpointRequest {
            scope: String::new(),
            endpoint: "d:80".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drained.removed, 1);

    // EXPIRED: a short lease, left alone until the leader sweeps it.
    client
        .resolve(resolve(
            "ns/c/0",
            "10.9.0.1",
            "f:80",
            Duration::from_millis(200),
        ))
        .await
        .unwrap();

    let events = next_events(&mut watch, 13).await;
    let kinds: Vec<Kind> = events
        .iter()
        .map(|e| Kind::try_from(e.kind).unwrap())
        .collect();
    assert_eq!(
        kinds,
        [C, P, P, R, C, C, C, C, D, D, D, C, X],
        "events in log order"
    );
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] <= w[1]),
        "revisions never go back: {revisions:?}"
    );

    // List pages in key order and sees every live lease once.
    for i in 0..25 {
        client
            .resolve(resolve(
                "ns/list/0",
                &format!("10.50.{i}.1"),
                "g:80",
                MINUTE,
            ))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = cluster
            .client(3)
            .list(pb::ListRequest {
                scope: "ns/list/0".into(),
                page_size: 10,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.leases.into_iter().map(|l| l.prefix));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let mut sorted: Vec<affinity_proto::ClientKey> =
        seen.iter().map(|p| p.parse().unwrap()).collect();
    sorted.sort();
    let sorted: Vec<String> = sorted.iter().map(ToString::to_string).collect();
    assert_eq!(seen, sorted, "pages come in key order");
    assert_eq!(seen.len(), 25);
    assert_eq!(
        seen.iter().collect::<BTreeSet<_>>().len(),
        25,
        "no lease twice"
    );

    // The lease count converges on every replica.
    wait::until(
        "every replica holds the same leases",
        Duration::from_secs(10),
        || async {
            let mut counts = Vec::new();
            for id in 1..=3 {
                counts.push(
                    cluster
                        .status(id)
                        .await
                        .map_err(|e| e.to_string())?
                        .lease_count,
                );
            }
            if counts.iter().all(|c| *c == counts[0]) {
                Ok(())
            } else {
                Err(format!("{counts:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_that_keeps_a_live_lease_writes_nothing_to_the_log() {
    let cluster = Cluster::start("kept-lease", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let last_index = || async { cluster.status(leader).await.unwrap().last_log_index };

    let mut client = cluster.client(follower);
    let first = client
        .resolve(resolve(
            "kept",
            "198.51.100.4",
            "a:80",
            Duration::from_secs(3600),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let before = last_index().await;
    for proposal in ["b:80", "c:80", "d:80"] {
        // Through a follower (forwarded) and on the leader: the same lease, no new entry.
        for id in [follower, leader] {
            let again = cluster
                .client(id)
                .resolve(resolve(
                    "kept",
                    "198.51.100.9",
                    proposal,
                    Duration::from_secs(60),
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(!again.created && !again.replaced);
            assert_eq!(again.lease, first.lease, "the live lease, unchanged");
        }
    }
    assert_eq!(last_index().await, before, "no log entry for a kept lease");

    // A lease that must change still goes through the log: an ineligible endpoint...
    let mut moved = resolve("kept", "198.51.100.4", "e:80", Duration::from_secs(3600));
    moved.eligible_endpoints = vec!["e:80".into()];
    let replaced = client.resolve(moved).await.unwrap().into_inner();
    assert!(replaced.replaced);
    assert_eq!(replaced.lease.unwrap().endpoint, "e:80");
    assert_eq!(last_index().await, before + 1);

    // ...and a lease with an idle timeout, whose every use is recorded.
    let mut idle = resolve("kept", "203.0.113.4", "f:80", Duration::from_secs(3600));
    if let Some(p) = idle.policy.as_mut() {
        p.idle_timeout_ms = Some(600_000);
    }
    client.resolve(idle.clone()).await.unwrap();
    client.resolve(idle).await.unwrap();
    assert_eq!(
        last_index().await,
        before + 3,
        "idle leases are touched through the log"
    );
}
