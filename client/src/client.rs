//! [`AffinityClient`]: the cache-first client a gateway replica shares across its tasks.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use affinity_proto::{ClientKey, Policy, pb, request};
use futures::FutureExt;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::breaker::{Admission, Breaker, ProbeGuard};
use crate::cache::{Entry, LeaseCache};
use crate::call::Resolve;
use crate::endpoint::Endpoint;
use crate::error::ClientError;
use crate::tls::ClientTls;
use crate::transport::Nodes;
use crate::watch;

pub use crate::shared::FailMode;
use crate::shared::{Answer, Inner, now_ms, removal_window_ms};

/// Where a decision came from. New sources may be added: match with a wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// This client's cache (kept current by the store's `Watch` stream).
    Cache,
    /// The store.
    Store {
        /// This call created the lease.
        created: bool,
        /// This call replaced a lease whose endpoint was not eligible.
        replaced: bool,
    },
    /// The store could not answer in time; rendezvous hashing chose.
    Fallback,
}

/// A routing decision for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Where to send the client.
    pub endpoint: Endpoint,
    /// The client's key (its masked prefix).
    pub prefix: ClientKey,
    /// When the decision ends (for a fallback: now, as it is not a lease).
    pub expires_at: SystemTime,
    /// Where it came from.
    pub source: Source,
}

/// Settings of an [`AffinityClient`]; see [`AffinityClient::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    endpoints: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    cache_capacity: usize,
    skew_margin: Duration,
    fail_mode: FailMode,
    watch: bool,
    watch_timeout: Duration,
    max_staleness: Duration,
    tls: Option<ClientTls>,
    token: Option<Secret>,
}

/// A bearer token, kept out of `Debug` output.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_millis(1500),
            cache_capacity: 100_000,
            skew_margin: Duration::from_secs(1),
            fail_mode: FailMode::Open,
            watch: true,
            watch_timeout: Duration::from_secs(3),
            max_staleness: Duration::from_secs(5),
            tls: None,
            token: None,
        }
    }
}

impl Builder {
    /// Store nodes (HOST:PORT); any of them answers any request.
    #[must_use]
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// How long connecting to one node may take. Default 1 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline of one call, retries included; past it `resolve` falls back (or fails with
    /// [`FailMode::Closed`]). Default 1.5 s.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Leases cached at most. Default 100,000; 0 turns the cache off, so every `resolve`
    /// asks the store.
    #[must_use]
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// A cached lease is served until this long before its end, to absorb clock skew
    /// between this host and the store. Default 1 s.
    #[must_use]
    pub fn skew_margin(mut self, margin: Duration) -> Self {
        self.skew_margin = margin;
        self
    }

