//! The service's edges, on real processes: health and reflection, the leader hint on
//! UNAVAILABLE, deadlines when there is no quorum, a watcher too slow to keep up, and
//! messages over the size limit.

use std::time::{Duration, Instant};

use affinity_proto::pb;
use affinity_tests::requests::{lookup, resolve, with_deadline};
use affinity_tests::{Cluster, ClusterOptions, wait};
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_on_every_node() {
    let cluster = Cluster::start("health", ClusterOptions::default()).await;
    for id in 1..=3 {
        let channel = Endpoint::from_shared(format!("http://{}", cluster.addr(id)))
            .unwrap()
            .connect_lazy();
        let mut health = HealthClient::new(channel.clone());
        for service in ["", "affinity.v1.Affinity"] {
            let answer = wait::until(
                &format!("node {id} reports {service:?} SERVING"),
                Duration::from_secs(10),
                || {
                    let mut health = health.clone();
                    async move {
                        let status = health
                            .check(tonic_health::pb::HealthCheckRequest {
                                service: service.into(),
                            })
                            .await
                            .map_err(|e| e.to_string())?
                            .into_inner()
                            .status;
                        if status == ServingStatus::Serving as i32 {
                            Ok(status)
                        } else {
                            Err(format!("status {status}"))
                        }
                    }
                },
            )
            .await;
            assert_eq!(answer, ServingStatus::Serving as i32);
        }
        let unknown = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);

        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(Ok(answer)) = answers.next().await else {
            panic!("reflection answers");
        };
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("a list of services");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for wanted in [
            "affinity.v1.Affinity",
            "affinity.v1.Cluster",
            "affinity.v1.Raft",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{wanted} missing from {names:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_once_and_otherwise_name_the_leader() {
    let cluster = Cluster::start("forward", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    // A request already forwarded once is not forwarded again: the follower names the leader.
    let mut req = tonic::Request::new(resolve("ns/fwd/0", "10.0.0.1", "a:80", MINUTE));
    req.metadata_mut()
        .insert("affinity-forwarded-by", "9".parse().unwrap());
    let status = cluster.client(follower).resolve(req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let hint = status
        .metadata()
        .get("affinity-leader")
        .expect("the leader's address");
    assert_eq!(hint.to_str().unwrap(), cluster.addr(leader).to_string());
    assert_eq!(
        status
            .metadata()
            .get("affinity-leader-id")
            .unwrap()
            .to_str()
            .unwrap(),
        leader.to_string()
    );

    // A fresh request is forwarded, served, and counted.
    let before = cluster
        .metric(
            follower,
            "affinity_forwarded_requests_total{rpc=\"Resolve\"}",
        )
        .unwrap_or(0.0);
    let resp = cluster
        .client(follower)
        .resolve(resolve("ns/fwd/0", "10.0.0.1", "a:80", MINUTE))
        .await
        .unwrap()
        .into_inner();
    assert!(resp.created);
    let after = cluster
        .metric(
            follower,
            "affinity_forwarded_requests_total{rpc=\"Resolve\"}",
        )
        .unwrap();
    assert!(
        (after - before - 1.0).abs() < 1e-9,
        "forwarded counter went from {before} to {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_requests_fail_clearly_and_in_time() {
    let options = ClusterOptions {
        extra_args: vec!["--proposal-timeout".into(), "1s".into()],
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start("no-quorum", options).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    cluster
        .client(leader)
        .resolve(resolve("ns/nq/0", "10.0.0.1", "a:80", MINUTE))
        .await
        .unwrap();
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.kill(id);
    }
    let mut client = cluster.client(leader);

    // The caller's deadline is nearer than the node's own timeout.
    let started = Instant::now();
    let status = client
        .resolve(with_deadline(
            resolve("ns/nq/0", "10.9.0.1", "b:80", MINUTE),
            Duration::from_millis(400),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );

    // No caller deadline: the node gives up after its proposal timeout, with UNAVAILABLE.
    for _ in 0..2 {
        let started = Instant::now();
        let status = client
            .resolve(resolve("ns/nq/0", "10.9.1.1", "b:80", MINUTE))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "answered after {:?}",
            started.elapsed()
        );
        let status = client
            .lookup(lookup("ns/nq/0", "10.0.0.1"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }

    // A stale read still answers from the node's own replica.
    let mut stale = lookup("ns/nq/0", "10.0.0.1");
    stale.allow_stale = true;
    let lease = client
        .lookup(stale)
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(lease.endpoint, "a:80");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_is_ended_with_a_clear_status() {
    let options = ClusterOptions {
        nodes: 1,
        extra_args: vec!["--watch-buffer".into(), "16".into()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start("slow-watch", options).await;
    // A watcher that does not read, with small HTTP/2 windows so that the transport cannot
    // hide its slowness by buffering.
    let channel = Endpoint::from_shared(format!("http://{}", cluster.addr(1)))
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect_lazy();
    let mut watch = pb::affinity_client::AffinityClient::new(channel)
        .watch(pb::WatchRequest {
            scope: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    wait::until(
        "the watch is subscribed",
        Duration::from_secs(10),
        || async {
            match cluster.metric(1, "affinity_watch_subscribers") {
                Some(n) if n >= 1.0 => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;

    // Far more changes than the windows and the node's watch buffer (16) hold: 1000 events
    // of about 500 bytes each.
    let scope = format!("ns/slow/{}", "s".repeat(240));
    let endpoint = format!("{}:80", "e".repeat(240));
    let mut writers = Vec::new();
    for w in 0..8u32 {
        let mut client = cluster.client(1);
        let (scope, endpoint) = (scope.clone(), endpoint.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..125u32 {
                let ip = format!("10.{w}.{i}.1");
                client
                    .resolve(resolve(&scope, &ip, &endpoint, MINUTE))
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let mut delivered = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), watch.message()).await {
            Ok(Ok(Some(_))) => delivered += 1,
            Ok(Ok(None)) => panic!("the stream ended without a status after {delivered} events"),
            Ok(Err(status)) => break status,
            Err(elapsed) => panic!(
                "the stream neither delivered nor ended after {delivered} events ({elapsed})"
            ),
        }
    };
    assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
    assert!(ended.message().contains("behind"), "{}", ended.message());
    assert!(
        delivered < 1000,
        "{delivered} events delivered: the watcher never lagged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_refused() {
    let cluster = Cluster::start(
        "big",
        ClusterOptions {
            nodes: 1,
            ..ClusterOptions::default()
        },
    )
    .await;
    let mut client = cluster.client(1);
    let mut huge = resolve("ns/big/0", "10.0.0.1", "a:80", MINUTE);
    huge.eligible_endpoints = vec!["e".repeat(200); 8_000];
    let status = client.resolve(huge).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    let ok = client
        .resolve(resolve("ns/big/0", "10.0.0.1", "a:80", MINUTE))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_revision_while_history_reaches_back() {
    let options = ClusterOptions {
        nodes: 1,
        extra_args: vec!["--watch-history".into(), "4".into()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start("watch-resume", options).await;
    let mut c = cluster.client(1);
    let mut revisions = Vec::new();
    for i in 0..10u32 {
        let resp = c
            .resolve(resolve("ns/h/0", &format!("10.{i}.0.1"), "a:80", MINUTE))
            .await
            .unwrap()
            .into_inner();
        revisions.push(resp.lease.unwrap().revision);
    }
    // Recent enough: the stream replays from there, then follows.
    let recent = revisions[8];
    let mut replay = c
        .watch(pb::WatchRequest {
            scope: String::new(),
            start_revision: recent,
        })
        .await
        .unwrap();
    let since: u64 = replay
        .metadata()
        .get("affinity-revision")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(since, revisions[9]);
    let stream = replay.get_mut();
    for want in &revisions[8..] {
        let event = stream.message().await.unwrap().unwrap();
        assert_eq!(event.revision, *want);
    }
    // Too old: the node says how far its history reaches.
    let status = c
        .watch(pb::WatchRequest {
            scope: String::new(),
            start_revision: revisions[0],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("begins at revision"),
        "{}",
        status.message()
    );
}
