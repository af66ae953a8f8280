//! openraft's state machine over the in-memory [`LeaseTable`], with snapshots on disk.
//!
//! The table lives in memory only. At start openraft installs the current snapshot and
//! re-applies the log after it, so the table is rebuilt from what is durable. Readers
//! (Lookup, List, Status) take a shared lock; apply takes it exclusively for one entry at a
//! time. Every applied change is published to subscribers (the `Watch` streams).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use affinity_proto::ClientKey;
use futures::{Stream, StreamExt};
use openraft::EntryPayload;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use parking_lot::RwLock;

use super::changes::{Changes, Subscription};
use super::snapshots::{CurrentSnapshot, SnapshotData, SnapshotStore};
use crate::raft::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::sm::snapshot as format;
use crate::sm::{Lease, LeaseTable, Outcome, RequestId};

struct SmState {
    table: LeaseTable,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

struct Inner {
    state: RwLock<SmState>,
    snapshots: SnapshotStore,
    built: AtomicU64,
    installed: AtomicU64,
    /// One snapshot build or install at a time.
    snapshot_lock: tokio::sync::Mutex<()>,
    changes: Changes,
}

/// Snapshots built and installed since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotCounts {
    /// Built by this node.
    pub built: u64,
    /// Installed (from a leader, or at start).
    pub installed: u64,
}

/// What the current snapshot covers and holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Last log position it covers.
    pub last_log_id: Option<LogId>,
    /// Leases in it.
    pub lease_count: u64,
    /// File size.
    pub size_bytes: u64,
}

/// The replicated state of one node. Clones share it.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

impl StateMachineStore {
    /// A state machine whose change feed is `changes`.
    pub(crate) fn new(snapshots: SnapshotStore, changes: Changes) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: RwLock::new(SmState {
                    table: LeaseTable::new(),
                    last_applied: None,
                    membership: StoredMembership::default(),
                }),
                snapshots,
                built: AtomicU64::new(0),
                installed: AtomicU64::new(0),
                snapshot_lock: tokio::sync::Mutex::new(()),
                changes,
            }),
        }
    }

    /// The live lease of (scope, key) at `now_ms`, from this replica.
    pub fn lookup(&self, scope: &str, key: ClientKey, now_ms: i64) -> Option<Lease> {
        self.inner.state.read().table.get(scope, key, now_ms)
    }

    /// The first outcome of the named write `id`, if this replica remembers it at `now_ms`.
    pub fn outcome_of(&self, id: &RequestId, now_ms: i64) -> Option<Outcome> {
        self.inner
            .state
            .read()
            .table
            .outcome_of(id, now_ms)
            .cloned()
    }

    /// A page of live leases in key order (see [`LeaseTable::list`]).
    pub fn list(
        &self,
        scope: Option<&str>,
        after: Option<(&str, ClientKey)>,
        limit: usize,
        now_ms: i64,
    ) -> (Vec<Lease>, bool) {
        self.inner
            .state
            .read()
            .table
            .list(scope, after, limit, now_ms)
    }

    /// Under one lock: leases held in total, leases held in `scope`, and whether a live
    /// lease holds (`scope`, `key`) at `now_ms`.
    pub fn occupancy(&self, scope: &str, key: ClientKey, now_ms: i64) -> (usize, usize, bool) {
        let state = self.inner.state.read();
        let table = &state.table;
        (
            table.len(),
            table.scope_len(scope),
            table.get(scope, key, now_ms).is_some(),
        )
    }

    /// Leases held, live or not yet swept.
    pub fn lease_count(&self) -> usize {
        self.inner.state.read().table.len()
    }

    /// The state machine's clock (newest command stamp applied).
    pub fn clock_ms(&self) -> i64 {
        self.inner.state.read().table.clock_ms()
    }

    /// The last applied log position.
    pub fn last_applied(&self) -> Option<LogId> {
        self.inner.state.read().last_applied
    }

    /// A copy of the table (tests and tools; costs a full copy).
    pub fn table_copy(&self) -> LeaseTable {
        self.inner.state.read().table.clone()
    }

    /// Receive every change from revision `start` on (0: from now on); `Err(floor)` when
    /// this node's history no longer reaches back to `start`.
    pub fn subscribe(&self, start: u64) -> Result<Subscription, u64> {
        self.inner.changes.subscribe(start)
    }

    /// The newest log index applied, with every change up to it in the watch feed.
    pub fn applied_revision(&self) -> u64 {
        self.inner.changes.last()
    }

    /// Current subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.inner.changes.subscriber_count()
    }

    /// The snapshot folder.
    pub fn snapshots(&self) -> &SnapshotStore {
        &self.inner.snapshots
    }

    /// The current snapshot, if any.
    pub fn current_snapshot(&self) -> io::Result<Option<CurrentSnapshot>> {
        self.inner.snapshots.current()
    }

    /// What the current snapshot covers, if there is one.
    pub fn snapshot_info(&self) -> io::Result<Option<SnapshotInfo>> {
        Ok(self.inner.snapshots.current()?.map(|c| SnapshotInfo {
            last_log_id: c.meta.last_log_id,
            lease_count: c.lease_count,
            size_bytes: c.data.len(),
        }))
    }

    /// Snapshots built and installed since start.
    pub fn snapshot_counts(&self) -> SnapshotCounts {
        SnapshotCounts {
            built: self.inner.built.load(Ordering::Relaxed),
            installed: self.inner.installed.load(Ordering::Relaxed),
        }
    }

    /// When the next lease ends (the earliest end of any lease held), if any.
    pub fn next_end_ms(&self) -> Option<i64> {
        self.inner.state.read().table.next_end_ms()
    }
}

