//! Durable storage of one node: the Raft log in a write-ahead log, the node's metadata in
//! sled, snapshots in files.
//!
//! ```text
//! <data-dir>/
//!   wal/           the Raft log: entries, vote, commit and purge points (crate::wal)
//!   raft/          sled database: tree `meta` (store info, current-snapshot pointer)
//!   snapshots/     the current snapshot file (and nothing else once a node is idle)
//!   applied-index  how far the log is known to reach (see APPLIED_MARK)
//! ```
//!
//! [`open`] creates a fresh directory or opens an existing one after checking its data
//! version (written once, checked every time: an unknown version is refused with a clear
//! error; version 1, which kept the log in sled, is converted in place by [`upgrade`]). It
//! returns the openraft log store and state machine. [`export::export`] turns a stopped
//! node's directory into a snapshot file, for disaster recovery.
//!
//! This layer knows the state machine, the log and sled; it knows nothing of gRPC.

pub mod changes;
pub mod durable;
pub mod export;
pub mod log;
pub mod snapshots;
pub mod state;
pub mod upgrade;

use std::io;
use std::path::{Path, PathBuf};

use affinity_proto::pb;
use prost::Message;

pub use changes::{Change, Changes, Subscription};
pub use durable::{FlushStats, Flusher};
pub use log::LogStore;
pub use snapshots::{SnapshotData, SnapshotStore};
pub use state::StateMachineStore;

/// Layout version of a data directory written by this build: 2, the Raft log in `wal/`.
/// (Version 1 kept it in sled's `log` and `meta` trees; [`upgrade`] converts it.)
pub const DATA_VERSION: u32 = 2;

/// The folder of the Raft log, in the data directory.
pub const WAL_DIR: &str = "wal";

/// Keys of the `meta` tree.
pub(crate) mod keys {
    /// `StoreInfo`: data version and creation details.
    pub const STORE_INFO: &[u8] = b"store_info";
    /// `Vote`: the last vote this node saved (data version 1 only).
    pub const VOTE: &[u8] = b"vote";
    /// `LogId`: the last committed entry this node knows of (data version 1 only).
    pub const COMMITTED: &[u8] = b"committed";
    /// `LogId`: entries up to here have been purged (data version 1 only).
    pub const LAST_PURGED: &[u8] = b"last_purged";
    /// `SnapshotPointer`: the current snapshot file.
    pub const SNAPSHOT: &[u8] = b"snapshot";
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system or sled error.
    #[error("data directory {dir}: {source}")]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The Raft log cannot be opened: it is damaged, or a file of it cannot be read.
    #[error("data directory {dir}: {source}")]
    Log {
        /// The data directory.
        dir: PathBuf,
        /// What is wrong with the log.
        source: crate::wal::WalError,
    },
    /// Another process has the directory open.
    #[error("data directory {dir} is in use by another process (sled lock held): {detail}")]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// sled's message.
        detail: String,
    },
    /// The directory holds data but no affinity version record.
    #[error(
        "data directory {dir} holds data that affinity did not write (no store_info record); refusing to use it"
    )]
    Foreign {
        /// The data directory.
        dir: PathBuf,
    },
    /// The Raft log ends before entries this node had applied from it: the log was damaged
    /// or replaced.
    #[error(
        "data directory {dir}: the Raft log ({WAL_DIR}/) ends at entry {last}, but this node had applied and synced entries up to {marked} from it (recorded in {APPLIED_MARK}); the log file is damaged or was replaced, so this node refuses to start rather than serve without acknowledged writes. Move the data directory aside and let the node rejoin its cluster (docs/operations.md), or restore a backup"
    )]
    LogBehind {
        /// The data directory.
        dir: PathBuf,
        /// The last index the log holds (or was purged up to).
        last: u64,
        /// The applied index recorded before.
        marked: u64,
    },
    /// Written by a build with another layout version.
    #[error(
        "data directory {dir} has data version {found}; this build reads versions 1 (converted in place) and {DATA_VERSION}: it was written by a newer release, so run that release or restore a backup"
    )]
    UnsupportedVersion {
        /// The data directory.
        dir: PathBuf,
        /// Version found on disk.
        found: u32,
    },
}

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Bytes preallocated per Raft log segment.
    pub log_segment_bytes: u64,
    /// Bytes of recent Raft log entries kept in memory for reads.
    pub log_cache_bytes: usize,
    /// sled page cache, in bytes.
    pub cache_capacity_bytes: u64,
    /// Applied changes a `Watch` subscriber may fall behind before its stream is ended.
    pub watch_buffer: usize,
    /// Recent events kept so that a broken `Watch` can resume from its last revision.
    pub watch_history: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            log_segment_bytes: crate::wal::Options::default().segment_size,
            log_cache_bytes: crate::wal::Options::default().cache_bytes,
            cache_capacity_bytes: 8 * 1024 * 1024,
            watch_buffer: 16 * 1024,
            watch_history: 64 * 1024,
        }
    }
}

