//! What durability costs: a log append acknowledged after sled's own flush
//! (`sync_file_range`) versus after a real `fdatasync`, for single entries, batches, and
//! many appends in flight at once (group commit). Runs on real disk in a temporary folder.

// A benchmark that cannot set up should stop loudly.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use affinity_bench::resolve_command;
use affinity_server::raft::{Entry, LogId, TypeConfig};
use affinity_server::store::{self, StoreOptions, SyncMode};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use openraft::EntryPayload;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;

fn entry(index: u64) -> Entry {
    let n = u32::try_from(index % u64::from(u32::MAX)).unwrap_or(0);
    Entry {
        log_id: LogId::new_term_index(1, index),
        payload: EntryPayload::Normal(resolve_command("ns/route/0", n, 1_000, "10.4.0.1:8080")),
    }
}

/// `rounds` times: issue `in_flight` appends of `batch` entries each, then wait for all.
async fn run(
    log: &mut store::LogStore,
    next: &mut u64,
    rounds: u64,
    in_flight: usize,
    batch: usize,
) -> Duration {
    let started = Instant::now();
    for _ in 0..rounds {
        let mut waiters = Vec::with_capacity(in_flight);
        for _ in 0..in_flight {
            let entries: Vec<Entry> = (0..batch)
                .map(|_| {
                    *next += 1;
                    entry(*next)
                })
                .collect();
            let (tx, rx) = TypeConfig::oneshot();
            log.append(entries, IOFlushed::signal(tx))
                .await
                .expect("append");
            waiters.push(rx);
        }
        for rx in waiters {
            rx.await.expect("callback").expect("durable");
        }
    }
    started.elapsed()
}

fn log_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("log_append");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    for (mode_name, mode) in [
        ("fsync", SyncMode::Fsync),
        ("sled_flush_only", SyncMode::SledFlushOnly),
    ] {
        for (shape, in_flight, batch) in [("1x1", 1usize, 1usize), ("1x64", 1, 64), ("16x1", 16, 1)]
        {
            let dir = tempfile::tempdir().expect("tempdir");
            let options = StoreOptions {
                sync: mode,
                ..StoreOptions::default()
            };
            let storage = store::open(dir.path(), &options).expect("open");
            let mut log = storage.log.clone();
            let mut next = 0u64;
            group.throughput(Throughput::Elements((in_flight * batch) as u64));
            group.bench_function(format!("{mode_name}/{shape}"), |b| {
                b.iter_custom(|rounds| {
                    rt.block_on(run(&mut log, &mut next, rounds, in_flight, batch))
                });
            });
            let stats = storage.flusher.stats();
            let syncs = stats.syncs.load(std::sync::atomic::Ordering::Relaxed);
            let requests = stats.requests.load(std::sync::atomic::Ordering::Relaxed);
            let tenths = requests * 10 / syncs.max(1);
            println!(
                "  {mode_name}/{shape}: {requests} appends acknowledged by {syncs} syncs ({}.{} per sync)",
                tenths / 10,
                tenths % 10
            );
            drop(log);
            storage.close();
        }
    }
    group.finish();
}

criterion_group!(benches, log_append);
criterion_main!(benches);
