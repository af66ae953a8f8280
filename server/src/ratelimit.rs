//! Per-connection rate limits: a token bucket for each client connection (keyed by its
//! remote address and port), checked on every call before it reaches a service. A call over
//! the rate is refused at once with RESOURCE_EXHAUSTED, so one connection cannot take the
//! node's capacity from the others. Health checks are exempt. The bucket holds one second
//! of calls (a burst of `rate`), and buckets of connections idle for a while are dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
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
    pub fn admit(&self, connection: SocketAddr, now: Instant) -> bool {
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

/// The tower layer that applies a [`Limiter`] (none: every call passes).
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<Limiter>>,
}

impl RateLimitLayer {
    /// Limit with `limiter`, or not at all.
    pub fn new(limiter: Option<Arc<Limiter>>) -> Self {
        Self { limiter }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: Option<Arc<Limiter>>,
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

impl<S> tower::Service<http::Request<Body>> for RateLimitService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        futures::future::Either<std::future::Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if let Some(limiter) = &self.limiter
            && !request.uri().path().starts_with("/grpc.health.v1.Health/")
            && let Some(connection) = remote(&request)
            && !limiter.admit(connection, Instant::now())
        {
            let status = Status::resource_exhausted(format!(
                "this connection made more than {} calls in the last second (max-calls-per-connection-per-second); slow down or spread calls over connections",
                limiter.rate
            ));
            return futures::future::Either::Left(std::future::ready(Ok(status.into_http())));
        }
        futures::future::Either::Right(self.inner.call(request))
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
            assert!(limiter.admit(a, t0));
        }
        assert!(!limiter.admit(a, t0), "a burst of 3, then empty");
        assert!(limiter.admit(b, t0), "another connection is not affected");
        assert!(
            limiter.admit(a, t0 + Duration::from_millis(400)),
            "a third of a second refills one"
        );
        assert!(!limiter.admit(a, t0 + Duration::from_millis(400)));
        assert_eq!(refused.load(Ordering::Relaxed), 2);
    }
}