/// An opened data directory.
pub struct Storage {
    /// Raft log and vote.
    pub log: LogStore,
    /// Replicated state and snapshots.
    pub state: StateMachineStore,
    /// Group-commit thread (its counters show how many writes share a sync).
    pub flusher: Flusher,
}

impl Storage {
    /// Close the directory: drop this handle's stores, sync what is pending and stop the
    /// flush thread. The directory can be opened again once every other clone of the
    /// stores (for example those owned by a stopped Raft instance) is dropped too.
    pub fn close(self) {
        let Storage {
            log,
            state,
            flusher,
        } = self;
        log.close();
        drop(log);
        drop(state);
        flusher.close();
    }
}

/// Open (or create) the data directory `dir`.
pub fn open(dir: &Path, options: &StoreOptions) -> Result<Storage, StoreError> {
    let io_err = |source: io::Error| StoreError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let raft_dir = dir.join("raft");
    let db = open_sled(dir, options)?;
    let sled_io = |e: sled::Error| io_err(io::Error::from(e));
    let meta_tree = db.open_tree("meta").map_err(sled_io)?;

    let flusher = Flusher::start(db.clone(), &raft_dir).map_err(io_err)?;
    match check_version(dir, &db, &meta_tree)? {
        // Leftovers of an upgrade that stopped after its last essential step.
        Found::Current => {
            upgrade::drop_version1_log(&db, &meta_tree, &flusher).map_err(io_err)?;
        }
        Found::New => {
            // The version record and the new files' directory entries must survive a crash.
            futures::executor::block_on(flusher.sync()).map_err(io_err)?;
            durable::sync_dir(&raft_dir).map_err(io_err)?;
            durable::sync_dir(dir).map_err(io_err)?;
        }
        Found::Version1 => upgrade::from_v1(dir, &db, &meta_tree, &flusher, options)?,
    }

    let wal_options = crate::wal::Options {
        segment_size: options.log_segment_bytes,
        cache_bytes: options.log_cache_bytes,
        ..Default::default()
    };
    let new_log = !dir.join(WAL_DIR).exists();
    let (log, recovery) =
        LogStore::open(&dir.join(WAL_DIR), wal_options).map_err(|source| StoreError::Log {
            dir: dir.to_path_buf(),
            source,
        })?;
    if new_log {
        // The log's folder must survive a crash before anything in it (the vote) counts.
        durable::sync_dir(dir).map_err(io_err)?;
    }
    tracing::info!(
        segments = recovery.segments,
        entries = recovery.entries,
        frames = recovery.frames,
        took_ms = u64::try_from(recovery.took.as_millis()).unwrap_or(u64::MAX),
        "opened the Raft log"
    );
    if let Some(marked) = read_applied_mark(dir).map_err(io_err)? {
        let last = log.last_index().map_err(io_err)?;
        if last < marked {
            log.close();
            return Err(StoreError::LogBehind {
                dir: dir.to_path_buf(),
                last,
                marked,
            });
        }
    }
    let snapshots =
        SnapshotStore::open(dir.join("snapshots"), meta_tree, flusher.clone()).map_err(io_err)?;
    let state = StateMachineStore::new(
        snapshots,
        Changes::new(options.watch_buffer, options.watch_history),
    );
    Ok(Storage {
        log,
        state,
        flusher,
    })
}

