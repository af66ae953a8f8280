//! Group commit: one thread makes sled's writes durable and tells every waiter at once.
//!
//! sled 0.34's `flush()` writes its buffers and calls `sync_file_range` on Linux (sled issue
//! #1452): the data reaches the device queue but neither the file's metadata nor the
//! device's volatile cache is flushed, so a power loss can still lose it. After each
//! `flush()` this module therefore calls `fdatasync` on sled's data file, and on any blob
//! file sled wrote since the last sync (sled stores large items as separate files and never
//! syncs them). Only then are the waiting appends acknowledged.
//!
//! Appends do not wait for each other: each queues its callback and returns; the thread
//! takes everything queued, syncs once, and completes the whole batch. Under load many
//! appends share one sync.
//!
//! A failed sync is permanent: after an `fsync` error the kernel may have dropped the dirty
//! pages, so a later "successful" sync proves nothing. Every later request fails too and
//! the node must be restarted (Raft then recovers from what is really on disk).

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use openraft::storage::IOFlushed;
use parking_lot::Mutex;

use crate::raft::TypeConfig;

/// How far a write must get before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// sled flush, then `fdatasync` of its files: survives power loss. The default.
    #[default]
    Fsync,
    /// sled flush only (`sync_file_range`): survives a killed process, not always a power
    /// loss. Only for measuring what the full sync costs.
    SledFlushOnly,
}

/// Counters of the flush thread.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Syncs performed.
    pub syncs: AtomicU64,
    /// Requests completed (appends and explicit waits).
    pub requests: AtomicU64,
    /// Total time spent syncing, in microseconds.
    pub sync_micros: AtomicU64,
    /// The highest log index known to be on disk: the last entry present when the latest
    /// successful sync began, lowered when the log is truncated below it (entries written
    /// again at those indexes are on disk only once a later sync covers them).
    pub durable_index: AtomicU64,
    /// Truncations so far; a sync that saw one happen while it ran does not raise
    /// `durable_index` (the entries it covered may be gone).
    truncations: Mutex<u64>,
}

enum Job {
    Append(IOFlushed<TypeConfig>),
    Wait(tokio::sync::oneshot::Sender<io::Result<()>>),
    Stop,
}

/// Handle to the flush thread. Cheap to clone; the thread ends on [`Flusher::close`] or when
/// the last handle is gone.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<Job>,
    stats: Arc<FlushStats>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Flusher {
    /// Start the flush thread for `db`, whose files live in `dir`.
    pub fn start(db: sled::Db, dir: &Path, mode: SyncMode) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let stats = Arc::new(FlushStats::default());
        let mut durable = Durable::new(db, dir, mode)?;
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("affinity-flush".into())
            .spawn(move || {
                let mut failed: Option<(io::ErrorKind, String)> = None;
                let mut stopping = false;
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    if failed.is_none() {
                        let started = Instant::now();
                        let truncations = *thread_stats.truncations.lock();
                        match durable.sync() {
                            Ok(Some(index)) => {
                                let now = thread_stats.truncations.lock();
                                if *now == truncations {
                                    thread_stats.durable_index.fetch_max(index, Ordering::Relaxed);
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::error!(error = %e, "making the log durable failed; refusing all further writes");
                                failed = Some((e.kind(), e.to_string()));
                            }
                        }
                        thread_stats.syncs.fetch_add(1, Ordering::Relaxed);
                        thread_stats.sync_micros.fetch_add(
                            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                            Ordering::Relaxed,
                        );
                    }
                    thread_stats
                        .requests
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for job in batch {
                        let result = match &failed {
                            None => Ok(()),
                            Some((kind, msg)) => Err(io::Error::new(
                                *kind,
                                format!("an earlier sync of the log failed: {msg}"),
                            )),
                        };
                        match job {
                            Job::Append(callback) => callback.io_completed(result),
                            Job::Wait(tx) => {
                                let _ = tx.send(result);
                            }
                            Job::Stop => stopping = true,
                        }
                    }
                    if stopping {
                        break;
                    }
                }
            })?;
        Ok(Self {
            tx,
            stats,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Sync what is pending, stop the thread and wait for it, so that its handle on the
    /// database is released. Later requests fail with "the flush thread has stopped".
    pub fn close(&self) {
        let Some(thread) = self.thread.lock().take() else {
            return;
        };
        if self.tx.send(Job::Stop).is_ok() && thread.join().is_err() {
            tracing::error!("the flush thread panicked");
        }
    }

    /// Complete `callback` once everything written so far is durable.
    pub fn after_sync(&self, callback: IOFlushed<TypeConfig>) -> io::Result<()> {
        self.tx
            .send(Job::Append(callback))
            .map_err(|_| io::Error::other("the flush thread has stopped"))
    }

    /// Wait until everything written so far is durable.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Wait(tx))
            .map_err(|_| io::Error::other("the flush thread has stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("the flush thread stopped before syncing"))?
    }

    /// The log was truncated after `last_kept`: entries above it that were durable are gone,
    /// and what is written there next is durable only after a later sync.
    pub fn truncated(&self, last_kept: u64) {
        let mut truncations = self.stats.truncations.lock();
        *truncations += 1;
        self.stats
            .durable_index
            .fetch_min(last_kept, Ordering::Relaxed);
    }

    /// Counters of the flush thread.
    pub fn stats(&self) -> &FlushStats {
        &self.stats
    }
}

/// sled plus the file handles needed to really sync it.
struct Durable {
    db: sled::Db,
    log: sled::Tree,
    db_file: File,
    blobs_dir: PathBuf,
    synced_blobs: HashSet<std::ffi::OsString>,
    mode: SyncMode,
}

impl Durable {
    fn new(db: sled::Db, dir: &Path, mode: SyncMode) -> io::Result<Self> {
        let db_file = File::open(dir.join("db"))?;
        let log = db.open_tree("log").map_err(io::Error::from)?;
        Ok(Self {
            db,
            log,
            db_file,
            blobs_dir: dir.join("blobs"),
            synced_blobs: HashSet::new(),
            mode,
        })
    }

    /// Make everything written so far durable; the last log index it covers, if any.
    fn sync(&mut self) -> io::Result<Option<u64>> {
        let last = self
            .log
            .last()
            .map_err(io::Error::from)?
            .and_then(|(key, _)| <[u8; 8]>::try_from(key.as_ref()).ok())
            .map(u64::from_be_bytes);
        self.db.flush().map_err(io::Error::from)?;
        if self.mode == SyncMode::Fsync {
            self.db_file.sync_data()?;
            self.sync_new_blobs()?;
        }
        Ok(last)
    }

    /// fsync blob files sled created since the last sync, and the blob folder.
    fn sync_new_blobs(&mut self) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::new();
        let mut synced_any = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled may remove a blob it no longer needs at any time.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                synced_any = true;
            }
            present.insert(name);
        }
        if synced_any {
            File::open(&self.blobs_dir)?.sync_all()?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}

/// fsync a directory, so that files created or renamed in it survive a power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
