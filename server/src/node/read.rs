//! Reads: linearizable by a read index, or by the leader's lease while it is in touch
//! with a quorum.

use openraft::Instant as _;
use openraft::async_runtime::watch::WatchReceiver as _;
use std::time::Duration;

use openraft::errors::{LinearizableReadError, RaftError};
use openraft::{ReadPolicy, ServerState};

use crate::error::ServiceError;
use crate::raft::Node as RaftNode;

use super::*;

/// The appends a follower heard lately: when, in which term, and the commit index each
/// carried, newest last; those older than the in-touch window are dropped.
#[derive(Default)]
pub(super) struct Contact(
    parking_lot::Mutex<std::collections::VecDeque<(u64, u64, std::time::Instant)>>,
);

impl Contact {
    /// At most this many appends are remembered (many arrive per heartbeat under load).
    const MAX: usize = 1024;

    pub(super) fn heard(&self, term: u64, commit: u64, at: std::time::Instant, window: Duration) {
        let mut heard = self.0.lock();
        while heard
            .front()
            .is_some_and(|(_, _, t)| at.saturating_duration_since(*t) >= window)
            || heard.len() >= Self::MAX
        {
            heard.pop_front();
        }
        heard.push_back((term, commit, at));
    }

    /// When the newest append of `term` was heard whose commit index is applied.
    pub(super) fn current_as_of(&self, term: u64, applied: u64) -> Option<std::time::Instant> {
        self.0
            .lock()
            .iter()
            .rev()
            .find(|(t, commit, _)| *t == term && *commit <= applied)
            .map(|(_, _, at)| *at)
    }
}

impl Node {
    /// Wait until this node (the leader) has confirmed its leadership with a quorum and
    /// applied everything committed before the call: a read after this is linearizable.
    pub async fn linearize(&self, budget: Budget) -> Result<(), ServiceError> {
        let ready = tokio::time::timeout_at(
            budget.until,
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await;
        match ready {
            Err(_) => Err(budget.expired("the read barrier")),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(self.not_leader(f.leader_id, f.leader_node))
            }
            // Deposed while confirming: the caller is sent on to the leader it now knows.
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e)))) => {
                match self.leader() {
                    Some((id, address)) if id != self.id => {
                        Err(self.not_leader(Some(id), address.map(RaftNode::new)))
                    }
                    _ => Err(ServiceError::Unavailable(format!(
                        "no quorum confirmed this leader: {e}"
                    ))),
                }
            }
            Ok(Err(RaftError::Fatal(f))) => Err(ServiceError::Unavailable(format!(
                "this node's raft has stopped: {f}"
            ))),
        }
    }

    /// Whether this node can serve a linearizable read from its applied state right now,
    /// judged from the metrics Raft publishes, without a message to the Raft task: it is
    /// the leader, it has not begun handing leadership over in this term (a handoff lets
    /// the target be elected at once, without waiting out this leader's lease), a quorum
    /// acknowledged it less than 90% of the leader lease ago (openraft's own lease read
    /// uses the whole lease), and it has applied an entry of its own term, so everything an
    /// earlier leader committed is applied too. Applied state is enough: a write is
    /// acknowledged only once the leader has applied it. Stale metrics only make this more
    /// cautious (an older acknowledgement); when it says no, the caller asks Raft, whose
    /// read paths refuse during a handoff too.
    pub(super) fn lease_holds_here(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if m.state != ServerState::Leader || self.handoff.began_in(m.current_term) {
            return false;
        }
        let applied_this_term = m
            .last_applied
            .as_ref()
            .is_some_and(|id| id.committed_leader_id().term == m.current_term);
        let margin = self.leader_lease.mul_f64(0.9);
        let fresh = m
            .last_quorum_acked
            .as_ref()
            .is_some_and(|acked| acked.elapsed() < margin);
        applied_this_term && fresh
    }

    /// Whether this node is in touch with a leader of its current term: it leads, has not
    /// begun a handoff and a quorum acknowledged it within the leader lease; or it follows
    /// and has applied what its leader had committed when it sent an append this node
    /// heard within the minimum election timeout (heartbeats come every heartbeat
    /// interval): its state is current as of then. What `Watch` progress reports.
    pub fn in_touch_with_leader(&self) -> bool {
        let (state, term, leader, acked) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            (
                m.state,
                m.current_term,
                m.current_leader,
                m.last_quorum_acked.as_ref().map(|a| a.elapsed()),
            )
        };
        match state {
            ServerState::Leader => {
                !self.handoff.began_in(term) && acked.is_some_and(|a| a < self.leader_lease)
            }
            _ if leader.is_some() && leader != Some(self.id) => self
                .contact
                .current_as_of(term, self.state.applied_revision())
                .is_some_and(|at| at.elapsed() < self.in_touch_window),
            _ => false,
        }
    }

    /// Like [`Node::linearize`], without a network round when it can: while the leader's
    /// lease holds (a quorum acknowledged it within the lease, during which followers do
    /// not elect another leader), its applied state is current. When the lease has lapsed,
    /// a read-index round as in [`Node::linearize`].
    pub async fn linearize_by_lease(&self, budget: Budget) -> Result<(), ServiceError> {
        if self.lease_holds_here() {
            return Ok(());
        }
        let by_lease = tokio::time::timeout_at(
            budget.until,
            self.raft.ensure_linearizable(ReadPolicy::LeaseRead),
        )
        .await;
        match by_lease {
            Ok(Ok(_)) => Ok(()),
            _ => Box::pin(self.linearize(budget)).await,
        }
    }
}
