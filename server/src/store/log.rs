//! The Raft log, vote and commit and purge points, in the write-ahead log ([`crate::wal`])
//! under `<data-dir>/wal/`.
//!
//! Every entry is stored as one record: a record-version byte, then a protobuf `Entry` (the
//! same record data version 1 kept in sled, so an upgrade copies records unchanged). The
//! vote is a protobuf `Vote`, the committed and purged points protobuf `LogId`s.
//!
//! Durability: appends, votes, truncations and purges are queued in order and written by
//! the log's one writer, one frame and one `fdatasync` per batch. An append is acknowledged
//! through openraft's callback, and a vote returns, only once its frame is synced.
//! Truncation, purge and the committed point are durable with the next sync (the next
//! append or vote, or a frame of their own once they have waited
//! [`wal::Options::marker_delay`]); replay applies them in order, so a restart sees the log
//! as the last synced frame left it.
//!
//! This store also keeps the **durable index**: the highest entry known to be on disk here,
//! lowered when the log is truncated below it. The node records it (with the applied index)
//! so that a log found shorter at start is refused rather than served.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use affinity_proto::pb;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use parking_lot::Mutex;
use prost::Message;

use crate::raft::codec::{
    entry_from_pb, entry_to_pb, log_id_from_pb, log_id_to_pb, vote_from_pb, vote_to_pb,
};
use crate::raft::{Entry, LogId, TypeConfig, Vote};
use crate::wal::{self, Wal, WalError};

/// Version byte in front of every stored log record.
pub const ENTRY_RECORD_V1: u8 = 1;

/// The log store: Raft log, vote and commit pointer. Clones share one store.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    wal: Wal<wal::fs::Dir>,
    /// See the module docs.
    durable_index: AtomicU64,
    /// Truncations so far: an append queued before one does not raise the durable index
    /// when its sync completes (the entries it wrote may be gone).
    truncations: Mutex<u64>,
}

impl LogStore {
    /// Open the log in `dir` (created if missing), replaying it.
    pub(crate) fn open(
        dir: &Path,
        options: wal::Options,
    ) -> Result<(Self, wal::Recovery), WalError> {
        let storage = wal::fs::Dir::new(dir).map_err(|source| WalError::Io {
            what: "create",
            file: dir.display().to_string(),
            source,
        })?;
        let (wal, recovery) = Wal::open(storage, options)?;
        let last = wal.bounds().map_or(0, |(_, last)| last);
        Ok((
            Self {
                inner: Arc::new(Inner {
                    wal,
                    durable_index: AtomicU64::new(last),
                    truncations: Mutex::new(0),
                }),
            },
            recovery,
        ))
    }

    /// The write-ahead log underneath (for its counters).
    pub fn wal(&self) -> &Wal<wal::fs::Dir> {
        &self.inner.wal
    }

    /// The highest log index known to be on disk here.
    pub fn durable_index(&self) -> u64 {
        self.inner.durable_index.load(Ordering::Relaxed)
    }

    fn last_purged(&self) -> io::Result<Option<LogId>> {
        match self.inner.wal.markers().purged {
            None => Ok(None),
            Some((_, record)) => decode_log_id("last purged", &record).map(Some),
        }
    }

    /// The last log index this log holds or was purged up to (0 when empty).
    pub(crate) fn last_index(&self) -> io::Result<u64> {
        let purged = self.last_purged()?.map_or(0, |id| id.index());
        let last = self.inner.wal.bounds().map_or(0, |(_, last)| last);
        Ok(last.max(purged))
    }

