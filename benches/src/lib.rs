//! # affinity-bench
//!
//! Benchmarks of the affinity workspace. The criterion micro benchmarks live in `benches/`:
//!
//! - `keys`: client IP parsing, canonicalization and masking (the gateway's hot path);
//! - `state_machine`: applying commands to the lease table, and reads from it;
//! - `log_append`: what durability costs: a log append acknowledged after sled's flush
//!   alone versus after a real `fdatasync`, one writer and many;
//! - `wal_candidates`: log engines side by side (sled, the store's own write-ahead log,
//!   and with `--features log-candidates` raft-log and raft-engine).
//! - `cache_choice` and `client`: the gateway client's cache and its calls to a cluster;
//! - `sizing` (not criterion): memory and snapshot bytes per lease, for sizing nodes.
//!
//! The load generator `affinity-bench` (`src/bin`, on [`load`]) drives a running or
//! self-started cluster with a workload and reports throughput and latency.
//!
//! Run them with `cargo bench -p affinity-bench`; results and the machine they came from
//! are recorded in `docs/benchmarks.md`.

pub mod load;

use std::sync::Arc;

use affinity_proto::ClientKey;
use affinity_server::raft::{Entry, LogId, TypeConfig};
use affinity_server::sm::{Command, Op};
use affinity_server::store::LogStore;
use openraft::EntryPayload;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;

/// Eight backend endpoints, the pool the state machine and sizing benchmarks spread
/// leases over.
pub const ENDPOINTS: [&str; 8] = [
    "10.4.0.1:8080",
    "10.4.0.2:8080",
    "10.4.0.3:8080",
    "10.4.0.4:8080",
    "10.4.0.5:8080",
    "10.4.0.6:8080",
    "10.4.0.7:8080",
    "10.4.0.8:8080",
];

/// A Resolve command for the `n`-th distinct IPv4 /32 key of `scope`.
pub fn resolve_command(scope: &str, n: u32, stamp_ms: i64, endpoint: &str) -> Command {
    let ip = std::net::Ipv4Addr::from(0x0a00_0000 | n);
    Command {
        stamp_ms,
        op: Op::Resolve {
            scope: scope.to_string(),
            key: ClientKey::new(ip.into(), affinity_proto::Masks::default()),
            endpoint: endpoint.to_string(),
            eligible: Vec::new(),
            absolute_timeout_ms: 3_600_000,
            idle_timeout_ms: None,
        },
    }
}

/// A small pool of endpoint names, shared like a real backend set.
pub fn endpoints(n: usize) -> Vec<Arc<str>> {
    (0..n)
        .map(|i| Arc::from(format!("10.4.{}.{}:8080", i / 250, i % 250)))
        .collect()
}

/// Log entry `index` of the log benchmarks: a Resolve command, as the store logs it.
pub fn log_entry(index: u64) -> Entry {
    let n = u32::try_from(index % u64::from(u32::MAX)).unwrap_or(0);
    Entry {
        log_id: LogId::new_term_index(1, index),
        payload: EntryPayload::Normal(resolve_command("ns/route/0", n, 1_000, "10.4.0.1:8080")),
    }
}

/// Append to the sled log `in_flight` batches of `batch` entries from `next` on, and wait
/// until every one is durable.
pub async fn append_round(
    log: &mut LogStore,
    next: &mut u64,
    in_flight: usize,
    batch: usize,
) -> std::io::Result<()> {
    let mut waiters = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let entries: Vec<Entry> = (0..batch)
            .map(|_| {
                *next += 1;
                log_entry(*next)
            })
            .collect();
        let (tx, rx) = TypeConfig::oneshot();
        log.append(entries, IOFlushed::signal(tx)).await?;
        waiters.push(rx);
    }
    for rx in waiters {
        rx.await.map_err(std::io::Error::other)??;
    }
    Ok(())
}
