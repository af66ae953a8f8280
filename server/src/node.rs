//! A running store node, without its transport: Raft, storage and the operations the
//! services offer (propose a command, read linearizably, change membership, report status).
//!
//! The node stamps every command it proposes with its own clock; only a leader can propose,
//! so the stamp is always the leader's. Operations that need the leader return
//! [`ServiceError::NotLeader`] with the leader's address, and the gRPC layer forwards them.

use openraft::Instant as _;
use openraft::async_runtime::watch::WatchReceiver as _;
use openraft::storage::RaftLogReader as _;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use affinity_proto::{ClientKey, pb};
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, ReadPolicy, ServerState};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::batch::{BatchStats, Batcher};
use crate::clock;
use crate::config::{Config, ConfigError, Limits};
use crate::error::ServiceError;
use crate::network::{Handoff, LeaderTime, PeerNetwork, Peers};
use crate::raft::{Node as RaftNode, NodeId, TypeConfig};
use crate::sm::{Command, Op, Outcome};
use crate::stamps::{Raft, Stamps, StoreTime};
use crate::store::{self, StateMachineStore, StoreError};

/// Committed entries a node may still have to apply and count as ready.
pub const READY_MAX_LAG: u64 = 1000;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Raft could not start from the stored state.
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// How long an operation may take, and whose limit that is.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// When to give up.
    pub until: Instant,
    /// The limit is the caller's deadline (DEADLINE_EXCEEDED), not the node's own proposal
    /// timeout (UNAVAILABLE).
    pub caller_limited: bool,
}

impl Budget {
    /// The node's own limit, from now.
    pub fn within(timeout: Duration) -> Self {
        Self {
            until: Instant::now() + timeout,
            caller_limited: false,
        }
    }

    fn expired(self, what: &str) -> ServiceError {
        if self.caller_limited {
            ServiceError::DeadlineExceeded(format!(
                "the caller's deadline passed before {what} completed"
            ))
        } else {
            ServiceError::Unavailable(format!(
                "{what} did not complete in time: no quorum answered (it may still be applied; retrying is safe)"
            ))
        }
    }
}

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

/// A running node.
pub struct Node {
    id: NodeId,
    me: RaftNode,
    raft: Raft,
    state: StateMachineStore,
    flusher: store::Flusher,
    log: store::LogStore,
    proposal_timeout: Duration,
    /// How long a quorum's acknowledgement keeps a leader's authority (openraft's leader
    /// lease: the maximum election timeout).
    leader_lease: Duration,
    /// A follower that heard from its leader within this (the minimum election timeout)
    /// is in touch with it.
    in_touch_window: Duration,
    /// Recent appends heard from the leader, for [`Node::in_touch_with_leader`].
    contact: Contact,
    /// Groups client writes into log entries.
    batcher: Batcher,
    /// Configured bounds.
    limits: Limits,
    /// Requests refused by them.
    refusals: Refusals,
    /// One permit per Watch stream this node may serve.
    watch_slots: Arc<Semaphore>,
    /// Stamps proposals.
    stamps: Stamps,
    /// The term in which this node last began handing leadership over.
    handoff: Handoff,
    /// When this node may first grant a vote (see [`Node::may_vote`]).
    votes_from: Instant,
}

/// Requests refused by a limit, by limit (pending writes are counted by the batcher).
#[derive(Debug, Default)]
pub struct Refusals {
    /// `max-leases`.
    pub leases: AtomicU64,
    /// `max-leases-per-scope`.
    pub leases_per_scope: AtomicU64,
    /// `max-watchers`.
    pub watchers: AtomicU64,
    /// `max-calls-per-connection-per-second` (shared with the rate limiter).
    pub rate: Arc<AtomicU64>,
}

/// How long a writer shed for load is told to wait before retrying.
pub const SHED_RETRY_AFTER_MS: u64 = 50;

/// Log entries of batched client writes in flight at once (see [`crate::batch`]). One
/// measured best on a 3-node cluster: creates at 256 callers went from 6.8k/s unbatched to
/// 9.7k/s with one, 9.2k/s with two, 8.3k/s with four and 7.5k/s with sixteen in flight,
/// with no change at one caller (docs/benchmarks.md).
pub const BATCH_IN_FLIGHT: usize = 1;
/// Most client writes in one log entry.
pub const BATCH_MAX_OPS: usize = 512;

