//! `affinity-client` against a real 3-node cluster: shared decisions, cache hits, changes
//! pushed through Watch, expiry, request coalescing, failover and fail-open fallback.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use affinity_client::{AffinityClient, ClientError, FailMode, Policy, Resolve, Source};
use affinity_tests::{Cluster, ClusterOptions, wait};

fn policy(timeout: Duration) -> Policy {
    Policy::new(timeout)
        .unwrap()
        .with_masks(affinity_client::Masks::new(24, 64).unwrap())
}

fn client(cluster: &Cluster, nodes: &[u64]) -> AffinityClient {
    AffinityClient::builder()
        .endpoints(nodes.iter().map(|id| cluster.addr(*id).to_string()))
        .request_timeout(Duration::from_secs(5))
        .skew_margin(Duration::from_millis(500))
        .build()
        .unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

async fn watching(client: &AffinityClient) {
    wait::until(
        "the client's watch stream is up and its cache current",
        Duration::from_secs(10),
        || async {
            if client.is_watching() && client.cache_is_current() {
                Ok(())
            } else {
                Err("not yet")
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_decision_then_hit_their_caches() {
    let cluster = Cluster::start("client-share", ClusterOptions::default()).await;
    let a = client(&cluster, &[1, 2, 3]);
    let b = client(&cluster, &[3, 2, 1]);
    watching(&a).await;
    watching(&b).await;
    let p = policy(Duration::from_secs(600));

    let first = a
        .resolve(Resolve::new("ns/c/0", ip("203.0.113.7"), &p).proposed("10.4.0.1:80"))
        .await
        .unwrap();
    let second = b
        .resolve(Resolve::new("ns/c/0", ip("203.0.113.99"), &p).proposed("10.4.0.2:80"))
        .await
        .unwrap();
    assert_eq!(first.endpoint, "10.4.0.1:80");
    assert_eq!(
        second.endpoint, "10.4.0.1:80",
        "the second replica gets the first one's decision"
    );
    assert_eq!(
        first.source,
        Source::Store {
            created: true,
            replaced: false
        }
    );
    assert_eq!(
        second.source,
        Source::Store {
            created: false,
            replaced: false
        }
    );
    assert_eq!(first.prefix.to_string(), "203.0.113.0/24");
    assert_eq!(first.expires_at, second.expires_at);

    for (c, addr) in [(&a, "203.0.113.8"), (&b, "203.0.113.200")] {
        let again = c
            .resolve(Resolve::new("ns/c/0", ip(addr), &p).proposed("10.4.0.3:80"))
            .await
            .unwrap();
        assert_eq!(again.source, Source::Cache);
        assert_eq!(again.endpoint, "10.4.0.1:80");
        assert_eq!(c.cached("ns/c/0", ip(addr), &p).unwrap(), "10.4.0.1:80");
    }
    // A cached lease on an endpoint that is no longer eligible goes back to the store.
    let moved = a
        .resolve(
            Resolve::new("ns/c/0", ip("203.0.113.7"), &p)
                .proposed("10.4.0.2:80")
                .eligible(&["10.4.0.2:80".to_string()]),
        )
        .await
        .unwrap();
    assert_eq!(
        moved.source,
        Source::Store {
            created: false,
            replaced: true
        }
    );
    assert_eq!(moved.endpoint, "10.4.0.2:80");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_by_one_replica_reach_the_others_cache_through_watch() {
    let cluster = Cluster::start("client-watch", ClusterOptions::default()).await;
    let a = client(&cluster, &[1, 2, 3]);
    let b = client(&cluster, &[2, 3, 1]);
    watching(&b).await;
    let p = policy(Duration::from_secs(600));
    a.resolve(Resolve::new("ns/w/0", ip("198.51.100.5"), &p).proposed("10.4.0.1:80"))
        .await
        .unwrap();
    b.resolve(Resolve::new("ns/w/0", ip("198.51.100.6"), &p).proposed("10.4.0.9:80"))
        .await
        .unwrap();
    assert_eq!(
        b.cached("ns/w/0", ip("198.51.100.6"), &p).unwrap(),
        "10.4.0.1:80"
    );

    let (lease, swapped) = a
        .reassign(
            "ns/w/0",
            ip("198.51.100.5"),
            &p,
            "10.4.0.1:80",
            "10.4.0.2:80",
        )
        .await
        .unwrap();
    assert!(swapped);
    assert_eq!(lease.unwrap().endpoint, "10.4.0.2:80");
    wait::until(
        "the other replica serves the reassigned endpoint",
        Duration::from_secs(10),
        || async {
            match b.cached("ns/w/0", ip("198.51.100.6"), &p) {
                Some(e) if e == "10.4.0.2:80" => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;

    let removed = a.drain_endpoint(None, "10.4.0.2:80").await.unwrap();
    assert_eq!(removed, 1);
    wait::until(
        "the other replica drops the drained lease",
        Duration::from_secs(10),
        || async {
            match b.cached("ns/w/0", ip("198.51.100.6"), &p) {
                None => Ok(()),
                Some(e) => Err(e),
            }
        },
    )
    .await;
    // A decision made elsewhere arrives too: b never asked for this prefix.
    a.resolve(Resolve::new("ns/w/0", ip("198.51.101.1"), &p).proposed("10.4.0.3:80"))
        .await
        .unwrap();
    wait::until(
        "a new lease reaches the other replica's cache",
        Duration::from_secs(10),
        || async { b.cached("ns/w/0", ip("198.51.101.77"), &p).ok_or("not yet") },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stops_serving_at_expiry_minus_the_skew_margin() {
    let cluster = Cluster::start("client-expiry", ClusterOptions::default()).await;
    let c = client(&cluster, &[1, 2, 3]);
    watching(&c).await;
    let p = policy(Duration::from_secs(3));
    let decision = c
        .resolve(Resolve::new("ns/e/0", ip("192.0.2.1"), &p).proposed("10.4.0.1:80"))
        .await
        .unwrap();
    assert!(c.cached("ns/e/0", ip("192.0.2.1"), &p).is_some());
    let expires_ms = i64::try_from(
        decision
            .expires_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    // The skew margin is 500 ms: from then on the lease is no longer served from the cache.
    wait::until_wall_clock(expires_ms - 500).await;
    assert!(c.cached("ns/e/0", ip("192.0.2.1"), &p).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_concurrent_misses_make_one_request() {
    let cluster = Cluster::start("client-flight", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    // Talk to the leader only, so that no request is forwarded (and counted twice).
    let c = client(&cluster, &[leader]);
    let metric = "affinity_grpc_requests_total{rpc=\"Resolve\",code=\"OK\"}";
    let before = cluster.metric(leader, metric).unwrap_or(0.0);
    let p = policy(Duration::from_secs(600));
    let mut calls = Vec::new();
    for i in 0..100 {
        let c = c.clone();
        calls.push(tokio::spawn(async move {
            c.resolve(
                Resolve::new("ns/f/0", ip(&format!("10.9.9.{i}")), &p)
                    .proposed(&format!("10.4.0.{i}:80")),
            )
            .await
        }));
    }
    let mut endpoints = std::collections::BTreeSet::new();
    for call in calls {
        endpoints.insert(call.await.unwrap().unwrap().endpoint.to_string());
    }
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    let after = cluster.metric(leader, metric).unwrap_or(0.0);
    assert!(
        (after - before - 1.0).abs() < 1e-9,
        "{} Resolve requests reached the store",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_survive_the_leader_being_killed_and_hits_never_fail() {
    let mut cluster = Cluster::start("client-failover", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    // The cache answers through a failover shorter than max_staleness: this cluster's
    // (lease 2 s, then an election of 1-2 s) with room to spare.
    let c = AffinityClient::builder()
        .endpoints((1..=3).map(|id| cluster.addr(id).to_string()))
        .request_timeout(Duration::from_secs(5))
        .skew_margin(Duration::from_millis(500))
        .max_staleness(Duration::from_secs(10))
        .build()
        .unwrap();
    watching(&c).await;
    let p = policy(Duration::from_secs(600));
    let warm = c
        .resolve(Resolve::new("ns/k/0", ip("10.77.0.1"), &p).proposed("10.4.0.1:80"))
        .await
        .unwrap();

    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..60u32 {
                let started = Instant::now();
                let r = c
                    .resolve(
                        Resolve::new(
                            "ns/k/1",
                            ip(&format!("10.{}.{}.1", 100 + i / 200, i % 200)),
                            &p,
                        )
                        .proposed("10.4.0.5:80"),
                    )
                    .await;
                results.push((r, started.elapsed()));
                // A cached decision is answered through the election: the cache stays
                // current (a new leader is in touch well within max_staleness).
                assert!(
                    c.cached("ns/k/0", ip("10.77.0.200"), &p).is_some(),
                    "a cache hit failed"
                );
            }
            results
        })
    };
    cluster.kill(leader);
    let results = writer.await.unwrap();
    for (r, took) in &results {
        let d = r
            .as_ref()
            .expect("every resolve succeeds through the new leader");
        assert!(
            matches!(d.source, Source::Store { .. } | Source::Cache),
            "{:?}",
            d.source
        );
        assert!(*took < Duration::from_secs(5), "a resolve took {took:?}");
    }
    assert_eq!(warm.endpoint, "10.4.0.1:80");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_whole_store_down_replicas_fall_back_to_the_same_endpoint() {
    let mut cluster = Cluster::start("client-fallback", ClusterOptions::default()).await;
    let build = |mode| {
        AffinityClient::builder()
            .endpoints((1..=3).map(|id| cluster.addr(id).to_string()))
            .request_timeout(Duration::from_secs(1))
            .fail_mode(mode)
            // Long enough for the cached lease to outlive the whole test's outage.
            .max_staleness(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let (a, b, closed) = (
        build(FailMode::Open),
        build(FailMode::Open),
        build(FailMode::Closed),
    );
    let p = policy(Duration::from_secs(600));
    watching(&a).await;
    a.resolve(Resolve::new("ns/fb/0", ip("10.1.1.1"), &p).proposed("b1:80"))
        .await
        .unwrap();
    for id in 1..=3 {
        cluster.kill(id);
    }
    let eligible: Vec<String> = ["b1:80", "b2:80", "b3:80"]
        .iter()
        .map(ToString::to_string)
        .collect();
    for i in 0..20u32 {
        let addr = ip(&format!("10.2.{i}.9"));
        let started = Instant::now();
        let da = a
            .resolve(
                Resolve::new("ns/fb/0", addr, &p)
                    .proposed("b1:80")
                    .eligible(&eligible),
            )
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "fallback took {:?}",
            started.elapsed()
        );
        let db = b
            .resolve(
                Resolve::new("ns/fb/0", addr, &p)
                    .proposed("b3:80")
                    .eligible(&eligible),
            )
            .await
            .unwrap();
        assert_eq!(da.source, Source::Fallback);
        assert_eq!(db.source, Source::Fallback);
        assert_eq!(
            da.endpoint, db.endpoint,
            "both replicas fall back to the same endpoint"
        );
    }
    // The lease cached before the outage is still served from the cache, within the
    // client's max_staleness.
    let cached = a
        .resolve(Resolve::new("ns/fb/0", ip("10.1.1.2"), &p).proposed("b2:80"))
        .await
        .unwrap();
    assert_eq!(
        (cached.source, cached.endpoint.as_str()),
        (Source::Cache, "b1:80")
    );
    let err = closed
        .resolve(
            Resolve::new("ns/fb/0", ip("10.3.0.1"), &p)
                .proposed("b1:80")
                .eligible(&eligible),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_locally_with_the_field_named() {
    let cluster = Cluster::start(
        "client-bad",
        ClusterOptions {
            nodes: 1,
            ..ClusterOptions::default()
        },
    )
    .await;
    let c = client(&cluster, &[1]);
    let p = policy(Duration::from_secs(60));
    let err = c
        .resolve(Resolve::new("", ip("10.0.0.1"), &p).proposed("a:80"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Invalid(v) if v.field == "scope"),
        "{err:?}"
    );
    let err = c
        .resolve(
            Resolve::new("s", ip("10.0.0.1"), &p)
                .proposed("a:80")
                .eligible(&["b:80".to_string()]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Invalid(v) if v.field == "endpoint"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_watch_resumes_without_missing_a_change_or_dropping_the_cache() {
    let mut cluster = Cluster::start("client-resume", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let others: Vec<u64> = (1..=3).filter(|id| *id != follower).collect();
    // `b` watches through `follower` first; `a` never talks to it.
    let a = client(&cluster, &others);
    let b = client(&cluster, &[follower, others[0], others[1]]);
    watching(&b).await;
    let p = policy(Duration::from_secs(600));
    for prefix in ["10.61.0.1", "10.62.0.1"] {
        a.resolve(Resolve::new("ns/r/0", ip(prefix), &p).proposed("10.4.0.1:80"))
            .await
            .unwrap();
        b.resolve(Resolve::new("ns/r/0", ip(prefix), &p).proposed("10.4.0.9:80"))
            .await
            .unwrap();
    }
    // Break b's stream, and change a lease while it is down.
    cluster.kill(follower);
    let (_, swapped) = a
        .reassign("ns/r/0", ip("10.61.0.1"), &p, "10.4.0.1:80", "10.4.0.2:80")
        .await
        .unwrap();
    assert!(swapped);
    wait::until(
        "b learns the change made while its stream was down",
        Duration::from_secs(15),
        || async {
            match b.cached("ns/r/0", ip("10.61.0.1"), &p) {
                Some(e) if e == "10.4.0.2:80" => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
    assert_eq!(
        b.cached("ns/r/0", ip("10.62.0.1"), &p).unwrap(),
        "10.4.0.1:80",
        "the rest of the cache survived the reconnect"
    );
}
