//! The client's cache never serves a decision the store has changed: a watch broken in the
//! middle of a long replay resumes inside it, and a miss whose callers were all cancelled
//! neither fails nor answers the next caller; a follower cut off from its leader, or
//! restarted and catching up, lets the cache go stale instead of serving old answers.

use std::net::{IpAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use affinity_client::{AffinityClient, FailMode, Policy, Resolve, Source};
use affinity_proto::pb;
use affinity_tests::requests::resolve;
use affinity_tests::{Cluster, ClusterOptions, wait};
use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const HOUR: Duration = Duration::from_secs(3600);

fn signal(cluster: &Cluster, id: u64, sig: Signal) {
    let pid = cluster.pid(id).expect("the node runs");
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), sig).unwrap();
}

fn policy() -> Policy {
    Policy::new(HOUR)
        .unwrap()
        .with_masks(affinity_client::Masks::new(24, 64).unwrap())
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Wait until `holds` is true, for at most `bound`.
async fn until(what: &str, bound: Duration, holds: impl Fn() -> bool) {
    wait::until(what, bound, || async {
        if holds() { Ok(()) } else { Err("not yet") }
    })
    .await;
}

/// The `n`th client prefix of the replayed history (distinct /24s).
fn nth_ip(n: u32) -> String {
    format!("{}.{}.{}.1", 11 + n / 65_536, (n / 256) % 256, n % 256)
}

/// Create `count` leases in `scope` through `node`, 64 at a time.
async fn create_leases(cluster: &Cluster, node: u64, scope: &str, count: u32) {
    let stub = cluster.client(node);
    let calls = futures::stream::iter(0..count).map(|n| {
        let mut stub = stub.clone();
        // Half the leases on each of two endpoints.
        let endpoint = if n % 2 == 0 {
            "10.7.0.1:80"
        } else {
            "10.7.0.2:80"
        };
        let request = resolve(scope, &nth_ip(n), endpoint, HOUR);
        async move { stub.resolve(request).await }
    });
    let failed = calls
        .buffer_unordered(64)
        .filter(|answer| futures::future::ready(answer.is_err()))
        .count()
        .await;
    assert_eq!(failed, 0, "{failed} of {count} creates failed");
}

/// A client caches 50,000 leases and watches a follower, which freezes; meanwhile the
/// leader drains both endpoints of those leases (50,000 events) and releases one more lease
/// the client cached. The frozen follower is killed; the client resumes on the second
/// follower, which replays the 50,001 changes, and that one is killed in the middle of the
/// replay. The client must resume inside the replay, on the leader, not after it:
/// otherwise it never applies the release, and serves the released lease for the rest of
/// its hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_broken_mid_replay_resumes_inside_it_and_applies_the_release() {
    const HISTORY: u32 = 50_000;
    let options = ClusterOptions {
        // Room for the creates and the drains, so the resume point is still in history.
        extra_args: vec!["--watch-history".into(), "200000".into()],
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start("cache-mid-replay", options).await;
    let leader = cluster.wait_leader(&cluster.ids()).await;
    let followers: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let (first, second) = (followers[0], followers[1]);
    let watcher = AffinityClient::builder()
        .endpoints([first, second, leader].map(|id| cluster.addr(id).to_string()))
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let scope = "ns/replay/0";
    let p = policy();
    let released = ip("10.250.0.1");
    // The stream opens on the first node listed, before any answer can point elsewhere.
    until(
        "the watcher follows the first follower",
        Duration::from_secs(10),
        || watcher.is_watching(),
    )
    .await;
    watcher
        .resolve(Resolve::new(scope, released, &p).proposed("10.7.0.9:80"))
        .await
        .unwrap();
    create_leases(&cluster, leader, scope, HISTORY).await;
    let all = HISTORY as usize + 1;
    wait::until(
        "the watcher has cached every lease",
        Duration::from_secs(60),
        || async {
            let cached = watcher.cache_len();
            if cached == all { Ok(()) } else { Err(cached) }
        },
    )
    .await;

    // The watched follower freezes (for less than the client's keepalive would take to
    // notice); the changes are made through the leader.
    signal(&cluster, first, Signal::SIGSTOP);
    let mut stub = cluster.client(leader);
    let mut drained = 0;
    for endpoint in ["10.7.0.1:80", "10.7.0.2:80"] {
        drained += stub
            .drain_endpoint(pb::DrainEndpointRequest {
                scope: scope.into(),
                endpoint: endpoint.into(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .removed;
    }
    assert_eq!(drained, u64::from(HISTORY));
    assert!(release(&cluster, leader, scope, released, &p).await);
    assert_eq!(
        watcher.cache_len(),
        all,
        "the frozen follower's stream delivered changes"
    );

    // Its stream breaks; it resumes on the second follower, killed during the replay.
    cluster.kill(first);
    wait::until(
        "the watcher is replaying from the second follower",
        Duration::from_secs(30),
        || async {
            let cached = watcher.cache_len();
            if cached + 2_000 < all {
                Ok(())
            } else {
                Err(cached)
            }
        },
    )
    .await;
    cluster.kill(second);
    let at_kill = watcher.cache_len();
    assert!(
        at_kill > 1,
        "the replay was over before the kill ({at_kill} cached): this run shows nothing"
    );

    wait::until(
        "the watcher applies the rest of the replay, from the leader",
        Duration::from_secs(20),
        || async {
            match (watcher.cached(scope, released, &p), watcher.cache_len()) {
                (None, 0) => Ok(()),
                (endpoint, cached) => Err(format!(
                    "serves {endpoint:?} for the released lease, {cached} cached, {at_kill} at the kill"
                )),
            }
        },
    )
    .await;
}

/// Every caller waiting for a miss is cancelled while its request is stuck on a node that
/// never answers. The request must go on by itself (to the next node, within its
/// deadline), so that the next caller, after that deadline, gets a fresh answer instead of
/// resuming the old request past its deadline and failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_whose_callers_were_all_cancelled_does_not_fail_the_next_caller() {
    let cluster = Cluster::start("cache-cancelled-miss", ClusterOptions::default()).await;
    cluster.wait_leader(&cluster.ids()).await;
    // Accepts connections (the kernel does) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let timeout = Duration::from_millis(800);
    let client = AffinityClient::builder()
        .endpoints([
            silent.local_addr().unwrap().to_string(),
            cluster.addr(1).to_string(),
        ])
        .request_timeout(timeout)
        .fail_mode(FailMode::Closed)
        .watch(false)
        .build()
        .unwrap();
    let p = policy();
    let who = ip("10.251.0.1");
    for _ in 0..3 {
        let cancelled = tokio::time::timeout(
            Duration::from_millis(50),
            client.resolve(Resolve::new("ns/cancel/0", who, &p).proposed("10.7.0.1:80")),
        )
        .await;
        assert!(
            cancelled.is_err(),
            "the first attempt cannot have been answered yet"
        );
    }
    // What the next caller waits for: the cancelled request's deadline has passed.
    tokio::time::sleep(timeout + Duration::from_millis(100)).await;
    let next = client
        .resolve(Resolve::new("ns/cancel/0", who, &p).proposed("10.7.0.1:80"))
        .await
        .expect("the next caller gets the store's answer");
    assert!(
        matches!(next.source, Source::Store { .. } | Source::Cache),
        "{next:?}"
    );
    assert_eq!(next.endpoint, "10.7.0.1:80");
}

/// Release `ip` in `scope` through `node`; whether a live lease was released.
async fn release(cluster: &Cluster, node: u64, scope: &str, ip: IpAddr, p: &Policy) -> bool {
    cluster
        .client(node)
        .release(pb::ReleaseRequest {
            scope: scope.into(),
            client_ip: ip.to_string(),
            policy: Some(p.to_pb()),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .released
}

/// How long after `since` the client's cache went on answering `endpoint` for `ip`.
async fn served_for(
    client: &AffinityClient,
    scope: &str,
    ip: IpAddr,
    p: &Policy,
    endpoint: &str,
    bound: Duration,
) -> Duration {
    let since = tokio::time::Instant::now();
    wait::until(
        "the cache stops answering the removed lease",
        bound,
        || async {
            match client.cached(scope, ip, p) {
                Some(e) if e == endpoint => Err(format!("still {e}")),
                _ => Ok(()),
            }
        },
    )
    .await;
    since.elapsed()
}

/// A follower that hears nothing from its peers keeps its watch streams open and quiet.
/// A client given only that follower must stop serving a lease the leader drained once
/// `max_staleness` has passed without progress from a node in touch with the leader; a
/// client given every node moves to another after `watch_timeout` and applies the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_fed_by_a_follower_cut_off_from_its_leader_goes_stale_within_the_bound() {
    let cut = 3;
    let options = ClusterOptions {
        peer_ports: true,
        peer_relay: Some(cut),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start("cache-cut-follower", options).await;
    let mut leader = cluster.wait_leader(&cluster.ids()).await;
    if leader == cut {
        // The node to cut off must follow.
        cluster
            .admin(cut)
            .transfer_leader(pb::TransferLeaderRequest { to_node_id: 1 })
            .await
            .unwrap();
        leader = cluster.wait_leader(&cluster.ids()).await;
    }
    assert_ne!(leader, cut);
    let staleness = Duration::from_secs(2);
    let build = |nodes: &[u64]| {
        AffinityClient::builder()
            .endpoints(nodes.iter().map(|id| cluster.addr(*id).to_string()))
            .request_timeout(Duration::from_secs(3))
            .max_staleness(staleness)
            .watch_timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let only_cut = build(&[cut]);
    let every = build(&[cut, leader, 6 - cut - leader]);
    for c in [&only_cut, &every] {
        until(
            "the client's cache is current",
            Duration::from_secs(10),
            || c.cache_is_current(),
        )
        .await;
    }
    let p = policy();
    let scope = "ns/cut/0";
    let (a, b) = (ip("10.252.0.1"), ip("10.252.1.1"));
    for (who, endpoint) in [(a, "10.7.0.1:80"), (b, "10.7.0.2:80")] {
        for c in [&only_cut, &every] {
            c.resolve(Resolve::new(scope, who, &p).proposed(endpoint))
                .await
                .unwrap();
            assert_eq!(c.cached(scope, who, &p).unwrap(), endpoint);
        }
    }

    cluster.relay().cut();
    // The leader drains a's endpoint (b's lease is on another one).
    let drained = cluster
        .client(leader)
        .drain_endpoint(pb::DrainEndpointRequest {
            scope: scope.into(),
            endpoint: "10.7.0.1:80".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert_eq!(drained, 1);
    // The cut node may still say it is in touch for one election timeout (1 s here) after
    // it last heard the leader, then the client's bound runs.
    let bound = staleness + Duration::from_secs(1) + Duration::from_millis(700);
    let served = served_for(
        &only_cut,
        scope,
        a,
        &p,
        "10.7.0.1:80",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        served <= bound,
        "the client watching only the cut-off follower served the drained lease {served:?}"
    );
    assert!(!only_cut.cache_is_current());
    let served = served_for(&every, scope, a, &p, "10.7.0.1:80", Duration::from_secs(20)).await;
    assert!(
        served <= bound,
        "the client with every node served it {served:?}"
    );
    // That client moved on: its cache is current again, and serves the untouched lease.
    until(
        "the client's cache is current again",
        Duration::from_secs(10),
        || every.cache_is_current(),
    )
    .await;
    assert_eq!(every.cached(scope, b, &p).unwrap(), "10.7.0.2:80");
    assert!(every.cached(scope, a, &p).is_none());

    // Healed, the follower catches up and the first client's cache is current again.
    cluster.relay().heal();
    until(
        "the cut-off client's cache is current again",
        Duration::from_secs(20),
        || only_cut.cache_is_current(),
    )
    .await;
    assert!(only_cut.cached(scope, a, &p).is_none(), "the drain arrived");
    assert_eq!(only_cut.cached(scope, b, &p).unwrap(), "10.7.0.2:80");
}

/// A client that starts fills its cache from `List` (every scope, up to its capacity)
/// before its cache is current, so a restarted gateway replica serves the leases the others
/// serve instead of asking the store about each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_client_warms_its_cache_from_list_before_it_is_current() {
    let cluster = Cluster::start("cache-warm", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&cluster.ids()).await;
    create_leases(&cluster, leader, "ns/warm/0", 2_500).await;
    create_leases(&cluster, leader, "ns/warm/1", 500).await;
    let build = |capacity: usize| {
        AffinityClient::builder()
            .endpoints(cluster.ids().iter().map(|id| cluster.addr(*id).to_string()))
            .cache_capacity(capacity)
            .build()
            .unwrap()
    };
    let client = build(100_000);
    until(
        "the new client's cache is current",
        Duration::from_secs(20),
        || client.cache_is_current(),
    )
    .await;
    assert_eq!(client.cache_len(), 3_000, "every lease listed");
    let p = policy();
    for (scope, n) in [("ns/warm/0", 0), ("ns/warm/0", 1_999), ("ns/warm/1", 499)] {
        let endpoint = if n % 2 == 0 {
            "10.7.0.1:80"
        } else {
            "10.7.0.2:80"
        };
        assert_eq!(
            client.cached(scope, ip(&nth_ip(n)), &p).as_deref(),
            Some(endpoint),
            "{scope} lease {n} served without asking the store"
        );
    }
    // The listing stops at the cache's capacity.
    let small = build(1_000);
    until(
        "the small client's cache is current",
        Duration::from_secs(20),
        || small.cache_is_current(),
    )
    .await;
    assert_eq!(small.cache_len(), 1_000);
}

/// A client watching only one follower caches two leases; the follower is killed, and
/// while it is down the leader releases one lease, moves the other and creates 50,000 more
/// in that scope. The follower restarts and catches up through its log while the client
/// resumes its watch there. Until the follower has applied what the leader committed, it
/// is not in touch with the leader, so the client's cache is not current and serves
/// neither changed lease; once it is, the client has every change and the new leases. At
/// no time after the changes plus `max_staleness` does `cached()` answer a changed
/// decision, and the cache is never current in the middle of the catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_on_a_restarted_follower_serves_nothing_old_while_it_catches_up() {
    const HISTORY: u32 = 50_000;
    let options = ClusterOptions {
        // The follower catches up through the log, not a snapshot.
        snapshot_threshold: 100_000,
        logs_kept: 100_000,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start("cache-restarted-follower", options).await;
    let leader = cluster.wait_leader(&cluster.ids()).await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let staleness = Duration::from_secs(2);
    let client = AffinityClient::builder()
        .endpoints([cluster.addr(follower).to_string()])
        .request_timeout(Duration::from_secs(3))
        .max_staleness(staleness)
        .watch_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    until(
        "the client's cache is current",
        Duration::from_secs(10),
        || client.cache_is_current(),
    )
    .await;
    let p = policy();
    let scope = "ns/restarted/0";
    let (released, moved) = (ip("10.251.0.1"), ip("10.251.1.1"));
    for (who, endpoint) in [(released, "10.7.0.1:80"), (moved, "10.7.0.2:80")] {
        client
            .resolve(Resolve::new(scope, who, &p).proposed(endpoint))
            .await
            .unwrap();
        assert_eq!(client.cached(scope, who, &p).unwrap(), endpoint);
    }

    cluster.kill(follower);
    assert!(release(&cluster, leader, scope, released, &p).await);
    let swapped = cluster
        .client(leader)
        .reassign(pb::ReassignRequest {
            scope: scope.into(),
            client_ip: moved.to_string(),
            policy: Some(p.to_pb()),
            expected_endpoint: "10.7.0.2:80".into(),
            endpoint: "10.7.0.3:80".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .swapped;
    assert!(swapped);
    create_leases(&cluster, leader, scope, HISTORY).await;
    let changed = tokio::time::Instant::now();

    // Watch what the cache answers from now until the end, every 2 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (client, p, stop) = (client.clone(), p, stop.clone());
        tokio::spawn(async move {
            let mut late = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let old = [(released, "10.7.0.1:80"), (moved, "10.7.0.2:80")];
                for (who, endpoint) in old {
                    if client.cached(scope, who, &p).is_some_and(|e| e == endpoint)
                        && changed.elapsed() > staleness
                    {
                        late.push(format!(
                            "served {who} its old endpoint at {:?}",
                            changed.elapsed()
                        ));
                    }
                }
                // Current in the middle of the catch-up would mean progress from a node
                // that had not applied what its leader committed.
                let current = client.cache_is_current();
                let cached = client.cache_len();
                if current && cached > 2 && cached <= HISTORY as usize {
                    late.push(format!(
                        "current with {cached} cached at {:?}",
                        changed.elapsed()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            late
        })
    };

    cluster.spawn(follower);
    wait::until(
        "the restarted follower's watch brings every change",
        Duration::from_secs(90),
        || async {
            let state = (
                client.cache_is_current(),
                client.cached(scope, released, &p),
                client.cached(scope, moved, &p),
                client.cache_len(),
            );
            match &state {
                (true, None, Some(e), n) if e == "10.7.0.3:80" && *n == HISTORY as usize + 1 => {
                    Ok(())
                }
                _ => Err(format!("{state:?}")),
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let late = watcher.await.unwrap();
    assert!(
        late.is_empty(),
        "the cache served a changed decision past max_staleness, or was current before the \
         follower caught up: {late:?}"
    );
    let n = nth_ip(HISTORY - 1);
    assert!(client.cached(scope, ip(&n), &p).is_some());
}
