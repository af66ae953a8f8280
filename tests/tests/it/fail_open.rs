//! Fail-open agreement against a real 3-node cluster: with the whole store down, two
//! clients answer the same endpoint for each of 1,000 keys (weighted rendezvous over the
//! eligible endpoints), and once the store is back it records exactly those endpoints, so
//! no client moves. A control set of keys whose replicas proposed endpoints of their own
//! shows what the default prevents.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use affinity_client::{AffinityClient, Decision, Policy, Resolve, Source};
use affinity_tests::{Cluster, ClusterOptions, wait};
use futures::StreamExt;

const KEYS: u32 = 1_000;
const CONTROL: u32 = 200;
const SCOPE: &str = "ns/outage/0";

fn policy() -> Policy {
    Policy::new(Duration::from_secs(3600))
        .unwrap()
        .with_masks(affinity_client::Masks::new(24, 64).unwrap())
}

/// One client of each /24.
fn client_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0007 | (i << 8)))
}

fn client(cluster: &Cluster) -> AffinityClient {
    AffinityClient::builder()
        .endpoints((1..=3).map(|id| cluster.addr(id).to_string()))
        .request_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// Resolve `keys` through `client`, 32 at a time; the decisions in key order. (While the
/// store is away one call at a time probes it, for up to the request timeout, while the
/// others fall back at once.)
async fn resolve_all<'a>(
    client: &AffinityClient,
    keys: impl Iterator<Item = u32>,
    call: impl Fn(u32) -> Resolve<'a>,
) -> Vec<Decision> {
    let mut decisions: Vec<(u32, Decision)> = futures::stream::iter(keys)
        .map(|i| {
            let call = call(i);
            async move { (i, client.resolve(call).await.unwrap()) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    decisions.sort_by_key(|(i, _)| *i);
    decisions.into_iter().map(|(_, d)| d).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_during_an_outage_and_the_store_keeps_their_picks() {
    let mut cluster = Cluster::start("fail-open", ClusterOptions::default()).await;
    let (a, b) = (client(&cluster), client(&cluster));
    let p = policy();
    let eligible: Vec<String> = (1..=4).map(|i| format!("10.4.0.{i}:8080")).collect();
    let weights = [1, 1, 2, 4];
    let default = |i: u32| {
        Resolve::new(SCOPE, client_ip(i), &p)
            .eligible(&eligible)
            .weights(&weights)
    };
    // The control: each replica proposes an endpoint of its own choosing.
    let own = |i: u32, shift: u32| {
        let mine = &eligible[((i + shift) % 4) as usize];
        default(i).proposed(mine)
    };

    for id in 1..=3 {
        cluster.kill(id);
    }
    let during_a = resolve_all(&a, 0..KEYS, default).await;
    let during_b = resolve_all(&b, 0..KEYS, default).await;
    let control_a = resolve_all(&a, KEYS..KEYS + CONTROL, |i| own(i, 0)).await;
    let control_b = resolve_all(&b, KEYS..KEYS + CONTROL, |i| own(i, 1)).await;
    for (i, (da, db)) in during_a.iter().zip(&during_b).enumerate() {
        assert_eq!((da.source, db.source), (Source::Fallback, Source::Fallback));
        assert_eq!(
            da.endpoint, db.endpoint,
            "key {i}: the replicas disagree during the outage"
        );
    }
    for (da, db) in control_a.iter().zip(&control_b) {
        assert_eq!((da.source, db.source), (Source::Fallback, Source::Fallback));
        assert_eq!(da.endpoint, db.endpoint, "fallback ignores own proposals");
    }
    // Weighted: the endpoint of weight 4 takes about half the keys, those of weight 1
    // about an eighth each.
    let share = |e: &str| during_a.iter().filter(|d| d.endpoint == e).count();
    assert!(
        (400..600).contains(&share("10.4.0.4:8080")),
        "{}",
        share("10.4.0.4:8080")
    );
    assert!(
        (75..175).contains(&share("10.4.0.1:8080")),
        "{}",
        share("10.4.0.1:8080")
    );

    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_leader(&[1, 2, 3]).await;
    // The clients' cool-off ends with their first answer from the store.
    for c in [&a, &b] {
        wait::until(
            "the store answers the client again",
            Duration::from_secs(20),
            || async {
                match c.resolve(default(KEYS + CONTROL)).await {
                    Ok(d) if d.source != Source::Fallback => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }

    let after_a = resolve_all(&a, 0..KEYS, default).await;
    let after_b = resolve_all(&b, 0..KEYS, default).await;
    let mut moved = Vec::new();
    for (i, ((before, da), db)) in during_a.iter().zip(&after_a).zip(&after_b).enumerate() {
        assert!(
            matches!(da.source, Source::Store { .. } | Source::Cache)
                && matches!(db.source, Source::Store { .. } | Source::Cache),
            "key {i}: {:?} / {:?}",
            da.source,
            db.source
        );
        assert_eq!(da.endpoint, db.endpoint, "key {i}: one lease, one endpoint");
        if da.endpoint != before.endpoint {
            moved.push((i, before.endpoint.clone(), da.endpoint.clone()));
        }
    }
    assert!(moved.is_empty(), "keys moved after the outage: {moved:?}");
    // What the store holds, read linearizably.
    for i in (0..KEYS).step_by(50) {
        let lease = a.lookup(SCOPE, client_ip(i), &p).await.unwrap().unwrap();
        assert_eq!(lease.endpoint, during_a[i as usize].endpoint.as_str());
    }

    // Replicas that propose their own picks agree during the outage too, but the store
    // then records the first proposal, and most of those clients move.
    let control_after = resolve_all(&a, KEYS..KEYS + CONTROL, |i| own(i, 0)).await;
    let control_moved = control_a
        .iter()
        .zip(&control_after)
        .filter(|(before, after)| before.endpoint != after.endpoint)
        .count();
    assert!(
        control_moved > CONTROL as usize / 2,
        "own proposals moved only {control_moved} of {CONTROL} clients"
    );
}
