//! The state every clone of an [`AffinityClient`](crate::AffinityClient) shares, below both
//! the client's call paths ([`crate::client`]) and the watch task ([`crate::watch`]), which
//! reaches it through a weak handle so that dropping the last client stops the watch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use affinity_proto::{ClientKey, pb};
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::breaker::Breaker;
use crate::cache::{Entry, LeaseCache};
use crate::error::ClientError;
use crate::transport::Nodes;

/// What happens when the store cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailMode {
    /// Answer with a rendezvous-hash fallback decision (the same on every replica), and say
    /// so in [`Decision::source`](crate::Decision::source). The default: a gateway keeps routing.
    #[default]
    Open,
    /// Return the error.
    Closed,
}

/// Wall clock, Unix ms.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How long the cache remembers a removal: longer than any answer it caches can take
/// (answers slower than this are returned but not cached).
pub(crate) fn removal_window_ms(request_timeout: Duration) -> i64 {
    let window = request_timeout.saturating_mul(2) + Duration::from_secs(1);
    i64::try_from(window.as_millis()).unwrap_or(i64::MAX)
}

/// What a store `Resolve` answered, shared by callers of one in-flight request.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub lease: pb::Lease,
    pub created: bool,
    pub replaced: bool,
}

pub(crate) type Flight = Shared<BoxFuture<'static, Result<Answer, ClientError>>>;

/// What every clone of a client shares: connections, cache, in-flight requests, the
/// breaker, and the watch's state.
pub(crate) struct Inner {
    pub nodes: Nodes,
    pub cache: LeaseCache,
    pub skew_ms: i64,
    pub request_timeout: Duration,
    pub fail_mode: FailMode,
    pub inflight: Mutex<HashMap<(String, ClientKey), (u64, Flight)>>,
    pub flight_ids: AtomicU64,
    pub breaker: Breaker,
    pub last_warning_ms: AtomicI64,
    pub watching: AtomicBool,
    /// When the watch last had progress from a node in touch with the leader (Unix ms;
    /// `i64::MIN` before it has).
    pub fresh_ms: AtomicI64,
    pub max_staleness_ms: i64,
    pub watch_timeout: Duration,
    pub stop: CancellationToken,
}

impl Inner {
    /// Cache a lease the store answered to a request sent at `sent` in cache epoch
    /// `epoch`, unless the cache learned of a removal or lost track of changes since, or
    /// the answer took too long to be sure of either.
    pub fn cache_answer(&self, sent: Instant, epoch: u64, lease: &pb::Lease) {
        let in_time = i64::try_from(sent.elapsed().as_millis())
            .is_ok_and(|took| took < removal_window_ms(self.request_timeout));
        if in_time
            && let (Ok(key), Some(entry)) = (
                lease.prefix.parse::<ClientKey>(),
                Entry::from_lease(lease, self.skew_ms),
            )
        {
            self.cache
                .put_answer(epoch, &lease.scope, key, entry, now_ms());
        }
    }

    /// Whether the cache may answer at `now_ms`: progress came within `max_staleness`
    /// (and not from the future: a wall clock stepped back counts as stale). One load and
    /// a compare.
    pub fn fresh(&self, now_ms: i64) -> bool {
        let age = now_ms.saturating_sub(self.fresh_ms.load(Ordering::Relaxed));
        (0..=self.max_staleness_ms).contains(&age)
    }

    /// How long since the last progress, in seconds (for the staleness gauge).
    pub fn staleness_seconds(&self, now_ms: i64) -> f64 {
        let fresh = self.fresh_ms.load(Ordering::Relaxed);
        if fresh == i64::MIN {
            return f64::INFINITY;
        }
        #[allow(clippy::cast_precision_loss)]
        let seconds = now_ms.saturating_sub(fresh) as f64 / 1000.0;
        seconds
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