    /// Wait until everything queued so far is durable.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.wal.flush(Box::new(move |result| {
            let _ = tx.send(result);
        }));
        rx.await
            .map_err(|_| io::Error::other("the Raft log's writer stopped before syncing"))?
    }

    /// Write what is queued and stop the log's writer.
    pub fn close(&self) {
        self.inner.wal.close();
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The stored record of `entry`.
pub fn encode_entry(entry: &Entry) -> Arc<[u8]> {
    let record = entry_to_pb(entry);
    let mut buf = Vec::with_capacity(1 + record.encoded_len());
    buf.push(ENTRY_RECORD_V1);
    // Encoding into a Vec cannot run out of room.
    let _ = record.encode(&mut buf);
    Arc::from(buf)
}

fn decode_record(index: u64, bytes: &[u8]) -> io::Result<pb::Entry> {
    match bytes.split_first() {
        Some((&ENTRY_RECORD_V1, body)) => pb::Entry::decode(body)
            .map_err(|e| invalid(format!("log entry {index} does not decode: {e}"))),
        Some((v, _)) => Err(invalid(format!(
            "log entry {index} has record version {v}, this build reads version {ENTRY_RECORD_V1}"
        ))),
        None => Err(invalid(format!("log entry {index} is empty"))),
    }
}

/// Decode the stored record of log entry `index`, checking its record version and that it
/// is the entry it is stored as. Any input gets an error or an entry, never a panic
/// (fuzzed by `fuzz/`).
pub fn decode_entry(index: u64, bytes: &[u8]) -> io::Result<Entry> {
    let entry = entry_from_pb(decode_record(index, bytes)?)
        .map_err(|e| invalid(format!("log entry {index}: {e}")))?;
    if entry.log_id.index() != index {
        return Err(invalid(format!(
            "log entry stored at {index} says it is entry {}",
            entry.log_id.index()
        )));
    }
    Ok(entry)
}

fn decode_log_id(what: &str, bytes: &[u8]) -> io::Result<LogId> {
    pb::LogId::decode(bytes)
        .map(|id| log_id_from_pb(&id))
        .map_err(|e| invalid(format!("the {what} record does not decode: {e}")))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.inner
            .wal
            .read(range)?
            .into_iter()
            .map(|(index, record)| decode_entry(index, &record))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        match self.inner.wal.markers().vote {
            None => Ok(None),
            Some(bytes) => {
                let vote = pb::Vote::decode(bytes.as_ref())
                    .map_err(|e| invalid(format!("vote record does not decode: {e}")))?;
                Ok(Some(vote_from_pb(&vote)))
            }
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = self.last_purged()?;
        let last = match self.inner.wal.bounds() {
            Some((_, last)) => {
                let records = self.inner.wal.read(last..=last)?;
                let (index, record) = records
                    .first()
                    .ok_or_else(|| invalid(format!("log entry {last} vanished while read")))?;
                let record = decode_record(*index, record)?;
                let id = record
                    .log_id
                    .as_ref()
                    .ok_or_else(|| invalid(format!("log entry {index} has no log id")))?;
                Some(log_id_from_pb(id))
            }
            None => None,
        };
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.wal.save_vote(
            vote_to_pb(vote).encode_to_vec(),
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        rx.await
            .map_err(|_| io::Error::other("the Raft log's writer stopped before the vote"))?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Advisory: it lets a restart re-apply up to here at once. Durable with the next sync.
        let record = committed.map_or_else(Vec::new, |id| log_id_to_pb(&id).encode_to_vec());
        self.inner.wal.save_committed(record);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        match self.inner.wal.markers().committed {
            None => Ok(None),
            Some(record) => decode_log_id("committed", &record).map(Some),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let records: Vec<(u64, Arc<[u8]>)> = entries
            .into_iter()
            .map(|entry| (entry.log_id.index(), encode_entry(&entry)))
            .collect();
        let last = records.last().map_or(0, |(index, _)| *index);
        let epoch = *self.inner.truncations.lock();
        let inner = Arc::downgrade(&self.inner);
        self.inner.wal.append(
            records,
            Box::new(move |result| {
                if result.is_ok()
                    && let Some(inner) = inner.upgrade()
                {
                    let truncations = inner.truncations.lock();
                    if *truncations == epoch {
                        inner.durable_index.fetch_max(last, Ordering::Relaxed);
                    }
                }
                callback.io_completed(result);
            }),
        );
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        let mut truncations = self.inner.truncations.lock();
        *truncations += 1;
        self.inner.wal.truncate(from);
        self.inner
            .durable_index
            .fetch_min(from.saturating_sub(1), Ordering::Relaxed);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.inner
            .wal
            .purge(log_id.index(), log_id_to_pb(&log_id).encode_to_vec());
        Ok(())
    }
}
