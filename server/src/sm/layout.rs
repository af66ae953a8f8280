//! How the lease table holds leases in memory, kept small because a node holds every lease
//! of the cluster: one record per lease in an ordered map per scope, two ordered indexes
//! that name scopes and endpoints by number instead of repeating their strings, the
//! numbered names themselves, and a bulk build for tables read from a snapshot, whose
//! trees come out packed instead of half full.
//!
//! Per lease: the key and its 48-byte record in the scope's map, `(end, scope, key)` (32
//! bytes) in the end-time index for sweeps, and `(endpoint, scope, key)` (28 bytes) in the
//! endpoint index for drains (docs/benchmarks.md has the measured totals).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU64;
use std::sync::Arc;

use affinity_proto::ClientKey;

use super::lease::clamp_ms;
use super::{Lease, LeaseTable};

/// What the table keeps per lease (scope and key are the map keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    /// The endpoint's number in [`LeaseTable::endpoints`].
    pub endpoint: u32,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub idle_timeout_ms: Option<NonZeroU64>,
    pub last_used_ms: i64,
    pub revision: u64,
}

/// An idle timeout as a record keeps it. Requests allow 1 ms at least; a 0 from elsewhere
/// is kept as 1 ms, which ends the lease as soon.
pub(super) fn idle(ms: Option<u64>) -> Option<NonZeroU64> {
    ms.map(|ms| NonZeroU64::MIN.saturating_add(ms.saturating_sub(1)))
}

impl Record {
    pub fn end_ms(&self) -> i64 {
        match self.idle_timeout_ms {
            Some(idle) => self
                .expires_at_ms
                .min(self.last_used_ms.saturating_add(clamp_ms(idle.get()))),
            None => self.expires_at_ms,
        }
    }

    pub fn is_live(&self, now_ms: i64) -> bool {
        now_ms < self.end_ms()
    }

    /// The lease this record holds for `scope` and `key`, its endpoint named by `endpoints`.
    pub fn lease(&self, scope: &Arc<str>, key: ClientKey, endpoints: &Names) -> Lease {
        Lease {
            scope: Arc::clone(scope),
            key,
            endpoint: Arc::clone(endpoints.name(self.endpoint)),
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            idle_timeout_ms: self.idle_timeout_ms.map(NonZeroU64::get),
            last_used_ms: self.last_used_ms,
            revision: self.revision,
        }
    }
}

/// The leases of one scope, and the scope's number in the indexes.
#[derive(Debug, Clone)]
pub(super) struct Scope {
    pub id: u32,
    pub keys: BTreeMap<ClientKey, Record>,
}

/// Strings shared by leases (scopes, endpoints), each with a number and the count of
/// leases that use it. A string goes, and its number is reused, with its last lease.
#[derive(Debug, Default, Clone)]
pub(super) struct Names {
    ids: HashMap<Arc<str>, u32>,
    /// By number: the string and its uses; `None` for a free number.
    entries: Vec<Option<(Arc<str>, usize)>>,
    free: Vec<u32>,
}

/// The string shown for a number no lease uses (never for a consistent table).
static UNKNOWN: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));

impl Names {
    /// The number of `name`, counted as used by one more lease, and the shared string.
    pub fn acquire(&mut self, name: &str) -> (u32, Arc<str>) {
        if let Some(&id) = self.ids.get(name)
            && let Some(Some((shared, uses))) = self.entries.get_mut(id as usize)
        {
            *uses += 1;
            return (id, Arc::clone(shared));
        }
        let shared: Arc<str> = Arc::from(name);
        let id = self.free.pop().unwrap_or_else(|| {
            self.entries.push(None);
            u32::try_from(self.entries.len() - 1).unwrap_or(u32::MAX)
        });
        if let Some(slot) = self.entries.get_mut(id as usize) {
            *slot = Some((Arc::clone(&shared), 1));
        }
        self.ids.insert(Arc::clone(&shared), id);
        (id, shared)
    }

