//! Node configuration: plain, documented settings with defaults. Parsing command lines,
//! environment variables and files happens in the binaries, not here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::raft::{Node as RaftNode, NodeId};
use crate::store::StoreOptions;

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id, 1 or more.
    pub node_id: NodeId,
    /// Address other nodes and clients use to reach this node (HOST:PORT). Defaults to the
    /// address the gRPC listener is bound to.
    pub advertise: Option<String>,
    /// Address other nodes reach this node's peer listener at, when peer traffic has a port
    /// of its own (`--peer-listen`). Defaults to the address the peer listener is bound to.
    pub peer_advertise: Option<String>,
    /// Data directory: Raft log, vote and snapshots.
    pub data_dir: PathBuf,
    /// Static initial membership (id -> client address and, for nodes with a peer port, peer
    /// address). Empty: a single-node cluster of this node.
    /// When the storage is empty, the node with the lowest id initializes the cluster with all
    /// of them; the others wait to be contacted. A node that has state never re-initializes.
    pub peers: BTreeMap<NodeId, RaftNode>,
    /// Members to ask for admission (HOST:PORT each), instead of static `peers`: node 1 forms
    /// the cluster when none exists, every other node joins it as a learner and becomes a
    /// voter once caught up (see [`crate::join`]).
    pub join: Vec<String>,
    /// Raft timing and log compaction.
    pub raft: RaftTuning,
    /// How often the leader proposes removing ended leases.
    pub sweep_interval: Duration,
    /// How far a new leader's wall clock may move store time from where the previous
    /// leader left it (as last heard, plus the time elapsed since): a clock further ahead or
    /// behind is held to this bound, and logged (see [`crate::clock`]).
    pub max_clock_step: Duration,
    /// How long a write or linearizable read may wait for a quorum before it fails with
    /// UNAVAILABLE (a caller's shorter deadline wins, with DEADLINE_EXCEEDED).
    pub proposal_timeout: Duration,
    /// How long a stopping node waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Storage settings.
    pub storage: StoreOptions,
    /// Bounds on what clients can make this node hold or do at once.
    pub limits: Limits,
    /// TLS on the gRPC port and to peers; plaintext when `None`.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Roles of callers (see [`crate::authz`]); every call allowed when `None`.
    pub authz: Option<PathBuf>,
}

/// Bounds on what clients can make a node hold or do at once. Each refusal is a clear error
/// (RESOURCE_EXHAUSTED, or UNAVAILABLE with a retry hint for load) that changes nothing,
/// and is counted in `affinity_limit_rejections_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Leases held in total (live, or ended and not yet swept) before a `Resolve` that would
    /// create one more is refused. Bounds memory whatever clients send.
    pub max_leases: u64,
    /// The same per scope; 0 means no per-scope limit.
    pub max_leases_per_scope: u64,
    /// Client writes waiting for or in a log entry on the leader; past it, writes are shed
    /// with UNAVAILABLE and a retry hint instead of queueing without bound.
    pub max_pending_writes: usize,
    /// `Watch` streams this node serves at once.
    pub max_watchers: usize,
    /// Concurrent HTTP/2 streams (calls) per client connection.
    pub max_streams_per_connection: u32,
    /// Calls per second on one connection (a token bucket holding one second); 0 is no
    /// limit. A gateway sends all its calls to a node over one connection: size it for the
    /// busiest gateway's misses.
    pub max_calls_per_connection_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_leases: 10_000_000,
            max_leases_per_scope: 0,
            max_pending_writes: 10_000,
            max_watchers: 1_024,
            max_streams_per_connection: 1_024,
            max_calls_per_connection_per_second: 0,
        }
    }
}

/// Raft timing and compaction settings.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout (the minimum; the maximum is twice this).
    pub election_timeout: Duration,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_threshold: u64,
    /// Log entries kept behind a snapshot, for followers that are only a little behind.
    pub logs_kept_after_snapshot: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(400),
            snapshot_threshold: 50_000,
            logs_kept_after_snapshot: 5_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1,
            advertise: None,
            peer_advertise: None,
            data_dir: PathBuf::from("./affinity-data"),
            peers: BTreeMap::new(),
            join: Vec::new(),
            raft: RaftTuning::default(),
            sweep_interval: Duration::from_secs(1),
            max_clock_step: crate::clock::DEFAULT_MAX_CLOCK_STEP,
            proposal_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            storage: StoreOptions::default(),
            limits: Limits::default(),
            tls: None,
            authz: None,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting}: {reason}")]
