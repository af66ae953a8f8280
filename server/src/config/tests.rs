//! Tests of the configuration's rules.

use std::net::SocketAddr;

use super::*;

#[test]
fn peers_may_not_share_an_address() {
    let err = parse_peers("1=127.0.0.1:7400,2=127.0.0.1:7400").unwrap_err();
    assert_eq!(err.setting, "peers");
    assert!(err.reason.contains("share the address"), "{err}");
}

#[test]
fn peers_parse_and_reject() {
    let peers =
        parse_peers("1=127.0.0.1:7401, 2=affinity-1.affinity-peers:7400,3=[::1]:7403").unwrap();
    assert_eq!(peers.len(), 3);
    assert_eq!(peers[&2], RaftNode::new("affinity-1.affinity-peers:7400"));
    for bad in [
        "1",
        "x=a:1",
        "0=a:1",
        "1=a",
        "1=a:0",
        "1=a:1,1=b:2",
        "1=a:1/a:1",
        "1=a:1/b",
        "1=a:1/",
        "1=a:1/b:1,2=b:1",
        "1=:80",
        "1=a b:80",
    ] {
        let err = parse_peers(bad).unwrap_err();
        assert_eq!(err.setting, "peers", "{bad}");
    }
}

#[test]
fn advertise_rules() {
    let bound: SocketAddr = "127.0.0.1:7400".parse().unwrap();
    let config = Config::default();
    assert_eq!(
        config.resolve_advertise(bound, None).unwrap(),
        RaftNode::new("127.0.0.1:7400")
    );

    let config = Config {
        node_id: 2,
        peers: parse_peers("1=10.0.0.1:7400,2=10.0.0.2:7400").unwrap(),
        ..Config::default()
    };
    assert_eq!(
        config.resolve_advertise(bound, None).unwrap(),
        RaftNode::new("10.0.0.2:7400")
    );

    let outsider = Config {
        node_id: 3,
        ..config.clone()
    };
    assert_eq!(
        outsider.resolve_advertise(bound, None).unwrap_err().setting,
        "peers"
    );

    let mismatch = Config {
        advertise: Some("10.9.9.9:7400".into()),
        ..config
    };
    assert_eq!(
        mismatch.resolve_advertise(bound, None).unwrap_err().setting,
        "advertise"
    );
}

#[test]
fn peer_port_rules() {
    let peers = parse_peers("1=a:7400/a:7401, 2=b:7400/b:7401").unwrap();
    assert_eq!(peers[&1].peer(), "a:7401");
    assert_eq!(peers[&2].addr, "b:7400");
    let bound: SocketAddr = "127.0.0.1:7400".parse().unwrap();
    let peer_bound: SocketAddr = "127.0.0.1:7401".parse().unwrap();
    let config = Config::default();
    assert_eq!(
        config.resolve_advertise(bound, Some(peer_bound)).unwrap(),
        RaftNode::with_peer("127.0.0.1:7400", Some("127.0.0.1:7401".into()))
    );
    let listed = Config {
        node_id: 2,
        peers,
        ..Config::default()
    };
    assert_eq!(
        listed.resolve_advertise(bound, Some(peer_bound)).unwrap(),
        RaftNode::with_peer("b:7400", Some("b:7401".into()))
    );
    // The peer list says node 2 has a peer port; the node has none.
    assert_eq!(
        listed.resolve_advertise(bound, None).unwrap_err().setting,
        "peer-advertise"
    );
    let other = Config {
        peer_advertise: Some("b:7999".into()),
        ..listed.clone()
    };
    assert_eq!(
        other
            .resolve_advertise(bound, Some(peer_bound))
            .unwrap_err()
            .setting,
        "peer-advertise"
    );
    let no_port = Config {
        peer_advertise: Some("b:7401".into()),
        ..Config::default()
    };
    assert_eq!(
        no_port.resolve_advertise(bound, None).unwrap_err().setting,
        "peer-advertise"
    );
    let same = Config {
        advertise: Some("b:7400".into()),
        peer_advertise: Some("b:7400".into()),
        ..Config::default()
    };
    assert_eq!(
        same.resolve_advertise(bound, Some(peer_bound))
            .unwrap_err()
            .setting,
        "peer-advertise"
    );
    let joining = Config {
        node_id: 2,
        advertise: Some("affinity-1:7400".into()),
        join: vec!["affinity-0:7401".into()],
        ..Config::default()
    };
    let unspecified: SocketAddr = "0.0.0.0:7401".parse().unwrap();
    assert_eq!(
        joining
            .resolve_advertise(bound, Some(unspecified))
            .unwrap_err()
            .setting,
        "peer-advertise"
    );
}

#[test]
fn join_rules() {
    assert_eq!(
        parse_join("affinity-0.affinity-peers:7400, affinity-1.affinity-peers:7400").unwrap(),
        vec![
            "affinity-0.affinity-peers:7400".to_string(),
            "affinity-1.affinity-peers:7400".to_string()
        ]
    );
    for bad in ["", " , ", "affinity-0", "a:0", "a b:1"] {
        assert_eq!(parse_join(bad).unwrap_err().setting, "join", "{bad}");
    }
    let bound: SocketAddr = "0.0.0.0:7400".parse().unwrap();
    let joining = Config {
        node_id: 2,
        join: vec!["affinity-0:7400".into()],
        ..Config::default()
    };
    assert_eq!(
        joining.resolve_advertise(bound, None).unwrap_err().setting,
        "advertise"
    );
    let named = Config {
        advertise: Some("affinity-1:7400".into()),
        ..joining.clone()
    };
    assert_eq!(
        named.resolve_advertise(bound, None).unwrap(),
        RaftNode::new("affinity-1:7400")
    );
    let both = Config {
        peers: parse_peers("2=affinity-1:7400").unwrap(),
        ..named
    };
    assert_eq!(
        both.resolve_advertise(bound, None).unwrap_err().setting,
        "join"
    );
}

#[test]
fn timing_rules() {
    let bound: SocketAddr = "127.0.0.1:7400".parse().unwrap();
    let mut config = Config::default();
    config.raft.election_timeout = Duration::from_millis(150);
    assert_eq!(
        config.resolve_advertise(bound, None).unwrap_err().setting,
        "raft-election-timeout"
    );
    assert!(Config::default().openraft().is_ok());
}

type Zero = fn(&mut Limits);

#[test]
fn limits_must_allow_something() {
    let bound: SocketAddr = "127.0.0.1:7400".parse().unwrap();
    let zeroed: [(&str, Zero); 4] = [
        ("max-leases", |l| l.max_leases = 0),
        ("max-pending-writes", |l| l.max_pending_writes = 0),
        ("max-watchers", |l| l.max_watchers = 0),
        ("max-streams-per-connection", |l| {
            l.max_streams_per_connection = 0;
        }),
    ];
    for (setting, zero) in zeroed {
        let mut config = Config::default();
        zero(&mut config.limits);
        let err = config.resolve_advertise(bound, None).unwrap_err();
        assert_eq!(err.setting, setting);
        assert_eq!(err.reason, "must be at least 1");
    }
    let mut config = Config::default();
    config.limits.max_leases_per_scope = 0;
    assert!(
        config.resolve_advertise(bound, None).is_ok(),
        "0 turns the per-scope limit off"
    );
}