fn to_io(e: format::SnapshotError) -> io::Error {
    match e {
        format::SnapshotError::Io(io) => io,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot<SnapshotData>, io::Error> {
        let _one_at_a_time = self.inner.snapshot_lock.lock().await;
        // Encode while holding the state still; the slow parts (sync, rename) come after.
        let (meta, path, stats) = {
            let state = self.inner.state.read();
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
            };
            let (path, stats) = self.inner.snapshots.write_temp(&state.table, &meta)?;
            (meta, path, stats)
        };
        let data = self.inner.snapshots.publish(&path, &meta, stats).await?;
        self.inner.built.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            leases = stats.lease_count,
            bytes = stats.bytes,
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let state = self.inner.state.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut events = Vec::new();
        let mut applied = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            applied = Some(entry.log_id.index());
            let outcome = {
                let mut state = self.inner.state.write();
                state.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Outcome::Nothing,
                    EntryPayload::Normal(cmd) => {
                        state.table.apply(entry.log_id.index(), &cmd, &mut events)
                    }
                    EntryPayload::Membership(membership) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Outcome::Nothing
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(outcome);
            }
            if !events.is_empty() {
                self.inner.changes.publish(std::mem::take(&mut events));
            }
        }
        if let Some(index) = applied {
            self.inner.changes.advance(index);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let _one_at_a_time = self.inner.snapshot_lock.lock().await;
        let reader = snapshot.reader()?;
        let decoded = tokio::task::spawn_blocking(move || format::read(reader))
            .await
            .map_err(io::Error::other)?;
        let format::Decoded {
            meta: file_meta,
            table,
            stats,
        } = decoded.map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} cannot be installed: {}",
                    snapshot.path().display(),
                    to_io(e)
                ),
            )
        })?;
        let file_last = file_meta
            .last_log_id
            .as_ref()
            .map(crate::raft::codec::log_id_from_pb);
        if file_last != meta.last_log_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} covers {:?}, but was offered as covering {:?}",
                    snapshot.path().display(),
                    file_last,
                    meta.last_log_id
                ),
            ));
        }
        // Persist first (unless this is the current snapshot being reloaded at start), so
        // that the state is never ahead of what a restart would find.
        if !self.inner.snapshots.is_current(snapshot.path())? {
            self.inner
                .snapshots
                .publish(snapshot.path(), meta, stats)
                .await?;
        }
        let leases = table.len();
        {
            let mut state = self.inner.state.write();
            state.table = table;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
        }
        self.inner.installed.fetch_add(1, Ordering::Relaxed);
        self.inner
            .changes
            .reset(meta.last_log_id.as_ref().map_or(0, LogId::index));
        tracing::info!(last_log_id = ?meta.last_log_id, leases, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SnapshotData>>, io::Error> {
        Ok(self.inner.snapshots.current()?.map(|current| Snapshot {
            meta: current.meta,
            snapshot: current.data,
        }))
    }
}
