//! The client's one `Watch` stream: it keeps the cache in step with the store.
//!
//! CREATED and REPLACED put the new lease in the cache (for scopes this client uses, so a
//! decision made by another gateway replica is a hit here too); RELEASED, DRAINED and
//! EXPIRED drop it. Revisions keep an older event from undoing a newer answer.
//!
//! When the stream breaks it reconnects with backoff and jitter, to the next node, and
//! resumes from the last revision it accounted for (the store keeps a bounded history of
//! recent changes, the same revisions on every node): nothing is missed and the cache keeps
//! serving meanwhile (expiry is honoured either way). Only when the store's history no longer
//! reaches back that far (OUT_OF_RANGE) is the cache cleared and the stream started afresh.
//! The task ends when the last clone of the client is dropped.

use std::sync::Weak;
use std::time::Duration;

use affinity_proto::pb::watch_event::Kind;
use affinity_proto::{ClientKey, pb};
use tokio_util::sync::CancellationToken;

use crate::cache::Entry;
use crate::client::{Inner, now_ms};
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
            inner.cache.forget(&lease.scope, key, lease.revision);
        }
        Ok(Kind::Unspecified) | Err(_) => {}
    }
}

/// Follow the store's changes until `stop` is cancelled or the client is gone.
pub(crate) async fn run(inner: Weak<Inner>, stop: CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    let mut node = None;
    // The revision up to which every change is accounted for; 0 before the first stream.
    let mut seen: u64 = 0;
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
            opened = client.watch(pb::WatchRequest { scope: String::new(), start_revision: seen }) => opened,
        };
        match opened {
            Ok(response) => {
                if seen > 0 {
                    metrics::counter!("affinity_client_watch_reconnects_total").increment(1);
                }
                let since = response
                    .metadata()
                    .get(REVISION_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                // Resume from at least here next time (from 1 if the store has published
                // nothing yet: replaying all of a short history is harmless).
                seen = seen.max(since).max(1);
                let mut stream = response.into_inner();
                if let Some(strong) = inner.upgrade() {
                    strong
                        .watching
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                backoff = FIRST_BACKOFF;
                let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
                loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        _ = sweep.tick() => {
                            // Ended entries are never served; this frees their memory.
                            let Some(strong) = inner.upgrade() else { return };
                            strong.cache.sweep(now_ms());
                            continue;
                        }
                        next = stream.message() => next,
                    };
                    let Some(strong) = inner.upgrade() else {
                        return;
                    };
                    match next {
                        Ok(Some(event)) => {
                            apply(&strong, &event);
                            seen = seen.max(event.revision);
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(code = ?status.code(), message = status.message(), "watch stream ended");
                            break;
                        }
                    }
                }
                if let Some(strong) = inner.upgrade() {
                    strong
                        .watching
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Err(status) if status.code() == tonic::Code::OutOfRange => {
                // The store no longer remembers what we missed: start afresh.
                tracing::info!(from = seen, "watch history gone; clearing the lease cache");
                if let Some(strong) = inner.upgrade() {
                    strong.cache.clear();
                }
                seen = 0;
                continue;
            }
            Err(status) => {
                tracing::debug!(code = ?status.code(), message = status.message(), "watch could not start");
            }
        }
        let pause = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
