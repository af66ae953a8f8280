//! The test harness: real `affinityd` processes on loopback, and the waits the tests use.
//!
//! - [`bins`] builds (when stale) and locates the `affinityd` and `affinityctl` binaries.
//! - [`cluster`] starts a cluster of `affinityd` processes on ports it reserves, each in its
//!   own data folder, and kills, stops and restarts them; everything is removed when the
//!   cluster is dropped, and every node's log is printed when a test fails.
//! - [`containers`] runs a cluster of `affinityd` containers (static peers, or laid out
//!   exactly as the StatefulSet runs its pods) and inflicts faults on it; [`docker`] is
//!   the Docker connection under it; [`workload`] and [`checker`] are the chaos tests'
//!   gateway-like load and the checker of its history.
//! - [`http`] sends HTTP requests from chosen loopback addresses and runs killable
//!   in-process backends, for the data-plane tests.
//! - [`kustomize`] renders the project's Kubernetes manifests without kubectl.
//! - [`relay`] relays one node's peer port, so a test can cut what the node hears.
//! - [`requests`] builds the requests tests send.
//! - [`tools`] skips (or, in CI, fails) a test whose outside tool is missing.
//! - [`wait`] waits for a condition with a bound and a clear message when it times out.
//!
//! The tests live in three binaries: `tests/it` (processes on loopback), `tests/chaos`
//! (containers under faults) and `tests/deploy` (manifests and the StatefulSet rehearsal).

// The harness is test code: when it cannot set something up, the test fails, loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod bins;
pub mod checker;
pub mod cluster;
pub mod containers;
pub mod docker;
pub mod http;
pub mod kustomize;
pub mod relay;
pub mod requests;
pub mod tools;
pub mod wait;
pub mod workload;

pub use cluster::{ClientTlsFiles, Cluster, ClusterOptions};