impl Node {
    /// Open the data directory and start Raft. Forming the cluster on first start is
    /// `join::bootstrap`'s, which the caller runs next.
    pub async fn start(
        config: &Config,
        me: RaftNode,
        peers: Peers,
    ) -> Result<Arc<Node>, StartError> {
        let mut raft_config = config.openraft()?;
        let leader_lease = Duration::from_millis(raft_config.election_timeout_max);
        let in_touch_window = Duration::from_millis(raft_config.election_timeout_min);
        let dir = config.data_dir.clone();
        let options = config.storage.clone();
        let storage = tokio::task::spawn_blocking(move || store::open(&dir, &options))
            .await
            .map_err(|e| StartError::Raft(format!("storage open task failed: {e}")))??;
        // A node that had a vote may have acknowledged a leader whose lease still runs; it
        // holds off electing until that lease has surely ended (see `Node::may_vote`).
        let had_vote = storage
            .log
            .clone()
            .read_vote()
            .await
            .map_err(|e| StartError::Raft(format!("reading the saved vote: {e}")))?
            .is_some_and(|vote| vote.leader_id.term > 0);
        let votes_from = if had_vote {
            Instant::now() + leader_lease
        } else {
            Instant::now()
        };
        raft_config.enable_elect = !had_vote;
        let raft_config = Arc::new(raft_config);
        let handoff = Handoff::default();
        let time = Arc::new(StoreTime::new(
            clock::LeaderClock::new(config.max_clock_step),
            storage.state.clone(),
        ));
        let network = PeerNetwork::new(
            config.node_id,
            peers.clone(),
            handoff.clone(),
            Arc::clone(&time) as Arc<dyn LeaderTime>,
        );
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network,
            storage.log.clone(),
            storage.state.clone(),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let stamps = Stamps::new(time, raft.clone());
        let batcher = Batcher::start(
            raft.clone(),
            stamps.clone(),
            BATCH_IN_FLIGHT,
            BATCH_MAX_OPS,
            config.limits.max_pending_writes,
        );
        let node = Node {
            id: config.node_id,
            me,
            raft,
            state: storage.state.clone(),
            flusher: storage.flusher.clone(),
            log: storage.log.clone(),
            proposal_timeout: config.proposal_timeout,
            leader_lease,
            in_touch_window,
            contact: Contact::default(),
            batcher,
            limits: config.limits.clone(),
            refusals: Refusals::default(),
            watch_slots: Arc::new(Semaphore::new(config.limits.max_watchers)),
            stamps,
            handoff,
            votes_from,
        };
        node.hold_elections_until(votes_from);
        Ok(Arc::new(node))
    }