fn open_sled(dir: &Path, options: &StoreOptions) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(dir.join("raft"))
        .cache_capacity(options.cache_capacity_bytes)
        .flush_every_ms(None)
        .open()
        .map_err(|e| match e {
            sled::Error::Io(io)
                if io.kind() == io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
            {
                StoreError::Locked {
                    dir: dir.to_path_buf(),
                    detail: io.to_string(),
                }
            }
            other => StoreError::Io {
                dir: dir.to_path_buf(),
                source: io::Error::from(other),
            },
        })
}

/// Check the Raft log of the stopped node's data directory `dir` without changing
/// anything: what opening it would find, or why it would refuse to start.
pub fn check_log(dir: &Path) -> Result<crate::wal::Recovery, StoreError> {
    let wal_dir = dir.join(WAL_DIR);
    if !wal_dir.exists() {
        return Err(StoreError::Io {
            dir: dir.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no Raft log at {} (data version 1, or not a data directory)",
                    wal_dir.display()
                ),
            ),
        });
    }
    let storage = crate::wal::fs::Dir::new(&wal_dir).map_err(|source| StoreError::Io {
        dir: dir.to_path_buf(),
        source,
    })?;
    crate::wal::recover::inspect(&storage).map_err(|source| StoreError::Log {
        dir: dir.to_path_buf(),
        source,
    })
}

/// The file, in the data directory, recording an index this node had applied (and so had on
/// disk): the log must reach at least that far when the node starts.
pub const APPLIED_MARK: &str = "applied-index";

/// The applied index recorded in `dir`, if any.
pub fn read_applied_mark(dir: &Path) -> io::Result<Option<u64>> {
    match std::fs::read_to_string(dir.join(APPLIED_MARK)) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{APPLIED_MARK} holds {text:?}, not a log index"),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Record `index` in `dir`, atomically and durably (write, sync, rename).
pub fn write_applied_mark(dir: &Path, index: u64) -> io::Result<()> {
    let temp = dir.join(format!("{APPLIED_MARK}.tmp"));
    {
        let mut file = std::fs::File::create(&temp)?;
        io::Write::write_all(&mut file, format!("{index}\n").as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, dir.join(APPLIED_MARK))?;
    durable::sync_dir(dir)
}

/// What the version record says.
enum Found {
    /// This build's layout.
    Current,
    /// A fresh directory, now given a version record.
    New,
    /// Data version 1: the log in sled, to convert.
    Version1,
}

fn check_version(dir: &Path, db: &sled::Db, meta: &sled::Tree) -> Result<Found, StoreError> {
    let io_err = |source: io::Error| StoreError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    if let Some(bytes) = meta.get(keys::STORE_INFO).map_err(|e| io_err(e.into()))? {
        let info = pb::StoreInfo::decode(bytes.as_ref()).map_err(|e| {
            io_err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("store_info record does not decode: {e}"),
            ))
        })?;
        return match info.data_version {
            DATA_VERSION => Ok(Found::Current),
            1 => Ok(Found::Version1),
            found => Err(StoreError::UnsupportedVersion {
                dir: dir.to_path_buf(),
                found,
            }),
        };
    }
    let log_empty = !db.tree_names().iter().any(|name| name.as_ref() == b"log")
        || db
            .open_tree("log")
            .map_err(|e| io_err(e.into()))?
            .is_empty();
    if !(log_empty && meta.is_empty() && !dir.join(WAL_DIR).exists()) {
        return Err(StoreError::Foreign {
            dir: dir.to_path_buf(),
        });
    }
    meta.insert(keys::STORE_INFO, store_info().encode_to_vec())
        .map_err(|e| io_err(e.into()))?;
    Ok(Found::New)
}

/// The version record this build writes.
pub(crate) fn store_info() -> pb::StoreInfo {
    pb::StoreInfo {
        data_version: DATA_VERSION,
        created_by: format!("affinityd {}", env!("CARGO_PKG_VERSION")),
        created_at_ms: crate::clock::now_ms(),
    }
}

#[cfg(test)]
mod tests;
