//! The resolve path: a miss becomes one store request per key (singleflight), retried
//! across nodes, cached on the way back, or answered by the rendezvous fallback.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use affinity_proto::{ClientKey, Policy, pb, request};
use futures::FutureExt;
use tracing::Instrument;

use crate::breaker::{Admission, ProbeGuard};
use crate::call::Resolve;
use crate::endpoint::Endpoint;
use crate::error::ClientError;

pub use crate::shared::FailMode;
use crate::shared::{Answer, now_ms};

use super::{AffinityClient, Decision, Source, count_hit, to_system_time};

impl AffinityClient {
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
}
