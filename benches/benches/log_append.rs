//! What a durable log append costs through the store's log (the write-ahead log, one
//! `fdatasync` per group commit), for single entries, batches, and many appends in flight
//! at once. Runs on real disk in a temporary folder.

// A benchmark that cannot set up should stop loudly.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use affinity_bench::append_round;
use affinity_server::store::{self, StoreOptions};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

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
        append_round(log, next, in_flight, batch)
            .await
            .expect("durable");
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
    {
        let mode_name = "fsync";
        for (shape, in_flight, batch) in [("1x1", 1usize, 1usize), ("1x64", 1, 64), ("16x1", 16, 1)]
        {
            let dir = tempfile::tempdir().expect("tempdir");
            let storage = store::open(dir.path(), &StoreOptions::default()).expect("open");
            let mut log = storage.log.clone();
            let mut next = 0u64;
            group.throughput(Throughput::Elements((in_flight * batch) as u64));
            group.bench_function(format!("{mode_name}/{shape}"), |b| {
                b.iter_custom(|rounds| {
                    rt.block_on(run(&mut log, &mut next, rounds, in_flight, batch))
                });
            });
            let stats = storage.log.wal().stats();
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
