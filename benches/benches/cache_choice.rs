//! Which concurrent map should hold the client's lease cache? The same entry shape in each
//! candidate, 1M live entries, hits on random keys from 1 and 2 threads. The client's hot
//! path must answer a hit in well under 150 ns without allocating or contending.

// A benchmark that cannot set up should stop loudly.
#![allow(clippy::expect_used)]

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

const ENTRIES: u32 = 1_000_000;

/// The client's key: an interned scope id and a masked client key (as 16+2 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    scope: u32,
    addr: [u8; 16],
    len: u8,
}

/// What a hit returns: the endpoint (inline when short, so cloning it touches no shared
/// counter) and the entry's validity.
#[derive(Clone)]
struct Entry {
    endpoint: smol_str::SmolStr,
    valid_until_ms: i64,
}

fn key(i: u32) -> Key {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&(0x0a00_0000 | i).to_be_bytes());
    Key {
        scope: i % 16,
        addr,
        len: 32,
    }
}

fn entry(i: u32) -> Entry {
    Entry {
        endpoint: smol_str::SmolStr::new(format!("10.4.{}.{}:8080", (i / 250) % 250, i % 250)),
        valid_until_ms: i64::MAX,
    }
}

/// Pseudo-random probe order, the same for every candidate.
fn probes() -> Vec<Key> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..65_536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            key(u32::try_from(x % u64::from(ENTRIES)).expect("fits"))
        })
        .collect()
}

/// Time `threads` threads doing `iters` lookups each, side by side; the wall time is the
/// time of one thread's `iters` lookups, so criterion reports the latency per lookup.
fn run<F: Fn(&Key) -> Option<Entry> + Sync>(
    iters: u64,
    threads: usize,
    probes: &[Key],
    get: &F,
) -> Duration {
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut hits = 0u64;
                for i in 0..iters {
                    let slot =
                        usize::try_from(i).unwrap_or(0).wrapping_add(t * 7919) % probes.len();
                    if let Some(e) = get(black_box(&probes[slot])) {
                        hits += u64::from(e.valid_until_ms > 0 && !e.endpoint.is_empty());
                    }
                }
                black_box(hits);
            });
        }
    });
    started.elapsed()
}

fn candidates(c: &mut Criterion) {
    let probes = probes();
    let hasher = foldhash::fast::FixedState::with_seed(7);

    let mut group = c.benchmark_group("cache_hit_1m");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));

    let mut plain: HashMap<Key, Entry, _> = HashMap::with_hasher(hasher.clone());
    for i in 0..ENTRIES {
        plain.insert(key(i), entry(i));
    }
    let plain_get = |k: &Key| plain.get(k).cloned();
    group.bench_function("std_hashmap_single_thread", |b| {
        b.iter_custom(|n| run(n, 1, &probes, &plain_get));
    });
    drop(plain);

    // Sharded std HashMaps behind read-write locks: a read takes one shard's lock.
    let shards: Vec<parking_lot::RwLock<HashMap<Key, Entry, _>>> = (0..256)
        .map(|_| parking_lot::RwLock::new(HashMap::with_hasher(hasher.clone())))
        .collect();
    let shard_of = |k: &Key| (hasher.hash_one(k) >> 56) as usize;
    for i in 0..ENTRIES {
        let k = key(i);
        shards[shard_of(&k)].write().insert(k, entry(i));
    }
    let sharded_get = |k: &Key| shards[shard_of(k)].read().get(k).cloned();
    for threads in [1, 2] {
        group.bench_function(format!("sharded_rwlock_hashmap/{threads}t"), |b| {
            b.iter_custom(|n| run(n, threads, &probes, &sharded_get));
        });
    }
    drop(shards);

    let quick: quick_cache::sync::Cache<Key, Entry> =
        quick_cache::sync::Cache::new(ENTRIES as usize * 2);
    for i in 0..ENTRIES {
        quick.insert(key(i), entry(i));
    }
    let quick_get = |k: &Key| quick.get(k);
    for threads in [1, 2] {
        group.bench_function(format!("quick_cache/{threads}t"), |b| {
            b.iter_custom(|n| run(n, threads, &probes, &quick_get));
        });
    }
    drop(quick);

    let moka: moka::sync::Cache<Key, Entry> = moka::sync::Cache::new(u64::from(ENTRIES) * 2);
    for i in 0..ENTRIES {
        moka.insert(key(i), entry(i));
    }
    moka.run_pending_tasks();
    let moka_get = |k: &Key| moka.get(k);
    for threads in [1, 2] {
        group.bench_function(format!("moka/{threads}t"), |b| {
            b.iter_custom(|n| run(n, threads, &probes, &moka_get));
        });
    }
    drop(moka);

    let papaya: papaya::HashMap<Key, Entry, _> = papaya::HashMap::with_hasher(hasher.clone());
    {
        let map = papaya.pin();
        for i in 0..ENTRIES {
            map.insert(key(i), entry(i));
        }
    }
    let papaya_get = |k: &Key| papaya.pin().get(k).cloned();
    for threads in [1, 2] {
        group.bench_function(format!("papaya/{threads}t"), |b| {
            b.iter_custom(|n| run(n, threads, &probes, &papaya_get));
        });
    }
    drop(papaya);

    let index: scc::HashIndex<Key, Entry, _> = scc::HashIndex::with_hasher(hasher.clone());
    for i in 0..ENTRIES {
        let _ = index.insert_sync(key(i), entry(i));
    }
    let index_get = |k: &Key| index.peek_with(k, |_, v| v.clone());
    for threads in [1, 2] {
        group.bench_function(format!("scc_hashindex/{threads}t"), |b| {
            b.iter_custom(|n| run(n, threads, &probes, &index_get));
        });
    }
    drop(index);

    let dash: dashmap::DashMap<Key, Entry, _> = dashmap::DashMap::with_hasher(hasher.clone());
    for i in 0..ENTRIES {
        dash.insert(key(i), entry(i));
    }
    let dash_get = |k: &Key| dash.get(k).map(|e| e.clone());
    for threads in [1, 2] {
        group.bench_function(format!("dashmap/{threads}t"), |b| {
            b.iter_custom(|n| run(n, threads, &probes, &dash_get));
        });
    }
    group.finish();
    black_box(hasher.hash_one(1u8));
}

criterion_group!(benches, candidates);
criterion_main!(benches);
