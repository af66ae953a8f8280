//! The lease table: applying commands (what every replica does per log entry) and reading,
//! and draining an endpoint (an operator action that walks the table).

// A benchmark that cannot set up should stop loudly.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use affinity_bench::{ENDPOINTS, resolve_command};
use affinity_proto::{ClientKey, Masks};
use affinity_server::sm::{Command, LeaseTable, Op};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn filled(n: u32) -> LeaseTable {
    let mut table = LeaseTable::new();
    let mut events = Vec::new();
    for i in 0..n {
        let cmd = resolve_command(
            "ns/route/0",
            i,
            1_000,
            ENDPOINTS[i as usize % ENDPOINTS.len()],
        );
        table.apply(u64::from(i) + 1, &cmd, &mut events);
        events.clear();
    }
    table
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(1));

    // Creating a lease with a new key, in a table of 100k leases and growing.
    let mut table = filled(100_000);
    let mut events = Vec::new();
    let mut next = 1_000_000u32;
    group.bench_function("resolve_create_100k", |b| {
        b.iter(|| {
            next += 1;
            let cmd = resolve_command("ns/route/0", next, 2_000, ENDPOINTS[0]);
            black_box(table.apply(u64::from(next), &cmd, &mut events));
            events.clear();
        });
    });
    drop(table);

    // Resolving a live lease (the common case once decisions exist).
    let mut table = filled(100_000);
    let hits: Vec<_> = (0..10_000)
        .map(|i| resolve_command("ns/route/0", i * 7, 3_000, ENDPOINTS[1]))
        .collect();
    let mut events = Vec::new();
    let mut i = 0usize;
    group.bench_function("resolve_hit_100k", |b| {
        b.iter(|| {
            let cmd = &hits[i % hits.len()];
            i += 1;
            black_box(table.apply(600_000, cmd, &mut events));
            events.clear();
        });
    });
    group.finish();
}

fn reads(c: &mut Criterion) {
    let table = filled(1_000_000);
    let masks = Masks::default();
    let keys: Vec<ClientKey> = (0..10_000u32)
        .map(|i| {
            ClientKey::new(
                std::net::Ipv4Addr::from(0x0a00_0000 | (i * 97)).into(),
                masks,
            )
        })
        .collect();
    let mut i = 0usize;
    c.bench_function("lookup_1m", |b| {
        b.iter(|| {
            let key = keys[i % keys.len()];
            i += 1;
            black_box(table.get("ns/route/0", key, 1_500))
        });
    });
}

fn drain(c: &mut Criterion) {
    // Draining an endpoint that holds one lease among a million, then deciding that key
    // again: what a drain costs the apply loop when few leases use the endpoint.
    let mut table = filled(1_000_000);
    let mut events = Vec::new();
    let lone = "10.9.9.9:80";
    let key = 2_000_000u32;
    let drain = Command {
        stamp_ms: 2_000,
        op: Op::DrainEndpoint {
            scope: None,
            endpoint: lone.to_string(),
        },
    };
    let recreate = resolve_command("ns/route/0", key, 2_000, lone);
    table.apply(1, &recreate, &mut events);
    let mut group = c.benchmark_group("drain");
    group.sample_size(20);
    group.bench_function("one_lease_among_1m", |b| {
        b.iter(|| {
            black_box(table.apply(2, &drain, &mut events));
            table.apply(3, &recreate, &mut events);
            events.clear();
        });
    });
    group.finish();
}

criterion_group!(benches, apply, reads, drain);
criterion_main!(benches);
