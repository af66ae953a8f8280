//! Durable sled: one thread makes the node's metadata writes (the store info and the
//! current-snapshot pointer) durable and tells every waiter at once. The Raft log itself is
//! in the write-ahead log ([`crate::wal`]); sled holds only these small, rarely written
//! records.
//!
//! sled 0.34's `flush()` writes its buffers and calls `sync_file_range` on Linux (sled issue
//! #1452): the data reaches the device queue but neither the file's metadata nor the
//! device's volatile cache is flushed, so a power loss can still lose it. After each
//! `flush()` this module therefore calls `fdatasync` on sled's data file, and on any blob
//! file sled wrote since the last sync (sled stores large items as separate files and never
//! syncs them). Only then are the waiters told.
//!
//! A failed sync is permanent: after an `fsync` error the kernel may have dropped the dirty
//! pages, so a later "successful" sync proves nothing. Every later request fails too and
//! the node must be restarted.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use parking_lot::Mutex;

/// Counters of the flush thread.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Syncs performed.
    pub syncs: AtomicU64,
    /// Requests completed.
    pub requests: AtomicU64,
    /// Total time spent syncing, in microseconds.
    pub sync_micros: AtomicU64,
}

enum Job {
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
    pub fn start(db: sled::Db, dir: &Path) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let stats = Arc::new(FlushStats::default());
        let mut durable = Durable::new(db, dir)?;
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
                        if let Err(e) = durable.sync() {
                            tracing::error!(error = %e, "making the node's metadata durable failed; refusing all further writes");
                            failed = Some((e.kind(), e.to_string()));
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
                                format!("an earlier sync of the node's metadata failed: {msg}"),
                            )),
                        };
                        match job {
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

    /// Wait until everything written so far is durable.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Wait(tx))
            .map_err(|_| io::Error::other("the flush thread has stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("the flush thread stopped before syncing"))?
    }

    /// Counters of the flush thread.
    pub fn stats(&self) -> &FlushStats {
        &self.stats
    }
}

/// sled plus the file handles needed to really sync it.
struct Durable {
    db: sled::Db,
    db_file: File,
    blobs_dir: PathBuf,
    synced_blobs: HashSet<std::ffi::OsString>,
}

impl Durable {
    fn new(db: sled::Db, dir: &Path) -> io::Result<Self> {
        let db_file = File::open(dir.join("db"))?;
        Ok(Self {
            db,
            db_file,
            blobs_dir: dir.join("blobs"),
            synced_blobs: HashSet::new(),
        })
    }

    /// Make everything written so far durable.
    fn sync(&mut self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::from)?;
        self.db_file.sync_data()?;
        self.sync_new_blobs()
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
