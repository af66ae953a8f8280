//! Bad input: every field's rule is enforced by a real node with INVALID_ARGUMENT naming
//! the field, nothing reaches the log; garbage on the port does not hurt the node.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use affinity_proto::pb;
use affinity_tests::requests::{policy, resolve, with_deadline};
use affinity_tests::{Cluster, ClusterOptions};
use tonic::Code;

const MINUTE: Duration = Duration::from_secs(60);

fn assert_invalid<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    field: &str,
) {
    let status = result.expect_err(&format!("a bad {field} is refused"));
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    let prefix = format!("invalid {field}: ");
    assert!(
        status.message().starts_with(&prefix),
        "the message names {field} and the rule: {:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_field_is_refused_by_name_and_nothing_is_stored() {
    let cluster = Cluster::start("bad-input", ClusterOptions::default()).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let before = cluster.status(leader).await.unwrap().last_log_index;
    // Sent to a follower too: bad input is refused where it arrives, never forwarded.
    for node in [leader, leader % 3 + 1] {
        let mut c = cluster.client(node);
        let good = resolve("ns/bad/0", "10.0.0.1", "a:80", MINUTE);
        let edit = |f: &dyn Fn(&mut pb::ResolveRequest)| {
            let mut r = good.clone();
            f(&mut r);
            r
        };
        let cases: Vec<(pb::ResolveRequest, &str)> = vec![
            (edit(&|r| r.scope.clear()), "scope"),
            (edit(&|r| r.scope = "s".repeat(257)), "scope"),
            (edit(&|r| r.scope = "a\u{1}b".into()), "scope"),
            (edit(&|r| r.client_ip = "10.0.0".into()), "client_ip"),
            (edit(&|r| r.client_ip = "10.0.0.1/24".into()), "client_ip"),
            (edit(&|r| r.client_ip.clear()), "client_ip"),
            (edit(&|r| r.policy = None), "policy"),
            (
                edit(&|r| r.policy.as_mut().unwrap().ipv4_mask = Some(33)),
                "policy.ipv4_mask",
            ),
            (
                edit(&|r| r.policy.as_mut().unwrap().ipv6_mask = Some(129)),
                "policy.ipv6_mask",
            ),
            (
                edit(&|r| r.policy.as_mut().unwrap().absolute_timeout_ms = 0),
                "policy.absolute_timeout_ms",
            ),
            (
                edit(&|r| r.policy.as_mut().unwrap().absolute_timeout_ms = 31 * 24 * 3_600_000),
                "policy.absolute_timeout_ms",
            ),
            (
                edit(&|r| r.policy.as_mut().unwrap().idle_timeout_ms = Some(61_000)),
                "policy.idle_timeout_ms",
            ),
            (
                edit(&|r| r.policy.as_mut().unwrap().idle_timeout_ms = Some(0)),
                "policy.idle_timeout_ms",
            ),
            (edit(&|r| r.endpoint.clear()), "endpoint"),
            (edit(&|r| r.endpoint = "e".repeat(256)), "endpoint"),
            (edit(&|r| r.endpoint = "a:80\n".into()), "endpoint"),
            (
                edit(&|r| r.eligible_endpoints = vec!["a:80".into(), String::new()]),
                "eligible_endpoints[1]",
            ),
            (
                edit(&|r| r.eligible_endpoints = vec!["b:80".into()]),
                "endpoint",
            ),
            (
                edit(&|r| r.eligible_endpoints = vec!["a:80".into(); 1025]),
                "eligible_endpoints",
            ),
        ];
        for (req, field) in cases {
            assert_invalid(c.resolve(req).await, field);
        }

        let lookup = pb::LookupRequest {
            scope: "ns/bad/0".into(),
            client_ip: "10.0.0.1".into(),
            policy: None,
            allow_stale: false,
        };
        assert_invalid(
            c.lookup(pb::LookupRequest {
                scope: String::new(),
                ..lookup.clone()
            })
            .await,
            "scope",
        );
        assert_invalid(
            c.lookup(pb::LookupRequest {
                client_ip: "x".into(),
                ..lookup.clone()
            })
            .await,
            "client_ip",
        );
        assert_invalid(
            c.lookup(pb::LookupRequest {
                policy: Some(pb::Policy {
                    ipv4_mask: Some(99),
                    ..Default::default()
                }),
                ..lookup.clone()
            })
            .await,
            "policy.ipv4_mask",
        );

        let reassign = pb::ReassignRequest {
            scope: "ns/bad/0".into(),
            client_ip: "10.0.0.1".into(),
            policy: Some(policy(24, MINUTE)),
            expected_endpoint: "a:80".into(),
            endpoint: "b:80".into(),
            request_id: String::new(),
        };
        assert_invalid(
            c.reassign(pb::ReassignRequest {
                expected_endpoint: String::new(),
                ..reassign.clone()
            })
            .await,
            "expected_endpoint",
        );
        assert_invalid(
            c.reassign(pb::ReassignRequest {
                endpoint: "\u{0}".into(),
                ..reassign.clone()
            })
            .await,
            "endpoint",
        );
        assert_invalid(
            c.reassign(pb::ReassignRequest {
                policy: None,
                ..reassign.clone()
            })
            .await,
            "policy",
        );

        let release = pb::ReleaseRequest {
            scope: "ns/bad/0".into(),
            client_ip: "10.0.0.1".into(),
            policy: None,
            request_id: String::new(),
        };
        assert_invalid(
            c.release(pb::ReleaseRequest {
                scope: "\t".into(),
                ..release.clone()
            })
            .await,
            "scope",
        );
        assert_invalid(
            c.release(pb::ReleaseRequest {
                client_ip: "::gg".into(),
                ..release.clone()
            })
            .await,
            "client_ip",
        );

        assert_invalid(
            c.drain_endpoint(pb::DrainEndpointRequest {
                scope: String::new(),
                endpoint: String::new(),
                request_id: String::new(),
            })
            .await,
            "endpoint",
        );
        assert_invalid(
            c.drain_endpoint(pb::DrainEndpointRequest {
                scope: "a\u{7f}".into(),
                endpoint: "a:80".into(),
                request_id: String::new(),
            })
            .await,
            "scope",
        );
        assert_invalid(
            c.list(pb::ListRequest {
                scope: String::new(),
                page_size: 1001,
                page_token: String::new(),
            })
            .await,
            "page_size",
        );
        assert_invalid(
            c.list(pb::ListRequest {
                scope: String::new(),
                page_size: 10,
                page_token: "garbage!".into(),
            })
            .await,
            "page_token",
        );
        assert_invalid(
            c.watch(pb::WatchRequest {
                scope: "\u{1b}[31m".into(),
                ..Default::default()
            })
            .await,
            "scope",
        );

        let mut admin = cluster.admin(node);
        assert_invalid(
            admin
                .add_learner(pb::AddLearnerRequest {
                    node_id: 0,
                    address: "127.0.0.1:1".into(),
                    ..Default::default()
                })
                .await,
            "node_id",
        );
        assert_invalid(
            admin
                .add_learner(pb::AddLearnerRequest {
                    node_id: 9,
                    address: "nowhere".into(),
                    ..Default::default()
                })
                .await,
            "address",
        );
        assert_invalid(
            admin
                .add_learner(pb::AddLearnerRequest {
                    node_id: 9,
                    address: "127.0.0.1:1".into(),
                    peer_address: "127.0.0.1".into(),
                    ..Default::default()
                })
                .await,
            "peer_address",
        );
        assert_invalid(
            admin
                .change_membership(pb::ChangeMembershipRequest::default())
                .await,
            "voters",
        );
        assert_invalid(
            admin
                .change_membership(pb::ChangeMembershipRequest {
                    voters: vec![1, 2],
                    add_voters: vec![3],
                    ..Default::default()
                })
                .await,
            "voters",
        );
        let unknown = admin
            .transfer_leader(with_deadline(
                pb::TransferLeaderRequest { to_node_id: 42 },
                Duration::from_secs(5),
            ))
            .await
            .expect_err("no node 42");
        assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    }

    // Nothing was stored, and nothing reached the log.
    let all = cluster
        .client(leader)
        .list(pb::ListRequest {
            scope: String::new(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(all.leases.is_empty(), "{:?}", all.leases);
    for id in 1..=3 {
        let status = cluster.status(id).await.unwrap();
        assert_eq!(status.lease_count, 0);
        assert_eq!(
            status.last_log_index, before,
            "node {id}: no entry was proposed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_does_not_hurt_the_node() {
    let cluster = Cluster::start(
        "garbage",
        ClusterOptions {
            nodes: 1,
            ..ClusterOptions::default()
        },
    )
    .await;
    let addr = cluster.addr(1);
    let junk: Vec<u8> = (0u32..65_536)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let payloads: Vec<Vec<u8>> = vec![
        junk.clone(),
        [preface.as_slice(), junk.as_slice()].concat(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        // A frame header announcing a 16 MB frame, then nothing.
        [
            preface.as_slice(),
            &[0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01],
        ]
        .concat(),
    ];
    for payload in payloads {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(&payload);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
    // Many connections opened and dropped at once.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    drop(idle);

    let status = cluster.status(1).await.expect("the node still answers");
    assert_eq!(status.role, "leader");
    let resp = cluster
        .client(1)
        .resolve(resolve("ns/garbage/0", "10.0.0.1", "a:80", MINUTE))
        .await
        .expect("the node still serves writes")
        .into_inner();
    assert!(resp.created);
}
