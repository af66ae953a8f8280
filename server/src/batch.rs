//! Proposal batching: the leader's small client writes (resolve, reassign, release) that
//! arrive while earlier ones are still in flight are proposed together as one log entry
//! ([`Op::Batch`]).
//!
//! Every log entry costs the same fixed work on every node whatever it carries: encoding,
//! a sled insert, replication bookkeeping, a decode and an apply step on each follower. Under
//! load that per-entry work, not the leases themselves, is what the CPU spends its time on.
//! The batcher keeps at most `in_flight` entries proposed and not yet applied; a write that
//! arrives while all of them are taken waits in a queue, and the next free slot takes
//! everything queued (up to `max_ops`) as one entry. A lone write on an idle node is
//! proposed at once, alone: batching adds no delay, it only happens when writes would
//! otherwise queue behind each other.
//!
//! At most `max_pending` writes may be queued or in flight at once; past that, a write is
//! refused at once ([`Full`]) rather than queued without bound, so that an overloaded leader
//! sheds load instead of growing memory and latency.
//!
//! The operations of a batch are applied one after another at one stamp and one log index,
//! each with its own outcome, exactly as if they had been proposed back to back; first
//! writer wins holds within a batch as across entries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::raft::TypeConfig;
use crate::sm::{Command, Op, Outcome};
use crate::stamps::{Raft, Stamps};

/// What a proposal came to: its outcome, or why Raft refused the entry that carried it.
pub type Reply = Result<Outcome, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>;

struct Pending {
    op: Op,
    reply: oneshot::Sender<Reply>,
}

/// Counts of what the batcher proposed, for the metrics.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Log entries proposed by the batcher.
    pub entries: AtomicU64,
    /// Operations carried by them.
    pub ops: AtomicU64,
    /// Writes refused because `max_pending` were already pending.
    pub shed: AtomicU64,
}

/// The batcher already holds its maximum of pending writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// The maximum.
    pub max_pending: usize,
}

/// Groups client writes into log entries; see the module docs.
#[derive(Debug)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Pending>,
    pending: Arc<Semaphore>,
    max_pending: usize,
    stats: Arc<BatchStats>,
}

impl Batcher {
    /// Start the batcher of `raft`: at most `in_flight` entries in flight, at most `max_ops`
    /// operations per entry, at most `max_pending` writes queued or in flight. It stops
    /// when the batcher is dropped.
    pub fn start(
        raft: Raft,
        stamps: Stamps,
        in_flight: usize,
        max_ops: usize,
        max_pending: usize,
    ) -> Self {
        let (queue, arrivals) = mpsc::unbounded_channel();
        let stats = Arc::new(BatchStats::default());
        tokio::spawn(run(
            raft,
            stamps,
            arrivals,
            Arc::new(Semaphore::new(in_flight.max(1))),
            max_ops.max(1),
            Arc::clone(&stats),
        ));
        let max_pending = max_pending.max(1);
        Batcher {
            queue,
            pending: Arc::new(Semaphore::new(max_pending)),
            max_pending,
            stats,
        }
    }

    /// Propose `op` (a [`Op::batchable`] one) and wait until it is applied. `Ok(None)` when
    /// the batcher has stopped (the node is shutting down); [`Full`] at once when
    /// `max_pending` writes are already pending.
    pub async fn propose(&self, op: Op) -> Result<Option<Reply>, Full> {
        let Ok(_pending) = self.pending.try_acquire() else {
            self.stats.shed.fetch_add(1, Ordering::Relaxed);
            return Err(Full {
                max_pending: self.max_pending,
            });
        };
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Pending { op, reply }).is_err() {
            return Ok(None);
        }
        Ok(answer.await.ok())
    }

    /// What it has proposed so far.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }
}

async fn run(
    raft: Raft,
    stamps: Stamps,
    mut arrivals: mpsc::UnboundedReceiver<Pending>,
    slots: Arc<Semaphore>,
    max_ops: usize,
    stats: Arc<BatchStats>,
) {
    while let Some(first) = arrivals.recv().await {
        // Wait for a free slot first: whatever arrives meanwhile joins this entry.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_ops {
            match arrivals.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // A caller that gave up (its deadline passed) is not proposed for.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        stats.entries.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let raft = raft.clone();
        let stamp_ms = stamps.now();
        tokio::spawn(async move {
            write(&raft, stamp_ms, batch).await;
            drop(slot);
        });
    }
}

async fn write(raft: &Raft, stamp_ms: i64, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        if let Some(one) = batch.pop() {
            let written = raft
                .client_write(Command {
                    stamp_ms,
                    op: one.op,
                })
                .await
                .map(|r| r.data);
            let _ = one.reply.send(written);
        }
        return;
    }
    let (ops, replies): (Vec<Op>, Vec<oneshot::Sender<Reply>>) =
        batch.into_iter().map(|p| (p.op, p.reply)).unzip();
    let count = ops.len();
    let written = raft
        .client_write(Command {
            stamp_ms,
            op: Op::Batch(ops),
        })
        .await;
    match written.map(|r| r.data) {
        Ok(Outcome::Batch(outcomes)) if outcomes.len() == count => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Ok(other) => {
            // The state machine always answers a batch with one outcome per operation.
            tracing::error!(
                ?other,
                count,
                "a batch was applied with an unexpected outcome"
            );
            for reply in replies {
                let _ = reply.send(Ok(Outcome::Nothing));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
