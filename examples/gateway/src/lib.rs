//! # affinity-gateway
//!
//! An example gateway data plane for affinity, on Pingora: it reads Gateway API `HTTPRoute`
//! rules and sends each client IP (or subnet, under the rule's `ipMask`) to the same backend
//! on every gateway replica.
//!
//! - [`routes`]: the route file (HTTPRoute documents and a `Backends` document), the
//!   client crate's parser, which other data planes share;
//! - [`backends`]: the route file ready to serve, and backend health (Pingora's checks);
//! - [`client_ip`]: the client address, from the socket or a trusted `X-Forwarded-For` hop;
//! - [`proxy`]: the per-request decision (cache, store, fallback, round robin) and retries;
//! - [`reload`]: reloading the route file on change;
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//!
//! Binaries: `affinity-gateway` (the proxy) and `affinity-backend`, a tiny HTTP backend that
//! answers with its own name, for tests and demos.

pub mod admin;
pub mod backends;
pub mod client_ip;
pub mod proxy;
pub mod reload;
pub use affinity_client::gateway::routes;
