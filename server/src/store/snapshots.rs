//! Snapshot files, and the sled record that says which one is current.
//!
//! A snapshot is a file in `<data>/snapshots/` in the format of [`crate::sm::snapshot`]. It
//! becomes current in this order: write it under a temporary name, `fdatasync` it, rename
//! it to its final name, fsync the folder, then write the [`pb::SnapshotPointer`] record in
//! sled and sync that. A crash at any point leaves either the old snapshot current or the
//! new one, never a half-written one; files no record points to are deleted at start.
//!
//! Snapshot bytes live in files rather than in sled values: they can be hundreds of MB,
//! which sled would copy through its log on every rewrite, and a file can be streamed to a
//! peer or copied out as a backup as it is.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use affinity_proto::pb;
use prost::Message;

use super::durable::{Flusher, sync_dir};
use super::keys;
use crate::raft::SnapshotMeta;
use crate::raft::codec::{snapshot_meta_from_pb, snapshot_meta_to_pb};
use crate::sm::LeaseTable;
use crate::sm::snapshot::{self as format, SnapshotStats};

/// An open snapshot file: what openraft hands around as snapshot data.
#[derive(Debug)]
pub struct SnapshotData {
    file: File,
    path: PathBuf,
    len: u64,
}

impl SnapshotData {
    /// Open a snapshot file.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        Ok(Self { file, path, len })
    }

    /// Where the file is (it may have been replaced since it was opened; the open handle
    /// still reads the same content).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty (never true for a valid snapshot).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A reader over the whole file, from its first byte.
    pub fn reader(&self) -> io::Result<File> {
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    }
}

/// The snapshot folder and its pointer record.
pub struct SnapshotStore {
    dir: PathBuf,
    meta: sled::Tree,
    flusher: Flusher,
    sequence: AtomicU64,
}

/// The current snapshot, as its pointer record describes it.
pub struct CurrentSnapshot {
    /// What it covers.
    pub meta: SnapshotMeta,
    /// The open file.
    pub data: SnapshotData,
    /// Leases in it.
    pub lease_count: u64,
}

impl SnapshotStore {
    pub(crate) fn open(dir: PathBuf, meta: sled::Tree, flusher: Flusher) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let store = Self {
            dir,
            meta,
            flusher,
            sequence: AtomicU64::new(0),
        };
        store.remove_stray_files(true)?;
        Ok(store)
    }

    /// The folder snapshots live in (incoming transfers are written here too).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh path in the snapshot folder for a file being received or built.
    pub fn temp_path(&self, what: &str) -> PathBuf {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{what}-{}-{n}.tmp", std::process::id()))
    }

    fn pointer(&self) -> io::Result<Option<pb::SnapshotPointer>> {
        match self.meta.get(keys::SNAPSHOT).map_err(io::Error::from)? {
            None => Ok(None),
            Some(bytes) => pb::SnapshotPointer::decode(bytes.as_ref())
                .map(Some)
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("snapshot pointer record does not decode: {e}"),
                    )
                }),
        }
    }

    /// The current snapshot, if any, opened. A missing or resized file is an error.
    pub fn current(&self) -> io::Result<Option<CurrentSnapshot>> {
        let Some(pointer) = self.pointer()? else {
            return Ok(None);
        };
        let path = self.dir.join(&pointer.file);
        let data = SnapshotData::open(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("current snapshot {} cannot be opened: {e}", path.display()),
            )
        })?;
        if data.len() != pointer.size_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} is {} bytes, its record says {}",
                    path.display(),
                    data.len(),
                    pointer.size_bytes
                ),
            ));
        }
        let meta = pointer
            .meta
            .as_ref()
            .map(snapshot_meta_from_pb)
            .transpose()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
            .unwrap_or_default();
        Ok(Some(CurrentSnapshot {
            meta,
            data,
            lease_count: pointer.lease_count,
        }))
    }

    /// Write `table` to a temporary file (call with the state held still). Publish it with
    /// [`SnapshotStore::publish`].
    pub fn write_temp(
        &self,
        table: &LeaseTable,
        meta: &SnapshotMeta,
    ) -> io::Result<(PathBuf, SnapshotStats)> {
        let path = self.temp_path("build");
        let file = File::create(&path)?;
        let mut out = BufWriter::with_capacity(1024 * 1024, file);
        let stats = format::write(table, snapshot_meta_to_pb(meta), &mut out)
            .map_err(|e| io::Error::other(e.to_string()))?;
        out.flush()?;
        Ok((path, stats))
    }

    /// Make a complete snapshot file current: sync it, rename it into place, record it,
    /// and delete older snapshots. `source` is moved if it is in the snapshot folder, copied
    /// otherwise.
    pub async fn publish(
        &self,
        source: &Path,
        meta: &SnapshotMeta,
        stats: SnapshotStats,
    ) -> io::Result<SnapshotData> {
        let name = self.final_name(meta);
        let target = self.dir.join(&name);
        if source.parent() == Some(self.dir.as_path()) {
            File::open(source)?.sync_data()?;
            fs::rename(source, &target)?;
        } else {
            let temp = self.temp_path("copy");
            fs::copy(source, &temp)?;
            File::open(&temp)?.sync_data()?;
            fs::rename(&temp, &target)?;
        }
        sync_dir(&self.dir)?;
        let pointer = pb::SnapshotPointer {
            file: name.clone(),
            meta: Some(snapshot_meta_to_pb(meta)),
            size_bytes: stats.bytes,
            crc32: stats.crc32,
            lease_count: stats.lease_count,
        };
        self.meta
            .insert(keys::SNAPSHOT, pointer.encode_to_vec())
            .map_err(io::Error::from)?;
        self.flusher.sync().await?;
        self.remove_stray_files(false)?;
        SnapshotData::open(target)
    }

    /// Whether `path` is the current snapshot's file.
    pub fn is_current(&self, path: &Path) -> io::Result<bool> {
        Ok(self
            .pointer()?
            .is_some_and(|p| self.dir.join(p.file) == path))
    }

    fn final_name(&self, meta: &SnapshotMeta) -> String {
        let (term, index) = meta
            .last_log_id
            .as_ref()
            .map_or((0, 0), |id| (id.committed_leader_id().term, id.index()));
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("snap-{term}-{index}-{stamp}-{n}.bin")
    }

    /// Delete older snapshots, and with `temporaries` also unfinished files (only safe when
    /// no build or transfer is under way, i.e. at start).
    fn remove_stray_files(&self, temporaries: bool) -> io::Result<()> {
        let keep = self.pointer()?.map(|p| p.file);
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_snapshot = name.starts_with("snap-") && name.ends_with(".bin");
            let is_temp = name.ends_with(".tmp");
            if keep.as_deref() == Some(&*name)
                || !entry.file_type()?.is_file()
                || !(is_snapshot || (temporaries && is_temp))
            {
                continue;
            }
            if let Err(e) = fs::remove_file(entry.path())
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(e);
            }
        }
        Ok(())
    }
}