    /// The number of `name` without counting a use (a new name starts with none; see
    /// [`Self::add_use`]), and the shared string.
    pub fn number(&mut self, name: &str) -> (u32, Arc<str>) {
        let (id, shared) = self.acquire(name);
        if let Some(Some((_, uses))) = self.entries.get_mut(id as usize) {
            *uses -= 1;
        }
        (id, shared)
    }

    /// One lease more uses number `id`; `false` (and nothing counted) if no name has it.
    pub fn add_use(&mut self, id: u32) -> bool {
        match self.entries.get_mut(id as usize) {
            Some(Some((_, uses))) => {
                *uses += 1;
                true
            }
            _ => false,
        }
    }

    /// Free number `id` if no lease uses it.
    pub fn release_unused(&mut self, id: u32) {
        if let Some(Some((_, 0))) = self.entries.get(id as usize) {
            self.add_use(id);
            self.release(id);
        }
    }

    /// One lease less uses number `id`.
    pub fn release(&mut self, id: u32) {
        let Some(slot) = self.entries.get_mut(id as usize) else {
            return;
        };
        let gone = match slot {
            Some((_, uses)) => {
                *uses -= 1;
                *uses == 0
            }
            None => false,
        };
        if gone && let Some((name, _)) = slot.take() {
            self.ids.remove(&name);
            self.free.push(id);
        }
    }

    /// The string of number `id`.
    pub fn name(&self, id: u32) -> &Arc<str> {
        match self.entries.get(id as usize) {
            Some(Some((name, _))) => name,
            _ => &UNKNOWN,
        }
    }

    /// The number of `name`, if a lease uses it.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// (string, uses) of every number in use.
    fn counts(&self) -> HashMap<&str, usize> {
        self.entries
            .iter()
            .flatten()
            .map(|(name, uses)| (&**name, *uses))
            .collect()
    }
}

impl LeaseTable {
    /// Add a lease for a key `scope` does not hold; returns the shared scope string.
    pub(super) fn insert(&mut self, scope: &str, key: ClientKey, record: Record) -> Arc<str> {
        let (scope_id, scope) = self.scopes.acquire(scope);
        self.by_end.insert((record.end_ms(), scope_id, key));
        self.by_endpoint.insert((record.endpoint, scope_id, key));
        let previous = self
            .leases
            .entry(Arc::clone(&scope))
            .or_insert_with(|| Scope {
                id: scope_id,
                keys: BTreeMap::new(),
            })
            .keys
            .insert(key, record);
        debug_assert!(previous.is_none(), "insert over a present lease");
        self.count += 1;
        scope
    }

    /// Take the lease of (`scope`, `key`) out, if there is one.
    pub(super) fn remove(&mut self, scope: &str, key: ClientKey) -> Option<Lease> {
        let scope_arc = Arc::clone(self.leases.get_key_value(scope)?.0);
        let leases = self.leases.get_mut(scope)?;
        let scope_id = leases.id;
        let record = leases.keys.remove(&key)?;
        if leases.keys.is_empty() {
            self.leases.remove(scope);
        }
        self.count -= 1;
        self.by_end.remove(&(record.end_ms(), scope_id, key));
        self.by_endpoint.remove(&(record.endpoint, scope_id, key));
        let lease = record.lease(&scope_arc, key, &self.endpoints);
        self.scopes.release(scope_id);
        self.endpoints.release(record.endpoint);
        Some(lease)
    }

    /// A record for a lease about to be inserted; its endpoint is counted as used.
    pub(super) fn new_record(&mut self, endpoint: &str, lease: &Lease, revision: u64) -> Record {
        Record {
            endpoint: self.endpoints.acquire(endpoint).0,
            created_at_ms: lease.created_at_ms,
            expires_at_ms: lease.expires_at_ms,
            idle_timeout_ms: idle(lease.idle_timeout_ms),
            last_used_ms: lease.last_used_ms,
            revision,
        }
    }

