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
//!
//! Removals are remembered too, so an answer older than a removal never brings the lease
//! back into an empty slot (a `Resolve` answered before a release and received after the
//! release's `Watch` event). A removal is kept as long as an answer sent before it can still
//! arrive (the client's request timeout and a margin), at most [`MAX_REMOVALS`] of them;
//! past that bound the oldest goes and its revision becomes a floor: for the same time no
//! lease at or below it is put into an empty slot. The bound costs misses, never a stale
//! answer. Clearing the cache (after a gap in the changes) starts a new epoch, and answers
//! to requests sent in an earlier one are not cached.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Removals remembered at most; see the module docs.
pub(crate) const MAX_REMOVALS: usize = 65_536;

/// What the write lock guards besides `entries`.
struct Writes {
    /// Every cached key by the time it stops being served; the same keys as `entries`.
    index: BTreeSet<(i64, Key)>,
    /// Keys removed by the store, with the revision of the removal.
    removed: HashMap<Key, u64, FixedState>,
    /// The same removals, oldest first, with the time each is forgotten (ms).
    removed_order: VecDeque<(i64, Key, u64)>,
    /// Until `floor_until_ms`, no lease at or below this revision goes into an empty slot.
    floor: u64,
    floor_until_ms: i64,
}

/// The cache of one client.
pub(crate) struct LeaseCache {
    /// Scope name -> id; ids are never reused, so a key never changes meaning.
    scopes: HashIndex<Arc<str>, u32, FixedState>,
    entries: HashIndex<Key, Entry, FixedState>,
    /// Held while writing `entries`.
    writes: Mutex<Writes>,
    capacity: usize,
    /// How long a removal is remembered (ms).
    removal_ms: i64,
    /// Bumped by `clear`.
    epoch: AtomicU64,
}

fn hasher() -> FixedState {
    FixedState::with_seed(0x61_66_66_69_6e_69_74_79)
}

impl LeaseCache {
    /// A cache of `capacity` leases that remembers removals for `removal_ms`.
    pub fn new(capacity: usize, removal_ms: i64) -> Self {
        Self {
            scopes: HashIndex::with_hasher(hasher()),
            entries: HashIndex::with_capacity_and_hasher(capacity.min(1 << 20), hasher()),
            writes: Mutex::new(Writes {
                index: BTreeSet::new(),
                removed: HashMap::with_hasher(hasher()),
                removed_order: VecDeque::new(),
                floor: 0,
                floor_until_ms: i64::MIN,
            }),
            capacity,
            removal_ms,
            epoch: AtomicU64::new(0),
        }
    }

    /// The current epoch; an answer to a request sent in an earlier one is not cached.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
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

    /// Whether this client has ever cached anything in `scope`, or asked about it.
    pub fn knows_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// Mark `scope` as used before asking the store about it, so that a removal in it
    /// that arrives before the answer is remembered.
    pub fn know_scope(&self, scope: &str) {
        if !self.scopes.contains(scope) {
            let _writes = self.writes.lock();
            self.intern(scope);
        }
    }

    /// Cache a lease unless a newer revision of the same key is cached, or the store
    /// removed the key at a later revision. Over capacity, the entries closest to their end
    /// go first.
    pub fn put(&self, scope: &str, key: ClientKey, entry: Entry, now_ms: i64) {
        self.put_in(None, scope, key, entry, now_ms);
    }

    /// `put`, for the answer to a request sent in `epoch`: nothing if the cache was cleared
    /// since.
    pub fn put_answer(&self, epoch: u64, scope: &str, key: ClientKey, entry: Entry, now_ms: i64) {
        self.put_in(Some(epoch), scope, key, entry, now_ms);
    }

