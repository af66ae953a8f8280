//! Opening the log: replay every segment in order and rebuild the state in memory.
//!
//! A frame that does not check out (bad header, a length past the file, a checksum that
//! does not match) is one of two things:
//!
//! - **a torn write**: the frame being written when the process or the machine stopped.
//!   It was never synced, so never acknowledged. It is cut off (zeroed) and reported, and
//!   the log goes on from there;
//! - **damage**: anything else. The writer writes and syncs one frame at a time and
//!   creates a segment only after the frame before it was synced, so a bad frame followed
//!   by a valid one, or by another segment, had been synced: reading past it would lose
//!   acknowledged entries. The log refuses to open and names the file and the offset.
//!
//! A frame whose checksum matches but whose items do not decode is damage too (or a
//! format this build does not read).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frame::{self, HEADER, Header, MAGIC};
use super::fs::{SegmentFile, Storage};
use super::{Markers, Segment, Slot, State, WalError};

/// What opening the log found.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Segment files replayed.
    pub segments: usize,
    /// Entries the log holds.
    pub entries: usize,
    /// Frames replayed.
    pub frames: usize,
    /// A torn frame cut off at the tail: the file and the offset it started at.
    pub torn: Option<(String, u64)>,
    /// How long the replay took.
    pub took: Duration,
}

fn parse_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".seg")
        .filter(|seq| seq.len() == 20)?
        .parse()
        .ok()
}

/// The frame at `offset` of `bytes`, if it checks out: its payload's range (`None` where
/// the written part of the file ends).
pub fn frame_at(bytes: &[u8], offset: usize) -> Result<Option<(usize, usize)>, &'static str> {
    let Some(head) = bytes.get(offset..offset + HEADER) else {
        // Too short for a header: only zeros may be left.
        return if bytes[offset..].iter().all(|b| *b == 0) {
            Ok(None)
        } else {
            Err("a partial frame header")
        };
    };
    let head: [u8; HEADER] = head.try_into().map_err(|_| "a partial frame header")?;
    match frame::header(&head) {
        Header::End => Ok(None),
        Header::Bad => Err("not a frame header"),
        Header::Frame { len, crc } => {
            let start = offset + HEADER;
            let end = start
                .checked_add(len as usize)
                .filter(|end| *end <= bytes.len())
                .ok_or("a frame longer than the rest of the file")?;
            if frame::checksum(len, &bytes[start..end]) == crc {
                Ok(Some((start, end)))
            } else {
                Err("a checksum mismatch")
            }
        }
    }
}

/// Whether a valid frame starts anywhere after `offset` in `bytes`.
fn valid_frame_after(bytes: &[u8], offset: usize) -> bool {
    let magic = MAGIC.to_le_bytes();
    (offset + 1..bytes.len().saturating_sub(HEADER - 1))
        .filter(|at| bytes[*at..*at + 4] == magic)
        .any(|at| matches!(frame_at(bytes, at), Ok(Some(_))))
}

/// Read every segment in `storage` without changing anything: what opening the log would
/// find (a torn tail is reported, not cut), or the damage that would stop it opening.
pub fn inspect<S: Storage>(storage: &S) -> Result<Recovery, WalError> {
    replay(storage, false).map(|(_, recovery)| recovery)
}

/// Replay the segments in `storage` into a state, cutting a torn tail.
pub(super) fn recover<S: Storage>(storage: &S) -> Result<(State<S::File>, Recovery), WalError> {
    replay(storage, true)
}

fn replay<S: Storage>(storage: &S, cut_torn: bool) -> Result<(State<S::File>, Recovery), WalError> {
    let started = Instant::now();
    let io = |what: &'static str, name: &str| {
        let file = storage.describe(name);
        move |source| WalError::Io { what, file, source }
    };
    let mut names: Vec<(u64, String)> = storage
        .list()
        .map_err(io("list", ""))?
        .into_iter()
        .filter_map(|name| parse_name(&name).map(|seq| (seq, name)))
        .collect();
    names.sort();
    let mut state = State {
        segments: BTreeMap::new(),
        entries: BTreeMap::new(),
        cached: VecDeque::new(),
        cached_bytes: 0,
        vote: None,
        committed: None,
        purged: None,
        tail: (0, 0),
        written: Markers::default(),
        failed: None,
    };
    let mut recovery = Recovery::default();
    let last = names.len().saturating_sub(1);
    for (n, (seq, name)) in names.iter().enumerate() {
        let file = storage.open(name).map_err(io("open", name))?;
        let len = file.len().map_err(io("read the length of", name))?;
        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        file.read_at(&mut bytes, 0).map_err(io("read", name))?;
        let mut offset = 0usize;
        let mut max_index = 0;
        loop {
            let (start, end) = match frame_at(&bytes, offset) {
                Ok(Some(range)) => range,
                Ok(None) => break,
                Err(reason) => {
                    let damaged = n < last || valid_frame_after(&bytes, offset);
                    if damaged {
                        return Err(WalError::Damaged {
                            file: storage.describe(name),
                            offset: offset as u64,
                            reason: reason.to_string(),
                        });
                    }
                    if cut_torn {
                        cut(&file, offset as u64, len).map_err(io("cut the torn tail of", name))?;
                        tracing::warn!(
                            file = %storage.describe(name),
                            offset,
                            "cut off a torn write at the end of the Raft log (never acknowledged)"
                        );
                    }
                    recovery.torn = Some((storage.describe(name), offset as u64));
                    break;
                }
            };
            let items = frame::decode(&bytes[start..end]).map_err(|reason| WalError::Damaged {
                file: storage.describe(name),
                offset: offset as u64,
                reason,
            })?;
            for (item, at) in &items {
                if let frame::Item::Entry(index, record) = item {
                    max_index = max_index.max(*index);
                    state.remove_from(*index);
                    state.entries.insert(
                        *index,
                        Slot::Disk {
                            seg: *seq,
                            at: (start + at) as u64,
                            len: u32::try_from(record.len()).unwrap_or(u32::MAX),
                            cached: None,
                        },
                    );
                } else {
                    state.apply_marker(item);
                }
            }
            recovery.frames += 1;
            offset = end;
        }
        state.segments.insert(
            *seq,
            Segment {
                name: name.clone(),
                file: Arc::new(file),
                max_index,
            },
        );
        state.tail = (*seq, offset as u64);
    }
    state.written = Markers {
        vote: state.vote.clone(),
        committed: state.committed.clone(),
        purged: state.purged.clone(),
    };
    recovery.segments = state.segments.len();
    recovery.entries = state.entries.len();
    recovery.took = started.elapsed();
    Ok((state, recovery))
}

/// Zero `file` from `offset` to `len` and sync, so the torn bytes cannot be read again.
fn cut<F: SegmentFile>(file: &F, offset: u64, len: u64) -> std::io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut at = offset;
    while at < len {
        let n = usize::try_from(len - at).map_or(CHUNK, |left| left.min(CHUNK));
        file.write_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync()
}
