//! # affinity-client
//!
//! What a gateway data plane links in so that all its replicas send a client IP (or a subnet
//! of them) to the same backend: Gateway API client-IP session persistence (GEP-3798) shared
//! through the affinity store.
//!
//! - **Hot path**: [`AffinityClient::cached`] answers from a local cache of leases:
//!   synchronous, lock-free, no allocation on a hit. A lease is exact until its absolute
//!   expiry, so a cached decision needs no round trip; the store's `Watch` stream updates or
//!   drops entries as soon as a lease is replaced, released, drained or expired, and
//!   reports the watched node's progress: the cache answers only while a node in touch
//!   with the leader has reported within `max_staleness` (5 s), so a changed decision is
//!   never served for long, whatever happened to that node. Removals are remembered, so an
//!   answer older than a release cannot bring the lease back.
//! - **Cold path**: [`AffinityClient::resolve`] asks the store on a miss (first writer wins:
//!   every replica gets the same answer), with the healthy endpoints as `eligible` so a lease
//!   on a dead backend is replaced A new lease proposes the (weighted) rendezvous pick of
//!   the client's key over them unless the caller names its own ([`Resolve`]). Concurrent misses for one key share one request. Retries
//!   follow the leader, with backoff and jitter, inside the request deadline.
//! - **Fail-open**: when the store cannot answer in time, `resolve` returns a
//!   [`Source::Fallback`] decision by rendezvous hashing of the client's prefix over the
//!   eligible endpoints: the same choice on every replica, no coordination needed, and the
//!   same endpoint a new lease proposes, so the store records it once it is back. After a
//!   failure, misses stop waiting for the store for a short, growing cool-off (one request
//!   at a time still probes it), so a dead store costs one deadline, not one per request,
//!   and the first answer after it recovers ends the cool-off. [`FailMode::Closed`] returns
//!   the error instead.
//! - **Policy**: [`Policy`] and [`ClientKey`] come from `affinity-proto`, the same code the
//!   store runs; [`gateway`] reads a route rule's `sessionPersistence` block.
//! - **Metrics** through the [`metrics`] facade (the host chooses the exporter):
//!   `affinity_client_cache_hits_total`, `_cache_misses_total`, `_fallbacks_total`,
//!   `_rpc_duration_seconds{rpc}`, `_rpc_errors_total{rpc,code}`, `_watch_reconnects_total`,
//!   `_watch_timeouts_total`, `_cache_staleness_seconds`, `_fallback_decisions_total`.
//!
//! Public enums are `#[non_exhaustive]`: match [`Source`], [`FailMode`] and
//! [`ClientError`] with a wildcard arm.
//!
//! ## Example
//!
//! ```no_run
//! use std::net::IpAddr;
//! use std::time::Duration;
//!
//! use affinity_client::{AffinityClient, Resolve, Source, gateway};
//!
//! # async fn route(peer: IpAddr) -> Result<(), Box<dyn std::error::Error>> {
//! // Once, at start (inside a Tokio runtime):
//! let client = AffinityClient::builder()
//!     .endpoints(["affinity-0.affinity-peers:7400", "affinity-1.affinity-peers:7400"])
//!     .request_timeout(Duration::from_millis(500))
//!     .build()?;
//! // Per route rule, from its Gateway API `sessionPersistence` block:
//! let policy = gateway::policy_from_yaml("type: ClientIP\nabsoluteTimeout: 30m\nipMask: 24\n")?;
//! let scope = "default/web/0"; // namespace/route/rule-index
//!
//! // Per request: the healthy backends, then the cache, then the store.
//! let healthy = vec!["10.4.0.17:8080".to_string(), "10.4.0.18:8080".to_string()];
//! let backend = match client.cached(scope, peer, &policy) {
//!     Some(endpoint) if healthy.iter().any(|h| *h == *endpoint) => endpoint,
//!     _ => {
//!         // A new lease goes to the rendezvous pick over the healthy backends: the same
//!         // pick every replica makes, with or without the store.
//!         let call = Resolve::new(scope, peer, &policy).eligible(&healthy);
//!         let decision = client.resolve(call).await?;
//!         if decision.source == Source::Fallback {
//!             // The store is away; every replica still picks the same backend.
//!         }
//!         decision.endpoint
//!     }
//! };
//! println!("send {peer} to {backend}");
//! # Ok(())
//! # }
//! ```
//!
//! A complete, minimal HTTP reverse proxy built on this crate is in
//! `client/examples/hyper_proxy.rs`.
//!
//! ## Layout
//!
//! - [`client`]: [`AffinityClient`] and its hot path (`cached`), [`Builder`] and the
//!   connections (`client/builder.rs`), the resolve path with singleflight and fallback
//!   (`client/resolve.rs`), the other store calls (`client/calls.rs`), [`Decision`];
//! - [`call`]: [`Resolve`], one call's arguments, and the endpoint it proposes;
//! - `cache`: the lock-free lease cache;
//! - `breaker`: when to stop waiting for a failing store;
//! - `transport`: channels to every node, leader tracking, retries;
//! - `watch`: the `Watch` stream that keeps the cache current;
//! - `shared`: the state every clone shares (connections, cache, in-flight requests,
//!   breaker, watch state), below both `client` and `watch`;
//! - [`fallback`]: rendezvous hashing;
//! - [`gateway`]: Gateway API configuration: the `sessionPersistence` block, the route
//!   file ([`gateway::routes`]) and the client address ([`gateway::client_ip`]) that data
//!   planes share;
//! - [`error`]: the one error type, [`ClientError`].

mod breaker;
mod cache;
pub mod call;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod fallback;
pub mod gateway;
mod shared;
pub mod tls;
mod transport;
mod watch;

pub use affinity_proto::{
    ClientKey, Family, GatewayDuration, Masks, Policy, SessionPersistence, ValidationError, pb,
    request,
};
pub use call::Resolve;
pub use client::{AffinityClient, Builder, Decision, FailMode, Source};
pub use endpoint::Endpoint;
pub use error::ClientError;
pub use tls::ClientTls;
