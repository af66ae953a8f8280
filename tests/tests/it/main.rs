//! Integration tests across the workspace's crates, in one binary.
//!
//! - `contract`: the public wire names (services, methods, messages, fields) are exactly
//!   those users' tools rely on.
//! - `agreement`: the client's and the server's view of a request are the same.
//! - `clock_steps`: wall-clock steps on the leader (libfaketime) neither end nor extend
//!   leases.
//! - `cluster_basics`: a 3-node cluster of real `affinityd` processes: election, one winner,
//!   absolute expiry, every kind of change.
//! - `cluster_faults`: killed leaders, full restarts, membership changes.
//! - `bad_input`: every rule of every field, and garbage on the wire.
//! - `client`: `affinity-client` against a cluster: shared decisions, cache, watch, expiry,
//!   coalescing, failover, fallback.
//! - `client_cache`: the client's cache never serves a changed decision: a watch broken
//!   mid-replay, a miss whose callers were all cancelled.
//! - `ctl`: every `affinityctl` command against a cluster.
//! - `fail_open`: with the whole store down, replicas pick the same endpoints, and the
//!   store keeps those picks once it is back.
//! - `limits`: leases in total and per scope, watch streams and pending writes, each
//!   refused clearly, counted, and with nothing written.
//! - `robustness`: garbage and abusive HTTP/2 while a client is served with bounded
//!   memory; a damaged snapshot stops the node at start, naming the file.
//! - `peer_port`: peer traffic on its own port (`--peer-listen`), plaintext and with a CA
//!   per port; a node joining with a peer port.
//! - `tls`: mutual TLS on clients and peers, refusals, the client crate and affinityctl
//!   over TLS, a certificate rotated in place.
//! - `service`: health, reflection, leader hints, deadlines without a quorum, slow watchers,
//!   oversized messages.
//! - `stale_paths`: a leader restarted at once, a restarted follower asked to vote, calls
//!   queued on a frozen leader, retried writes: none answers from old state or applies twice.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agreement;
mod backup;
mod bad_input;
mod certs;
mod client;
mod client_cache;
mod clock_steps;
mod cluster_basics;
mod cluster_faults;
mod contract;
mod ctl;
mod fail_open;
mod limits;
mod peer_port;
mod robustness;
mod service;
mod stale_paths;
mod tls;
