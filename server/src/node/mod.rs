//! A running store node, without its transport: Raft, storage and the operations the
//! services offer (propose a command, read linearizably, change membership, report status).
//!
//! The node stamps every command it proposes with its own clock; only a leader can propose,
//! so the stamp is always the leader's. Operations that need the leader return
//! [`ServiceError::NotLeader`] with the leader's address, and the gRPC layer forwards them.

use openraft::async_runtime::watch::WatchReceiver as _;
use openraft::storage::RaftLogReader as _;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use affinity_proto::ClientKey;
use openraft::ServerState;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::batch::{BatchStats, Batcher};
use crate::clock;
use crate::config::{Config, ConfigError, Limits};
use crate::error::ServiceError;
use crate::network::{Handoff, LeaderTime, PeerNetwork, Peers};
use crate::raft::{Node as RaftNode, NodeId};
use crate::stamps::{Raft, Stamps, StoreTime};
use crate::store::{self, StateMachineStore, StoreError};

mod membership;
mod read;
mod status;
mod write;

pub use membership::VoterChange;
use read::Contact;
pub use status::NodeStatus;

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
