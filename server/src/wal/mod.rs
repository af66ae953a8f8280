//! A write-ahead log made for the Raft log: append-only segment files, preallocated, one
//! checksummed frame per group commit, purge by deleting whole segments, and the recent
//! entries kept in memory for reads.
//!
//! - **Writes** queue their items and return; one writer thread takes everything queued,
//!   writes it as one frame, syncs once (`fdatasync`) and then calls every callback of the
//!   batch. Reads see an entry as soon as it is queued. Frames are written and synced one
//!   after another, never two in flight, so a damaged frame followed by a valid one was
//!   synced before it: damage, not a torn write (see [`recover`]).
//! - **Segments** (`wal-<sequence>.seg`) are preallocated to `segment_size` and rolled
//!   when a frame does not fit. The first frame of each segment repeats the vote,
//!   committed and purge state as the frames before it left them, so once every entry of
//!   the oldest segments is purged, and the purge is durable, they are deleted whole
//!   (oldest first, never one after a segment that must stay: a later segment may hold
//!   the truncation that keeps an older one's entries from coming back).
//! - **Truncation, purge and the committed mark** are items like the others: the state in
//!   memory changes at once, the file with the next sync. Nobody waits for them, so they
//!   do not wake the writer: they ride with the next append or vote (Raft saves the
//!   committed mark at every commit, and a sync of its own each time would double the
//!   syncs per write), or go in a frame of their own once the oldest has waited
//!   `marker_delay` (20 ms), so an idle log records them too (an idle writer looks
//!   every `marker_delay` whether one has come). Replay applies items in
//!   order, so the log after a restart is the log as the last durable frame left it.
//! - **A sync error is permanent**: after a failed `fdatasync` the kernel may have dropped
//!   the dirty pages, so every later write fails too and the node must restart (and
//!   recover from what is really on disk).
//!
//! The file layer is a trait ([`fs::Storage`]) so that tests can crash a simulated disk
//! that keeps only what was synced.

pub mod frame;
pub mod fs;
pub mod recover;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::{Condvar, Mutex};

use self::frame::Item;
use self::fs::{SegmentFile, Storage};
pub use self::recover::Recovery;

/// Called once the items queued with it are durable (or could not be made so).
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Settings of a [`Wal`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Bytes preallocated per segment (a frame larger than this gets a segment its size).
    pub segment_size: u64,
    /// Bytes of written entries kept in memory for reads (entries not yet written are
    /// always in memory).
    pub cache_bytes: usize,
    /// How long a mark that nobody waits for (committed, truncate, purge) may wait for the
    /// next sync before it is written on its own.
    pub marker_delay: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            segment_size: 16 << 20,
            cache_bytes: 64 << 20,
            marker_delay: std::time::Duration::from_millis(20),
        }
    }
}

/// Why the log cannot open or go on.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file could not be read, written or synced.
    #[error("{what} {file}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        file: String,
        /// The error.
        source: io::Error,
    },
    /// A frame before the last one is damaged: acknowledged writes would be lost by
    /// reading past it, so the log refuses to open.
    #[error(
        "the Raft log is damaged at byte {offset} of {file}: {reason}; valid frames follow, \
         so this is not a torn write at the tail (restore the node from a backup, or remove \
         its data and let it rejoin)"
    )]
    Damaged {
        /// The segment file.
        file: String,
        /// Where the damaged frame starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<WalError> for io::Error {
    fn from(e: WalError) -> Self {
        match e {
            WalError::Io { source, .. } => source,
            damaged @ WalError::Damaged { .. } => {
                io::Error::new(io::ErrorKind::InvalidData, damaged.to_string())
            }
        }
    }
}

/// Where an entry's record is.
#[derive(Debug, Clone)]
enum Slot {
    /// Queued, not yet written.
    Pending(Arc<[u8]>),
    /// In segment `seg` at byte `at`, `len` bytes; with the bytes while cached.
    Disk {
        seg: u64,
        at: u64,
        len: u32,
        cached: Option<Arc<[u8]>>,
    },
}

