//! The `Watch` stream: this node's applied changes, filtered by scope, in log order,
//! optionally preceded by a replay of recent history (resumption after a broken stream).
//! Nothing below the requested start revision is ever sent, also by a node that has not
//! applied that far yet: it waits until it has.
//!
//! Every [`PROGRESS_EVERY`] the stream also sends a PROGRESS event: the index this node has
//! applied (every change up to it sent before) and whether it is in touch with a leader of
//! its term, so a client can tell a quiet stream from a node cut off from the cluster.
//!
//! A subscriber that falls too far behind (the change buffer overflows) is ended with
//! ABORTED; so is every subscriber when the node replaces its whole state with a snapshot,
//! because the individual changes are then unknown. Either way the caller re-reads (List)
//! and watches again. A stopping node ends its streams with UNAVAILABLE.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use affinity_proto::pb;
use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::ServiceError;
use crate::sm::Event;
use crate::store::{Change, Subscription};

/// What `Watch` returns.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

/// How often a stream reports progress.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What a stream's PROGRESS events report, and how often.
#[derive(Clone)]
pub struct Progress {
    /// The interval between two PROGRESS events.
    pub every: Duration,
    /// The index applied, every change up to it already published, and whether the node
    /// is in touch with a leader of its term. Read in that order.
    pub probe: Arc<dyn Fn() -> (u64, bool) + Send + Sync>,
}

struct State {
    changes: broadcast::Receiver<Change>,
    scope: Option<String>,
    /// Changes below this revision are never sent (the subscriber has them already).
    start: u64,
    pending: VecDeque<pb::WatchEvent>,
    shutdown: CancellationToken,
    progress: Progress,
    ticks: Interval,
    ended: bool,
    /// This stream's place among the node's `max-watchers`; freed when the stream is dropped.
    _slot: OwnedSemaphorePermit,
}

/// The stream of `subscription`'s replay then live changes, in `scope` or all scopes.
pub fn stream(
    subscription: Subscription,
    scope: Option<String>,
    shutdown: CancellationToken,
    slot: OwnedSemaphorePermit,
    progress: Progress,
) -> WatchStream {
    let pending = subscription
        .replay
        .iter()
        .filter(|e| scope.as_deref().is_none_or(|s| *e.lease.scope == *s))
        .map(Event::to_pb)
        .collect();
    let state = State {
        changes: subscription.live,
        scope,
        start: subscription.start,
        pending,
        shutdown,
        ticks: {
            let mut ticks = tokio::time::interval(progress.every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks
        },
        progress,
        ended: false,
        _slot: slot,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.ended {
            return None;
        }
        loop {
            if let Some(event) = st.pending.pop_front() {
                return Some((Ok(event), st));
            }
            let change = tokio::select! {
                biased;
                () = st.shutdown.cancelled() => {
                    st.ended = true;
                    let e = ServiceError::Unavailable("this node is shutting down; watch another node".into());
                    return Some((Err(e.into()), st));
                }
                change = st.changes.recv() => change,
                _ = st.ticks.tick() => {
                    let (applied, in_touch) = (st.progress.probe)();
                    // Everything published up to `applied` is in the feed: send it first.
                    loop {
                        let next = match st.changes.try_recv() {
                            Ok(change) => Ok(change),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                            Err(TryRecvError::Closed) => Err(RecvError::Closed),
                        };
                        if let Err(end) = st.take(next) {
                            return Some((Err(end), st));
                        }
                    }
                    st.pending.push_back(pb::WatchEvent {
                        kind: pb::watch_event::Kind::Progress.into(),
                        lease: None,
                        revision: applied,
                        in_touch_with_leader: in_touch,
                    });
                    continue;
                }
            };
            if let Err(end) = st.take(change) {
                return Some((Err(end), st));
            }
        }
    }))
}

impl State {
    /// Queue what a change means for this stream; the error that ends it, if it does.
    fn take(&mut self, change: Result<Change, RecvError>) -> Result<(), Status> {
        let end = match change {
            Ok(Change::Applied(events)) => {
                let wanted = events.iter().filter(|e| {
                    e.revision >= self.start
                        && self.scope.as_deref().is_none_or(|s| *e.lease.scope == *s)
                });
                self.pending.extend(wanted.map(Event::to_pb));
                return Ok(());
            }
            Ok(Change::Replaced { last_log_index }) => ServiceError::Aborted(format!(
                "this node replaced its state with a snapshot up to log index {last_log_index}; re-read with List and watch again"
            )),
            Err(RecvError::Lagged(missed)) => ServiceError::Aborted(format!(
                "this watch fell {missed} changes behind and was ended; re-read with List and watch again"
            )),
            Err(RecvError::Closed) => {
                ServiceError::Unavailable("this node's state machine has stopped".into())
            }
        };
        self.ended = true;
        Err(end.into())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::store::Changes;
    use crate::store::changes::test_events;

    fn event(revision: u64) -> Event {
        test_events::event(revision, u8::try_from(revision % 250).unwrap())
    }

    #[tokio::test]
    async fn a_node_behind_the_start_revision_sends_nothing_older() {
        let changes = Changes::new(16, 100);
        for revision in 1..=3 {
            changes.publish(vec![event(revision)]);
        }
        // The subscriber has seen up to 5 elsewhere; this node has applied only 3.
        let subscription = changes.subscribe(5).unwrap();
        let slot = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let mut events = stream(subscription, None, CancellationToken::new(), slot, quiet());
        for revision in 4..=7 {
            changes.publish(vec![event(revision)]);
        }
        let mut sent = Vec::new();
        for _ in 0..3 {
            sent.push(events.next().await.unwrap().unwrap().revision);
        }
        assert_eq!(sent, [5, 6, 7], "revision 4 is older than the start");
    }

    /// Progress that never comes during a test.
    fn quiet() -> Progress {
        Progress {
            every: Duration::from_secs(3600),
            probe: Arc::new(|| (0, false)),
        }
    }

    #[tokio::test]
    async fn progress_follows_every_change_it_covers() {
        let changes = Arc::new(Changes::new(16, 100));
        let subscription = changes.subscribe(0).unwrap();
        let slot = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let feed = changes.clone();
        let progress = Progress {
            every: Duration::from_millis(20),
            probe: Arc::new(move || (feed.last(), true)),
        };
        let mut events = stream(subscription, None, CancellationToken::new(), slot, progress);
        let first = events.next().await.unwrap().unwrap();
        assert_eq!(first.kind(), pb::watch_event::Kind::Progress);
        assert_eq!((first.revision, first.in_touch_with_leader), (0, true));
        changes.publish(vec![event(1)]);
        changes.publish(vec![event(2)]);
        // Entries without events move the applied index too.
        changes.advance(4);
        // Every PROGRESS comes after the changes at or below its revision.
        let mut created = Vec::new();
        loop {
            let e = events.next().await.unwrap().unwrap();
            if e.kind() == pb::watch_event::Kind::Progress {
                let covered: Vec<u64> = (1..=e.revision.min(2)).collect();
                assert_eq!(
                    created, covered,
                    "PROGRESS {} ahead of a change",
                    e.revision
                );
                if e.revision == 4 {
                    break;
                }
            } else {
                created.push(e.revision);
            }
        }
    }
}
