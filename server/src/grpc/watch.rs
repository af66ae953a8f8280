//! The `Watch` stream: this node's applied changes, filtered by scope, in log order,
//! optionally preceded by a replay of recent history (resumption after a broken stream).
//!
//! A subscriber that falls too far behind (the change buffer overflows) is ended with
//! ABORTED; so is every subscriber when the node replaces its whole state with a snapshot,
//! because the individual changes are then unknown. Either way the caller re-reads (List)
//! and watches again. A stopping node ends its streams with UNAVAILABLE.

use std::collections::VecDeque;
use std::pin::Pin;

use affinity_proto::pb;
use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::ServiceError;
use crate::sm::Event;
use crate::store::{Change, Subscription};

/// What `Watch` returns.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

struct State {
    changes: broadcast::Receiver<Change>,
    scope: Option<String>,
    pending: VecDeque<pb::WatchEvent>,
    shutdown: CancellationToken,
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
        pending,
        shutdown,
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
            };
            match change {
                Ok(Change::Applied(events)) => {
                    let wanted = events
                        .iter()
                        .filter(|e| st.scope.as_deref().is_none_or(|s| *e.lease.scope == *s));
                    st.pending.extend(wanted.map(Event::to_pb));
                }
                Ok(Change::Replaced { last_log_index }) => {
                    st.ended = true;
                    let message = format!(
                        "this node replaced its state with a snapshot up to log index {last_log_index}; re-read with List and watch again"
                    );
                    return Some((Err(ServiceError::Aborted(message).into()), st));
                }
                Err(RecvError::Lagged(missed)) => {
                    st.ended = true;
                    let message = format!(
                        "this watch fell {missed} changes behind and was ended; re-read with List and watch again"
                    );
                    return Some((Err(ServiceError::Aborted(message).into()), st));
                }
                Err(RecvError::Closed) => {
                    st.ended = true;
                    return Some((
                        Err(ServiceError::Unavailable(
                            "this node's state machine has stopped".into(),
                        )
                        .into()),
                        st,
                    ));
                }
            }
        }
    }))
}
