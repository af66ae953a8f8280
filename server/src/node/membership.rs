//! Membership: learners, voters, leadership transfer, and snapshots on request.

use openraft::async_runtime::watch::WatchReceiver as _;
use std::collections::BTreeSet;

use openraft::ChangeMembers;

use crate::error::ServiceError;
use crate::raft::{Node as RaftNode, NodeId};
use crate::store::{self};

use super::*;

/// How a membership change treats the voters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterChange {
    /// Leave them as they are.
    Keep,
    /// Make these the voters.
    Replace(BTreeSet<NodeId>),
    /// Add these (already learners) to the leader's current voters.
    Add(BTreeSet<NodeId>),
    /// Take these out of the leader's current voters.
    Remove(BTreeSet<NodeId>),
}

impl Node {
    /// Add a learner (leader only). With `blocking`, returns once it has caught up.
    pub async fn add_learner(
        &self,
        id: NodeId,
        node: RaftNode,
        blocking: bool,
        budget: Budget,
    ) -> Result<u64, ServiceError> {
        if id == 0 {
            return Err(
                affinity_proto::ValidationError::new("node_id", "node ids start at 1").into(),
            );
        }
        crate::config::check_host_port("address", &node.addr).map_err(|e| {
            ServiceError::Invalid(affinity_proto::ValidationError::new("address", e.reason))
        })?;
        if let Some(peer) = &node.peer_addr {
            crate::config::check_host_port("peer_address", peer).map_err(|e| {
                ServiceError::Invalid(affinity_proto::ValidationError::new(
                    "peer_address",
                    e.reason,
                ))
            })?;
        }
        self.require_leader()?;
        let added = self.raft.add_learner(id, node, blocking);
        match tokio::time::timeout_at(budget.until, added).await {
            Err(_) => Err(budget.expired("adding the learner")),
            Ok(Ok(resp)) => Ok(resp.log_id.index()),
            Ok(Err(e)) => Err(self.write_error(e)),
        }
    }

    /// Change the voters and/or remove learners (leader only).
    pub async fn change_membership(
        &self,
        voters: VoterChange,
        retain: bool,
        remove_learners: BTreeSet<NodeId>,
        budget: Budget,
    ) -> Result<u64, ServiceError> {
        let change = match voters {
            VoterChange::Keep => None,
            VoterChange::Replace(ids) => Some(ChangeMembers::ReplaceAllVoters(ids)),
            VoterChange::Add(ids) => Some(ChangeMembers::AddVoterIds(ids)),
            VoterChange::Remove(ids) => Some(ChangeMembers::RemoveVoters(ids)),
        };
        if change.is_none() && remove_learners.is_empty() {
            return Err(affinity_proto::ValidationError::new(
                "voters",
                "give the new voters, voters to add or remove, or learners to remove (all are empty)",
            )
            .into());
        }
        self.require_leader()?;
        let work = async {
            let mut index = 0;
            if let Some(change) = change {
                let resp = self
                    .raft
                    .change_membership(change, retain)
                    .await
                    .map_err(|e| self.write_error(e))?;
                index = resp.log_id.index();
            }
            if !remove_learners.is_empty() {
                let resp = self
                    .raft
                    .change_membership(ChangeMembers::RemoveNodes(remove_learners), false)
                    .await
                    .map_err(|e| self.write_error(e))?;
                index = resp.log_id.index();
            }
            Ok(index)
        };
        tokio::time::timeout_at(budget.until, work)
            .await
            .unwrap_or_else(|_| Err(budget.expired("the membership change")))
    }

    /// Hand leadership to `to` (leader only) and wait until it has taken over.
    pub async fn transfer_leader(
        &self,
        to: NodeId,
        budget: Budget,
    ) -> Result<NodeId, ServiceError> {
        let voters: BTreeSet<NodeId> = self.raft.voter_ids().collect();
        if !voters.contains(&to) {
            return Err(ServiceError::NotFound(format!(
                "node {to} is not a voter of this cluster"
            )));
        }
        self.require_leader()?;
        if to == self.id {
            return Ok(to);
        }
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|f| ServiceError::Unavailable(f.to_string()))?;
        let mut metrics = self.raft.metrics();
        let waited = tokio::time::timeout_at(budget.until, async {
            loop {
                if metrics.borrow_watched().current_leader == Some(to) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        match waited {
            Ok(()) => Ok(to),
            Err(_) => Err(budget.expired("the leadership transfer")),
        }
    }

    /// The leader, once this node knows one other than itself: its id and client address.
    /// `None` if none is known before `budget` runs out. (A deposed leader may still name
    /// itself for a moment, until it hears of the new term.)
    pub async fn await_leader(&self, budget: Budget) -> Option<(NodeId, String)> {
        let mut metrics = self.raft.metrics();
        let found = tokio::time::timeout_at(budget.until, async {
            loop {
                let leader = metrics.borrow_watched().current_leader;
                if let Some(id) = leader.filter(|id| *id != self.id)
                    && let Some(node) = self.member(id)
                {
                    return Some((id, node.addr));
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        found.ok().flatten()
    }

    /// Wait until this node has applied the log up to `index`.
    pub async fn wait_applied(&self, index: u64, budget: Budget) -> Result<(), ServiceError> {
        let mut metrics = self.raft.metrics();
        let waited = tokio::time::timeout_at(budget.until, async {
            loop {
                let applied = metrics
                    .borrow_watched()
                    .last_applied
                    .map_or(0, |id| id.index());
                if applied >= index || metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        waited.map_err(|_| budget.expired("catching up with the leader's log"))
    }

    /// Build a snapshot now and wait for it.
    pub async fn snapshot(
        &self,
        budget: Budget,
    ) -> Result<store::state::SnapshotInfo, ServiceError> {
        let applied = self
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|id| id.index());
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|f| ServiceError::Unavailable(f.to_string()))?;
        let mut metrics = self.raft.metrics();
        let waited = tokio::time::timeout_at(budget.until, async {
            loop {
                if metrics.borrow_watched().snapshot.map(|id| id.index()) >= applied {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if waited.is_err() {
            return Err(budget.expired("the snapshot"));
        }
        self.state
            .snapshot_info()
            .map_err(|e| ServiceError::Internal(format!("reading the snapshot record: {e}")))?
            .ok_or_else(|| {
                ServiceError::Internal("the snapshot was built but no record names it".into())
            })
    }
}
