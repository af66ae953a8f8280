//! Peer traffic on a port of its own (`--peer-listen`): Raft, forwarded writes and joins
//! use the peer addresses in the membership, clients are told the client addresses, the
//! client port serves no Raft service, and with TLS each port trusts only its own CA.

use std::time::Duration;

use affinity_proto::pb;
use affinity_tests::requests::resolve;
use affinity_tests::{Cluster, ClusterOptions, bins, wait};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::certs::{Ca, MutualTls, channel, harness_tls};

const MINUTE: Duration = Duration::from_secs(60);

/// Node `id`'s peer address.
fn peer(cluster: &Cluster, id: u64) -> String {
    cluster.peer_addr(id).expect("a peer port").to_string()
}

/// A plaintext channel to `addr`.
fn plain(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    channel(addr, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_talk_on_their_own_port() {
    let mut cluster = Cluster::start(
        "peer-port",
        ClusterOptions {
            peer_ports: true,
            ..ClusterOptions::default()
        },
    )
    .await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;

    // Clients are told client addresses; peers' addresses are listed beside them.
    for id in 1..=3 {
        let s = cluster.status(id).await.unwrap();
        assert_eq!(s.address, cluster.addr(id).to_string());
        assert_eq!(s.peer_address, peer(&cluster, id));
        assert_eq!(s.leader_address, cluster.addr(leader).to_string());
        assert_eq!(s.leader_peer_address, peer(&cluster, leader));
        assert_eq!(s.members.len(), 3);
        for m in &s.members {
            assert_eq!(m.address, cluster.addr(m.id).to_string());
            assert_eq!(m.peer_address, peer(&cluster, m.id));
        }
    }

    // Writes through every node: followers forward to the leader's peer port.
    for id in 1..=3 {
        let answer = cluster
            .client(id)
            .resolve(resolve(
                "ns/peer/0",
                &format!("10.0.{id}.1"),
                "10.9.0.1:80",
                MINUTE,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.created, "node {id}");
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let forwarded: f64 = cluster
        .scrape(follower)
        .lines()
        .filter(|l| l.starts_with("affinity_forwarded_requests_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(forwarded >= 1.0, "node {follower} forwarded {forwarded}");

    // The client port serves no Raft service; the peer port does (a stale vote is refused
    // by Raft, not by routing).
    let mut on_client_port = pb::raft_client::RaftClient::new(cluster.channel(follower));
    let refused = on_client_port
        .vote(pb::RaftVoteRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    let mut on_peer_port =
        pb::raft_client::RaftClient::new(plain(cluster.peer_addr(follower).unwrap()));
    let answered = on_peer_port.vote(pb::RaftVoteRequest::default()).await;
    assert!(
        answered
            .as_ref()
            .map_or_else(|e| e.code() != Code::Unimplemented, |_| true),
        "{answered:?}"
    );

    // affinityctl shows both addresses.
    let out = std::process::Command::new(bins::affinityctl())
        .args(["--endpoints", &cluster.endpoints(), "--json", "status"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("\"peer_address\":\"{}\"", peer(&cluster, 1))),
        "{text}"
    );

    // A fourth node with its own peer port joins and serves what was decided.
    cluster.start_joiner(4);
    let mut admin = cluster.admin(leader);
    let mut add = tonic::Request::new(pb::AddLearnerRequest {
        node_id: 4,
        address: cluster.addr(4).to_string(),
        blocking: true,
        peer_address: peer(&cluster, 4),
    });
    add.set_timeout(Duration::from_secs(30));
    admin.add_learner(add).await.unwrap();
    admin
        .change_membership(pb::ChangeMembershipRequest {
            add_voters: vec![4],
            retain: true,
            ..Default::default()
        })
        .await
        .unwrap();
    cluster.wait_leader(&[1, 2, 3, 4]).await;
    wait::until(
        "node 4 follows as a voter and knows the leader's addresses",
        Duration::from_secs(10),
        || async {
            let s = cluster.status(4).await.map_err(|e| e.to_string())?;
            if s.role == "follower" && !s.leader_peer_address.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "role {}, leader at {:?}",
                    s.role, s.leader_peer_address
                ))
            }
        },
    )
    .await;
    let kept = cluster
        .client(4)
        .resolve(resolve("ns/peer/0", "10.0.1.7", "10.9.0.9:80", MINUTE))
        .await
        .unwrap()
        .into_inner();
    assert!(!kept.created);
    assert_eq!(kept.lease.unwrap().endpoint, "10.9.0.1:80");

    // The leader dies: the others elect a new one over their peer ports and take writes.
    cluster.kill(leader);
    let rest: Vec<u64> = (1..=4).filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_leader(&rest).await;
    // (Retried as a client would while the survivors learn the new leader's record.)
    let after = wait::until(
        "a survivor takes a write under the new leader",
        Duration::from_secs(10),
        || async {
            cluster
                .client(rest[0])
                .resolve(resolve("ns/peer/0", "10.0.8.1", "10.9.0.1:80", MINUTE))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|e| e.to_string())
        },
    )
    .await;
    assert_eq!(after.lease.unwrap().endpoint, "10.9.0.1:80");
    let s = cluster.status(rest[0]).await.unwrap();
    assert_eq!(s.leader_address, cluster.addr(new_leader).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_port_trusts_only_its_own_ca() {
    let dir = tempfile::tempdir().unwrap();
    let node_ca = Ca::new("affinity nodes");
    let client_ca = Ca::new("affinity gateways");
    let (node_cert, node_key) = node_ca.issue("affinity-node", &["127.0.0.1", "localhost"]);
    let (gw_cert, gw_key) = client_ca.issue("gateway", &["gateway.test"]);
    let options = ClusterOptions {
        peer_ports: true,
        extra_args: MutualTls::write(dir.path(), &node_ca, &client_ca, &node_cert, &node_key)
            .args(),
        client_tls: Some(harness_tls(&node_ca, &gw_cert, &gw_key)),
        ..ClusterOptions::default()
    };
    // Starting waits for a leader: Raft over mutual TLS on the peer ports.
    let cluster = Cluster::start("peer-port-tls", options).await;

    // A gateway writes through every node; followers forward over the peer port.
    for id in 1..=3 {
        cluster
            .client(id)
            .resolve(resolve(
                "ns/peer-tls/0",
                &format!("10.0.{id}.1"),
                "10.9.0.1:80",
                MINUTE,
            ))
            .await
            .unwrap();
    }

    let as_who = |addr, cert: &str, key: &str| {
        channel(
            addr,
            Some(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&node_ca.pem))
                    .identity(Identity::from_pem(cert, key))
                    .domain_name("127.0.0.1"),
            ),
        )
    };
    let status = |channel| async move {
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(Duration::from_secs(5));
        pb::cluster_client::ClusterClient::new(channel)
            .status(request)
            .await
    };
    let peer_addr = cluster.peer_addr(1).unwrap();
    // A gateway certificate is not a peer's: the peer port refuses the handshake.
    let gateway_on_peer_port = status(as_who(peer_addr, &gw_cert, &gw_key)).await;
    assert!(gateway_on_peer_port.is_err(), "{gateway_on_peer_port:?}");
    // A node certificate is not a client's: the client port refuses it.
    let node_on_client_port = status(as_who(cluster.addr(1), &node_cert, &node_key)).await;
    assert!(node_on_client_port.is_err(), "{node_on_client_port:?}");
    // Each where it belongs.
    status(as_who(peer_addr, &node_cert, &node_key))
        .await
        .unwrap();
    status(as_who(cluster.addr(1), &gw_cert, &gw_key))
        .await
        .unwrap();
}