/// Where [`Wal::read`] found a record: in memory, or in a file at (offset, length).
enum Found<F> {
    Bytes(Arc<[u8]>),
    File(Arc<F>, u64, u32),
}

/// One segment file.
struct Segment<F> {
    name: String,
    file: Arc<F>,
    /// The highest entry index written to it (0: none).
    max_index: u64,
}

/// What the log holds, in memory.
struct State<F> {
    segments: BTreeMap<u64, Segment<F>>,
    entries: BTreeMap<u64, Slot>,
    /// Written entries whose bytes are cached, oldest first (an index may repeat after a
    /// truncation; only the slot holding the same bytes is uncached when it leaves).
    cached: VecDeque<(u64, Arc<[u8]>)>,
    cached_bytes: usize,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
    /// The segment written to, and where its next frame goes.
    tail: (u64, u64),
    /// The vote, committed and purge state as the frames written so far leave it: what
    /// the first frame of a new segment restates (the state above may already hold
    /// changes still queued behind the frame being written).
    written: Markers,
    /// Set after a failed write or sync: every later request fails with it.
    failed: Option<String>,
}

impl<F> State<F> {
    fn remove_from(&mut self, from: u64) {
        let _ = self.entries.split_off(&from);
    }

    fn remove_upto(&mut self, upto: u64) {
        let kept = self.entries.split_off(&upto.saturating_add(1));
        self.entries = kept;
    }

    /// Apply an item other than an entry (entries are placed by the caller, which knows
    /// where their bytes are).
    fn apply_marker(&mut self, item: &Item) {
        match item {
            Item::Entry(..) => {}
            Item::Truncate(from) => self.remove_from(*from),
            Item::Purge(upto, record) => {
                self.remove_upto(*upto);
                self.purged = Some((*upto, record.clone()));
            }
            Item::Vote(record) => self.vote = Some(record.clone()),
            Item::Committed(record) => {
                self.committed = (!record.is_empty()).then(|| record.clone());
            }
        }
    }
}

/// The vote, committed and purge records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Markers {
    /// The vote's record.
    pub vote: Option<Vec<u8>>,
    /// The committed log id's record.
    pub committed: Option<Vec<u8>>,
    /// The last purged index and the purged log id's record.
    pub purged: Option<(u64, Vec<u8>)>,
}

impl Markers {
    /// Follow the markers among `items`.
    fn follow(&mut self, items: &[Item]) {
        for item in items {
            match item {
                Item::Vote(record) => self.vote = Some(record.clone()),
                Item::Committed(record) => {
                    self.committed = (!record.is_empty()).then(|| record.clone());
                }
                Item::Purge(upto, record) => self.purged = Some((*upto, record.clone())),
                Item::Entry(..) | Item::Truncate(_) => {}
            }
        }
    }

    /// The items that restate them, for the first frame of a segment.
    fn restated(&self) -> Vec<Item> {
        let mut items = Vec::new();
        if let Some(vote) = &self.vote {
            items.push(Item::Vote(vote.clone()));
        }
        if let Some(committed) = &self.committed {
            items.push(Item::Committed(committed.clone()));
        }
        if let Some((upto, record)) = &self.purged {
            items.push(Item::Purge(*upto, record.clone()));
        }
        items
    }
}

#[derive(Default)]
struct Queue {
    items: Vec<Item>,
    done: Vec<Done>,
    stop: bool,
    /// When the oldest queued item was queued.
    since: Option<std::time::Instant>,
}

/// Counters of the writer.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames written (each one sync).
    pub syncs: AtomicU64,
    /// Requests completed by those syncs (appends, votes and explicit flushes).
    pub requests: AtomicU64,
    /// Time spent writing and syncing frames, in microseconds.
    pub sync_micros: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Segments deleted after a purge.
    pub segments_deleted: AtomicU64,
}

