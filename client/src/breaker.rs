//! The client's circuit breaker: after the store fails, misses stop waiting for it for a
//! growing cool-off, while one request at a time still probes it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// After a failure, misses stop waiting for the store for a while (doubling up to 5 s): they
/// fall back (or fail, when closed) at once. One request at a time still goes through as a
/// probe, so the first answer after the store recovers closes the breaker.
#[derive(Default)]
pub(crate) struct Breaker {
    down_until_ms: AtomicI64,
    cooldown_ms: AtomicI64,
    probing: AtomicBool,
}

/// What the breaker lets a miss do.
pub(crate) enum Admission {
    /// Ask the store.
    Ask,
    /// Ask the store as the one probe; call [`Breaker::probe_done`] after.
    Probe,
    /// Do not wait for the store.
    Skip,
}

impl Breaker {
    pub fn admit(&self, now: i64) -> Admission {
        if now >= self.down_until_ms.load(Ordering::Relaxed) {
            Admission::Ask
        } else if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            Admission::Probe
        } else {
            Admission::Skip
        }
    }

    pub fn probe_done(&self) {
        self.probing.store(false, Ordering::Release);
    }

    pub fn failed(&self, now: i64) {
        let cooldown = (self.cooldown_ms.load(Ordering::Relaxed) * 2).clamp(250, 5_000);
        self.cooldown_ms.store(cooldown, Ordering::Relaxed);
        self.down_until_ms.store(now + cooldown, Ordering::Relaxed);
    }

    pub fn succeeded(&self) {
        self.cooldown_ms.store(0, Ordering::Relaxed);
        self.down_until_ms.store(0, Ordering::Relaxed);
    }
}

/// Clears the probe flag however the probing call ends (cancelled included).
pub(crate) struct ProbeGuard<'a>(pub Option<&'a Breaker>);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(breaker) = self.0 {
            breaker.probe_done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(b: &Breaker, now: i64) -> &'static str {
        match b.admit(now) {
            Admission::Ask => "ask",
            Admission::Probe => "probe",
            Admission::Skip => "skip",
        }
    }

    #[test]
    fn after_a_failure_one_probe_goes_through_and_the_rest_skip() {
        let b = Breaker::default();
        assert_eq!(ask(&b, 0), "ask");
        b.failed(1_000);
        assert_eq!(ask(&b, 1_001), "probe");
        assert_eq!(ask(&b, 1_002), "skip", "one probe at a time");
        b.probe_done();
        assert_eq!(ask(&b, 1_003), "probe");
        b.probe_done();
        // The cool-off ends by itself (250 ms after the first failure)...
        assert_eq!(ask(&b, 1_250), "ask");
        // ...and doubles with each failure in a row, up to 5 s.
        b.failed(2_000);
        assert_eq!(ask(&b, 2_499), "probe");
        b.probe_done();
        assert_eq!(ask(&b, 2_500), "ask");
        for _ in 0..10 {
            b.failed(10_000);
        }
        assert_eq!(ask(&b, 14_999), "probe");
        b.probe_done();
        assert_eq!(ask(&b, 15_000), "ask");
    }

    #[test]
    fn a_success_closes_the_breaker() {
        let b = Breaker::default();
        b.failed(1_000);
        b.succeeded();
        assert_eq!(ask(&b, 1_001), "ask");
    }

    #[test]
    fn the_probe_flag_is_cleared_however_the_probe_ends() {
        let b = Breaker::default();
        b.failed(0);
        assert_eq!(ask(&b, 1), "probe");
        drop(ProbeGuard(Some(&b)));
        assert_eq!(ask(&b, 2), "probe");
    }
}
