//! The local lease cache: what `cached()` reads on every request.
//!
//! Reads are lock-free and allocate nothing: two [`scc::HashIndex`] lookups under one epoch
//! guard, first the scope's small integer id (a tiny table that stays in the CPU cache), then
//! the lease by `(scope id, ClientKey)`, a `Copy` key. `HashIndex` won the comparison with
//! papaya, dashmap, quick_cache and moka in `benches/benches/cache_choice.rs` (figures in
//! docs/benchmarks.md). A short endpoint is copied inline. Writes (misses, `Watch` events,
//! sweeps) are rare and serialized by one mutex that also guards an index by end time, used
//! to drop ended entries and, over capacity, the entries closest to their end.
//!
//! An entry is served until `min(expires_at, last_used + idle) - skew_margin`: with absolute
//! expiry a cached decision is exact until then. Updates carry the store's revision, so an
//! older answer never overwrites a newer one.

use std::collections::BTreeSet;
use std::sync::Arc;

use affinity_proto::{ClientKey, pb};
use foldhash::fast::FixedState;
use parking_lot::Mutex;
use scc::{Guard, HashIndex};

use crate::endpoint::Endpoint;

/// The key of a cached lease: the interned id of its scope and its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    scope: u32,
    key: ClientKey,
}

/// A cached lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub endpoint: Endpoint,
    pub expires_at_ms: i64,
    /// Served until this time (the lease's end minus the skew margin).
    pub valid_until_ms: i64,
    pub revision: u64,
}

impl Entry {
    /// The cache entry for a lease, or `None` for a lease that is not cacheable (malformed).
    pub fn from_lease(lease: &pb::Lease, skew_ms: i64) -> Option<Entry> {
        let end = match lease.idle_timeout_ms {
            Some(idle) => lease.expires_at_ms.min(
                lease
                    .last_used_ms
                    .saturating_add(i64::try_from(idle).unwrap_or(i64::MAX)),
            ),
            None => lease.expires_at_ms,
        };
        if lease.endpoint.is_empty() {
            return None;
        }
        Some(Entry {
            endpoint: Endpoint::new(&lease.endpoint),
            expires_at_ms: lease.expires_at_ms,
            valid_until_ms: end.saturating_sub(skew_ms),
            revision: lease.revision,
        })
    }
}

/// The cache of one client.
pub(crate) struct LeaseCache {
    /// Scope name -> id; ids are never reused, so a key never changes meaning.
    scopes: HashIndex<Arc<str>, u32, FixedState>,
    entries: HashIndex<Key, Entry, FixedState>,
    /// Every cached key by the time it stops being served. Held while writing `entries`,
    /// so the two always hold the same keys.
    writes: Mutex<BTreeSet<(i64, Key)>>,
    capacity: usize,
}

fn hasher() -> FixedState {
    FixedState::with_seed(0x61_66_66_69_6e_69_74_79)
}