    /// What `resolve` does when the store cannot answer. Default [`FailMode::Open`].
    #[must_use]
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// Talk to the nodes over TLS (they run with `--tls-cert`); see [`ClientTls`].
    /// Default plaintext.
    #[must_use]
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Send this bearer token with every call (`authorization: Bearer <token>`), for nodes
    /// whose `--authz` file gives roles to tokens. Use it over TLS only. Default none.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret(token.into()));
        self
    }

    /// Follow the store's `Watch` stream to keep the cache current. Default on.
    #[must_use]
    pub fn watch(mut self, on: bool) -> Self {
        self.watch = on;
        self
    }

    /// A `Watch` stream that carries neither changes nor progress from a node in touch with
    /// the leader for this long is treated as broken: the client moves to another node and
    /// resumes there. The store reports progress every 0.5 s. Default 3 s.
    #[must_use]
    pub fn watch_timeout(mut self, timeout: Duration) -> Self {
        self.watch_timeout = timeout;
        self
    }

    /// Cached leases are served (by [`AffinityClient::cached`] and the cache path of
    /// [`AffinityClient::resolve`]) only while the watch stream has had progress from a node
    /// in touch with the leader within this time; past it `cached()` answers `None` and
    /// `resolve` asks the store, so a decision the store has changed is never served for
    /// longer than this. With `watch` off the cache never has progress, so it serves
    /// nothing unless this is [`Duration::MAX`] (serve every lease until its end, with no
    /// bound on how stale it may be). Default 5 s.
    #[must_use]
    pub fn max_staleness(mut self, staleness: Duration) -> Self {
        self.max_staleness = staleness;
        self
    }

    /// Build the client. Connections are opened lazily; with `watch` on (the default) this
    /// must run inside a Tokio runtime, which hosts the watch task.
    pub fn build(self) -> Result<AffinityClient, ClientError> {
        if self.request_timeout.is_zero() {
            return Err(ClientError::Config(
                "request_timeout must be more than 0".into(),
            ));
        }
        if self.watch_timeout.is_zero() {
            return Err(ClientError::Config(
                "watch_timeout must be more than 0".into(),
            ));
        }
        if self.token.is_some() && self.tls.is_none() {
            return Err(ClientError::Config(
                "token needs tls: a bearer token must not cross the network in plaintext".into(),
            ));
        }
        let bearer = crate::transport::Bearer::new(self.token.as_ref().map(|t| t.0.as_str()))?;
        let nodes = Nodes::new(
            &self.endpoints,
            self.connect_timeout,
            self.tls.as_ref(),
            &bearer,
        )?;
        let inner = Arc::new(Inner {
            nodes,
            cache: LeaseCache::new(self.cache_capacity, removal_window_ms(self.request_timeout)),
            skew_ms: i64::try_from(self.skew_margin.as_millis()).unwrap_or(i64::MAX),
            request_timeout: self.request_timeout,
            fail_mode: self.fail_mode,
            inflight: Mutex::new(HashMap::new()),
            flight_ids: AtomicU64::new(0),
            breaker: Breaker::default(),
            last_warning_ms: AtomicI64::new(i64::MIN),
            watching: AtomicBool::new(false),
            fresh_ms: AtomicI64::new(i64::MIN),
            max_staleness_ms: i64::try_from(self.max_staleness.as_millis()).unwrap_or(i64::MAX),
            watch_timeout: self.watch_timeout,
            stop: CancellationToken::new(),
        });
        if self.watch {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                ClientError::Config(
                    "build() must run inside a Tokio runtime when watch is on".into(),
                )
            })?;
            runtime.spawn(watch::run(Arc::downgrade(&inner), inner.stop.clone()));
        }
        Ok(AffinityClient { inner })
    }
}

/// A client of the affinity store, with a local lease cache. Cheap to clone; clones share
/// the cache, the connections and the watch stream.
#[derive(Clone)]
pub struct AffinityClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AffinityClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AffinityClient")
            .field("cached", &self.inner.cache.len())
            .field("watching", &self.is_watching())
            .finish_non_exhaustive()
    }
}

