//! Offline export of a stopped node's data directory to a snapshot file, for disaster
//! recovery when a majority of the cluster is lost and the survivors cannot elect a leader.
//!
//! The export is what the node itself would hold after replaying its storage: the current
//! snapshot, then every command in its log after it. That includes entries the lost
//! majority may never have committed: a recovery keeps every write this node had seen,
//! rather than losing acknowledged ones. The file has the same format as a backup
//! (`affinityctl snapshot --out`) and is put back with `affinityctl restore`.

use std::io;
use std::path::{Path, PathBuf};

use affinity_proto::pb;
use openraft::EntryPayload;
use openraft::storage::{RaftLogReader, RaftLogStorage};

use super::{StoreError, StoreOptions};
use crate::raft::{LogId, codec};
use crate::sm::{LeaseTable, snapshot as format};

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// Index of the last log entry included (0 for an empty directory).
    pub last_log_index: u64,
    /// Log entries replayed after the snapshot.
    pub replayed_entries: u64,
    /// Leases written (live or not yet swept).
    pub lease_count: u64,
    /// File size.
    pub bytes: u64,
}

/// Export the data directory `dir` (of a stopped node) to the file `out`, written
/// atomically (a partial file, synced, then renamed).
pub async fn export(
    dir: &Path,
    options: &StoreOptions,
    out: &Path,
) -> Result<Exported, StoreError> {
    let partial = partial_path(out);
    let file_err = |source: io::Error| StoreError::Io {
        dir: out.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(&partial).map_err(file_err)?;
    let exported = export_to(dir, options, io::BufWriter::new(&file)).await;
    let exported = match exported {
        Ok(e) => e,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    publish(&file, &partial, out).map_err(file_err)?;
    Ok(exported)
}

/// Write `bytes` to `out` atomically: a partial file beside it, synced, then renamed.
pub fn write_atomically(out: &Path, bytes: &[u8]) -> io::Result<()> {
    let partial = partial_path(out);
    let mut file = std::fs::File::create(&partial)?;
    io::Write::write_all(&mut file, bytes)?;
    publish(&file, &partial, out)
}

/// Sync a fully written partial file and give it its final name.
fn publish(file: &std::fs::File, partial: &Path, out: &Path) -> io::Result<()> {
    file.sync_all()?;
    std::fs::rename(partial, out)
}

/// Export the data directory `dir` (of a stopped node) to `out`.
pub async fn export_to<W: io::Write>(
    dir: &Path,
    options: &StoreOptions,
    out: W,
) -> Result<Exported, StoreError> {
    if !dir.join("raft").exists() {
        return Err(StoreError::Io {
            dir: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotFound, "no affinity data here"),
        });
    }
    let io_err = |source: io::Error| StoreError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let storage = super::open(dir, options)?;
    let replayed = replay(&storage).await;
    storage.close();
    let (table, last, replayed) = replayed.map_err(io_err)?;
    let meta = pb::SnapshotMeta {
        last_log_id: last.as_ref().map(codec::log_id_to_pb),
        last_membership: None,
    };
    let stats =
        format::write(&table, meta, out).map_err(|e| io_err(io::Error::other(e.to_string())))?;
    Ok(Exported {
        last_log_index: last.map_or(0, |id| id.index()),
        replayed_entries: replayed,
        lease_count: stats.lease_count,
        bytes: stats.bytes,
    })
}

/// The table the node would rebuild at start: its snapshot, then its whole log after it.
async fn replay(storage: &super::Storage) -> io::Result<(LeaseTable, Option<LogId>, u64)> {
    let (mut table, mut last) = match storage.state.current_snapshot()? {
        Some(current) => {
            let decoded = format::read(current.data.reader()?)
                .map_err(|e| io::Error::other(e.to_string()))?;
            (decoded.table, current.meta.last_log_id)
        }
        None => (LeaseTable::new(), None),
    };
    let mut log = storage.log.clone();
    let state = log.get_log_state().await?;
    let from = last.map_or(0, |id| id.index() + 1);
    let mut replayed = 0;
    if let Some(to) = state.last_log_id.map(|id| id.index())
        && from <= to
    {
        let mut reader = log.get_log_reader().await;
        let mut events = Vec::new();
        for entry in reader.try_get_log_entries(from..=to).await? {
            if let EntryPayload::Normal(command) = &entry.payload {
                table.apply(entry.log_id.index(), command, &mut events);
                events.clear();
            }
            last = Some(entry.log_id);
            replayed += 1;
        }
    }
    Ok((table, last, replayed))
}

/// Where a file is written before it is renamed into place.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}
