//! [`AffinityClient`]: the cache-first client a gateway replica shares across its tasks.
//!
//! The cache-facing hot path (`cached`, `remember`) is here; the resolve path is in
//! `resolve.rs`, the other store calls in `calls.rs`, settings and connections in
//! `builder.rs`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use affinity_proto::{ClientKey, Policy, pb};

use crate::cache::Entry;
use crate::endpoint::Endpoint;

pub use crate::shared::FailMode;
use crate::shared::{Inner, now_ms};

mod builder;
mod calls;
mod resolve;

pub use builder::Builder;

/// Where a decision came from. New sources may be added: match with a wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// This client's cache (kept current by the store's `Watch` stream).
    Cache,
    /// The store.
    Store {
        /// This call created the lease.
        created: bool,
        /// This call replaced a lease whose endpoint was not eligible.
        replaced: bool,
    },
    /// The store could not answer in time; rendezvous hashing chose.
    Fallback,
}

/// A routing decision for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Where to send the client.
    pub endpoint: Endpoint,
    /// The client's key (its masked prefix).
    pub prefix: ClientKey,
    /// When the decision ends (for a fallback: now, as it is not a lease).
    pub expires_at: SystemTime,
    /// Where it came from.
    pub source: Source,
}

/// A client of the affinity store, with a local lease cache. Cheap to clone; clones share
/// the cache, the connections and the watch stream.
#[derive(Clone)]
pub struct AffinityClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AffinityClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AffinityClient")
            .field("cached", &self.inner.cache.len())
            .field("watching", &self.is_watching())
            .finish_non_exhaustive()
    }
}

thread_local! {
    static HITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Count a cache hit without touching shared memory on every call: each thread adds to the
/// shared counter every 256 hits.
fn count_hit() {
    HITS.with(|hits| {
        let n = hits.get() + 1;
        if n >= 256 {
            metrics::counter!("affinity_client_cache_hits_total").increment(n);
            hits.set(0);
        } else {
            hits.set(n);
        }
    });
}

fn to_system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl AffinityClient {
    /// Start configuring a client.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The hot path: the cached endpoint for `ip` in `scope`, if a live lease is cached
    /// and the cache is current (see [`Builder::max_staleness`]). Synchronous,
    /// allocation-free and lock-free on a hit.
    pub fn cached(&self, scope: &str, ip: IpAddr, policy: &Policy) -> Option<Endpoint> {
        let now = now_ms();
        if !self.inner.fresh(now) {
            return None;
        }
        let key = policy.key(ip);
        let hit = self.inner.cache.endpoint(scope, key, now);
        if hit.is_some() {
            count_hit();
        }
        hit
    }

    /// Put a lease obtained from the store some other way into the cache (the client warms
    /// itself from `List` when its watch starts). Newer revisions and later removals
    /// already known win.
    pub fn remember(&self, lease: &pb::Lease) {
        if let (Ok(key), Some(entry)) = (
            lease.prefix.parse::<ClientKey>(),
            Entry::from_lease(lease, self.inner.skew_ms),
        ) {
            self.inner.cache.put(&lease.scope, key, entry, now_ms());
        }
    }

    /// Whether the watch stream is connected (the cache follows the store's changes).
    pub fn is_watching(&self) -> bool {
        self.inner.watching.load(Ordering::Relaxed)
    }

    /// Whether the cache is current: the watch stream had progress from a node in touch
    /// with the leader within `max_staleness`, so `cached()` may answer. A gateway can
    /// report ready on it.
    pub fn cache_is_current(&self) -> bool {
        self.inner.fresh(now_ms())
    }

    /// Leases in the cache.
    pub fn cache_len(&self) -> usize {
        self.inner.cache.len()
    }
}
