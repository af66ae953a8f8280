//! The writer thread: everything queued becomes one frame, written and synced once, then
//! every callback of the batch runs; entries learn where they are on disk, the cache of
//! written entries is trimmed to its budget, and a durable purge deletes the oldest
//! segments it covers. Marks that nobody waits for wait up to
//! [`Options::marker_delay`](super::Options::marker_delay) for a frame to ride with.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::frame::{self, Item};
use super::fs::{SegmentFile, Storage};
use super::{Segment, Shared, Slot, segment_name};

/// The writer thread: one frame and one sync per batch of queued items.
pub(super) fn write_loop<S: Storage>(shared: &Shared<S>) {
    loop {
        let (items, done, stop) = {
            let mut q = shared.queue.lock();
            // Only a waiter (an append, a vote, a flush) or the stop wakes the writer. Marks
            // nobody waits for ride with the next frame, or are written on their own once
            // the oldest has waited `marker_delay`; an idle writer looks every
            // `marker_delay` whether one has come.
            let delay = shared.options.marker_delay;
            while q.done.is_empty() && !q.stop {
                let wait = match q.since {
                    // (Never a zero wait: an idle writer would spin.)
                    None => delay.max(std::time::Duration::from_millis(1)),
                    Some(since) => {
                        // (A delay too long to add means: wait for a waiter.)
                        let due = since.checked_add(delay);
                        let now = Instant::now();
                        match due {
                            Some(due) if now >= due => break,
                            Some(due) => due - now,
                            None => delay,
                        }
                    }
                };
                shared.wake.wait_for(&mut q, wait);
            }
            q.since = None;
            (
                std::mem::take(&mut q.items),
                std::mem::take(&mut q.done),
                q.stop,
            )
        };
        let started = Instant::now();
        let result = if items.is_empty() {
            shared.state.lock().failed.clone().map_or(Ok(()), Err)
        } else {
            let result = write_batch(shared, items);
            shared.stats.sync_micros.fetch_add(
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            result
        };
        shared
            .stats
            .requests
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        for d in done {
            d(result.clone().map_err(io::Error::other));
        }
        if stop {
            let q = shared.queue.lock();
            if q.items.is_empty() && q.done.is_empty() {
                return;
            }
        }
    }
}

/// Write `items` as one frame, sync, and record where the entries went. After a failure
/// the log stays failed.
fn write_batch<S: Storage>(shared: &Shared<S>, items: Vec<Item>) -> Result<(), String> {
    // Once a write or sync failed, nothing more goes to the files: a later frame written
    // after the failed one would make it look like damage, not a torn tail, at the next start.
    if let Some(failed) = &shared.state.lock().failed {
        return Err(failed.clone());
    }
    let purge = items.iter().rev().find_map(|i| match i {
        Item::Purge(upto, _) => Some(*upto),
        _ => None,
    });
    let result = write_frame(shared, items);
    let mut state = shared.state.lock();
    if let Some(failed) = &state.failed {
        return Err(failed.clone());
    }
    if let Err(e) = result {
        let message = format!("the Raft log could not be written, and stays failed: {e}");
        state.failed = Some(message.clone());
        return Err(message);
    }
    if let Some(upto) = purge {
        let tail = state.tail.0;
        // Oldest first, and only a prefix: a later segment may hold the truncation that
        // keeps an older one's entries from coming back at replay.
        let gone: Vec<u64> = state
            .segments
            .iter()
            .take_while(|(seq, s)| **seq < tail && s.max_index <= upto)
            .map(|(seq, _)| *seq)
            .collect();
        let mut names = Vec::new();
        for seq in gone {
            if let Some(s) = state.segments.remove(&seq) {
                names.push(s.name);
            }
        }
        drop(state);
        for name in names {
            match shared.storage.remove(&name) {
                Ok(()) => {
                    shared
                        .stats
                        .segments_deleted
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(file = %shared.storage.describe(&name), error = %e, "could not delete a purged log segment");
                }
            }
        }
    }
    Ok(())
}

fn write_frame<S: Storage>(shared: &Shared<S>, items: Vec<Item>) -> io::Result<()> {
    let (mut seq, mut offset, file, restated) = {
        let state = shared.state.lock();
        let (seq, offset) = state.tail;
        let file = state.segments.get(&seq).map(|s| s.file.clone());
        (seq, offset, file, state.written.restated())
    };
    let records: Vec<Arc<[u8]>> = items
        .iter()
        .filter_map(|i| match i {
            Item::Entry(_, record) => Some(record.clone()),
            _ => None,
        })
        .collect();
    let markers: Vec<Item> = items
        .iter()
        .filter(|i| !matches!(i, Item::Entry(..) | Item::Truncate(_)))
        .cloned()
        .collect();
    let (mut bytes, mut places) = frame::encode(&items)?;
    let fits = offset + bytes.len() as u64 <= shared.options.segment_size;
    let file = match file {
        Some(file) if fits && offset > 0 => file,
        existing => {
            // The first frame of a segment restates the log's state.
            let mut first = restated;
            first.extend(items);
            (bytes, places) = frame::encode(&first)?;
            match existing {
                Some(file) if offset == 0 => file,
                _ => {
                    // Roll to a new segment.
                    seq += 1;
                    offset = 0;
                    let name = segment_name(seq);
                    let size = shared.options.segment_size.max(bytes.len() as u64);
                    let file = Arc::new(shared.storage.create(&name, size)?);
                    let mut state = shared.state.lock();
                    state.segments.insert(
                        seq,
                        Segment {
                            name,
                            file: file.clone(),
                            max_index: 0,
                        },
                    );
                    state.tail = (seq, 0);
                    file
                }
            }
        }
    };
    file.write_at(&bytes, offset)?;
    file.sync()?;
    shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .bytes
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);

    let mut state = shared.state.lock();
    state.tail = (seq, offset + bytes.len() as u64);
    state.written.follow(&markers);
    let mut max_index = 0;
    for ((index, at, len), record) in places.into_iter().zip(records) {
        max_index = max_index.max(index);
        if let Some(slot) = state.entries.get_mut(&index)
            && let Slot::Pending(pending) = slot
            && Arc::ptr_eq(pending, &record)
        {
            *slot = Slot::Disk {
                seg: seq,
                at: offset + u64::from(at),
                len,
                cached: Some(record.clone()),
            };
            state.cached_bytes += record.len();
            state.cached.push_back((index, record));
        }
    }
    if let Some(s) = state.segments.get_mut(&seq) {
        s.max_index = s.max_index.max(max_index);
    }
    let budget = shared.options.cache_bytes;
    while state.cached_bytes > budget {
        let Some((index, record)) = state.cached.pop_front() else {
            break;
        };
        state.cached_bytes = state.cached_bytes.saturating_sub(record.len());
        if let Some(Slot::Disk { cached, .. }) = state.entries.get_mut(&index)
            && cached.as_ref().is_some_and(|c| Arc::ptr_eq(c, &record))
        {
            *cached = None;
        }
    }
    Ok(())
}