    /// Check that the indexes and counts agree with the leases (tests and debugging).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut count = 0;
        let mut by_end = BTreeSet::new();
        let mut by_endpoint = BTreeSet::new();
        let mut endpoints: HashMap<&str, usize> = HashMap::new();
        let mut scopes: HashMap<&str, usize> = HashMap::new();
        for (scope, leases) in &self.leases {
            if leases.keys.is_empty() {
                return Err(format!("scope {scope} has an empty key map"));
            }
            if self.scopes.name(leases.id) != scope {
                return Err(format!(
                    "scope {scope} is not named by its number {}",
                    leases.id
                ));
            }
            scopes.insert(scope, leases.keys.len());
            for (key, record) in &leases.keys {
                count += 1;
                by_end.insert((record.end_ms(), leases.id, *key));
                by_endpoint.insert((record.endpoint, leases.id, *key));
                *endpoints
                    .entry(self.endpoints.name(record.endpoint))
                    .or_default() += 1;
                if record.expires_at_ms < record.created_at_ms {
                    return Err(format!("{scope} {key}: expires before it was created"));
                }
            }
        }
        if count != self.count {
            return Err(format!("count {} but {count} leases", self.count));
        }
        if by_end != self.by_end {
            return Err("end-time index differs from the leases".into());
        }
        if by_endpoint != self.by_endpoint {
            return Err("endpoint index differs from the leases".into());
        }
        if endpoints != self.endpoints.counts() {
            return Err("endpoint use counts differ from the leases".into());
        }
        if scopes != self.scopes.counts() {
            return Err("scope use counts differ from the leases".into());
        }
        Ok(())
    }
}

/// The scope being read by a [`Restorer`]: its shared name and number.
type OpenScope = (Arc<str>, u32);

/// An empty list with room for `expected` entries where that much can be had, capped at 512
/// MiB (at least 16M leases in the largest list, above the default `--max-leases`; under
/// the fuzz targets' allocation limit).
fn reserved<T>(expected: u64) -> Vec<T> {
    const MAX_RESERVED_BYTES: usize = 512 << 20;
    let cap = MAX_RESERVED_BYTES / size_of::<T>().max(1);
    let reserve = usize::try_from(expected).map_or(cap, |n| n.min(cap));
    let mut list = Vec::new();
    if list.try_reserve_exact(reserve).is_err() {
        return Vec::new();
    }
    list
}

/// A lease as a snapshot reader hands it to a [`Restorer`]: its scope and endpoint by the
/// numbers the restorer gave them ([`Restorer::scope`], [`Restorer::endpoint`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RestoredLease {
    pub endpoint: u32,
    pub key: ClientKey,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub idle_timeout_ms: Option<u64>,
    pub last_used_ms: i64,
    pub revision: u64,
}

/// Builds a table from leases in increasing (scope, key) order, as a snapshot holds them,
/// with every tree built at once from sorted entries (packed nodes).
pub(crate) struct Restorer {
    table: LeaseTable,
    scope: Option<OpenScope>,
    /// The records of the open scope; one buffer for every scope.
    keys: Vec<(ClientKey, Record)>,
    by_end: Vec<(i64, u32, ClientKey)>,
    by_endpoint: Vec<(u32, u32, ClientKey)>,
    /// Whether every scope so far got a higher number than the one before it. Keys increase
    /// within a scope, so the endpoint index then arrives ordered by (scope, key) for each
    /// endpoint, and sorting it by endpoint alone (stably) orders it fully.
    ascending: bool,
    /// The number of the scope started last.
    last_scope: Option<u32>,
}

impl Restorer {
    /// An empty table whose clock is `clock_ms`, for `expected` leases (the snapshot
    /// header's count). The two index lists and the records buffer are reserved at that
    /// size: grown by doubling instead, they would touch about twice the memory, and fresh
    /// pages (zeroed by the kernel) were the largest cost of a restart. The reservation is
    /// virtual space: pages are touched only as leases arrive, so a header that claims too
    /// many costs little; it is capped, and where even that cannot be had the lists grow as
    /// before.
    pub fn new(clock_ms: i64, expected: u64) -> Self {
        let mut table = LeaseTable::new();
        table.clock_ms = clock_ms;
        Self {
            table,
            scope: None,
            keys: reserved(expected),
            by_end: reserved(expected),
            by_endpoint: reserved(expected),
            ascending: true,
            last_scope: None,
        }
    }

