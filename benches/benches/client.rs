//! `affinity-client`: the hot path (`cached()` hits and misses on 1M cached leases, from 1
//! and 2 threads) and the cold path (`resolve()` misses against a local 3-node cluster of
//! real `affinityd` processes, with their latency distribution).

// A benchmark that cannot set up should stop loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use affinity_client::{AffinityClient, Masks, Policy, Resolve, pb};
use affinity_tests::{Cluster, ClusterOptions};
use criterion::{Criterion, criterion_group, criterion_main};

const ENTRIES: u32 = 1_000_000;
const SCOPES: u32 = 16;

fn policy() -> Policy {
    Policy::new(Duration::from_secs(3600))
        .unwrap()
        .with_masks(Masks::new(32, 128).unwrap())
}

fn addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i))
}

fn scope(i: u32) -> String {
    format!("default/route-{}/0", i % SCOPES)
}

/// A client with `ENTRIES` live leases in its cache (no store behind it).
fn filled(rt: &tokio::runtime::Runtime) -> (AffinityClient, Vec<String>) {
    let client = rt.block_on(async {
        AffinityClient::builder()
            .endpoints(["127.0.0.1:1"])
            .cache_capacity(ENTRIES as usize * 2)
            .watch(false)
            // No store behind it: serve the remembered leases (the check still runs).
            .max_staleness(Duration::MAX)
            .build()
            .expect("client")
    });
    let far = i64::MAX / 2;
    for i in 0..ENTRIES {
        client.remember(&pb::Lease {
            scope: scope(i),
            prefix: format!("{}/32", addr(i)),
            endpoint: format!("10.4.{}.{}:8080", (i / 250) % 250, i % 250),
            created_at_ms: 0,
            expires_at_ms: far,
            revision: u64::from(i) + 1,
            idle_timeout_ms: None,
            last_used_ms: 0,
        });
    }
    let scopes = (0..SCOPES).map(scope).collect();
    (client, scopes)
}

/// Probe order: pseudo-random over all entries.
fn probes(n: usize) -> Vec<u32> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            u32::try_from(x % u64::from(ENTRIES)).expect("fits")
        })
        .collect()
}

fn run(
    client: &AffinityClient,
    scopes: &[String],
    probes: &[u32],
    iters: u64,
    threads: usize,
    offset: u32,
) -> Duration {
    let policy = policy();
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut found = 0u64;
                for i in 0..iters {
                    let slot =
                        usize::try_from(i).unwrap_or(0).wrapping_add(t * 7919) % probes.len();
                    let n = probes[slot];
                    let hit = client.cached(
                        &scopes[(n % SCOPES) as usize],
                        black_box(addr(n.wrapping_add(offset))),
                        &policy,
                    );
                    found += u64::from(hit.is_some());
                }
                black_box(found);
            });
        }
    });
    started.elapsed()
}

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (client, scopes) = filled(&rt);
    let probes = probes(1 << 16);
    let mut group = c.benchmark_group("cached_1m");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    for threads in [1, 2] {
        group.bench_function(format!("hit/{threads}t"), |b| {
            b.iter_custom(|n| run(&client, &scopes, &probes, n, threads, 0));
        });
    }
    // Real traffic has locality: the same clients come back. Hits on 8,192 distinct keys
    // (still among 1M cached) show the cost once the working set is in CPU caches.
    let hot: Vec<u32> = probes.iter().take(8192).copied().collect();
    for threads in [1, 2] {
        group.bench_function(format!("hit_hot_8k/{threads}t"), |b| {
            b.iter_custom(|n| run(&client, &scopes, &hot, n, threads, 0));
        });
    }
    // Misses: keys just outside the filled range.
    group.bench_function("miss/1t", |b| {
        b.iter_custom(|n| run(&client, &scopes, &probes, n, 1, ENTRIES));
    });
    group.finish();
}

fn cold_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = rt.block_on(Cluster::start("bench-resolve", ClusterOptions::default()));
    let client = rt.block_on(async {
        AffinityClient::builder()
            .endpoints((1..=3).map(|id| cluster.addr(id).to_string()))
            .request_timeout(Duration::from_secs(5))
            .watch(false)
            .build()
            .expect("client")
    });
    let policy = policy();
    let mut next = 0u32;
    // The latency distribution of sequential misses, printed alongside criterion's summary.
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    let mut group = c.benchmark_group("resolve_miss_3_nodes");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("sequential", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    next += 1;
                    let one = Instant::now();
                    let d = client
                        .resolve(
                            Resolve::new("bench/resolve/0", addr(next), &policy)
                                .proposed("10.4.0.1:8080"),
                        )
                        .await
                        .expect("resolve");
                    histogram
                        .record(u64::try_from(one.elapsed().as_micros()).unwrap_or(u64::MAX))
                        .ok();
                    black_box(d);
                }
                started.elapsed()
            })
        });
    });
    group.finish();
    println!(
        "resolve miss latency (us) over {} calls: p50 {} p90 {} p99 {} p99.9 {} max {}",
        histogram.len(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.9),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max()
    );
    drop(cluster);
}

criterion_group!(benches, hot_path, cold_path);
criterion_main!(benches);
