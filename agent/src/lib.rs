//! # affinity-agent
//!
//! A sidecar beside each Envoy or nginx replica that holds the affinity client (its lease
//! cache and `Watch` stream) and answers, per request, which backend a client IP (or
//! masked subnet) sticks to, the same answer on every replica.
//!
//! - **Envoy**: the `ExternalProcessor` (ext_proc) gRPC service on `--listen-ext-proc`. It
//!   sets `x-affinity-endpoint` for the cluster's `override_host` load-balancing policy,
//!   and moves a lease when Envoy's health checks made it serve elsewhere.
//! - **nginx**: `GET /decide` for `auth_request` on `--listen-http`, answering `204` with
//!   `X-Affinity-Endpoint` for `proxy_pass http://$affinity_endpoint`.
//!
//! ## Layout
//!
//! - [`rules`]: the route file (the client crate's parser) by scope, and its reloading;
//! - [`health`]: TCP health checks of every endpoint;
//! - [`decide`]: the decision both front ends share, and following what Envoy served;
//! - [`ext_proc`]: the Envoy front end;
//! - [`http`]: the nginx front end.
//!
//! Logging and the admin endpoint (`/metrics`, `/healthz`, `/readyz`) are the client
//! crate's [`gateway::serve`](affinity_client::gateway::serve), shared with the gateway.
//!
//! The binary `affinity-agent` (in `src/bin/`) reads the flags and starts them.

pub mod decide;
pub mod ext_proc;
pub mod health;
pub mod http;
pub mod rules;
