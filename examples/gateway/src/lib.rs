//! # affinity-gateway
//!
//! An example gateway data plane for affinity, on Pingora: it reads Gateway API `HTTPRoute`
//! rules and sends each client IP (or subnet, under the rule's `ipMask`) to the same backend
//! on every gateway replica.
//!
//! - [`routes`]: the route file (HTTPRoute documents and a `Backends` document), the
//!   client crate's parser, which other data planes share;
//! - [`backends`]: the route file ready to serve, and backend health (Pingora's checks);
//! - [`client_ip`]: the client address, from the socket or a trusted `X-Forwarded-For` hop
//!   (the client crate's, shared with `affinity-agent`);
//! - [`proxy`]: the per-request decision (cache, store, fallback, round robin) and retries;
//! - [`reload`]: reloading the route file on change;
//! - `/metrics`, `/healthz`, `/readyz` and logging: the client crate's
//!   [`gateway::serve`](affinity_client::gateway::serve) (its `dataplane` feature).
//!
//! Binaries: `affinity-gateway` (the proxy) and `affinity-backend`, a tiny HTTP backend that
//! answers with its own name, for tests and demos.

pub mod backends;
pub mod proxy;
pub mod reload;
pub use affinity_client::gateway::{client_ip, routes};
