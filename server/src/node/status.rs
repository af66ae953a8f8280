//! What a node reports about itself: its status and whether it is ready to serve.

use openraft::async_runtime::watch::WatchReceiver as _;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use affinity_proto::pb;
use openraft::ServerState;

use crate::raft::{Node as RaftNode, NodeId};

use super::*;

/// This node's view of the cluster.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// This node.
    pub id: NodeId,
    /// Its advertised addresses.
    pub me: RaftNode,
    /// leader, follower, candidate, learner or shutdown.
    pub role: &'static str,
    /// The leader, when known, with its record.
    pub leader: Option<(NodeId, Option<RaftNode>)>,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Commit index known to this node.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Index covered by the newest snapshot.
    pub snapshot_index: u64,
    /// Members: id -> (record, voter).
    pub members: BTreeMap<NodeId, (RaftNode, bool)>,
    /// Leases held by this replica.
    pub lease_count: u64,
}

impl NodeStatus {
    /// The wire form.
    pub fn to_pb(&self) -> pb::StatusResponse {
        pb::StatusResponse {
            node_id: self.id,
            role: self.role.to_string(),
            leader_id: self.leader.as_ref().map_or(0, |(id, _)| *id),
            term: self.term,
            commit_index: self.commit_index,
            applied_index: self.applied_index,
            members: self
                .members
                .iter()
                .map(|(id, (node, voter))| pb::Member {
                    id: *id,
                    address: node.addr.clone(),
                    voter: *voter,
                    peer_address: node.peer_addr.clone().unwrap_or_default(),
                })
                .collect(),
            lease_count: self.lease_count,
            leader_address: self
                .leader
                .as_ref()
                .and_then(|(_, n)| n.as_ref())
                .map(|n| n.addr.clone())
                .unwrap_or_default(),
            leader_peer_address: self
                .leader
                .as_ref()
                .and_then(|(_, n)| n.as_ref())
                .and_then(|n| n.peer_addr.clone())
                .unwrap_or_default(),
            last_log_index: self.last_log_index,
            snapshot_index: self.snapshot_index,
            version: env!("CARGO_PKG_VERSION").to_string(),
            address: self.me.addr.clone(),
            peer_address: self.me.peer_addr.clone().unwrap_or_default(),
        }
    }
}

impl Node {
    /// This node's view of the cluster.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| (*id, (node.clone(), voters.contains(id))))
            .collect();
        let leader = m
            .current_leader
            .map(|id| (id, membership.get_node(&id).cloned()));
        NodeStatus {
            id: self.id,
            me: self.me.clone(),
            role,
            leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: m.local_committed.map_or(0, |id| id.index()),
            applied_index: m.last_applied.map_or(0, |id| id.index()),
            snapshot_index: m.snapshot.map_or(0, |id| id.index()),
            members,
            lease_count: self.state.lease_count() as u64,
        }
    }

    /// Whether this node can serve: it knows a leader and has applied the cluster's
    /// committed log, give or take [`READY_MAX_LAG`] entries (so that a healthy follower
    /// under write load, always a few entries behind, does not flap). A leader of several
    /// voters must also have heard from a quorum within its lease: a leader cut off from
    /// its peers refuses writes, so it should not be in a load balancer's rotation either.
    pub fn is_ready(&self) -> bool {
        let receiver = self.raft.metrics();
        let m = receiver.borrow_watched();
        let index = |id: Option<crate::raft::LogId>| id.map_or(0, |id| id.index());
        let committed = index(m.cluster_committed).max(index(m.local_committed));
        let voters = m.membership_config.membership().voter_ids().count();
        let leader_in_touch = m.current_leader != Some(self.id)
            || voters <= 1
            || m.last_quorum_acked
                .as_ref()
                .is_some_and(|acked| openraft::Instant::elapsed(&**acked) < self.leader_lease);
        m.running_state.is_ok()
            && m.current_leader.is_some()
            && leader_in_touch
            && committed.saturating_sub(index(m.last_applied)) <= READY_MAX_LAG
    }

    /// How often readiness must be looked at again even when nothing in Raft changed (a
    /// leader's quorum contact ages without any metrics update).
    pub fn readiness_interval(&self) -> Duration {
        self.leader_lease / 4
    }
}
