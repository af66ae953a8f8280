//! Configured limits on real processes: leases in total and per scope, watch streams, and
//! pending writes. Each refusal is a clear status that names the limit, changes nothing,
//! and is counted.

// Counters are read back as the exact small integers they hold.
#![allow(clippy::float_cmp, clippy::cast_precision_loss)]

use std::time::Duration;

use affinity_proto::pb;
use affinity_tests::requests::{lookup, resolve};
use affinity_tests::{Cluster, ClusterOptions, wait};
use tonic::Code;

const MINUTE: Duration = Duration::from_secs(60);

fn limited(args: &[&str]) -> ClusterOptions {
    ClusterOptions {
        nodes: 1,
        extra_args: args.iter().map(|a| (*a).to_string()).collect(),
        ..ClusterOptions::default()
    }
}

fn rejections(cluster: &Cluster, limit: &str) -> f64 {
    cluster
        .metric(
            1,
            &format!("affinity_limit_rejections_total{{limit=\"{limit}\"}}"),
        )
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_limits_refuse_new_leases_and_change_nothing() {
    let cluster = Cluster::start(
        "lease-limits",
        limited(&["--max-leases", "3", "--max-leases-per-scope", "2"]),
    )
    .await;
    let mut client = cluster.client(1);
    for ip in ["10.0.1.1", "10.0.2.1"] {
        client
            .resolve(resolve("ns/a/0", ip, "10.9.0.1:80", MINUTE))
            .await
            .unwrap();
    }
    // A third lease in the scope is refused, and not written.
    let refused = client
        .resolve(resolve("ns/a/0", "10.0.3.1", "10.9.0.1:80", MINUTE))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max-leases-per-scope"),
        "{}",
        refused.message()
    );
    let absent = client.lookup(lookup("ns/a/0", "10.0.3.1")).await.unwrap();
    assert!(absent.into_inner().lease.is_none(), "nothing was written");
    // A key that holds a lease is still answered: that creates nothing.
    let kept = client
        .resolve(resolve("ns/a/0", "10.0.1.7", "10.9.0.2:80", MINUTE))
        .await
        .unwrap()
        .into_inner();
    assert!(!kept.created);
    assert_eq!(kept.lease.unwrap().endpoint, "10.9.0.1:80");
    // Another scope has room until the total is reached.
    client
        .resolve(resolve("ns/b/0", "10.0.1.1", "10.9.0.1:80", MINUTE))
        .await
        .unwrap();
    let full = client
        .resolve(resolve("ns/c/0", "10.0.1.1", "10.9.0.1:80", MINUTE))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("max-leases"), "{}", full.message());
    assert_eq!(rejections(&cluster, "max-leases-per-scope"), 1.0);
    assert_eq!(rejections(&cluster, "max-leases"), 1.0);

    // Releasing a lease makes room again.
    client
        .release(pb::ReleaseRequest {
            scope: "ns/b/0".into(),
            client_ip: "10.0.1.1".into(),
            policy: Some(affinity_tests::requests::policy(24, MINUTE)),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let made = client
        .resolve(resolve("ns/c/0", "10.0.1.1", "10.9.0.1:80", MINUTE))
        .await
        .unwrap()
        .into_inner();
    assert!(made.created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_beyond_the_limit_are_refused_until_one_ends() {
    let cluster = Cluster::start("watch-limit", limited(&["--max-watchers", "1"])).await;
    let mut client = cluster.client(1);
    let first = client
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let refused = client.watch(pb::WatchRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max-watchers"),
        "{}",
        refused.message()
    );
    assert_eq!(rejections(&cluster, "max-watchers"), 1.0);
    drop(first);
    wait::until(
        "a new watch is accepted once the first ends",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move {
                client
                    .watch(pb::WatchRequest::default())
                    .await
                    .map(|_| ())
                    .map_err(|s| s.code())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_pending_bound_are_shed_with_a_retry_hint() {
    let cluster = Cluster::start("shed", limited(&["--max-pending-writes", "1"])).await;
    // Many creates at once against a bound of one pending write: some are shed at once.
    let mut shed = Vec::new();
    let mut written = Vec::new();
    for round in 0..20u32 {
        let calls: Vec<_> = (0..64u32)
            .map(|i| {
                let mut client = cluster.client(1);
                let ip = format!("10.{round}.{i}.1");
                async move {
                    let answer = client
                        .resolve(resolve("ns/shed/0", &ip, "10.9.0.1:80", MINUTE))
                        .await;
                    (ip, answer)
                }
            })
            .collect();
        for (ip, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(_) => written.push(ip),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    assert!(
                        status.message().contains("max-pending-writes"),
                        "{}",
                        status.message()
                    );
                    assert_eq!(
                        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
                        "50"
                    );
                    shed.push(ip);
                }
            }
        }
        if !shed.is_empty() {
            break;
        }
    }
    assert!(
        !shed.is_empty(),
        "64 concurrent writes never met a bound of 1"
    );
    assert!(!written.is_empty());
    let mut client = cluster.client(1);
    for ip in &shed {
        let answer = client.lookup(lookup("ns/shed/0", ip)).await.unwrap();
        assert!(
            answer.into_inner().lease.is_none(),
            "{ip} was shed, not written"
        );
    }
    for ip in &written {
        let answer = client.lookup(lookup("ns/shed/0", ip)).await.unwrap();
        assert!(answer.into_inner().lease.is_some(), "{ip} was acknowledged");
    }
    assert!(rejections(&cluster, "max-pending-writes") >= shed.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_over_its_rate_is_refused_and_others_are_not() {
    let cluster = Cluster::start(
        "rate-limit",
        limited(&["--max-calls-per-connection-per-second", "20"]),
    )
    .await;
    let busy = cluster.client(1);
    let calls = (0..200u32).map(|i| {
        let mut busy = busy.clone();
        async move {
            busy.lookup(lookup("ns/rate/0", &format!("10.0.{i}.1")))
                .await
        }
    });
    let answers = futures::future::join_all(calls).await;
    let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        !refused.is_empty(),
        "200 calls at once passed a limit of 20/s"
    );
    assert!(answers.iter().filter(|a| a.is_ok()).count() >= 20);
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .message()
                .contains("max-calls-per-connection-per-second"),
            "{}",
            status.message()
        );
    }
    // Another connection has its own allowance.
    let mut other = cluster.client(1);
    other.lookup(lookup("ns/rate/0", "10.9.9.1")).await.unwrap();
    assert!(rejections(&cluster, "max-calls-per-connection-per-second") >= refused.len() as f64);
}
