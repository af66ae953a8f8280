//! # affinity-gateway
//!
//! An example gateway data plane for affinity: it reads Gateway API `HTTPRoute` rules
//! ([`routes`]) and sends each client IP (or subnet, under the rule's `ipMask`) to the same
//! backend on every gateway replica. `affinity-backend` (in `src/bin`) is a tiny HTTP
//! backend that answers with its own name, for tests and demos.

pub mod routes;

#[cfg(test)]
mod routes_tests;
