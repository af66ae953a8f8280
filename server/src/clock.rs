//! Time: wall-clock Unix milliseconds, and the leader's stamping clock.
//!
//! Only the leader reads the clock to stamp proposals, and readers use it to judge expiry;
//! applying the log never does (see [`crate::sm`]).
//!
//! Stamps come from [`LeaderClock`]: when a node takes the lead in a term it reads the wall
//! clock once (never earlier than the newest stamp applied), and from then on advances by
//! the monotonic clock. A wall-clock step on the leader during its term (an operator's
//! `date -s`, a VM resumed, an NTP step) therefore neither ends granted leases early (a
//! forward step) nor keeps them beyond their time (a backward step); it is logged.
//!
//! A new leader's wall clock may itself be wrong. Every append a leader sends carries the
//! store time it would stamp at that moment; each follower keeps the latest it heard
//! ([`LeaderClock::heard`]). When a node takes the lead, the store time it starts from is
//! its wall clock held within `max_clock_step` of what it last heard plus the monotonic
//! time elapsed since: a clock 10 s ahead does not end every lease 10 s early, one 10 s
//! behind does not stretch them by 10 s (time still never goes backwards). A node that
//! heard no leader since it started (a whole cluster restarted) has nothing to hold its
//! clock to, and starts from its wall clock. How far a node's wall clock is from the store
//! time it knows is [`LeaderClock::offset_ms`] (`affinity_clock_offset_seconds`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// Now, in Unix milliseconds (0 if the system clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How far the wall clock may drift from the leader's stamps before it is reported.
const STEP_REPORT_MS: i64 = 1_000;

/// The default bound on how far a new leader's wall clock may move store time away from
/// where the previous leader left it.
pub const DEFAULT_MAX_CLOCK_STEP: Duration = Duration::from_secs(1);

/// Where the current term's stamps started.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    term: u64,
    stamp_ms: i64,
    at: Instant,
    reported_step_ms: i64,
}

/// The store time a leader announced, and when this node heard it.
#[derive(Debug, Clone, Copy)]
struct Heard {
    term: u64,
    store_ms: i64,
    at: Instant,
}

/// The leader's clock for stamping proposals; see the module docs.
#[derive(Debug)]
pub struct LeaderClock {
    anchor: Mutex<Option<Anchor>>,
    heard: Mutex<Option<Heard>>,
    max_step_ms: i64,
}

