//! The Raft log and vote, in sled.
//!
//! Tree `log`: key = log index (8 bytes, big-endian, so keys sort by index), value = one
//! record-version byte then a protobuf `Entry`. Tree `meta`: the vote, the last purged log
//! id and the last committed log id (see [`super::keys`]).
//!
//! Durability: a vote is synced before `save_vote` returns; appended entries are readable at
//! once and acknowledged through openraft's callback only after the flush thread has made
//! them durable ([`super::durable`]). Truncation and purge are atomic sled batches; they need
//! no sync of their own, because any later append's sync covers them, and sled recovers
//! writes in order.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use affinity_proto::pb;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use prost::Message;

use super::durable::Flusher;
use super::keys;
use crate::raft::codec::{
    entry_from_pb, entry_to_pb, log_id_from_pb, log_id_to_pb, vote_from_pb, vote_to_pb,
};
use crate::raft::{Entry, LogId, TypeConfig, Vote};

/// Version byte in front of every stored log record.
const ENTRY_RECORD_V1: u8 = 1;

/// The log store: Raft log, vote and commit pointer. Clones share one store.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Flusher,
}

impl LogStore {
    pub(crate) fn new(log: sled::Tree, meta: sled::Tree, flusher: Flusher) -> Self {
        Self {
            inner: Arc::new(Inner { log, meta, flusher }),
        }
    }

    fn last_purged(&self) -> io::Result<Option<LogId>> {
        read_log_id(&self.inner.meta, keys::LAST_PURGED)
    }

    /// The last log index this log holds or was purged up to (0 when empty).
    pub(crate) fn last_index(&self) -> io::Result<u64> {
        let purged = self.last_purged()?.map_or(0, |id| id.index());
        let last = match self.inner.log.last().map_err(io::Error::from)? {
            Some((key, _)) => key_index(&key)?,
            None => 0,
        };
        Ok(last.max(purged))
    }

    /// Remove entries at or below the purge point that a crash left behind (purge writes
    /// the purge point first, then deletes).
    pub(crate) fn finish_interrupted_purge(&self) -> io::Result<()> {
        if let Some(purged) = self.last_purged()? {
            self.remove_range(..=purged.index())?;
        }
        Ok(())
    }

    fn remove_range(&self, range: impl RangeBounds<u64>) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        for key in self.inner.log.range(byte_range(&range)).keys() {
            batch.remove(key.map_err(io::Error::from)?);
        }
        self.inner.log.apply_batch(batch).map_err(io::Error::from)
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn byte_range(range: &impl RangeBounds<u64>) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let map = |b: Bound<&u64>| match b {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    (map(range.start_bound()), map(range.end_bound()))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn encode_entry(entry: &Entry) -> io::Result<Vec<u8>> {
    let record = entry_to_pb(entry);
    let mut buf = Vec::with_capacity(1 + record.encoded_len());
    buf.push(ENTRY_RECORD_V1);
    record.encode(&mut buf).map_err(io::Error::other)?;
    Ok(buf)
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

/// Decode the stored record of log entry `index` (as read from the log tree), checking its
/// record version and that it is the entry it is stored as. Any input gets an error or an
/// entry, never a panic (fuzzed by `fuzz/`).
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

fn key_index(key: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| invalid(format!("log key of {} bytes, expected 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

pub(crate) fn read_log_id(meta: &sled::Tree, key: &[u8]) -> io::Result<Option<LogId>> {
    match meta.get(key).map_err(io::Error::from)? {
        None => Ok(None),
        Some(bytes) => {
            let id = pb::LogId::decode(bytes.as_ref()).map_err(|e| {
                invalid(format!(
                    "{} record does not decode: {e}",
                    String::from_utf8_lossy(key)
                ))
            })?;
            Ok(Some(log_id_from_pb(&id)))
        }
    }
}

fn write_log_id(meta: &sled::Tree, key: &[u8], id: Option<&LogId>) -> io::Result<()> {
    match id {
        Some(id) => meta
            .insert(key, log_id_to_pb(id).encode_to_vec())
            .map(|_| ()),
        None => meta.remove(key).map(|_| ()),
    }
    .map_err(io::Error::from)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let mut entries = Vec::new();
        for item in self.inner.log.range(byte_range(&range)) {
            let (key, value) = item.map_err(io::Error::from)?;
            let index = key_index(&key)?;
            entries.push(decode_entry(index, &value)?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        match self.inner.meta.get(keys::VOTE).map_err(io::Error::from)? {
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
        let last = match self.inner.log.last().map_err(io::Error::from)? {
            Some((key, value)) => {
                let index = key_index(&key)?;
                let record = decode_record(index, &value)?;
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
        self.inner
            .meta
            .insert(keys::VOTE, vote_to_pb(vote).encode_to_vec())
            .map_err(io::Error::from)?;
        self.inner.flusher.sync().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Advisory: it lets a restart re-apply up to here at once. Durable with the next sync.
        write_log_id(&self.inner.meta, keys::COMMITTED, committed.as_ref())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        read_log_id(&self.inner.meta, keys::COMMITTED)
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&index_key(entry.log_id.index()), encode_entry(&entry)?);
        }
        self.inner.log.apply_batch(batch).map_err(io::Error::from)?;
        self.inner.flusher.after_sync(callback)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.remove_range(from..)?;
        self.inner.flusher.truncated(from.saturating_sub(1));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        write_log_id(&self.inner.meta, keys::LAST_PURGED, Some(&log_id))?;
        self.remove_range(..=log_id.index())
    }
}
