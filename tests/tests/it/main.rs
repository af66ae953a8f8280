//! Integration tests across the workspace's crates, in one binary.
//!
//! - `contract`: the public wire names (services, methods, messages, fields) are exactly
//!   those users' tools rely on.
//! - `agreement`: the client's and the server's view of a request are the same.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agreement;
mod contract;