thread_local! {
    static HITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Count a cache hit without touching shared memory on every call: each thread adds to the
/// shared counter every 256 hits.
fn count_hit() {
    HITS.with(|hits| {
        let n = hits.get() + 1;
        if n >= 256 {
            metrics::counter!("affinity_client_cache_hits_total").increment(n);
            hits.set(0);
        } else {
            hits.set(n);
        }
    });
}

fn to_system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl AffinityClient {
    /// Start configuring a client.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The hot path: the cached endpoint for `ip` in `scope`, if a live lease is cached
    /// and the cache is current (see [`Builder::max_staleness`]). Synchronous,
    /// allocation-free and lock-free on a hit.
    pub fn cached(&self, scope: &str, ip: IpAddr, policy: &Policy) -> Option<Endpoint> {
        let now = now_ms();
        if !self.inner.fresh(now) {
            return None;
        }
        let key = policy.key(ip);
        let hit = self.inner.cache.endpoint(scope, key, now);
        if hit.is_some() {
            count_hit();
        }
        hit
    }

    /// Put a lease obtained from the store some other way into the cache (the client warms
    /// itself from `List` when its watch starts). Newer revisions and later removals
    /// already known win.
    pub fn remember(&self, lease: &pb::Lease) {
        if let (Ok(key), Some(entry)) = (
            lease.prefix.parse::<ClientKey>(),
            Entry::from_lease(lease, self.inner.skew_ms),
        ) {
            self.inner.cache.put(&lease.scope, key, entry, now_ms());
        }
    }

    /// Whether the watch stream is connected (the cache follows the store's changes).
    pub fn is_watching(&self) -> bool {
        self.inner.watching.load(Ordering::Relaxed)
    }

    /// Whether the cache is current: the watch stream had progress from a node in touch
    /// with the leader within `max_staleness`, so `cached()` may answer. A gateway can
    /// report ready on it.
    pub fn cache_is_current(&self) -> bool {
        self.inner.fresh(now_ms())
    }

    /// Leases in the cache.
    pub fn cache_len(&self) -> usize {
        self.inner.cache.len()
    }

    /// The decision for one client under one rule (see [`Resolve`]): from the cache if a
    /// live lease is cached and its endpoint is eligible; else from the store, creating the
    /// lease for the proposed endpoint if none exists (or replacing one whose endpoint is
    /// not eligible, when eligible endpoints are given); else, if the store cannot answer
    /// in time and the fail mode is open, the rendezvous pick over the eligible endpoints
    /// (or the proposed one alone). Without an explicit proposal the new lease proposes
    /// that same pick, so what replicas answer during an outage is what the store records
    /// afterwards.
    ///
    /// Concurrent misses for one key in this client share one request to the store.
    pub async fn resolve(&self, call: Resolve<'_>) -> Result<Decision, ClientError> {
        let key = call.key();
        let proposed = call.proposal(&key)?;
        let scope = call.scope;
        let wire = pb::ResolveRequest {
            scope: scope.to_string(),
            client_ip: call.ip.to_string(),
            policy: Some(call.policy.to_pb()),
            endpoint: proposed.to_string(),
            eligible_endpoints: call.eligible.to_vec(),
            request_id: request::new_request_id(),
        };
        // Bad input never leaves this process.
        request::Resolve::try_from(wire.clone())?;

        let now = now_ms();
        if self.inner.fresh(now)
            && let Some(entry) = self.inner.cache.get(scope, key, now)
            && call.allows(&entry.endpoint)
        {
            count_hit();
            return Ok(Decision {
                endpoint: entry.endpoint,
                prefix: key,
                expires_at: to_system_time(entry.expires_at_ms),
                source: Source::Cache,
            });
        }
        metrics::counter!("affinity_client_cache_misses_total").increment(1);

        let _probe = match self.inner.breaker.admit(now) {
            Admission::Ask => ProbeGuard(None),
            Admission::Probe => ProbeGuard(Some(&self.inner.breaker)),
            Admission::Skip => {
                return self.fall_back(
                    key,
                    call.fallback(&key, proposed),
                    "the store failed recently; not waiting for it",
                );
            }
        };

        let mut answer = self.shared_resolve(scope, key, wire.clone()).await;
        if let Ok(a) = &answer
            && !call.allows(&a.lease.endpoint)
        {
            // Another caller's request, with other eligible endpoints, answered for us.
            answer = self.store_resolve(wire).await;
        }
        match answer {
            Ok(a) => {
                self.inner.breaker.succeeded();
                Ok(Decision {
                    endpoint: Endpoint::new(&a.lease.endpoint),
                    prefix: key,
                    expires_at: to_system_time(a.lease.expires_at_ms),
                    source: Source::Store {
                        created: a.created,
                        replaced: a.replaced,
                    },
                })
            }
            Err(e) if e.is_unavailable() => {
                self.inner.breaker.failed(now_ms());
                self.fall_back(key, call.fallback(&key, proposed), &e.to_string())
            }
            Err(e) => Err(e),
        }
    }

    /// The five-argument form of [`resolve`](Self::resolve), as it was before [`Resolve`]:
    /// `proposed` is the endpoint to propose and `eligible` the endpoints that may serve.
    #[deprecated(
        note = "use `resolve(Resolve::new(scope, ip, policy).eligible(eligible))`, which \
                proposes the rendezvous pick (add `.proposed(p)` to keep your own); this \
                form goes in the release after next"
    )]
    pub async fn resolve_positional(
        &self,
        scope: &str,
        ip: IpAddr,
        policy: &Policy,
        proposed: &str,
        eligible: &[String],
    ) -> Result<Decision, ClientError> {
        self.resolve(
            Resolve::new(scope, ip, policy)
                .proposed(proposed)
                .eligible(eligible),
        )
        .await
    }

    fn fall_back(
        &self,
        key: ClientKey,
        endpoint: &str,
        why: &str,
    ) -> Result<Decision, ClientError> {
        if self.inner.fail_mode == FailMode::Closed {
            return Err(ClientError::Unavailable {
                message: why.to_string(),
            });
        }
        metrics::counter!("affinity_client_fallbacks_total").increment(1);
        metrics::counter!("affinity_client_fallback_decisions_total").increment(1);
        let now = now_ms();
        let last = self.inner.last_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self
                .inner
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                reason = why,
                "affinity store unavailable; routing by rendezvous hash (warned at most every 10 s)"
            );
        }
        Ok(Decision {
            endpoint: Endpoint::new(endpoint),
            prefix: key,
            expires_at: SystemTime::now(),
            source: Source::Fallback,
        })
    }

    /// One store request per key in flight in this client; later callers join it. The
    /// request runs as a task of its own, so it goes on (and leaves the table when done)
    /// even if every caller waiting for it is cancelled: a later caller never picks up a
    /// request that nobody drove, with its deadline long past.
    async fn shared_resolve(
        &self,
        scope: &str,
        key: ClientKey,
        wire: pb::ResolveRequest,
    ) -> Result<Answer, ClientError> {
        let flight_key = (scope.to_string(), key);
        let flight = {
            let mut inflight = self.inner.inflight.lock();
            if let Some((_, flight)) = inflight.get(&flight_key) {
                flight.clone()
            } else {
                let id = self.inner.flight_ids.fetch_add(1, Ordering::Relaxed);
                let client = self.clone();
                let own_key = flight_key.clone();
                let request = async move {
                    let answer = client.store_resolve(wire).await;
                    let mut inflight = client.inner.inflight.lock();
                    if inflight
                        .get(&own_key)
                        .is_some_and(|(current, _)| *current == id)
                    {
                        inflight.remove(&own_key);
                    }
                    answer
                };
                let flight = match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        let task = runtime.spawn(request);
                        async move {
                            task.await.unwrap_or_else(|failed| {
                                Err(ClientError::Unavailable {
                                    message: format!(
                                        "the request to the store ended early: {failed}"
                                    ),
                                })
                            })
                        }
                        .boxed()
                    }
                    // Outside Tokio (another executor) the callers drive it themselves.
                    Err(_) => request.boxed(),
                }
                .shared();
                inflight.insert(flight_key, (id, flight.clone()));
                flight
            }
        };
        flight.await
    }

    /// Ask the store, and cache its answer (unless the cache learned of a removal or lost
    /// track of changes meanwhile, or the answer took too long to be sure of either).
    async fn store_resolve(&self, wire: pb::ResolveRequest) -> Result<Answer, ClientError> {
        let scope = wire.scope.clone();
        let sent = Instant::now();
        self.inner.cache.know_scope(&scope);
        let epoch = self.inner.cache.epoch();
        let deadline = sent + self.inner.request_timeout;
        let resp = self
            .inner
            .nodes
            .call("Resolve", deadline, |mut client, remaining| {
                let mut request = tonic::Request::new(wire.clone());
                request.set_timeout(remaining);
                async move { client.resolve(request).await }
            })
            .instrument(tracing::debug_span!("affinity.resolve", scope = %scope))
            .await?;
        let lease = resp.lease.ok_or_else(|| ClientError::Refused {
            code: tonic::Code::Internal,
            message: "the store answered Resolve without a lease".into(),
        })?;
        self.inner.cache_answer(sent, epoch, &lease);
        Ok(Answer {
            lease,
            created: resp.created,
            replaced: resp.replaced,
        })
    }

    /// The live lease of `ip` in `scope`, read linearizably from the store.
    pub async fn lookup(
        &self,
        scope: &str,
        ip: IpAddr,
        policy: &Policy,
    ) -> Result<Option<pb::Lease>, ClientError> {
        let wire = pb::LookupRequest {
            scope: scope.to_string(),
            client_ip: ip.to_string(),
            policy: Some(policy.to_pb()),
            allow_stale: false,
        };
        request::Lookup::try_from(wire.clone())?;
        let resp = self
            .unary("Lookup", |mut c, r| async move { c.lookup(r).await }, wire)
            .await?;
        Ok(resp.lease)
    }

    /// Move the live lease of `ip` from `expected` to `endpoint` (compare-and-set). Returns the
    /// lease after the call and whether the swap happened.
    pub async fn reassign(
        &self,
        scope: &str,
        ip: IpAddr,
        policy: &Policy,
        expected: &str,
        endpoint: &str,
    ) -> Result<(Option<pb::Lease>, bool), ClientError> {
        let wire = pb::ReassignRequest {
            scope: scope.to_string(),
            client_ip: ip.to_string(),
            policy: Some(policy.to_pb()),
            expected_endpoint: expected.to_string(),
            endpoint: endpoint.to_string(),
            request_id: request::new_request_id(),
        };
        request::Reassign::try_from(wire.clone())?;
        let resp = self
            .unary(
                "Reassign",
                |mut c, r| async move { c.reassign(r).await },
                wire,
            )
            .await?;
        Ok((resp.lease, resp.swapped))
    }

    /// Delete the lease of `ip` in `scope`. Returns whether a live lease was deleted.
    pub async fn release(
        &self,
        scope: &str,
        ip: IpAddr,
        policy: &Policy,
    ) -> Result<bool, ClientError> {
        let wire = pb::ReleaseRequest {
            scope: scope.to_string(),
            client_ip: ip.to_string(),
            policy: Some(policy.to_pb()),
            request_id: request::new_request_id(),
        };
        request::Release::try_from(wire.clone())?;
        let resp = self
            .unary(
                "Release",
                |mut c, r| async move { c.release(r).await },
                wire,
            )
            .await?;
        Ok(resp.released)
    }

    /// Delete every lease on `endpoint`, in `scope` or in every scope. Returns how many.
    pub async fn drain_endpoint(
        &self,
        scope: Option<&str>,
        endpoint: &str,
    ) -> Result<u64, ClientError> {
        let wire = pb::DrainEndpointRequest {
            scope: scope.unwrap_or_default().to_string(),
            endpoint: endpoint.to_string(),
            request_id: request::new_request_id(),
        };
        request::DrainEndpoint::try_from(wire.clone())?;
        let resp = self
            .unary(
                "DrainEndpoint",
                |mut c, r| async move { c.drain_endpoint(r).await },
                wire,
            )
            .await?;
        Ok(resp.removed)
    }

    async fn unary<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        f: F,
        wire: Req,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(crate::transport::Stub, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.inner.request_timeout;
        self.inner
            .nodes
            .call(rpc, deadline, |client, remaining| {
                let mut request = tonic::Request::new(wire.clone());
                request.set_timeout(remaining);
                f(client, request)
            })
            .await
    }
}
