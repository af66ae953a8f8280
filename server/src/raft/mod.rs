//! The Raft type configuration of the store, and names for the openraft types it uses.
//!
//! One leader per term (`leader_id_std`), so a log position is (term, index). Node ids are
//! `u64` and start at 1; a node's record ([`Node`]) holds its advertised client address and,
//! when it serves peer traffic on a port of its own, its peer address.

pub mod codec;
pub mod messages;

use crate::sm::{Command, Outcome};

openraft::declare_raft_types!(
    /// Raft types of the affinity store.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = Node,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

/// A node id. Node ids start at 1; 0 means "none" on the wire.
pub type NodeId = u64;
/// A member's record: where clients and peers reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// Where clients reach the node (HOST:PORT): leader hints name it.
    pub addr: String,
    /// Where peers reach it (Raft, forwarded calls, joins) when it serves peer traffic on a
    /// port of its own (`--peer-listen`); `None`: at `addr`.
    pub peer_addr: Option<String>,
}

impl Node {
    /// A node that serves clients and peers on one address.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            peer_addr: None,
        }
    }

    /// A node with a separate peer address (`None` or the same address: one address).
    pub fn with_peer(addr: impl Into<String>, peer_addr: Option<String>) -> Self {
        let addr = addr.into();
        let peer_addr = peer_addr.filter(|p| *p != addr && !p.is_empty());
        Self { addr, peer_addr }
    }

    /// The address peers dial.
    pub fn peer(&self) -> &str {
        self.peer_addr.as_deref().unwrap_or(&self.addr)
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.peer_addr {
            Some(peer) => write!(f, "{} (peers: {peer})", self.addr),
            None => f.write_str(&self.addr),
        }
    }
}
/// A log position.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A membership configuration.
pub type Membership = openraft::Membership<NodeId, Node>;
/// A membership configuration and the log position that set it.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// What a snapshot covers.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot with its data handle.
pub type Snapshot<SD> = openraft::type_config::alias::SnapshotOf<TypeConfig, SD>;
