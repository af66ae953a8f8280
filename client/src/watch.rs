//! The client's one `Watch` stream: it keeps the cache in step with the store.
//!
//! CREATED and REPLACED put the new lease in the cache (for scopes this client uses, so a
//! decision made by another gateway replica is a hit here too); RELEASED, DRAINED and
//! EXPIRED drop it. Revisions keep an older event from undoing a newer answer.
//!
//! When the stream breaks it reconnects with backoff and jitter, to the next node, and
//! resumes from the last revision it applied (the store keeps a bounded history of recent
//! changes, the same revisions on every node): nothing is missed and the cache keeps
//! serving meanwhile (expiry is honoured either way). The resume point moves only with
//! events applied, never with what a node says it has published, so a stream that breaks
//! in the middle of a replay resumes inside it; an event older than the resume point (from
//! a node that has not caught up) is ignored. Only when the store's history no longer
//! reaches back that far (OUT_OF_RANGE) is the cache cleared and the stream started afresh.
//!
//! The store sends PROGRESS on every stream twice a second: the index the node applied and
//! whether it is in touch with a leader. Progress from a node in touch with the leader marks
//! the cache fresh (`Inner::fresh_ms`, which `cached()` checks against `max_staleness`). A
//! stream with neither such progress nor changes for `watch_timeout` is following a node
//! that is slow or cut off from its leader: it is dropped, and the next node takes over
//! from the same resume point.
//!
//! A stream that starts from now (the first one, or the one after a gap it could not resume)
//! also fills the cache from `List` (every scope, paged, up to the cache's capacity), so a
//! client that starts serves the leases every other replica serves instead of asking the
//! store about each. The listing runs beside the stream, which was opened first, so no
//! change is missed between them (removals are remembered, so a page read before a removal
//! cannot bring the lease back), and the cache is not marked fresh until it is done.
//!
//! The task ends when the last clone of the client is dropped.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use affinity_proto::pb::watch_event::Kind;
use affinity_proto::{ClientKey, pb};
use tokio_util::sync::CancellationToken;

use crate::cache::Entry;
use crate::shared::{Inner, now_ms};
use crate::transport::REVISION_METADATA;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Apply one event to the cache.
pub(crate) fn apply(inner: &Inner, event: &pb::WatchEvent) {
    let Some(lease) = &event.lease else {
        return;
    };
    let Ok(key) = lease.prefix.parse::<ClientKey>() else {
        return;
    };
    match Kind::try_from(event.kind) {
        Ok(Kind::Created | Kind::Replaced) => {
            if inner.cache.knows_scope(&lease.scope)
                && let Some(entry) = Entry::from_lease(lease, inner.skew_ms)
            {
                inner.cache.put(&lease.scope, key, entry, now_ms());
            }
        }
        Ok(Kind::Released | Kind::Drained | Kind::Expired) => {
            // The removal's own revision: no answer at or below it may bring the lease back.
            inner.cache.forget(
                &lease.scope,
                key,
                event.revision.max(lease.revision),
                now_ms(),
            );
        }
        Ok(Kind::Progress | Kind::Unspecified) | Err(_) => {}
    }
}

/// Where the next stream starts: the revision up to which every change has been applied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resume {
    /// 0 before the first stream (start from now).
    seen: u64,
    /// Events below this are older than what the current stream was asked for.
    floor: u64,
}

impl Resume {
    /// The `start_revision` to ask for.
    pub fn start(self) -> u64 {
        self.seen
    }

    /// A stream opened that the node began after `since`. A first stream (from now) has
    /// everything up to `since` accounted for; a resumed one has only what it applied.
    pub fn opened(&mut self, since: u64) {
        self.floor = self.seen;
        if self.seen == 0 {
            // From 1 if the store has published nothing yet: replaying all of a short
            // history is harmless.
            self.seen = since.max(1);
        }
    }

    /// An event arrived: whether to apply it (it is not older than the stream's start),
    /// moving the resume point past it if so.
    pub fn arrived(&mut self, revision: u64) -> bool {
        if revision < self.floor {
            return false;
        }
        self.seen = self.seen.max(revision);
        true
    }

    /// The node's history no longer reaches back: start afresh.
    pub fn restart(&mut self) {
        *self = Resume::default();
    }
}

/// Leases asked for per `List` page while warming the cache.
const WARM_PAGE: usize = 1000;