    fn put_in(&self, epoch: Option<u64>, scope: &str, key: ClientKey, entry: Entry, now_ms: i64) {
        if entry.valid_until_ms <= now_ms || self.capacity == 0 {
            return;
        }
        let mut w = self.writes.lock();
        if epoch.is_some_and(|e| e != self.epoch()) {
            return;
        }
        Self::forget_old_removals(&mut w, now_ms);
        let key = Key {
            scope: self.intern(scope),
            key,
        };
        match self.entries.entry_sync(key) {
            scc::hash_index::Entry::Occupied(mut old) => {
                if old.get().revision > entry.revision {
                    return;
                }
                w.index.remove(&(old.get().valid_until_ms, key));
                w.index.insert((entry.valid_until_ms, key));
                old.update(entry);
            }
            scc::hash_index::Entry::Vacant(slot) => {
                let removed_after = w.removed.get(&key).is_some_and(|r| *r >= entry.revision);
                let below_floor = entry.revision <= w.floor && now_ms < w.floor_until_ms;
                if removed_after || below_floor {
                    return;
                }
                w.index.insert((entry.valid_until_ms, key));
                slot.insert_entry(entry);
            }
        }
        self.drop_ended(&mut w.index, now_ms);
        while w.index.len() > self.capacity {
            let Some((_, victim)) = w.index.pop_first() else {
                break;
            };
            self.entries.remove_sync(&victim);
        }
    }

    /// The store removed a lease at `revision`: drop what is cached unless it is newer,
    /// and remember the removal.
    pub fn forget(&self, scope: &str, key: ClientKey, revision: u64, now_ms: i64) {
        let Some(key) = self.existing(scope, key) else {
            // Never asked about: nothing cached, and no answer in flight to refuse.
            return;
        };
        let mut w = self.writes.lock();
        let old = self
            .entries
            .peek_with(&key, |_, e| (e.revision, e.valid_until_ms));
        match old {
            Some((old_revision, _)) if old_revision > revision => return,
            Some((_, valid_until_ms)) => {
                w.index.remove(&(valid_until_ms, key));
                self.entries.remove_sync(&key);
            }
            None => {}
        }
        Self::forget_old_removals(&mut w, now_ms);
        let known = w.removed.entry(key).or_insert(revision);
        *known = (*known).max(revision);
        w.removed_order
            .push_back((now_ms.saturating_add(self.removal_ms), key, revision));
        while w.removed_order.len() > MAX_REMOVALS {
            let Some((_, old_key, old_revision)) = w.removed_order.pop_front() else {
                break;
            };
            Self::unremember(&mut w, old_key, old_revision);
            w.floor = w.floor.max(old_revision);
            w.floor_until_ms = now_ms.saturating_add(self.removal_ms);
        }
    }

    /// Drop the removals no answer can be older than any more.
    fn forget_old_removals(w: &mut Writes, now_ms: i64) {
        while w
            .removed_order
            .front()
            .is_some_and(|(until, _, _)| *until <= now_ms)
        {
            if let Some((_, key, revision)) = w.removed_order.pop_front() {
                Self::unremember(w, key, revision);
            }
        }
    }

    fn unremember(w: &mut Writes, key: Key, revision: u64) {
        if w.removed.get(&key) == Some(&revision) {
            w.removed.remove(&key);
        }
    }

    /// Drop every entry that is no longer served, and removals past their time.
    pub fn sweep(&self, now_ms: i64) {
        let mut w = self.writes.lock();
        self.drop_ended(&mut w.index, now_ms);
        Self::forget_old_removals(&mut w, now_ms);
    }

    fn drop_ended(&self, index: &mut BTreeSet<(i64, Key)>, now_ms: i64) {
        while index.first().is_some_and(|(end, _)| *end <= now_ms) {
            if let Some((_, key)) = index.pop_first() {
                self.entries.remove_sync(&key);
            }
        }
    }

    /// Forget everything (after missing changes, e.g. while the watch was down), and
    /// refuse answers to requests sent before.
    pub fn clear(&self) {
        let mut w = self.writes.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        w.index.clear();
        self.entries.clear_sync();
    }