pub struct ConfigError {
    /// The setting's name as the user wrote it (flag name).
    pub setting: &'static str,
    /// What is wrong and what is expected.
    pub reason: String,
}

impl ConfigError {
    fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

/// Parse `ID=HOST:PORT,...`; an entry `ID=HOST:PORT/PEER_HOST:PORT` names a node that
/// serves peer traffic on its own port (`--peer-listen`).
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, RaftNode>, ConfigError> {
    let mut peers: BTreeMap<NodeId, RaftNode> = BTreeMap::new();
    let mut taken: BTreeMap<String, NodeId> = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addrs) = item.split_once('=').ok_or_else(|| {
            ConfigError::new(
                "peers",
                format!("{item:?} is not ID=HOST:PORT or ID=HOST:PORT/PEER_HOST:PORT"),
            )
        })?;
        let id: NodeId = id.trim().parse().map_err(|_| {
            ConfigError::new(
                "peers",
                format!("{id:?} in {item:?} is not a node id (1 or more)"),
            )
        })?;
        if id == 0 {
            return Err(ConfigError::new("peers", "node ids start at 1"));
        }
        if peers.contains_key(&id) {
            return Err(ConfigError::new(
                "peers",
                format!("node {id} is listed twice"),
            ));
        }
        let (addr, peer) = match addrs.split_once('/') {
            Some((addr, peer)) => (addr.trim(), Some(peer.trim())),
            None => (addrs.trim(), None),
        };
        for address in std::iter::once(addr).chain(peer) {
            check_host_port("peers", address)?;
            if let Some(other) = taken.insert(address.to_string(), id) {
                return Err(ConfigError::new(
                    "peers",
                    if other == id {
                        format!(
                            "node {id} lists {address} twice; its peer address must differ from its client address"
                        )
                    } else {
                        format!(
                            "nodes {other} and {id} share the address {address}; each node needs its own"
                        )
                    },
                ));
            }
        }
        peers.insert(id, RaftNode::with_peer(addr, peer.map(str::to_string)));
    }
    Ok(peers)
}

/// Parse `HOST:PORT,HOST:PORT,...` (the join targets).
pub fn parse_join(text: &str) -> Result<Vec<String>, ConfigError> {
    let targets: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if targets.is_empty() {
        return Err(ConfigError::new("join", "give at least one HOST:PORT"));
    }
    for target in &targets {
        check_host_port("join", target)?;
    }
    Ok(targets)
}

/// Check `HOST:PORT` (host a name or an address, port 1..=65535).
pub fn check_host_port(setting: &'static str, text: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::new(setting, format!("{text:?} is not HOST:PORT"));
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if port == 0 || !host_ok {
        return Err(bad());
    }
    Ok(())
}

