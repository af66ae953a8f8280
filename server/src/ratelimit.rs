//! Per-connection rate limits: a token bucket for each client connection (keyed by its
//! remote address and port), checked on every call before it reaches a service (a
//! [`crate::gate::Gate`]). A call over
//! the rate is refused at once with RESOURCE_EXHAUSTED, so one connection cannot take the
//! node's capacity from the others. Health checks are exempt. The bucket holds one second
//! of calls (a burst of `rate`), and buckets of connections idle for a while are dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// Buckets idle this long are dropped when the table grows.
const IDLE: Duration = Duration::from_secs(30);
/// Table size that triggers dropping idle buckets.
const SWEEP_AT: usize = 4_096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The buckets of one node.
#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    buckets: Mutex<HashMap<SocketAddr, Bucket>>,
    refused: Arc<AtomicU64>,
}

impl Limiter {
    /// `rate` calls per second per connection; refusals are counted in `refused`.
    pub fn new(rate: u32, refused: Arc<AtomicU64>) -> Self {
        Self {
            rate: f64::from(rate),
            buckets: Mutex::new(HashMap::new()),
            refused,
        }
    }

    /// Take one call from `connection`'s bucket at `now`; false when it is empty.
    pub fn take(&self, connection: SocketAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= SWEEP_AT {
            buckets.retain(|_, b| now.saturating_duration_since(b.last) < IDLE);
        }
        let bucket = buckets.entry(connection).or_insert(Bucket {
            tokens: self.rate,
            last: now,
        });
        let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

fn remote(request: &http::Request<Body>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

impl crate::gate::Gate for Limiter {
    fn admit(&self, request: &http::Request<Body>) -> Result<(), Status> {
        if request.uri().path().starts_with("/grpc.health.v1.Health/") {
            return Ok(());
        }
        match remote(request) {
            Some(connection) if !self.take(connection, Instant::now()) => {
                Err(Status::resource_exhausted(format!(
                    "this connection made more than {} calls in the last second (max-calls-per-connection-per-second); slow down or spread calls over connections",
                    self.rate
                )))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_connection_has_its_own_bucket_that_refills() {
        let refused = Arc::new(AtomicU64::new(0));
        let limiter = Limiter::new(3, Arc::clone(&refused));
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:5001".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take(a, t0));
        }
        assert!(!limiter.take(a, t0), "a burst of 3, then empty");
        assert!(limiter.take(b, t0), "another connection is not affected");
        assert!(
            limiter.take(a, t0 + Duration::from_millis(400)),
            "a third of a second refills one"
        );
        assert!(!limiter.take(a, t0 + Duration::from_millis(400)));
        assert_eq!(refused.load(Ordering::Relaxed), 2);
    }
}