impl Default for LeaderClock {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CLOCK_STEP)
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl LeaderClock {
    /// A clock whose new terms start within `max_step` of the store time last heard.
    pub fn new(max_step: Duration) -> Self {
        Self {
            anchor: Mutex::new(None),
            heard: Mutex::new(None),
            max_step_ms: ms(max_step),
        }
    }

    /// The stamp for a proposal made now as leader of `term`, given the newest stamp
    /// applied (`applied_ms`).
    pub fn stamp(&self, term: u64, applied_ms: i64) -> i64 {
        self.stamp_at(term, applied_ms, now_ms(), Instant::now())
    }

    /// The leader of `term` announced store time `store_ms`, heard at `at`.
    pub fn hear(&self, term: u64, store_ms: i64, at: Instant) {
        let mut heard = self.heard.lock();
        if heard.is_none_or(|h| (h.term, h.store_ms) <= (term, store_ms)) {
            *heard = Some(Heard { term, store_ms, at });
        }
    }

    /// The store time now, by the last announcement heard and the monotonic time since.
    pub fn heard(&self, mono: Instant) -> Option<i64> {
        let heard = (*self.heard.lock())?;
        Some(
            heard
                .store_ms
                .saturating_add(ms(mono.saturating_duration_since(heard.at))),
        )
    }

    /// How far this node's wall clock (`wall_ms`) is ahead of the store time it knows: its
    /// own stamps while it leads `term`, else what it last heard. `None` before either.
    pub fn offset_ms(&self, term: u64, leading: bool, wall_ms: i64, mono: Instant) -> Option<i64> {
        let store = if leading {
            let anchor = (*self.anchor.lock()).filter(|a| a.term == term)?;
            anchor
                .stamp_ms
                .saturating_add(ms(mono.saturating_duration_since(anchor.at)))
        } else {
            self.heard(mono)?
        };
        Some(wall_ms.saturating_sub(store))
    }

    /// [`LeaderClock::stamp`] with the clocks given: `wall_ms` (Unix milliseconds) and
    /// `mono` (the monotonic clock), read together.
    pub fn stamp_at(&self, term: u64, applied_ms: i64, wall_ms: i64, mono: Instant) -> i64 {
        let mut anchor = self.anchor.lock();
        match anchor.as_mut() {
            Some(a) if a.term == term => {
                let elapsed = ms(mono.saturating_duration_since(a.at));
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
            // A late call for an earlier term (an old replication stream) does not move the
            // current term's anchor.
            Some(a) if a.term > term => a
                .stamp_ms
                .saturating_add(ms(mono.saturating_duration_since(a.at)))
                .max(applied_ms),
            _ => {
                let stamp = self.first_stamp(term, applied_ms, wall_ms, mono);
                *anchor = Some(Anchor {
                    term,
                    stamp_ms: stamp,
                    at: mono,
                    reported_step_ms: wall_ms.saturating_sub(stamp),
                });
                stamp
            }
        }
    }

    /// Where a new term's stamps start: the wall clock, held within the step bound of the
    /// store time last heard, and never before what was applied.
    fn first_stamp(&self, term: u64, applied_ms: i64, wall_ms: i64, mono: Instant) -> i64 {
        let Some(heard) = self.heard(mono) else {
            return wall_ms.max(applied_ms);
        };
        let low = heard.saturating_sub(self.max_step_ms).max(applied_ms);
        let high = heard.saturating_add(self.max_step_ms).max(applied_ms);
        let stamp = wall_ms.clamp(low, high);
        if stamp != wall_ms {
            tracing::warn!(
                term,
                wall_offset_ms = wall_ms.saturating_sub(heard),
                max_clock_step_ms = self.max_step_ms,
                "this node's wall clock is far from the store time the previous leader kept; starting its term within max-clock-step of that time"
            );
        }
        stamp
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
    fn a_new_leader_starts_within_the_step_of_what_it_heard() {
        let start = Instant::now();
        let later = start + Duration::from_secs(5);
        // Heard the previous leader at T0; 5 s later this node leads.
        for (wall, expected) in [
            // 10 s ahead: held to 1 s beyond where the old leader's time has got to.
            (T0 + 15_000, T0 + 6_000),
            // 10 s behind: held to 1 s short of it (never below what was applied).
            (T0 - 5_000, T0 + 4_000),
            // Within the step: the wall clock.
            (T0 + 5_400, T0 + 5_400),
        ] {
            let clock = LeaderClock::new(Duration::from_secs(1));
            clock.hear(6, T0, start);
            assert_eq!(
                clock.offset_ms(6, false, wall, later),
                Some(wall - (T0 + 5_000))
            );
            assert_eq!(
                clock.stamp_at(7, T0 - 1, wall, later),
                expected,
                "wall {wall}"
            );
            assert_eq!(clock.offset_ms(7, true, wall, later), Some(wall - expected));
            // The rest of the term follows the monotonic clock from there.
            let then = later + Duration::from_millis(250);
            assert_eq!(clock.stamp_at(7, 0, wall + 250, then), expected + 250);
        }
        // Time never goes back: what was applied wins over a low bound.
        let clock = LeaderClock::new(Duration::from_secs(1));
        clock.hear(6, T0, start);
        assert_eq!(clock.stamp_at(7, T0 + 9_000, T0, later), T0 + 9_000);
        // An older announcement does not replace a newer one.
        clock.hear(5, T0 + 100_000, start);
        assert_eq!(clock.heard(start), Some(T0));
    }

    #[test]
    fn a_node_that_heard_no_leader_starts_from_its_wall_clock() {
        let clock = LeaderClock::new(Duration::from_secs(1));
        let now = Instant::now();
        assert_eq!(clock.offset_ms(1, false, T0, now), None);
        assert_eq!(clock.stamp_at(1, 0, T0 + 60_000, now), T0 + 60_000);
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
        // A late call for an earlier term leaves the current anchor alone.
        let later = start + Duration::from_millis(40);
        assert_eq!(clock.stamp_at(3, 0, T0 - 90_000, later), T0 + 60_040);
        assert_eq!(clock.stamp_at(4, 0, T0 - 90_000, later), T0 + 60_040);
    }
}
