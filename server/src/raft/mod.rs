//! The Raft type configuration of the store, and names for the openraft types it uses.
//!
//! One leader per term (`leader_id_std`), so a log position is (term, index). Node ids are
//! `u64` and start at 1; a node's record is its advertised address (`BasicNode`).

pub mod codec;
pub mod messages;

use crate::sm::{Command, Outcome};

openraft::declare_raft_types!(
    /// Raft types of the affinity store.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

/// A node id. Node ids start at 1; 0 means "none" on the wire.
pub type NodeId = u64;
/// A node's record: its advertised address.
pub type Node = openraft::BasicNode;
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
/// A Raft node of the store.
pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachineStore>;
