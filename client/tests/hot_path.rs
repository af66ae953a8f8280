//! The hot path allocates nothing: `cached()` hits and misses, with the staleness check and
//! the hit counter, measured with a counting allocator (per thread) around 10,000 calls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use affinity_client::{AffinityClient, Masks, Policy, pb};

fn addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i))
}

#[tokio::test]
async fn a_cached_hit_and_a_miss_allocate_nothing() {
    let client = AffinityClient::builder()
        .endpoints(["127.0.0.1:1"])
        .watch(false)
        // No store behind it: serve what it remembers (the freshness check still runs).
        .max_staleness(Duration::MAX)
        .build()
        .unwrap();
    let policy = Policy::new(Duration::from_secs(3600))
        .unwrap()
        .with_masks(Masks::new(32, 128).unwrap());
    let far = i64::MAX / 2;
    for i in 0..1_000 {
        client.remember(&pb::Lease {
            scope: "default/web/0".into(),
            prefix: format!("{}/32", addr(i)),
            endpoint: format!("10.4.0.{}:8080", i % 250),
            created_at_ms: 0,
            expires_at_ms: far,
            revision: u64::from(i) + 1,
            idle_timeout_ms: None,
            last_used_ms: 0,
        });
    }
    // Once, outside the count: whatever a first call sets up for this thread.
    assert!(client.cached("default/web/0", addr(1), &policy).is_some());

    let mut found = 0;
    let hits = allocation_counter::measure(|| {
        for i in 0..10_000 {
            let hit = client.cached("default/web/0", black_box(addr(i % 1_000)), &policy);
            found += usize::from(hit.is_some());
        }
    });
    assert_eq!(found, 10_000, "every probe is a hit");
    assert_eq!(hits.count_total, 0, "a hit allocated: {hits:?}");

    let misses = allocation_counter::measure(|| {
        for i in 0..10_000 {
            black_box(client.cached("default/web/0", black_box(addr(5_000 + i)), &policy));
            black_box(client.cached("other/scope/0", black_box(addr(i)), &policy));
        }
    });
    assert_eq!(misses.count_total, 0, "a miss allocated: {misses:?}");
}
