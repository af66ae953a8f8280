//! The test harness: real `affinityd` processes on loopback, and the waits the tests use.
//!
//! - [`bins`] builds (when stale) and locates the `affinityd` and `affinityctl` binaries.
//! - [`cluster`] starts a cluster of `affinityd` processes on ports it reserves, each in its
//!   own data folder, and kills, stops and restarts them; everything is removed when the
//!   cluster is dropped, and every node's log is printed when a test fails.
//! - [`requests`] builds the requests tests send.
//! - [`wait`] waits for a condition with a bound and a clear message when it times out.
//!
//! The tests themselves live in one binary, `tests/it/main.rs`.

// The harness is test code: when it cannot set something up, the test fails, loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod bins;
pub mod checker;
pub mod cluster;
pub mod containers;
pub mod docker;
pub mod requests;
pub mod wait;
pub mod workload;

pub use cluster::{Cluster, ClusterOptions};