/// Fill the cache from `List`, every scope, up to its capacity; retried with backoff until
/// done, `stop`, or the client is gone.
async fn warm(inner: Weak<Inner>, stop: CancellationToken) {
    let Some(epoch) = inner.upgrade().map(|i| i.cache.epoch()) else {
        return;
    };
    let mut token = String::new();
    let mut listed = 0usize;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let wanted = strong
            .cache
            .capacity()
            .saturating_sub(listed)
            .min(WARM_PAGE);
        if wanted == 0 {
            return;
        }
        let wire = pb::ListRequest {
            scope: String::new(),
            page_size: u32::try_from(wanted).unwrap_or(1),
            page_token: token.clone(),
        };
        let sent = Instant::now();
        let call = strong
            .nodes
            .call("List", sent + strong.request_timeout, |mut c, remaining| {
                let mut request = tonic::Request::new(wire.clone());
                request.set_timeout(remaining);
                async move { c.list(request).await }
            });
        let page = tokio::select! {
            () = stop.cancelled() => return,
            page = call => page,
        };
        match page {
            Ok(page) => {
                for lease in &page.leases {
                    strong.cache_answer(sent, epoch, lease);
                }
                listed += page.leases.len();
                if page.next_page_token.is_empty() {
                    tracing::debug!(listed, "lease cache warmed from List");
                    return;
                }
                token = page.next_page_token;
                backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                tracing::debug!(error = %e, "warming the lease cache from List failed; retrying");
                drop(strong);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Follow the store's changes until `stop` is cancelled or the client is gone.
pub(crate) async fn run(inner: Weak<Inner>, stop: CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    let mut node = None;
    let mut resume = Resume::default();
    // The cache is not fresh while this runs.
    let mut warming: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let (index, mut client) = match node {
            None => strong.nodes.any(),
            Some(i) => strong.nodes.next(i),
        };
        node = Some(index);
        drop(strong);
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = client.watch(pb::WatchRequest { scope: String::new(), start_revision: resume.start() }) => opened,
        };
        match opened {
            Ok(response) => {
                if resume.start() > 0 {
                    metrics::counter!("affinity_client_watch_reconnects_total").increment(1);
                } else if inner.upgrade().is_some_and(|i| i.cache.capacity() > 0) {
                    // From now on: fill the cache with what the store already holds.
                    if let Some(old) = warming.take() {
                        old.abort();
                    }
                    warming = Some(tokio::spawn(warm(inner.clone(), stop.clone())));
                }
                let since = response
                    .metadata()
                    .get(REVISION_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                resume.opened(since);
                let mut stream = response.into_inner();
                if let Some(strong) = inner.upgrade() {
                    strong.watching.store(true, Ordering::Relaxed);
                }
                backoff = FIRST_BACKOFF;
                let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
                let watch_timeout = inner.upgrade().map_or(MAX_BACKOFF, |i| i.watch_timeout);
                let mut silent_until = tokio::time::Instant::now() + watch_timeout;
                loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        _ = sweep.tick() => {
                            // Ended entries are never served; this frees their memory.
                            let Some(strong) = inner.upgrade() else { return };
                            let now = now_ms();
                            strong.cache.sweep(now);
                            metrics::gauge!("affinity_client_cache_staleness_seconds")
                                .set(strong.staleness_seconds(now));
                            continue;
                        }
                        () = tokio::time::sleep_until(silent_until) => {
                            metrics::counter!("affinity_client_watch_timeouts_total").increment(1);
                            tracing::info!(
                                timeout = ?watch_timeout,
                                "no progress from a node in touch with the leader on the watch stream; watching another node"
                            );
                            break;
                        }
                        next = stream.message() => next,
                    };
                    let Some(strong) = inner.upgrade() else {
                        return;
                    };
                    match next {
                        Ok(Some(event)) => {
                            let current = resume.arrived(event.revision);
                            if event.kind == i32::from(Kind::Progress) {
                                if current && event.in_touch_with_leader {
                                    let warmed = warming
                                        .as_ref()
                                        .is_none_or(tokio::task::JoinHandle::is_finished);
                                    if warmed {
                                        strong.fresh_ms.store(now_ms(), Ordering::Relaxed);
                                    }
                                    silent_until = tokio::time::Instant::now() + watch_timeout;
                                }
                            } else if current {
                                apply(&strong, &event);
                                // Changes flowing (a long replay, say) are not a silent
                                // stream; only progress makes the cache fresh, though.
                                silent_until = tokio::time::Instant::now() + watch_timeout;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(code = ?status.code(), message = status.message(), "watch stream ended");
                            break;
                        }
                    }
                }
                if let Some(strong) = inner.upgrade() {
                    strong.watching.store(false, Ordering::Relaxed);
                }
            }
            Err(status) if status.code() == tonic::Code::OutOfRange => {
                // The store no longer remembers what we missed: start afresh.
                tracing::info!(
                    from = resume.start(),
                    "watch history gone; clearing the lease cache"
                );
                if let Some(strong) = inner.upgrade() {
                    strong.cache.clear();
                }
                resume.restart();
                continue;
            }
            Err(status) => {
                tracing::debug!(code = ?status.code(), message = status.message(), "watch could not start");
            }
        }
        if let Some(strong) = inner.upgrade() {
            metrics::gauge!("affinity_client_cache_staleness_seconds")
                .set(strong.staleness_seconds(now_ms()));
        }
        let pause = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::Resume;

    #[test]
    fn a_first_stream_starts_from_what_the_node_had_published() {
        let mut resume = Resume::default();
        assert_eq!(resume.start(), 0);
        resume.opened(40);
        assert_eq!(resume.start(), 40);
        assert!(resume.arrived(41));
        assert_eq!(resume.start(), 41);
    }

    #[test]
    fn a_stream_broken_mid_replay_resumes_inside_the_replay() {
        let mut resume = Resume::default();
        resume.opened(10);
        assert!(resume.arrived(12));
        // The stream broke; the next node will replay from 12 up to its 50,000.
        resume.opened(50_000);
        assert_eq!(
            resume.start(),
            12,
            "nothing is marked seen before it arrives"
        );
        assert!(resume.arrived(12));
        assert!(resume.arrived(300));
        // Broken again after event 300 of the replay.
        resume.opened(50_000);
        assert_eq!(resume.start(), 300);
    }

    #[test]
    fn events_older_than_the_start_are_ignored() {
        let mut resume = Resume::default();
        resume.opened(10);
        assert!(resume.arrived(20));
        // Resumed on a node still catching up, that streams older changes live.
        resume.opened(15);
        assert!(!resume.arrived(17));
        assert!(resume.arrived(20), "the resume point itself may come again");
        assert!(resume.arrived(21));
        assert_eq!(resume.start(), 21);
    }
}
