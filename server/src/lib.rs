//! # affinity-server
//!
//! The store node: sticky client-IP decisions ("leases") replicated with Raft.
//!
//! ## Layout
//!
//! The layers, from the bottom up; each knows only the ones below it.
//!
//! - [`sm`]: the state machine. [`sm::LeaseTable`] holds every lease in memory and applies
//!   [`sm::Command`]s deterministically, using only the time stamped on each command
//!   (never the local clock), so every replica computes the same expiries. It knows only
//!   domain types: no openraft, no sled, no gRPC. [`sm::snapshot`] is its versioned,
//!   checksummed snapshot format.
//! - [`raft`]: the openraft type configuration ([`raft::TypeConfig`]) and the one place
//!   that converts openraft's log entries, votes and memberships to and from their
//!   protobuf records ([`raft::codec`]), shared by storage and peer traffic.
//! - [`store`]: durable storage. The Raft log, vote and commit points on the write-ahead
//!   log ([`store::LogStore`]); the node's metadata in sled, made durable by a thread
//!   that really fsyncs ([`store::durable`]); snapshots as files with a pointer record in
//!   sled; the openraft state machine over the lease table ([`store::StateMachineStore`]).
//!   A data-version record guards the on-disk format, and older layouts are converted in
//!   place ([`store::upgrade`]).
//! - [`wal`]: the write-ahead log under the Raft log (segment files of checksummed
//!   frames, group commit, purge by whole segments, torn tails cut, damage refused),
//!   behind a file-layer trait that crash tests replace with a simulated disk.
//! - [`clock`]: wall-clock time, read only to stamp proposals and to judge expiry on reads.
//! - [`config`]: the node's settings with their defaults, and their checks (addresses:
//!   peers, join targets and what a node advertises, in `config/addresses.rs`).
//! - [`stamps`]: the Raft handle's type and the stamps a leader puts on proposals, below
//!   both [`node`] and [`batch`] (which batches a leader's client writes into entries).
//! - [`node`]: a running node (Raft plus storage) and the operations the services offer:
//!   its start and admission in `node/mod.rs`, proposals in `node/write.rs`, reads in
//!   `node/read.rs`, membership in `node/membership.rs`, status in `node/status.rs`;
//!   [`join`], above it: how a node becomes a member (static peers, or joining by
//!   ordinal);
//!   [`network`]: Raft traffic between nodes; [`grpc`]: the services; [`server`]: the
//!   process that serves them, with health, metrics and a clean stop.
//!
//! ## Invariants
//!
//! - First writer wins: a live lease is never replaced by `Resolve` unless its endpoint is
//!   not eligible; every replica applies the same log and gets the same answer.
//! - Expiry is absolute: nothing moves `expires_at`; reads treat an ended lease as gone
//!   even before a sweep removes it.
//! - Nothing acknowledged is lost: a log append is acknowledged only after `fdatasync`.

pub mod authz;
pub mod batch;
pub mod clock;
pub mod config;
pub mod error;
pub mod gate;
pub mod grpc;
pub mod join;
pub mod metrics;
pub mod network;
pub mod node;
pub mod raft;
pub mod ratelimit;
pub mod server;
pub mod sm;
pub mod stamps;
pub mod store;
pub mod tls;
pub mod wal;