impl LeaseCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            scopes: HashIndex::with_hasher(hasher()),
            entries: HashIndex::with_capacity_and_hasher(capacity.min(1 << 20), hasher()),
            writes: Mutex::new(BTreeSet::new()),
            capacity,
        }
    }

    /// The cached entry for `(scope, key)`, read in place.
    fn read<R>(&self, scope: &str, key: ClientKey, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let guard = Guard::new();
        let scope = *self.scopes.peek(scope, &guard)?;
        self.entries.peek(&Key { scope, key }, &guard).map(f)
    }

    /// The endpoint of a cached lease still valid at `now_ms`: the hot path.
    pub fn endpoint(&self, scope: &str, key: ClientKey, now_ms: i64) -> Option<Endpoint> {
        self.read(scope, key, |e| {
            (now_ms < e.valid_until_ms).then(|| e.endpoint.clone())
        })
        .flatten()
    }

    /// The cached lease still valid at `now_ms`.
    pub fn get(&self, scope: &str, key: ClientKey, now_ms: i64) -> Option<Entry> {
        self.read(scope, key, |e| {
            (now_ms < e.valid_until_ms).then(|| e.clone())
        })
        .flatten()
    }

    /// The id of `scope`, made if new. Called with the write lock held.
    fn intern(&self, scope: &str) -> u32 {
        if let Some(id) = self.scopes.peek_with(scope, |_, id| *id) {
            return id;
        }
        // Scopes are few (one per route rule); ids only grow.
        let id = u32::try_from(self.scopes.len()).unwrap_or(u32::MAX);
        // The write lock is held, so nobody else inserts this scope meanwhile.
        let _ = self.scopes.insert_sync(Arc::from(scope), id);
        id
    }

    /// The key of `(scope, key)` if the scope has ever been cached.
    fn existing(&self, scope: &str, key: ClientKey) -> Option<Key> {
        let scope = self.scopes.peek_with(scope, |_, id| *id)?;
        Some(Key { scope, key })
    }

    /// Whether this client has ever cached anything in `scope`.
    pub fn knows_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// Cache a lease unless a newer revision of the same key is cached. Over capacity, the
    /// entries closest to their end go first.
    pub fn put(&self, scope: &str, key: ClientKey, entry: Entry, now_ms: i64) {
        if entry.valid_until_ms <= now_ms || self.capacity == 0 {
            return;
        }
        let mut index = self.writes.lock();
        let key = Key {
            scope: self.intern(scope),
            key,
        };
        match self.entries.entry_sync(key) {
            scc::hash_index::Entry::Occupied(mut old) => {
                if old.get().revision > entry.revision {
                    return;
                }
                index.remove(&(old.get().valid_until_ms, key));
                index.insert((entry.valid_until_ms, key));
                old.update(entry);
            }
            scc::hash_index::Entry::Vacant(slot) => {
                index.insert((entry.valid_until_ms, key));
                slot.insert_entry(entry);
            }
        }
        self.drop_ended(&mut index, now_ms);
        while index.len() > self.capacity {
            let Some((_, victim)) = index.pop_first() else {
                break;
            };
            self.entries.remove_sync(&victim);
        }
    }

    /// Forget a lease, unless what is cached is newer than `revision`.
    pub fn forget(&self, scope: &str, key: ClientKey, revision: u64) {
        let Some(key) = self.existing(scope, key) else {
            return;
        };
        let mut index = self.writes.lock();
        let old = self
            .entries
            .peek_with(&key, |_, e| (e.revision, e.valid_until_ms));
        if let Some((old_revision, valid_until_ms)) = old
            && old_revision <= revision
        {
            index.remove(&(valid_until_ms, key));
            self.entries.remove_sync(&key);
        }
    }

    /// Drop every entry that is no longer served.
    pub fn sweep(&self, now_ms: i64) {
        let mut index = self.writes.lock();
        self.drop_ended(&mut index, now_ms);
    }

    fn drop_ended(&self, index: &mut BTreeSet<(i64, Key)>, now_ms: i64) {
        while index.first().is_some_and(|(end, _)| *end <= now_ms) {
            if let Some((_, key)) = index.pop_first() {
                self.entries.remove_sync(&key);
            }
        }
    }

    /// Forget everything (after missing changes, e.g. while the watch was down).
    pub fn clear(&self) {
        let mut index = self.writes.lock();
        index.clear();
        self.entries.clear_sync();
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.writes.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> ClientKey {
        text.parse().unwrap()
    }

    fn entry(endpoint: &str, valid_until_ms: i64, revision: u64) -> Entry {
        Entry {
            endpoint: Endpoint::new(endpoint),
            expires_at_ms: valid_until_ms + 1000,
            valid_until_ms,
            revision,
        }
    }

    #[test]
    fn serves_until_valid_until_and_not_after() {
        let cache = LeaseCache::new(10);
        cache.put("s", key("10.0.0.0/24"), entry("a:1", 5_000, 1), 0);
        assert_eq!(
            cache.endpoint("s", key("10.0.0.0/24"), 4_999).unwrap(),
            "a:1"
        );
        assert!(cache.endpoint("s", key("10.0.0.0/24"), 5_000).is_none());
        assert!(cache.endpoint("other", key("10.0.0.0/24"), 0).is_none());
        assert!(cache.endpoint("s", key("10.0.1.0/24"), 0).is_none());
    }

    #[test]
    fn older_revisions_never_overwrite_newer_ones() {
        let cache = LeaseCache::new(10);
        cache.put("s", key("10.0.0.0/24"), entry("b:1", 5_000, 7), 0);
        cache.put("s", key("10.0.0.0/24"), entry("a:1", 9_000, 3), 0);
        assert_eq!(cache.endpoint("s", key("10.0.0.0/24"), 0).unwrap(), "b:1");
        // A removal of an older revision leaves the newer lease.
        cache.forget("s", key("10.0.0.0/24"), 3);
        assert!(cache.endpoint("s", key("10.0.0.0/24"), 0).is_some());
        cache.forget("s", key("10.0.0.0/24"), 7);
        assert!(cache.endpoint("s", key("10.0.0.0/24"), 0).is_none());
    }

    #[test]
    fn capacity_is_a_bound_and_the_nearest_ends_go_first() {
        let cache = LeaseCache::new(3);
        for (i, end) in [40_000, 10_000, 30_000, 20_000].into_iter().enumerate() {
            cache.put("s", key(&format!("10.0.{i}.0/24")), entry("a:1", end, 1), 0);
        }
        assert_eq!(cache.len(), 3);
        assert!(
            cache.endpoint("s", key("10.0.1.0/24"), 0).is_none(),
            "ends first, evicted first"
        );
        // Ended entries go on the next write or sweep.
        cache.sweep(35_000);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = LeaseCache::new(0);
        cache.put("s", key("10.0.0.0/24"), entry("a:1", 5_000, 1), 0);
        assert_eq!(cache.len(), 0);
        assert!(cache.endpoint("s", key("10.0.0.0/24"), 0).is_none());
    }

    #[test]
    fn idle_leases_are_served_only_until_their_idle_end() {
        let lease = pb::Lease {
            scope: "s".into(),
            prefix: "10.0.0.0/24".into(),
            endpoint: "a:1".into(),
            created_at_ms: 0,
            expires_at_ms: 100_000,
            revision: 4,
            idle_timeout_ms: Some(10_000),
            last_used_ms: 5_000,
        };
        let e = Entry::from_lease(&lease, 1_000).unwrap();
        assert_eq!(e.valid_until_ms, 14_000);
        assert_eq!(e.expires_at_ms, 100_000);
    }
}
