//! Node configuration: plain, documented settings with defaults. Parsing command lines,
//! environment variables and files happens in the binaries, not here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::raft::{Node as RaftNode, NodeId};
use crate::store::StoreOptions;

mod addresses;
#[cfg(test)]
mod tests;

pub use addresses::{check_host_port, parse_join, parse_peers};

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

impl Config {
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
