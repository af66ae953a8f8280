//! Durable storage of one node: the Raft log and vote in sled, snapshots in files.
//!
//! ```text
//! <data-dir>/
//!   raft/          sled database: trees `log` (entries) and `meta` (store info, vote,
//!                  commit and purge points, current-snapshot pointer)
//!   snapshots/     the current snapshot file (and nothing else once a node is idle)
//! ```
//!
//! [`open`] creates a fresh directory or opens an existing one after checking its data
//! version (written once, checked every time: an unknown version is refused with a clear
//! error). It returns the openraft log store and state machine. [`export::export`] turns a
//! stopped node's directory into a snapshot file, for disaster recovery.
//!
//! This layer knows the state machine and sled; it knows nothing of gRPC.

pub mod changes;
pub mod durable;
pub mod export;
pub mod log;
pub mod snapshots;
pub mod state;

use std::io;
use std::path::{Path, PathBuf};

use affinity_proto::pb;
use prost::Message;

pub use changes::{Change, Changes, Subscription};
pub use durable::{FlushStats, Flusher, SyncMode};
pub use log::LogStore;
pub use snapshots::{SnapshotData, SnapshotStore};
pub use state::StateMachineStore;

/// Layout version of a data directory written by this build.
pub const DATA_VERSION: u32 = 1;

/// Keys of the `meta` tree.
pub(crate) mod keys {
    /// `StoreInfo`: data version and creation details.
    pub const STORE_INFO: &[u8] = b"store_info";
    /// `Vote`: the last vote this node saved.
    pub const VOTE: &[u8] = b"vote";
    /// `LogId`: the last committed entry this node knows of (advisory).
    pub const COMMITTED: &[u8] = b"committed";
    /// `LogId`: entries up to here have been purged.
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
    /// (sled drops everything after a corrupted record) or replaced.
    #[error(
        "data directory {dir}: the Raft log (raft/db) ends at entry {last}, but this node had applied and synced entries up to {marked} from it (recorded in {APPLIED_MARK}); the log file is damaged or was replaced, so this node refuses to start rather than serve without acknowledged writes. Move the data directory aside and let the node rejoin its cluster (docs/operations.md), or restore a backup"
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
        "data directory {dir} has data version {found}; this build reads version {DATA_VERSION} only"
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
    /// Durability of acknowledged writes.
    pub sync: SyncMode,
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
            sync: SyncMode::Fsync,
            cache_capacity_bytes: 64 * 1024 * 1024,
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
    let fresh = !dir.join("raft").exists();
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let raft_dir = dir.join("raft");
    let db = sled::Config::new()
        .path(&raft_dir)
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
            other => io_err(io::Error::from(other)),
        })?;
    let sled_io = |e: sled::Error| io_err(io::Error::from(e));
    let log_tree = db.open_tree("log").map_err(sled_io)?;
    let meta_tree = db.open_tree("meta").map_err(sled_io)?;

    check_version(dir, &log_tree, &meta_tree)?;

    let flusher = Flusher::start(db.clone(), &raft_dir, options.sync).map_err(io_err)?;
    if fresh {
        // The version record and the new files' directory entries must survive a crash.
        db.flush().map_err(sled_io)?;
        durable::sync_dir(&raft_dir).map_err(io_err)?;
        durable::sync_dir(dir).map_err(io_err)?;
    }

    let log = LogStore::new(log_tree, meta_tree.clone(), flusher.clone());
    log.finish_interrupted_purge().map_err(io_err)?;
    if let Some(marked) = read_applied_mark(dir).map_err(io_err)? {
        let last = log.last_index().map_err(io_err)?;
        if last < marked {
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

fn check_version(dir: &Path, log: &sled::Tree, meta: &sled::Tree) -> Result<(), StoreError> {
    let io_err = |source: io::Error| StoreError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    match meta.get(keys::STORE_INFO).map_err(|e| io_err(e.into()))? {
        Some(bytes) => {
            let info = pb::StoreInfo::decode(bytes.as_ref()).map_err(|e| {
                io_err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("store_info record does not decode: {e}"),
                ))
            })?;
            if info.data_version != DATA_VERSION {
                return Err(StoreError::UnsupportedVersion {
                    dir: dir.to_path_buf(),
                    found: info.data_version,
                });
            }
            Ok(())
        }
        None if log.is_empty() && meta.is_empty() => {
            let info = pb::StoreInfo {
                data_version: DATA_VERSION,
                created_by: format!("affinityd {}", env!("CARGO_PKG_VERSION")),
                created_at_ms: crate::clock::now_ms(),
            };
            meta.insert(keys::STORE_INFO, info.encode_to_vec())
                .map_err(|e| io_err(e.into()))?;
            Ok(())
        }
        None => Err(StoreError::Foreign {
            dir: dir.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests;
