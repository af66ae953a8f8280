//! The change feed of one node: applied events, broadcast to `Watch` subscribers, and a
//! bounded history of recent ones so that a subscriber whose stream broke can resume from
//! the revision it last saw, on this node or any other (revisions are log indexes, the same
//! on every replica).
//!
//! Publishing and subscribing take the same lock, so a subscriber's replay and its live
//! stream meet exactly: no change is missed or sent twice at the seam.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::sm::Event;

/// A change published to subscribers.
#[derive(Debug, Clone)]
pub enum Change {
    /// The events of one applied log entry (never empty).
    Applied(Arc<[Event]>),
    /// The whole state was replaced by a snapshot (a follower catching up); subscribers
    /// cannot know what changed and must start over.
    Replaced {
        /// Log index the new state covers.
        last_log_index: u64,
    },
}

struct History {
    events: VecDeque<Event>,
    /// Every event with a revision at or above this is in `events`.
    floor: u64,
    /// The newest index applied (or the index a snapshot replaced the state up to); every
    /// event at or below it has been published.
    last: u64,
    capacity: usize,
}

/// The feed. Cheap to share behind the state machine.
pub struct Changes {
    history: Mutex<History>,
    sender: broadcast::Sender<Change>,
}

/// A subscription: what happened since the requested revision, then the live feed.
pub struct Subscription {
    /// Events at or after the requested revision, from history, in order.
    pub replay: Vec<Event>,
    /// Every change published after the replay.
    pub live: broadcast::Receiver<Change>,
    /// The newest revision published before `live` starts: every later change comes live.
    /// A subscriber that resumes from here misses nothing.
    pub since: u64,
    /// The revision asked for (0: from now on). A node that has not applied that far yet
    /// publishes older changes live; the stream must skip them, or a resuming subscriber
    /// would go back in time.
    pub start: u64,
}

impl Changes {
    /// A feed whose subscribers may fall `buffer` changes behind, keeping the last `history`
    /// events for resumption.
    pub fn new(buffer: usize, history: usize) -> Self {
        let (sender, _) = broadcast::channel(buffer.max(1));
        Self {
            history: Mutex::new(History {
                events: VecDeque::new(),
                floor: 1,
                last: 0,
                capacity: history,
            }),
            sender,
        }
    }

    /// Publish the events of one applied entry.
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut history = self.history.lock();
        history.last = events
            .iter()
            .map(|e| e.revision)
            .fold(history.last, u64::max);
        history.events.extend(events.iter().cloned());
        // Trim whole revisions, so that what remains is complete from `floor` on.
        while history.events.len() > history.capacity {
            let Some(dropped) = history.events.pop_front() else {
                break;
            };
            while history
                .events
                .front()
                .is_some_and(|e| e.revision == dropped.revision)
            {
                history.events.pop_front();
            }
            history.floor = dropped.revision + 1;
        }
        // No subscriber is not an error.
        let _ = self.sender.send(Change::Applied(Arc::from(events)));
    }

    /// Entries up to `index` are applied (with or without events): a subscriber that
    /// resumes from there misses nothing.
    pub fn advance(&self, index: u64) {
        let mut history = self.history.lock();
        history.last = history.last.max(index);
    }

    /// The newest index applied and published: every change at or below it is in the
    /// live feed already.
    pub fn last(&self) -> u64 {
        self.history.lock().last
    }

    /// The state was replaced up to `last_log_index`: history before it is meaningless.
    pub fn reset(&self, last_log_index: u64) {
        let mut history = self.history.lock();
        history.events.clear();
        history.floor = last_log_index + 1;
        history.last = last_log_index;
        let _ = self.sender.send(Change::Replaced { last_log_index });
    }

    /// Subscribe from revision `start` (0: from now on). `Err(floor)` when history no
    /// longer reaches back to `start`.
    pub fn subscribe(&self, start: u64) -> Result<Subscription, u64> {
        let history = self.history.lock();
        if start != 0 && start < history.floor {
            return Err(history.floor);
        }
        let replay = if start == 0 {
            Vec::new()
        } else {
            history
                .events
                .iter()
                .filter(|e| e.revision >= start)
                .cloned()
                .collect()
        };
        Ok(Subscription {
            replay,
            live: self.sender.subscribe(),
            since: history.last,
            start,
        })
    }

    /// Current subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.sender.receiver_count()
    }
}

/// Events for the tests of the feed and of the streams built on it.
#[cfg(test)]
pub(crate) mod test_events {
    use crate::sm::{Event, EventKind, Lease};

    /// A CREATED event of revision `revision` for the `n`th /24.
    pub(crate) fn event(revision: u64, n: u8) -> Event {
        Event {
            kind: EventKind::Created,
            lease: Lease {
                scope: "s".into(),
                key: format!("10.0.{n}.0/24").parse().unwrap(),
                endpoint: "a:1".into(),
                created_at_ms: 0,
                expires_at_ms: 1,
                idle_timeout_ms: None,
                last_used_ms: 0,
                revision,
            },
            revision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_events::event;
    use super::*;

    #[test]
    fn resume_replays_from_the_revision_then_follows_live() {
        let changes = Changes::new(16, 100);
        changes.publish(vec![event(1, 1)]);
        changes.publish(vec![event(2, 2), event(2, 3)]);
        let mut sub = changes.subscribe(2).unwrap();
        assert_eq!(
            sub.replay.iter().map(|e| e.revision).collect::<Vec<_>>(),
            [2, 2]
        );
        changes.publish(vec![event(3, 4)]);
        let Ok(Change::Applied(live)) = sub.live.try_recv() else {
            panic!("live change")
        };
        assert_eq!(live[0].revision, 3);
        assert!(changes.subscribe(0).unwrap().replay.is_empty());
    }

    #[test]
    fn history_is_trimmed_by_whole_revisions_and_says_how_far_it_reaches() {
        let changes = Changes::new(16, 3);
        changes.publish(vec![event(1, 1), event(1, 2)]);
        changes.publish(vec![event(2, 3), event(2, 4)]);
        // Four events do not fit in three: revision 1 goes, wholly.
        assert_eq!(changes.subscribe(1).err(), Some(2));
        assert_eq!(changes.subscribe(2).unwrap().replay.len(), 2);
        changes.reset(10);
        assert_eq!(changes.subscribe(5).err(), Some(11));
        assert!(changes.subscribe(11).unwrap().replay.is_empty());
    }
}