    /// Start the leases of scope `name`, which sorts after every scope before it; the leases
    /// pushed from now on are its own.
    pub fn scope(&mut self, name: &str) {
        self.flush(false);
        // Numbered with no lease yet: each push counts one use.
        let (id, shared) = self.table.scopes.number(name);
        if let Some(previous) = self.last_scope {
            self.ascending &= id > previous;
        }
        self.last_scope = Some(id);
        self.scope = Some((shared, id));
    }

    /// The number of endpoint `name` for [`RestoredLease::endpoint`]; a reader asks once
    /// per distinct endpoint.
    pub fn endpoint(&mut self, name: &str) -> u32 {
        self.table.endpoints.number(name).0
    }

    /// Add the next lease of the current scope; the caller has checked that keys increase.
    /// Without a scope started, or with an endpoint number [`Self::endpoint`] did not give,
    /// the lease is refused (`false`).
    pub fn push(&mut self, lease: &RestoredLease) -> bool {
        let Some((_, scope_id)) = &self.scope else {
            return false;
        };
        if !self.table.endpoints.add_use(lease.endpoint) {
            return false;
        }
        self.table.scopes.add_use(*scope_id);
        let record = Record {
            endpoint: lease.endpoint,
            created_at_ms: lease.created_at_ms,
            expires_at_ms: lease.expires_at_ms,
            idle_timeout_ms: idle(lease.idle_timeout_ms),
            last_used_ms: lease.last_used_ms,
            revision: lease.revision,
        };
        self.by_end.push((record.end_ms(), *scope_id, lease.key));
        self.by_endpoint
            .push((record.endpoint, *scope_id, lease.key));
        self.keys.push((lease.key, record));
        self.table.count += 1;
        true
    }

    /// Close the open scope: its tree is built from the records buffer, which the last
    /// scope hands over whole and the others copy out of, so that the buffer is reused.
    fn flush(&mut self, last: bool) {
        if let Some((name, id)) = self.scope.take() {
            if self.keys.is_empty() {
                // Started but given no lease: its number goes again.
                self.table.scopes.release_unused(id);
                return;
            }
            let keys = if last {
                std::mem::take(&mut self.keys).into_iter().collect()
            } else {
                self.keys.drain(..).collect()
            };
            self.table.leases.insert(name, Scope { id, keys });
        }
    }

    /// Put back one remembered named write; they come oldest first.
    pub fn remember(&mut self, remembered: super::once::Remembered) {
        self.table.outcomes.restore(remembered);
    }

    /// The table.
    pub fn finish(mut self) -> LeaseTable {
        let mut by_end = std::mem::take(&mut self.by_end);
        let mut by_endpoint = std::mem::take(&mut self.by_endpoint);
        let ascending = self.ascending;
        // The last scope's tree and the two indexes are independent: each is built on a
        // thread of its own (a restart with millions of leases waits for all three).
        let (by_end, by_endpoint) = std::thread::scope(|scope| {
            let by_endpoint = scope.spawn(move || {
                if ascending {
                    // Few distinct endpoints, each run already in order: far cheaper than a
                    // full sort of millions of entries.
                    by_endpoint.sort_by_key(|&(endpoint, _, _)| endpoint);
                } else {
                    by_endpoint.sort_unstable();
                }
                by_endpoint.into_iter().collect()
            });
            let by_end = scope.spawn(move || {
                by_end.sort_unstable();
                by_end.into_iter().collect()
            });
            self.flush(true);
            (by_end.join(), by_endpoint.join())
        });
        for id in 0..u32::try_from(self.table.endpoints.entries.len()).unwrap_or(u32::MAX) {
            self.table.endpoints.release_unused(id);
        }
        // Sorting and collecting cannot panic short of running out of memory.
        self.table.by_end = by_end.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        self.table.by_endpoint =
            by_endpoint.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        self.table
    }
}
