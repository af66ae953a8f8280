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

/// The scope being read by a [`Restorer`]: its shared name, number and records so far.
type OpenScope = (Arc<str>, u32, Vec<(ClientKey, Record)>);

/// Builds a table from leases in increasing (scope, key) order, as a snapshot holds them,
/// with every tree built at once from sorted entries (packed nodes).
pub(crate) struct Restorer {
    table: LeaseTable,
    scope: Option<OpenScope>,
    by_end: Vec<(i64, u32, ClientKey)>,
    by_endpoint: Vec<(u32, u32, ClientKey)>,
}

impl Restorer {
    /// An empty table whose clock is `clock_ms`, for `expected` leases (the snapshot
    /// header's count). The two index lists are reserved at that size: grown by doubling
    /// instead, they would touch about twice the memory, and fresh pages (zeroed by the
    /// kernel) were the largest cost of a restart. The reservation is virtual space: pages
    /// are touched only as leases arrive, so a header that claims too many costs little;
    /// it is capped, and where even that cannot be had the lists grow as before.
    pub fn new(clock_ms: i64, expected: u64) -> Self {
        // 16M leases (above the default `--max-leases`): at most 512 MiB per list, under
        // the fuzz targets' allocation limit.
        const MAX_RESERVED: u64 = 1 << 24;
        let reserve = usize::try_from(expected.min(MAX_RESERVED)).unwrap_or(0);
        let mut table = LeaseTable::new();
        table.clock_ms = clock_ms;
        let (mut by_end, mut by_endpoint) = (Vec::new(), Vec::new());
        if by_end.try_reserve_exact(reserve).is_err()
            || by_endpoint.try_reserve_exact(reserve).is_err()
        {
            (by_end, by_endpoint) = (Vec::new(), Vec::new());
        }
        Self {
            table,
            scope: None,
            by_end,
            by_endpoint,
        }
    }

    /// Add the next lease; the caller has checked that (scope, key) increases.
    pub fn push(&mut self, lease: &Lease) {
        let record = self
            .table
            .new_record(&lease.endpoint, lease, lease.revision);
        let (scope_id, shared) = self.table.scopes.acquire(&lease.scope);
        if self
            .scope
            .as_ref()
            .is_none_or(|(name, _, _)| **name != *lease.scope)
        {
            self.flush();
            self.scope = Some((shared, scope_id, Vec::new()));
        }
        self.by_end.push((record.end_ms(), scope_id, lease.key));
        self.by_endpoint
            .push((record.endpoint, scope_id, lease.key));
        if let Some((_, _, keys)) = &mut self.scope {
            keys.push((lease.key, record));
        }
        self.table.count += 1;
    }

    fn flush(&mut self) {
        if let Some((name, id, keys)) = self.scope.take() {
            self.table.leases.insert(
                name,
                Scope {
                    id,
                    keys: keys.into_iter().collect(),
                },
            );
        }
    }

    /// Put back one remembered named write; they come oldest first.
    pub fn remember(&mut self, remembered: super::once::Remembered) {
        self.table.outcomes.restore(remembered);
    }

    /// The table.
    pub fn finish(mut self) -> LeaseTable {
        self.flush();
        let (mut by_end, mut by_endpoint) = (self.by_end, self.by_endpoint);
        // The two indexes are independent: build one on a second thread (a restart with
        // millions of leases waits for both).
        let (by_end, by_endpoint) = std::thread::scope(|scope| {
            let other = scope.spawn(move || {
                by_endpoint.sort_unstable();
                by_endpoint.into_iter().collect()
            });
            by_end.sort_unstable();
            let by_end = by_end.into_iter().collect();
            (by_end, other.join())
        });
        self.table.by_end = by_end;
        self.table.by_endpoint = match by_endpoint {
            Ok(index) => index,
            // Sorting and collecting cannot panic short of running out of memory.
            Err(panic) => std::panic::resume_unwind(panic),
        };
        self.table
    }
}