impl Config {
    /// Check the settings against each other, given the addresses the gRPC listener and
    /// the peer listener (when peer traffic has its own port) are bound to, and return this
    /// node's membership record: its advertised client and peer addresses.
    pub fn resolve_advertise(
        &self,
        bound: SocketAddr,
        peer_bound: Option<SocketAddr>,
    ) -> Result<RaftNode, ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::new("node-id", "node ids start at 1"));
        }
        let listed = self.peers.get(&self.node_id);
        let advertise = match &self.advertise {
            Some(a) => {
                check_host_port("advertise", a)?;
                a.clone()
            }
            None => match listed {
                Some(own) => own.addr.clone(),
                None => bound.to_string(),
            },
        };
        let peer_advertise = match (peer_bound, &self.peer_advertise) {
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "peer-advertise",
                    "needs --peer-listen: there is no peer port to advertise",
                ));
            }
            (None, None) => None,
            (Some(_), Some(a)) => {
                check_host_port("peer-advertise", a)?;
                Some(a.clone())
            }
            (Some(peer_bound), None) => Some(match listed.and_then(|n| n.peer_addr.clone()) {
                Some(listed) => listed,
                None => peer_bound.to_string(),
            }),
        };
        if peer_advertise.as_deref() == Some(advertise.as_str()) {
            return Err(ConfigError::new(
                "peer-advertise",
                format!("{advertise} is also the client address; the peer port must be another"),
            ));
        }
        let me = RaftNode::with_peer(advertise, peer_advertise);
        if !self.join.is_empty() {
            if !self.peers.is_empty() {
                return Err(ConfigError::new(
                    "join",
                    "cannot be combined with peers: use peers for a fixed initial membership, join to grow a cluster node by node",
                ));
            }
            for (setting, address) in [
                ("advertise", Some(&me.addr)),
                ("peer-advertise", me.peer_addr.as_ref()),
            ] {
                let unspecified = address
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .is_some_and(|a| a.ip().is_unspecified());
                if unspecified {
                    return Err(ConfigError::new(
                        setting,
                        format!(
                            "{} cannot be reached by peers; set --{setting} to this node's name or address when using join",
                            address.map_or("", String::as_str)
                        ),
                    ));
                }
            }
        }
        if !self.peers.is_empty() {
            match listed {
                None => {
                    return Err(ConfigError::new(
                        "peers",
                        format!(
                            "does not list this node ({}); list every initial member, this one included",
                            self.node_id
                        ),
                    ));
                }
                Some(own) if own.addr != me.addr => {
                    return Err(ConfigError::new(
                        "advertise",
                        format!(
                            "{} differs from this node's entry in peers ({}); they must match",
                            me.addr, own.addr
                        ),
                    ));
                }
                Some(own) if own.peer_addr != me.peer_addr => {
                    return Err(ConfigError::new(
                        "peer-advertise",
                        format!(
                            "this node's peer address is {} but its entry in peers says {}; they must match (write ID=ADDRESS/PEER_ADDRESS for a node with --peer-listen)",
                            me.peer_addr.as_deref().unwrap_or("the client address"),
                            own.peer_addr.as_deref().unwrap_or("the client address"),
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        if self.authz.is_some() && self.tls.is_none() {
            return Err(ConfigError::new(
                "authz",
                "needs TLS (--tls-cert and --tls-key): roles come from client certificates, and tokens must not cross the network in plaintext",
            ));
        }
        for (setting, value) in [
            ("max-leases", self.limits.max_leases),
            ("max-pending-writes", self.limits.max_pending_writes as u64),
            ("max-watchers", self.limits.max_watchers as u64),
            (
                "max-streams-per-connection",
                u64::from(self.limits.max_streams_per_connection),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        if self.raft.heartbeat.is_zero() || self.raft.election_timeout <= self.raft.heartbeat * 2 {
            return Err(ConfigError::new(
                "raft-election-timeout",
                format!(
                    "{:?} must be more than twice the heartbeat ({:?})",
                    self.raft.election_timeout, self.raft.heartbeat
                ),
            ));
        }
        if self.raft.snapshot_threshold == 0 {
            return Err(ConfigError::new(
                "raft-snapshot-threshold",
                "must be at least 1",
            ));
        }
        if self.sweep_interval.is_zero() {
            return Err(ConfigError::new("sweep-interval", "must be more than 0"));
        }
        Ok(me)
    }

    /// openraft's configuration for these settings.
    pub fn openraft(&self) -> Result<openraft::Config, ConfigError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let election = ms(self.raft.election_timeout);
        let config = openraft::Config {
            cluster_name: "affinity".into(),
            heartbeat_interval: ms(self.raft.heartbeat),
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.raft.snapshot_threshold),
            max_in_snapshot_log_to_keep: self.raft.logs_kept_after_snapshot,
            install_snapshot_timeout: ms(self.proposal_timeout).max(1_000),
            enable_pre_vote: Some(true),
            // A leader restarted within its lease would otherwise come back as leader of
            // its old term without an election, from a state machine rebuilt only up to the
            // commit point it last synced (which may be older than what it acknowledged),
            // and serve reads from it. Restarted, a node always wins a new election first.
            enable_leader_restore: Some(false),
            ..openraft::Config::default()
        };
        config
            .validate()
            .map_err(|e| ConfigError::new("raft", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
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
}
