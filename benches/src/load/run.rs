//! Driving operations: closed loop (callers back to back) or open loop (a fixed arrival
//! rate), timing each, until a duration or an operation count is reached.

// Rates are for display: an f64 is exact far beyond any operation count here.
#![allow(clippy::cast_precision_loss)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// How operations arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `callers` tasks, each starting an operation when its previous one ends.
    Closed {
        /// Concurrent callers.
        callers: usize,
    },
    /// Operations start at `rate` per second whatever the latency, at most `in_flight`
    /// at once; latency counts from each operation's scheduled start.
    Open {
        /// Arrivals per second.
        rate: f64,
        /// Most operations in flight.
        in_flight: usize,
    },
}

/// When a run ends.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Stop starting operations after this long.
    pub duration: Duration,
    /// Or after this many operations, if given.
    pub ops: Option<u64>,
}

/// What a run measured.
#[derive(Debug)]
pub struct Measured {
    /// Successful operations.
    pub ok: u64,
    /// Failed operations by gRPC code name (or error kind).
    pub errors: BTreeMap<String, u64>,
    /// Wall time from the first start to the last end.
    pub elapsed: Duration,
    /// Latency of successful operations, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl Measured {
    // The bounds are constants that hdrhistogram accepts.
    #[allow(clippy::expect_used)]
    fn new() -> Self {
        Measured {
            ok: 0,
            errors: BTreeMap::new(),
            elapsed: Duration::ZERO,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }

    fn record(&mut self, took: Duration, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok += 1;
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
                self.latency_us.saturating_record(us);
            }
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    fn merge(&mut self, other: &Measured) {
        self.ok += other.ok;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        let _ = self.latency_us.add(&other.latency_us);
    }

    /// Successful operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }
}

/// Run `op` (given a caller index and an operation number) under `mode` until `limit`.
pub async fn drive<F, Fut>(mode: Mode, limit: Limit, op: F) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let deadline = started + limit.duration;
    let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let take = {
        let issued = Arc::clone(&issued);
        move || {
            let n = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let within = limit.ops.is_none_or(|max| n < max);
            (within && Instant::now() < deadline).then_some(n)
        }
    };
    let total = Arc::new(Mutex::new(Measured::new()));
    match mode {
        Mode::Closed { callers } => {
            let mut tasks = tokio::task::JoinSet::new();
            for caller in 0..callers.max(1) {
                let op = Arc::clone(&op);
                let take = take.clone();
                let total = Arc::clone(&total);
                tasks.spawn(async move {
                    let mut mine = Measured::new();
                    while let Some(n) = take() {
                        let start = Instant::now();
                        let outcome = op(caller, n).await;
                        mine.record(start.elapsed(), outcome);
                    }
                    total.lock().merge(&mine);
                });
            }
            while tasks.join_next().await.is_some() {}
        }
        Mode::Open { rate, in_flight } => {
            let permits = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
            let gap = Duration::from_secs_f64(1.0 / rate.max(1.0));
            let mut tasks = tokio::task::JoinSet::new();
            let mut scheduled = Instant::now();
            while let Some(n) = take() {
                tokio::time::sleep_until(scheduled.into()).await;
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                let op = Arc::clone(&op);
                let total = Arc::clone(&total);
                let due = scheduled;
                tasks.spawn(async move {
                    let outcome = op(0, n).await;
                    total.lock().record(due.elapsed(), outcome);
                    drop(permit);
                });
                scheduled += gap;
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let mut measured = std::mem::replace(&mut *total.lock(), Measured::new());
    measured.elapsed = started.elapsed();
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_loop_counts_every_operation_and_error() {
        let limit = Limit {
            duration: Duration::from_secs(10),
            ops: Some(100),
        };
        let measured = drive(Mode::Closed { callers: 4 }, limit, |_, n| async move {
            if n % 10 == 0 {
                Err("UNAVAILABLE".to_string())
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(measured.ok, 90);
        assert_eq!(measured.errors["UNAVAILABLE"], 10);
        assert_eq!(measured.latency_us.len(), 90);
    }

    #[tokio::test]
    async fn open_loop_counts_queueing_in_latency() {
        let limit = Limit {
            duration: Duration::from_secs(10),
            ops: Some(20),
        };
        // One at a time, 5 ms each, arrivals every 1 ms: later operations wait in line.
        let mode = Mode::Open {
            rate: 1000.0,
            in_flight: 1,
        };
        let measured = drive(mode, limit, |_, _| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(())
        })
        .await;
        assert_eq!(measured.ok, 20);
        assert!(
            measured.latency_us.max() > 50_000,
            "{}",
            measured.latency_us.max()
        );
    }
}
