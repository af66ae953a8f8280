//! Client key derivation: what every gateway request pays before it can look up a cache.

// A benchmark that cannot set up should stop loudly.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;

use affinity_proto::{ClientKey, Masks};
use criterion::{Criterion, criterion_group, criterion_main};

fn keys(c: &mut Criterion) {
    let masks = Masks::new(24, 64).expect("valid masks");
    let mut group = c.benchmark_group("client_key");
    for (name, text) in [
        ("parse_mask_ipv4", "203.0.113.77"),
        ("parse_mask_ipv6", "2001:db8:1:2:3:4:5:6"),
        ("parse_mask_ipv4_mapped", "::ffff:203.0.113.77"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| ClientKey::parse_ip(black_box(text), masks));
        });
    }
    let v4: IpAddr = "203.0.113.77".parse().expect("ip");
    let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().expect("ip");
    group.bench_function("mask_only_ipv4", |b| {
        b.iter(|| ClientKey::new(black_box(v4), masks));
    });
    group.bench_function("mask_only_ipv6", |b| {
        b.iter(|| ClientKey::new(black_box(v6), masks));
    });
    let key = ClientKey::new(v6, masks);
    group.bench_function("format_cidr", |b| b.iter(|| black_box(key).to_string()));
    group.finish();
}

criterion_group!(benches, keys);
criterion_main!(benches);
