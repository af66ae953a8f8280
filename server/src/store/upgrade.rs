//! Converting a data directory of data version 1 (the Raft log in sled) to version 2 (the
//! Raft log in `wal/`), in place, at the first start of a build that reads version 2.
//!
//! The steps are ordered so that a crash at any point leaves a directory that the next
//! start converts again, or has already converted:
//!
//! 1. copy every log record, the vote and the commit and purge points from sled into a new
//!    log in `wal.upgrading/` (removed first, with any `wal/`, if an earlier attempt left
//!    them: until step 3, sled's log is the log, and a version 1 build may have written to
//!    it since), and sync it, one frame of at most 4,096 entries at a time;
//! 2. rename it to `wal/` and sync the data directory;
//! 3. write the version 2 record into sled and sync: from here the directory is version 2
//!    and `wal/` is the log;
//! 4. drop sled's old `log` tree and the version 1 markers (leftovers of a crash before
//!    this are dropped at the next start).
//!
//! The records are copied unchanged (both versions store an entry the same way) and each
//! is decoded on the way, so that a record sled returns damaged stops the upgrade rather
//! than being carried over.

use std::io;
use std::path::Path;
use std::sync::Arc;

use affinity_proto::pb;
use prost::Message;

use super::durable::{Flusher, sync_dir};
use super::{StoreError, StoreOptions, WAL_DIR, keys, log};
use crate::wal::{self, Wal};

/// Where the new log is built before it is renamed into place.
pub const UPGRADING_DIR: &str = "wal.upgrading";

/// Records copied per append.
const BATCH: usize = 4096;

/// Convert `dir` from data version 1; see the module docs.
pub(super) fn from_v1(
    dir: &Path,
    db: &sled::Db,
    meta: &sled::Tree,
    flusher: &Flusher,
    options: &StoreOptions,
) -> Result<(), StoreError> {
    let io_err = |source: io::Error| StoreError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let sled_err = |e: sled::Error| io_err(io::Error::from(e));
    let log_tree = db.open_tree("log").map_err(sled_err)?;
    // While the record says version 1, sled's log is the log: a `wal/` found here was left
    // by an upgrade that stopped before recording version 2, and a version 1 build may
    // have written to sled since. So the copy is always made again from sled.
    let wal_dir = dir.join(WAL_DIR);
    if wal_dir.exists() {
        tracing::info!("an earlier upgrade stopped before it finished: copying the log again");
        std::fs::remove_dir_all(&wal_dir).map_err(io_err)?;
        sync_dir(dir).map_err(io_err)?;
    }
    let copied = copy_log(dir, &log_tree, meta, options)?;
    tracing::info!(
        entries = copied,
        "upgraded the Raft log from sled to its own log (data version 1 to 2)"
    );
    std::fs::rename(dir.join(UPGRADING_DIR), &wal_dir).map_err(io_err)?;
    sync_dir(dir).map_err(io_err)?;

    let mut info = match meta.get(keys::STORE_INFO).map_err(sled_err)? {
        Some(bytes) => {
            pb::StoreInfo::decode(bytes.as_ref()).unwrap_or_else(|_| super::store_info())
        }
        None => super::store_info(),
    };
    info.data_version = super::DATA_VERSION;
    meta.insert(keys::STORE_INFO, info.encode_to_vec())
        .map_err(sled_err)?;
    futures::executor::block_on(flusher.sync()).map_err(io_err)?;
    drop_version1_log(db, meta, flusher).map_err(io_err)
}

/// Remove what version 1 kept in sled for the log (no-op when it is gone already).
pub(super) fn drop_version1_log(
    db: &sled::Db,
    meta: &sled::Tree,
    flusher: &Flusher,
) -> io::Result<()> {
    let has_log = db.tree_names().iter().any(|name| name.as_ref() == b"log");
    let has_markers = [keys::VOTE, keys::COMMITTED, keys::LAST_PURGED]
        .iter()
        .any(|key| meta.contains_key(key).unwrap_or(true));
    if !has_log && !has_markers {
        return Ok(());
    }
    if has_log {
        db.drop_tree("log").map_err(io::Error::from)?;
    }
    for key in [keys::VOTE, keys::COMMITTED, keys::LAST_PURGED] {
        meta.remove(key).map_err(io::Error::from)?;
    }
    futures::executor::block_on(flusher.sync())
}

/// Build the new log in `wal.upgrading/` from sled's; the entries copied.
fn copy_log(
    dir: &Path,
    log_tree: &sled::Tree,
    meta: &sled::Tree,
    options: &StoreOptions,
) -> Result<u64, StoreError> {
    let io_err = |source: io::Error| StoreError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let sled_err = |e: sled::Error| io_err(io::Error::from(e));
    let building = dir.join(UPGRADING_DIR);
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(io_err)?;
    }
    let storage = wal::fs::Dir::new(&building).map_err(io_err)?;
    let wal_options = wal::Options {
        segment_size: options.log_segment_bytes,
        cache_bytes: 0,
        ..Default::default()
    };
    let log_err = |source: wal::WalError| StoreError::Log {
        dir: dir.to_path_buf(),
        source,
    };
    let (wal, _) = Wal::open(storage, wal_options).map_err(log_err)?;
    let (tx, rx) = std::sync::mpsc::channel::<io::Result<()>>();
    let waiter = |tx: &std::sync::mpsc::Sender<io::Result<()>>| -> wal::Done {
        let tx = tx.clone();
        Box::new(move |result| {
            let _ = tx.send(result);
        })
    };

    let purged = match meta.get(keys::LAST_PURGED).map_err(sled_err)? {
        Some(record) => {
            let id = pb::LogId::decode(record.as_ref()).map_err(|e| {
                io_err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the last_purged record does not decode: {e}"),
                ))
            })?;
            wal.purge(id.index, record.to_vec());
            Some(id.index)
        }
        None => None,
    };
    let mut copied = 0u64;
    let mut batches = 0usize;
    let mut batch = Vec::with_capacity(BATCH);
    for item in log_tree {
        let (key, value) = item.map_err(sled_err)?;
        let index = <[u8; 8]>::try_from(key.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| {
                io_err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a log key of {} bytes, expected 8", key.len()),
                ))
            })?;
        if purged.is_some_and(|upto| index <= upto) {
            // Left behind by a purge that a crash interrupted.
            continue;
        }
        log::decode_entry(index, &value).map_err(io_err)?;
        batch.push((index, Arc::<[u8]>::from(value.as_ref())));
        if batch.len() == BATCH {
            // One batch in flight at a time: frames stay small and memory bounded.
            wal.append(std::mem::take(&mut batch), waiter(&tx));
            rx.recv()
                .map_err(|_| io_err(io::Error::other("the new log's writer stopped")))?
                .map_err(io_err)?;
        }
        copied += 1;
    }
    if !batch.is_empty() {
        wal.append(batch, waiter(&tx));
        batches += 1;
    }
    if let Some(vote) = meta.get(keys::VOTE).map_err(sled_err)? {
        wal.save_vote(vote.to_vec(), waiter(&tx));
        batches += 1;
    }
    if let Some(committed) = meta.get(keys::COMMITTED).map_err(sled_err)? {
        wal.save_committed(committed.to_vec());
    }
    wal.flush(waiter(&tx));
    batches += 1;
    for _ in 0..batches {
        rx.recv()
            .map_err(|_| io_err(io::Error::other("the new log's writer stopped")))?
            .map_err(io_err)?;
    }
    wal.close();
    drop(wal);
    sync_dir(&building).map_err(io_err)?;
    Ok(copied)
}
