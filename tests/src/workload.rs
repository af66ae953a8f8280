//! The chaos workload: gateway replicas resolving a few hundred client keys while faults
//! happen, with every call recorded for the checker.
//!
//! Each worker is its own `AffinityClient` (a separate gateway replica) in
//! `FailMode::Closed` with its cache off, so every call is answered by the store and a
//! failure is an error, never a fallback. Workers call `resolve` back to back on random
//! keys, each with a proposal no other call makes, so the checker can tell whose proposal
//! won. Half the keys have leases of an hour (they must all survive the faults); the other
//! half have leases of a few seconds, so leases end and are created again, across leader
//! changes, while the faults go on.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use affinity_client::{AffinityClient, ClientError, FailMode, Masks, Policy, Source};
use affinity_proto::pb;
use affinity_proto::pb::affinity_client::AffinityClient as RawClient;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Shape of the workload.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Concurrent gateway replicas.
    pub clients: usize,
    /// Distinct client keys (half long-lived, half short-lived).
    pub keys: usize,
    /// Lease lifetime of the long-lived half.
    pub long_lease: Duration,
    /// Lease lifetime of the short-lived half.
    pub short_lease: Duration,
    /// Deadline of one `resolve`, retries included.
    pub request_timeout: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        Self {
            clients: 4,
            keys: 300,
            long_lease: Duration::from_secs(3600),
            short_lease: Duration::from_secs(3),
            request_timeout: Duration::from_secs(2),
        }
    }
}

/// The scope of the long-lived keys.
pub const LONG_SCOPE: &str = "chaos/long/0";
/// The scope of the short-lived keys.
pub const SHORT_SCOPE: &str = "chaos/short/0";

/// What one call returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The store's decision.
    Ok {
        /// The endpoint the key is bound to.
        endpoint: String,
        /// The lease's absolute end, Unix ms.
        expires_at_ms: i64,
        /// This call created the lease.
        created: bool,
    },
    /// The call failed.
    Err {
        /// `UNAVAILABLE`, `SKIPPED` (the client did not wait for a store that just failed),
        /// or the gRPC code of a refusal.
        kind: String,
        /// What the client said.
        message: String,
    },
}

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    /// Which worker (gateway replica) made it.
    pub client: usize,
    /// Which key, see [`key`].
    pub key: usize,
    /// Unix ms when the call started (the host's clock, which the containers share).
    pub start_ms: i64,
    /// Unix ms when it returned.
    pub end_ms: i64,
    /// The endpoint it proposed (no other call proposes the same).
    pub proposed: String,
    /// What it returned.
    pub outcome: Outcome,
}

impl Call {
    /// Whether the call got a decision.
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok { .. })
    }
}

/// Everything the workload did.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every call, by start time.
    pub calls: Vec<Call>,
    /// Unix ms when the workload started.
    pub started_ms: i64,
    /// Unix ms when it stopped.
    pub ended_ms: i64,
}

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

fn policy(lifetime: Duration) -> Policy {
    Policy::new(lifetime)
        .and_then(|p| Ok(p.with_masks(Masks::new(32, 128)?)))
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
    /// Start `options.clients` workers against `endpoints`.
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
        let workers = (0..options.clients)
            .map(|c| {
                let client = AffinityClient::builder()
                    .endpoints(endpoints.iter().cloned())
                    .connect_timeout(Duration::from_millis(500))
                    .request_timeout(options.request_timeout)
                    .cache_capacity(0)
                    .watch(false)
                    .fail_mode(FailMode::Closed)
                    .build()
                    .expect("a workload client");
                let stop = Arc::clone(&stop);
                let options = options.clone();
                let progress = Arc::clone(progress);
                tokio::spawn(async move { work(c, &client, &options, &stop, &progress).await })
            })
            .collect();
        Workload {
            stop,
            workers,
            started_ms: now_ms(),
        }
    }

    /// Stop every worker after its current call; the whole history, by start time.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        let mut calls = Vec::new();
        for worker in self.workers {
            calls.extend(worker.await.expect("a workload worker ends cleanly"));
        }
        calls.sort_by_key(|c| (c.start_ms, c.client));
        History {
            calls,
            started_ms: self.started_ms,
            ended_ms: now_ms(),
        }
    }
}

async fn work(
    c: usize,
    client: &AffinityClient,
    options: &WorkloadOptions,
    stop: &AtomicBool,
    progress: &AtomicUsize,
) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let k = fastrand::usize(..options.keys);
        let (scope, ip, lifetime) = key(k, options);
        let proposed = format!("replica-{c}-call-{seq}:8080");
        let start_ms = now_ms();
        let answer = client
            .resolve(scope, ip, &policy(lifetime), &proposed, &[])
            .await;
        let end_ms = now_ms();
        let outcome = match answer {
            Ok(d) => {
                progress.fetch_add(1, Ordering::Relaxed);
                Outcome::Ok {
                    endpoint: d.endpoint.to_string(),
                    expires_at_ms: d
                        .expires_at
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
                    created: matches!(d.source, Source::Store { created: true, .. }),
                }
            }
            Err(e) => {
                let kind = match &e {
                    ClientError::Unavailable { message } if message.contains("failed recently") => {
                        "SKIPPED".to_string()
                    }
                    ClientError::Unavailable { .. } => "UNAVAILABLE".to_string(),
                    ClientError::Refused { code, .. } => code.clone(),
                    ClientError::Invalid(_) => "INVALID".to_string(),
                    ClientError::Config(_) => "CONFIG".to_string(),
                };
                Outcome::Err {
                    kind,
                    message: e.to_string(),
                }
            }
        };
        calls.push(Call {
            client: c,
            key: k,
            start_ms,
            end_ms,
            proposed,
            outcome,
        });
    }
    calls
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
            .resolve(&probe, ip, &policy(Duration::from_secs(60)), "probe:1", &[])
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