struct Shared<S: Storage> {
    storage: S,
    options: Options,
    state: Mutex<State<S::File>>,
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Stats,
}

/// The write-ahead log. Cheap to clone; the writer thread stops, after writing what is
/// queued, when the last clone is dropped or on [`Wal::close`].
pub struct Wal<S: Storage> {
    shared: Arc<Shared<S>>,
    handle: Arc<Writer>,
}

impl<S: Storage> Clone for Wal<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            handle: self.handle.clone(),
        }
    }
}

/// The writer thread, stopped when dropped.
struct Writer {
    stop: Box<dyn Fn() + Send + Sync>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    fn close(&self) {
        (self.stop)();
        if let Some(thread) = self.thread.lock().take() {
            // The last handle may be dropped by a callback on the writer thread itself,
            // which then stops on its own once its queue is empty.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

/// The name of segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("wal-{seq:020}.seg")
}

impl<S: Storage> Wal<S> {
    /// Open the log in `storage`, replaying every segment (a torn frame at the tail is cut
    /// off and reported; damage before it is an error), and start the writer.
    pub fn open(storage: S, options: Options) -> Result<(Self, Recovery), WalError> {
        let (state, recovery) = recover::recover(&storage)?;
        let shared = Arc::new(Shared {
            storage,
            options,
            state: Mutex::new(state),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats: Stats::default(),
        });
        let worker = shared.clone();
        let writer = std::thread::Builder::new()
            .name("affinity-wal".into())
            .spawn(move || writer::write_loop(&worker))
            .map_err(|source| WalError::Io {
                what: "start the writer of",
                file: "the Raft log".into(),
                source,
            })?;
        let stopper = Arc::downgrade(&shared);
        let stop = Box::new(move || {
            if let Some(shared) = stopper.upgrade() {
                shared.queue.lock().stop = true;
                shared.wake.notify_one();
            }
        });
        Ok((
            Self {
                shared,
                handle: Arc::new(Writer {
                    stop,
                    thread: Mutex::new(Some(writer)),
                }),
            },
            recovery,
        ))
    }

    /// Queue `items` and `done` for the writer; once it has stopped, `done` is handed back,
    /// for the caller to fail once it holds no lock.
    #[must_use]
    fn queue(&self, items: Vec<Item>, done: Option<Done>) -> Option<Done> {
        let mut q = self.shared.queue.lock();
        if q.stop {
            return done;
        }
        if !items.is_empty() && q.since.is_none() {
            q.since = Some(std::time::Instant::now());
        }
        q.items.extend(items);
        if let Some(done) = done {
            q.done.push(done);
            self.shared.wake.notify_one();
        }
        None
    }

    fn refuse(rejected: Option<Done>) {
        if let Some(done) = rejected {
            done(Err(io::Error::other("the Raft log is closed")));
        }
    }

    /// Append entries (index, record), in index order; an entry replaces any at or after
    /// its index. `done` runs once they are durable.
    pub fn append(&self, entries: Vec<(u64, Arc<[u8]>)>, done: Done) {
        let mut state = self.shared.state.lock();
        if let Some(failed) = state.failed.clone() {
            // Called without the lock held: `done` may take locks of its own.
            drop(state);
            done(Err(io::Error::other(failed)));
            return;
        }
        let mut items = Vec::with_capacity(entries.len());
        for (index, record) in entries {
            state.remove_from(index);
            state.entries.insert(index, Slot::Pending(record.clone()));
            items.push(Item::Entry(index, record));
        }
        // Queued under the state lock, so the file's order is the order of the changes.
        let rejected = self.queue(items, Some(done));
        drop(state);
        Self::refuse(rejected);
    }

    /// Remove the entries from `from` on.
    pub fn truncate(&self, from: u64) {
        let mut state = self.shared.state.lock();
        state.remove_from(from);
        let _ = self.queue(vec![Item::Truncate(from)], None);
    }

    /// Forget the entries up to `upto` (with the purged log id's record); their segments
    /// are deleted once the purge is durable.
    pub fn purge(&self, upto: u64, record: Vec<u8>) {
        let mut state = self.shared.state.lock();
        state.remove_upto(upto);
        state.purged = Some((upto, record.clone()));
        let _ = self.queue(vec![Item::Purge(upto, record)], None);
    }

    /// Save the vote; `done` runs once it is durable.
    pub fn save_vote(&self, record: Vec<u8>, done: Done) {
        let mut state = self.shared.state.lock();
        state.vote = Some(record.clone());
        let rejected = self.queue(vec![Item::Vote(record)], Some(done));
        drop(state);
        Self::refuse(rejected);
    }

    /// Save the committed log id (empty: none); durable with the next sync.
    pub fn save_committed(&self, record: Vec<u8>) {
        let mut state = self.shared.state.lock();
        state.committed = (!record.is_empty()).then(|| record.clone());
        let _ = self.queue(vec![Item::Committed(record)], None);
    }

    /// `done` runs once everything queued before it is durable.
    pub fn flush(&self, done: Done) {
        let state = self.shared.state.lock();
        let rejected = self.queue(Vec::new(), Some(done));
        drop(state);
        Self::refuse(rejected);
    }

    /// The vote, committed log id and purged (index, log id) records.
    pub fn markers(&self) -> Markers {
        let state = self.shared.state.lock();
        Markers {
            vote: state.vote.clone(),
            committed: state.committed.clone(),
            purged: state.purged.clone(),
        }
    }

    /// The first and last entry index held.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let state = self.shared.state.lock();
        let first = *state.entries.keys().next()?;
        let last = *state.entries.keys().next_back()?;
        Some((first, last))
    }

    /// The records of the entries in `range`, in index order.
    pub fn read(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<(u64, Arc<[u8]>)>> {
        use std::ops::Bound;
        // An empty or inverted range holds nothing (and must not reach BTreeMap::range,
        // which panics on one).
        let first = match range.start_bound() {
            Bound::Included(i) => Some(*i),
            Bound::Excluded(i) => i.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let last = match range.end_bound() {
            Bound::Included(i) => Some(*i),
            Bound::Excluded(i) => i.checked_sub(1),
            Bound::Unbounded => Some(u64::MAX),
        };
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(Vec::new());
        };
        if first > last {
            return Ok(Vec::new());
        }
        let range = first..=last;
        let found: Vec<(u64, Found<S::File>)> = {
            let state = self.shared.state.lock();
            let mut found = Vec::new();
            for (index, slot) in state.entries.range(range) {
                let item =
                    match slot {
                        Slot::Pending(bytes)
                        | Slot::Disk {
                            cached: Some(bytes),
                            ..
                        } => Found::Bytes(bytes.clone()),
                        Slot::Disk { seg, at, len, .. } => {
                            let file = state.segments.get(seg).map(|s| s.file.clone()).ok_or_else(
                                || {
                                    io::Error::other(format!(
                                        "entry {index}: its segment {seg} is gone"
                                    ))
                                },
                            )?;
                            Found::File(file, *at, *len)
                        }
                    };
                found.push((*index, item));
            }
            found
        };
        found
            .into_iter()
            .map(|(index, item)| match item {
                Found::Bytes(bytes) => Ok((index, bytes)),
                Found::File(file, at, len) => {
                    let mut buf = vec![0u8; len as usize];
                    file.read_at(&mut buf, at)?;
                    Ok((index, Arc::from(buf)))
                }
            })
            .collect()
    }

    /// The writer's counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Segment files in use.
    pub fn segments(&self) -> usize {
        self.shared.state.lock().segments.len()
    }

    /// Why the log stopped taking writes, once it has.
    pub fn failed(&self) -> Option<String> {
        self.shared.state.lock().failed.clone()
    }

    /// Stop the writer once everything queued is written.
    pub fn close(&self) {
        self.handle.close();
    }
}
