//! Time: wall-clock Unix milliseconds, and the leader's stamping clock.
//!
//! Only the leader reads the clock to stamp proposals, and readers use it to judge expiry;
//! applying the log never does (see [`crate::sm`]).
//!
//! Stamps come from [`LeaderClock`]: when a node takes the lead in a term it reads the wall
//! clock once (never earlier than the newest stamp applied), and from then on advances by
//! the monotonic clock. A wall-clock step on the leader during its term (an operator's
//! `date -s`, a VM resumed, an NTP step) therefore neither ends granted leases early (a
//! forward step) nor keeps them beyond their time (a backward step); it is logged. A node
//! whose wall clock is already wrong when it becomes leader still moves time by that error:
//! keep nodes' clocks synchronized.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// Now, in Unix milliseconds (0 if the system clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How far the wall clock may drift from the leader's stamps before it is reported.
const STEP_REPORT_MS: i64 = 1_000;

/// Where the current term's stamps started.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    term: u64,
    stamp_ms: i64,
    at: Instant,
    reported_step_ms: i64,
}

/// The leader's clock for stamping proposals; see the module docs.
#[derive(Debug, Default)]
pub struct LeaderClock {
    anchor: Mutex<Option<Anchor>>,
}

impl LeaderClock {
    /// The stamp for a proposal made now as leader of `term`, given the newest stamp
    /// applied (`applied_ms`).
    pub fn stamp(&self, term: u64, applied_ms: i64) -> i64 {
        self.stamp_at(term, applied_ms, now_ms(), Instant::now())
    }

    /// [`LeaderClock::stamp`] with the clocks given: `wall_ms` (Unix milliseconds) and
    /// `mono` (the monotonic clock), read together.
    pub fn stamp_at(&self, term: u64, applied_ms: i64, wall_ms: i64, mono: Instant) -> i64 {
        let mut anchor = self.anchor.lock();
        match anchor.as_mut() {
            Some(a) if a.term == term => {
                let elapsed = i64::try_from(mono.saturating_duration_since(a.at).as_millis())
                    .unwrap_or(i64::MAX);
                let stamp = a.stamp_ms.saturating_add(elapsed).max(applied_ms);
                let step = wall_ms.saturating_sub(stamp);
                if step.abs() > STEP_REPORT_MS && (step - a.reported_step_ms).abs() > STEP_REPORT_MS
                {
                    a.reported_step_ms = step;
                    tracing::warn!(
                        step_ms = step,
                        term,
                        "the wall clock stepped while this node leads; stamping by the monotonic clock, so leases already granted keep their length"
                    );
                }
                stamp
            }
            _ => {
                let stamp = wall_ms.max(applied_ms);
                *anchor = Some(Anchor {
                    term,
                    stamp_ms: stamp,
                    at: mono,
                    reported_step_ms: 0,
                });
                stamp
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn within_a_term_stamps_follow_the_monotonic_clock() {
        let clock = LeaderClock::default();
        let start = Instant::now();
        assert_eq!(clock.stamp_at(3, 0, T0, start), T0);
        let later = start + Duration::from_millis(1_500);
        // The wall clock jumped an hour ahead, then an hour behind: stamps do not.
        assert_eq!(clock.stamp_at(3, 0, T0 + 3_600_000, later), T0 + 1_500);
        let later = start + Duration::from_secs(2);
        assert_eq!(clock.stamp_at(3, 0, T0 - 3_600_000, later), T0 + 2_000);
    }

    #[test]
    fn a_new_term_starts_from_the_wall_clock_but_never_before_what_was_applied() {
        let clock = LeaderClock::default();
        let start = Instant::now();
        assert_eq!(clock.stamp_at(1, 0, T0, start), T0);
        // A new term behind what was applied starts at what was applied.
        assert_eq!(clock.stamp_at(2, T0 + 5_000, T0, start), T0 + 5_000);
        // And stamps never go below what was applied.
        assert_eq!(
            clock.stamp_at(2, T0 + 9_000, T0, start + Duration::from_millis(10)),
            T0 + 9_000
        );
        // A later term re-anchors on the wall clock.
        assert_eq!(clock.stamp_at(4, 0, T0 + 60_000, start), T0 + 60_000);
    }
}
