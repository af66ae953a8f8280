//! The chaos workload: gateway-like callers making every kind of call on a few hundred
//! client keys while faults happen, with every attempt recorded for the checker.
//!
//! - [`history`]: what is recorded (a [`Call`] per attempt) and which errors leave an
//!   outcome unknown.
//! - `mix`: the operation mix (mostly `Resolve`, some `Reassign`, `Release`,
//!   `DrainEndpoint` and linearizable `Lookup`) and what a worker remembers between calls.
//! - `raw`: workers on raw tonic stubs, each call to a random node, with a deadline and
//!   their own request ids.
//! - `replica`: workers on the client crate (`FailMode::Closed`), most with the cache off,
//!   one with the cache and its `Watch` stream on.
//!
//! Every proposed endpoint is unique to its call, so the checker can tell which call created
//! a lease. Half the keys have leases of an hour (they must survive the faults); the other
//! half have leases of a few seconds, so leases end and are created again, across leader
//! changes, while the faults go on. Times are Unix ms on the host clock, which the
//! containers share.

pub mod history;
mod mix;
mod raw;
mod replica;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use affinity_client::{AffinityClient, FailMode, Masks, Policy, Resolve};
use affinity_proto::pb;
use affinity_proto::pb::affinity_client::AffinityClient as RawClient;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

pub use history::{Answer, Call, History, Outcome, Request, Seen, Via};

/// Shape of the workload.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Client-crate workers with the cache off (gateway replicas whose every call reaches
    /// the store).
    pub clients: usize,
    /// Client-crate workers with the cache and its watch stream on.
    pub cached_clients: usize,
    /// Workers on raw gRPC stubs, each call to a random node.
    pub raw_workers: usize,
    /// Distinct client keys (half long-lived, half short-lived).
    pub keys: usize,
    /// Lease lifetime of the long-lived half.
    pub long_lease: Duration,
    /// Lease lifetime of the short-lived half.
    pub short_lease: Duration,
    /// Deadline of one call (the client crate's retries included; one attempt of a raw
    /// worker).
    pub request_timeout: Duration,
    /// `max_staleness` of the cached clients: the checker allows a cache to answer a
    /// lease the store removed for this long (plus a slack) after it was acknowledged.
    pub cache_max_staleness: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        Self {
            clients: 2,
            cached_clients: 1,
            raw_workers: 3,
            keys: 300,
            long_lease: Duration::from_secs(3600),
            short_lease: Duration::from_secs(3),
            request_timeout: Duration::from_secs(2),
            cache_max_staleness: Duration::from_secs(5),
        }
    }
}

/// The scope of the long-lived keys.
pub const LONG_SCOPE: &str = "chaos/long/0";
/// The scope of the short-lived keys.
pub const SHORT_SCOPE: &str = "chaos/short/0";

/// The scope, address and lease lifetime of key `k`.
pub fn key(k: usize, options: &WorkloadOptions) -> (&'static str, IpAddr, Duration) {
    let n = u32::try_from(k).unwrap_or(u32::MAX);
    let ip = IpAddr::V4(Ipv4Addr::from(0x0a40_0000 | n));
    if k < options.keys / 2 {
        (LONG_SCOPE, ip, options.long_lease)
    } else {
        (SHORT_SCOPE, ip, options.short_lease)
    }
}

/// The key whose (scope, prefix) this is, if it is one of the workload's.
pub fn key_of(scope: &str, prefix: &str, options: &WorkloadOptions) -> Option<usize> {
    let ip: Ipv4Addr = prefix.strip_suffix("/32")?.parse().ok()?;
    let k = usize::try_from(u32::from(ip).checked_sub(0x0a40_0000)?).ok()?;
    (k < options.keys && key(k, options).0 == scope).then_some(k)
}

/// The masked prefix of key `k`, as the store names it.
pub fn prefix(k: usize, options: &WorkloadOptions) -> String {
    format!("{}/32", key(k, options).1)
}