    /// Let Raft start elections from `from` on (at once for the only voter of a cluster,
    /// whose lease nobody else relies on).
    fn hold_elections_until(&self, from: Instant) {
        let only_voter = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            voters.len() <= 1
        };
        let runtime = self.raft.runtime_config();
        if only_voter || from <= Instant::now() {
            runtime.elect(true);
            return;
        }
        let raft = self.raft.clone();
        tracing::info!(
            wait_ms = u64::try_from(from.saturating_duration_since(Instant::now()).as_millis())
                .unwrap_or(u64::MAX),
            "restarted: not voting or campaigning until any lease this node granted before has ended"
        );
        tokio::spawn(async move {
            tokio::time::sleep_until(from).await;
            raft.runtime_config().elect(true);
        });
    }

    /// Whether this node may grant a vote now. A restarted node does not remember the
    /// leader lease it granted before it stopped: a leader it acknowledged may still answer
    /// from its own state for up to one lease after that acknowledgement, so the node
    /// refuses votes (and does not campaign) until one lease after it started. A vote for a
    /// leadership handoff is always allowed: the leader that asked for it has stopped
    /// answering from its state. Err: how long until it may.
    pub fn may_vote(&self, handoff: bool) -> Result<(), Duration> {
        let wait = self.votes_from.saturating_duration_since(Instant::now());
        if handoff || wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// The time this node would stamp a proposal with now (see [`clock::LeaderClock`]).
    pub fn stamp_now(&self) -> i64 {
        self.stamps.now()
    }

    /// An append from the leader of `vote` announced its store time `store_ms`, heard at
    /// `at`. Kept if it comes from a leader of this node's term or later (an old leader's
    /// late append says nothing about the current store time), and if it is not this node.
    ///
    /// Also remembers the commit index it carried (`commit`): once this node has applied
    /// that far, its state is current as of `at` ([`Node::in_touch_with_leader`]).
    pub fn hear_leader(
        &self,
        vote: &crate::raft::Vote,
        commit: Option<u64>,
        store_ms: i64,
        at: std::time::Instant,
    ) {
        let term = vote.leader_id.term;
        if vote.leader_id.voted_for == self.id {
            return;
        }
        if term >= self.raft.metrics().borrow_watched().current_term {
            if store_ms != 0 {
                self.stamps.time().clock().hear(term, store_ms, at);
            }
            self.contact
                .heard(term, commit.unwrap_or(0), at, self.in_touch_window);
        }
    }

    /// How far this node's wall clock is ahead of the store time it knows (its own stamps
    /// while it leads, else what the leader last announced), in ms; `None` before it knows.
    pub fn clock_offset_ms(&self) -> Option<i64> {
        let (term, leading) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            (m.current_term, m.state == ServerState::Leader)
        };
        self.stamps.time().clock().offset_ms(
            term,
            leading,
            clock::now_ms(),
            std::time::Instant::now(),
        )
    }

    /// The configured bounds.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Requests refused by the limits so far.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Whether a `Resolve` of (`scope`, `key`) may go ahead: one that would create a lease
    /// (no live lease holds the key) is refused when the table already holds `max-leases`
    /// leases, or `max-leases-per-scope` in that scope. Checked by the leader before it
    /// proposes; writes already pending may pass the bound by at most
    /// `max-pending-writes`.
    pub fn admit_create(&self, scope: &str, key: ClientKey) -> Result<(), ServiceError> {
        let (total, in_scope, live) = self.state.occupancy(scope, key, self.stamps.now());
        if live {
            return Ok(());
        }
        let limits = &self.limits;
        if total as u64 >= limits.max_leases {
            self.refusals.leases.fetch_add(1, Ordering::Relaxed);
            return Err(ServiceError::LimitReached(format!(
                "the store holds {total} leases, its max-leases; nothing was written (raise --max-leases, or lower lease lifetimes)"
            )));
        }
        if limits.max_leases_per_scope > 0 && in_scope as u64 >= limits.max_leases_per_scope {
            self.refusals
                .leases_per_scope
                .fetch_add(1, Ordering::Relaxed);
            return Err(ServiceError::LimitReached(format!(
                "scope {scope:?} holds {in_scope} leases, the max-leases-per-scope; nothing was written"
            )));
        }
        Ok(())
    }

    /// A place for one more Watch stream, held until the stream ends; refused past
    /// `max-watchers`.
    pub fn admit_watcher(&self) -> Result<OwnedSemaphorePermit, ServiceError> {
        Arc::clone(&self.watch_slots).try_acquire_owned().map_err(|_| {
            self.refusals.watchers.fetch_add(1, Ordering::Relaxed);
            ServiceError::LimitReached(format!(
                "this node already serves {} watch streams (max-watchers); watch another node or retry later",
                self.limits.max_watchers
            ))
        })
    }

    /// What the batcher has proposed (entries and the client writes they carried).
    pub fn batch_stats(&self) -> &BatchStats {
        self.batcher.stats()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's advertised client address.
    pub fn address(&self) -> &str {
        &self.me.addr
    }

    /// This node's membership record: client and peer addresses.
    pub fn record(&self) -> &RaftNode {
        &self.me
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The replicated state.
    pub fn state(&self) -> &StateMachineStore {
        &self.state
    }

    /// The Raft log store (its durable index, and its write-ahead log's counters).
    pub fn log(&self) -> &store::LogStore {
        &self.log
    }

    /// The node's own time limit for one operation, from now.
    pub fn default_budget(&self) -> Budget {
        Budget::within(self.proposal_timeout)
    }

    /// The node's own proposal timeout.
    pub fn proposal_timeout(&self) -> Duration {
        self.proposal_timeout
    }

    /// The leader this node knows of, with its client address.
    pub fn leader(&self) -> Option<(NodeId, Option<String>)> {
        let leader = self.raft.metrics().borrow_watched().current_leader?;
        Some((leader, self.member(leader).map(|n| n.addr)))
    }

    /// The record of member `id` in the membership this node knows.
    pub fn member(&self, id: NodeId) -> Option<RaftNode> {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    /// Whether this node believes it is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// Membership operations run on the leader; elsewhere, say where it is.
    fn require_leader(&self) -> Result<(), ServiceError> {
        if self.is_leader() {
            return Ok(());
        }
        let (id, address) = self.leader().unzip();
        Err(self.not_leader(id, address.flatten().map(RaftNode::new)))
    }

    fn not_leader(&self, leader_id: Option<NodeId>, node: Option<RaftNode>) -> ServiceError {
        // Raft names no leader to a learner (or a node) whose view of the vote is not yet
        // committed, though its metrics may already know the leader: name that one, so the
        // call is forwarded rather than failed.
        let leader_id = leader_id.or_else(|| {
            self.raft
                .metrics()
                .borrow_watched()
                .current_leader
                .filter(|id| *id != self.id)
        });
        let leader_address = node
            .map(|n| n.addr)
            .or_else(|| leader_id.and_then(|id| self.member(id)).map(|n| n.addr));
        ServiceError::NotLeader {
            leader_id,
            leader_address,
        }
    }

    /// Propose `op`, stamped with this node's clock, and wait for it to be applied. Client
    /// writes go through the batcher (and may share a log entry); the rest go alone.
    pub async fn propose(&self, op: Op, budget: Budget) -> Result<Outcome, ServiceError> {
        if op.batchable() {
            let written = tokio::time::timeout_at(budget.until, self.batcher.propose(op)).await;
            return match written {
                Err(_) => Err(budget.expired("the write")),
                Ok(Err(full)) => Err(ServiceError::Overloaded {
                    message: format!(
                        "the leader has {} client writes pending (max-pending-writes); nothing was written, retry shortly",
                        full.max_pending
                    ),
                    retry_after_ms: SHED_RETRY_AFTER_MS,
                }),
                Ok(Ok(None)) => Err(ServiceError::Unavailable(
                    "this node is shutting down".into(),
                )),
                Ok(Ok(Some(Ok(outcome)))) => Ok(outcome),
                Ok(Ok(Some(Err(e)))) => Err(self.write_error(e)),
            };
        }
        let command = Command {
            stamp_ms: self.stamps.now(),
            op,
        };
        let written = tokio::time::timeout_at(budget.until, self.raft.client_write(command)).await;
        match written {
            Err(_) => Err(budget.expired("the write")),
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(e)) => Err(self.write_error(e)),
        }
    }

    fn write_error(&self, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ServiceError {
        match e {
            // Discarded: this node lost the lead with the write in its log, and another node
            // may yet commit it. Writes are named (a request id), so sending it on to the
            // leader applies it at most once.
            RaftError::APIError(
                ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f),
            ) => self.not_leader(f.leader_id, f.leader_node),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ServiceError::FailedPrecondition(e.to_string())
            }
            RaftError::APIError(ClientWriteError::PreconditionFailed(e)) => {
                ServiceError::FailedPrecondition(e.to_string())
            }
            RaftError::Fatal(f) => {
                ServiceError::Unavailable(format!("this node's raft has stopped: {f}"))
            }
        }
    }

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
    fn lease_holds_here(&self) -> bool {
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

    /// Stop Raft and close the data directory. Writes fail from here on.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!(error = %e, "raft did not stop cleanly");
        }
        // Raft's tasks, which held the stores, have ended: write what is pending, stop the
        // log's writer and release the database.
        let flusher = self.flusher.clone();
        let log = self.log.clone();
        let _ = tokio::task::spawn_blocking(move || {
            log.close();
            flusher.close();
        })
        .await;
    }
}

/// The appends a follower heard lately: when, in which term, and the commit index each
/// carried, newest last; those older than the in-touch window are dropped.
#[derive(Default)]
struct Contact(parking_lot::Mutex<std::collections::VecDeque<(u64, u64, std::time::Instant)>>);

impl Contact {
    /// At most this many appends are remembered (many arrive per heartbeat under load).
    const MAX: usize = 1024;

    fn heard(&self, term: u64, commit: u64, at: std::time::Instant, window: Duration) {
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
    fn current_as_of(&self, term: u64, applied: u64) -> Option<std::time::Instant> {
        self.0
            .lock()
            .iter()
            .rev()
            .find(|(t, commit, _)| *t == term && *commit <= applied)
            .map(|(_, _, at)| *at)
    }
}