    /// Leases cached at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.writes.lock().index.len()
    }

    /// Removals remembered.
    #[cfg(test)]
    fn removals(&self) -> usize {
        self.writes.lock().removed.len()
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
        let cache = LeaseCache::new(10, 2_000);
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
        let cache = LeaseCache::new(10, 2_000);
        cache.put("s", key("10.0.0.0/24"), entry("b:1", 5_000, 7), 0);
        cache.put("s", key("10.0.0.0/24"), entry("a:1", 9_000, 3), 0);
        assert_eq!(cache.endpoint("s", key("10.0.0.0/24"), 0).unwrap(), "b:1");
        // A removal of an older revision leaves the newer lease.
        cache.forget("s", key("10.0.0.0/24"), 3, 0);
        assert!(cache.endpoint("s", key("10.0.0.0/24"), 0).is_some());
        cache.forget("s", key("10.0.0.0/24"), 7, 0);
        assert!(cache.endpoint("s", key("10.0.0.0/24"), 0).is_none());
    }

    #[test]
    fn capacity_is_a_bound_and_the_nearest_ends_go_first() {
        let cache = LeaseCache::new(3, 2_000);
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
        let cache = LeaseCache::new(0, 2_000);
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

    #[test]
    fn an_answer_older_than_a_removal_never_fills_the_empty_slot() {
        let cache = LeaseCache::new(10, 2_000);
        let k = key("10.0.0.0/24");
        cache.put("s", k, entry("a:1", 50_000, 5), 0);
        // Released at revision 8 (the Watch event), then a Resolve answer sent before the
        // release arrives with the lease of revision 5.
        cache.forget("s", k, 8, 100);
        cache.put("s", k, entry("a:1", 50_000, 5), 150);
        assert!(
            cache.endpoint("s", k, 200).is_none(),
            "the released lease came back"
        );
        // A lease made after the release is cached.
        cache.put("s", k, entry("b:1", 50_000, 9), 200);
        assert_eq!(cache.endpoint("s", k, 250).unwrap(), "b:1");
    }

    #[test]
    fn a_removal_before_the_answer_is_remembered_for_a_scope_being_asked_about() {
        let cache = LeaseCache::new(10, 2_000);
        let k = key("10.0.0.0/24");
        // The first request in the scope is in flight; its lease is released meanwhile.
        cache.know_scope("s");
        cache.forget("s", k, 8, 100);
        cache.put("s", k, entry("a:1", 50_000, 5), 150);
        assert!(cache.endpoint("s", k, 200).is_none());
        // Once no answer sent before it can arrive, the removal is dropped.
        cache.sweep(2_100);
        assert_eq!(cache.removals(), 0);
    }

    #[test]
    fn removals_are_bounded_and_the_bound_costs_misses_not_staleness() {
        let cache = LeaseCache::new(10, 2_000);
        cache.know_scope("s");
        for i in 0..=MAX_REMOVALS {
            let k: ClientKey = format!("{}.{}.{}.0/24", 10 + i / 65_536, (i / 256) % 256, i % 256)
                .parse()
                .unwrap();
            cache.forget("s", k, 100 + i as u64, 0);
        }
        assert_eq!(cache.removals(), MAX_REMOVALS);
        // The first removal (revision 100) was dropped; its revision is now a floor.
        let first = key("10.0.0.0/24");
        cache.put("s", first, entry("a:1", 50_000, 99), 10);
        assert!(cache.endpoint("s", first, 20).is_none());
        cache.put("s", first, entry("a:1", 50_000, 101), 10);
        assert!(cache.endpoint("s", first, 20).is_some());
        // The floor lasts as long as a removal would have.
        let other = key("12.0.0.0/24");
        cache.put("s", other, entry("a:1", 50_000, 50), 2_001);
        assert!(cache.endpoint("s", other, 2_002).is_some());
    }

    #[test]
    fn answers_to_requests_sent_before_a_clear_are_not_cached() {
        let cache = LeaseCache::new(10, 2_000);
        let k = key("10.0.0.0/24");
        let epoch = cache.epoch();
        cache.clear();
        cache.put_answer(epoch, "s", k, entry("a:1", 50_000, 5), 0);
        assert!(cache.endpoint("s", k, 0).is_none());
        cache.put_answer(cache.epoch(), "s", k, entry("a:1", 50_000, 5), 0);
        assert!(cache.endpoint("s", k, 0).is_some());
    }
}