fn policy(lifetime: Duration) -> Policy {
    Policy::new(lifetime)
        .map(|p| p.with_masks(Masks::new(32, 128).expect("valid masks")))
        .expect("a valid policy")
}

/// Unix ms now.
pub fn now_ms() -> i64 {
    affinity_server::clock::now_ms()
}

/// A running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Call>>>,
    started_ms: i64,
}

impl Workload {
    /// Start the workers against `endpoints`.
    pub fn start(endpoints: &[String], options: &WorkloadOptions) -> Workload {
        Self::start_counting(endpoints, options, &Arc::new(AtomicUsize::new(0)))
    }

    /// Like [`Workload::start`], adding one to `progress` for every successful call.
    pub fn start_counting(
        endpoints: &[String],
        options: &WorkloadOptions,
        progress: &Arc<AtomicUsize>,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let started_ms = now_ms();
        let mut workers = Vec::new();
        let mut worker = 0;
        for _ in 0..options.raw_workers {
            let nodes = endpoints.iter().map(|e| channel(e)).collect();
            let (stop, progress, options) =
                (Arc::clone(&stop), Arc::clone(progress), options.clone());
            workers.push(tokio::spawn(async move {
                raw::work(worker, nodes, options, &stop, &progress).await
            }));
            worker += 1;
        }
        for cache in std::iter::repeat_n(false, options.clients)
            .chain(std::iter::repeat_n(true, options.cached_clients))
        {
            let client = replica::client(endpoints, options, cache);
            let (stop, progress, options) =
                (Arc::clone(&stop), Arc::clone(progress), options.clone());
            workers.push(tokio::spawn(async move {
                replica::work(worker, client, cache, options, &stop, &progress).await
            }));
            worker += 1;
        }
        Workload {
            stop,
            workers,
            started_ms,
        }
    }

    /// Stop every worker after its current call; the whole history, by invoke time.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        let mut calls = Vec::new();
        for worker in self.workers {
            calls.extend(worker.await.expect("a workload worker ends cleanly"));
        }
        calls.sort_by_key(|c| (c.invoke_ms, c.worker));
        History {
            calls,
            started_ms: self.started_ms,
            ended_ms: now_ms(),
        }
    }
}

/// A lazy channel to one node, with a short connect timeout (a frozen node never answers).
fn channel(endpoint: &str) -> Channel {
    Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("a valid node address")
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Every live lease in `scope`, read page by page (linearizable reads) from one node.
pub async fn list_all(channel: Channel, scope: &str) -> Result<Vec<pb::Lease>, tonic::Status> {
    let mut client = RawClient::new(channel);
    let mut leases = Vec::new();
    let mut token = String::new();
    loop {
        let mut request = tonic::Request::new(pb::ListRequest {
            scope: scope.to_string(),
            page_size: 1000,
            page_token: token,
        });
        request.set_timeout(Duration::from_secs(5));
        let page = client.list(request).await?.into_inner();
        leases.extend(page.leases);
        if page.next_page_token.is_empty() {
            return Ok(leases);
        }
        token = page.next_page_token;
    }
}

/// How long until a fresh write succeeds through `endpoints`, trying for at most `bound`.
/// `None` if none did.
pub async fn time_to_write(endpoints: &[String], bound: Duration) -> Option<Duration> {
    let client = AffinityClient::builder()
        .endpoints(endpoints.iter().cloned())
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(1))
        .cache_capacity(0)
        .watch(false)
        .fail_mode(FailMode::Closed)
        .build()
        .expect("a probe client");
    let started = tokio::time::Instant::now();
    let mut n = 0u32;
    while started.elapsed() < bound {
        n += 1;
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a7f_0000 | (n & 0xffff)));
        let probe = format!("probe/{}", std::process::id());
        if client
            .resolve(Resolve::new(&probe, ip, &policy(Duration::from_secs(60))).proposed("probe:1"))
            .await
            .is_ok()
        {
            return Some(started.elapsed());
        }
        // The client skips the store for a moment after a failure; asking again at once
        // would only measure that.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
