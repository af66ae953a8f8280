//! End to end: a 3-node affinity store, three backends and two `affinity-gateway` replicas,
//! all real processes on loopback. Clients send from distinct loopback source addresses
//! (Linux routes all of 127.0.0.0/8 to lo) or, behind a trusted hop, through
//! `X-Forwarded-For`, and alternate between the replicas.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::many_single_char_names,
    missing_docs
)]

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use affinity_tests::{Cluster, ClusterOptions, wait};
use harness::{Backend, Gateway, get_ok, route_file};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Ask through both replicas, alternating, `rounds` times; every answer must come from one
/// backend, which is returned.
async fn sticky(gateways: [SocketAddr; 2], source: IpAddr, path: &str, rounds: usize) -> String {
    let mut seen = BTreeSet::new();
    for i in 0..rounds * 2 {
        let answer = get_ok(gateways[i % 2], source, path, &[]).await;
        seen.insert(answer.backend().to_string());
    }
    assert_eq!(
        seen.len(),
        1,
        "{source} on {path} reached {seen:?} through the two replicas"
    );
    seen.into_iter().next().unwrap()
}

/// Wait until every replica counts `n` route file reloads with `result`.
async fn reloads(gateways: &[Gateway], result: &str, n: f64, what: &str) {
    let series = format!("affinity_gateway_route_reloads_total{{result=\"{result}\"}}");
    for g in gateways {
        wait::until(what, Duration::from_secs(10), || async {
            let seen = g.metric(&series);
            if seen >= n { Ok(()) } else { Err(seen) }
        })
        .await;
    }
}

/// The tests of this binary run one at a time: each reserves free ports (bound, released,
/// then bound again by the process it starts), and another test's processes binding port 0
/// meanwhile could take one of them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Setup {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    cluster: Cluster,
    backends: Vec<Backend>,
    gateways: Vec<Gateway>,
    routes: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(name: &str, mask: u32, extra: &[&str]) -> Setup {
        let turn = ONE_AT_A_TIME.lock().await;
        let cluster = Cluster::start(name, ClusterOptions::default()).await;
        let dir = tempfile::Builder::new()
            .prefix(&format!("affinity-{name}-gw-"))
            .tempdir()
            .unwrap();
        let backends: Vec<Backend> = (1..=3)
            .map(|i| Backend::start(&format!("backend-{i}")))
            .collect();
        let routes = dir.path().join("routes.yaml");
        std::fs::write(
            &routes,
            route_file(&backends.iter().collect::<Vec<_>>(), mask),
        )
        .unwrap();
        let store = cluster.endpoints();
        let gateways = vec![
            Gateway::start(dir.path(), "gateway-1", &routes, &store, extra),
            Gateway::start(dir.path(), "gateway-2", &routes, &store, extra),
        ];
        for g in &gateways {
            g.wait_ready().await;
        }
        Setup {
            _turn: turn,
            cluster,
            backends,
            gateways,
            routes,
            _dir: dir,
        }
    }

    fn pair(&self) -> [SocketAddr; 2] {
        [self.gateways[0].listen, self.gateways[1].listen]
    }

    fn backend_mut(&mut self, name: &str) -> &mut Backend {
        self.backends
            .iter_mut()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_client_ip_persistence() {
    let mut s = Setup::start("gateway-e2e", 24, &[]).await;
    let gw = s.pair();
    let a = ip("127.1.2.3");
    let b = ip("127.1.2.77");
    let c = ip("127.1.3.5");

    // Same /24 -> same backend on both replicas; the key is the masked prefix.
    let first = get_ok(gw[0], a, "/", &[]).await;
    assert_eq!(first.header("affinity-decision"), "store", "{first:?}");
    assert_eq!(first.header("affinity-lease"), "created", "{first:?}");
    assert_eq!(first.header("affinity-prefix"), "127.1.2.0/24", "{first:?}");
    let a_backend = sticky(gw, a, "/", 3).await;
    assert_eq!(a_backend, first.backend());
    assert_eq!(
        sticky(gw, b, "/", 3).await,
        a_backend,
        "127.1.2.77 shares the /24"
    );

    // X-Forwarded-For is not trusted by default: the socket peer decides.
    let spoofed = get_ok(gw[1], a, "/", &[("x-forwarded-for", "10.9.9.9")]).await;
    assert_eq!(spoofed.header("affinity-prefix"), "127.1.2.0/24");
    assert_eq!(spoofed.backend(), a_backend);

    // A short-lived lease for the timeout check at the end.
    let short = get_ok(gw[0], a, "/short", &[]).await;
    assert_eq!(short.header("affinity-lease"), "created", "{short:?}");
    let short_created_ms = now_ms();

    // Other /24s spread over the backends.
    let mut placed: BTreeMap<IpAddr, String> = BTreeMap::new();
    placed.insert(a, a_backend.clone());
    placed.insert(c, sticky(gw, c, "/", 2).await);
    for third in 4..=11 {
        let client = ip(&format!("127.1.{third}.9"));
        placed.insert(client, sticky(gw, client, "/", 2).await);
    }
    let used: BTreeSet<&String> = placed.values().collect();
    assert!(used.len() >= 2, "ten /24s all went to {used:?}");

    // Without sessionPersistence: round robin.
    let mut plain = BTreeSet::new();
    for i in 0..6 {
        let answer = get_ok(gw[i % 2], a, "/plain", &[]).await;
        assert_eq!(answer.header("affinity-decision"), "round-robin");
        plain.insert(answer.backend().to_string());
    }
    assert!(plain.len() >= 2, "round robin used only {plain:?}");

    // Reload: a new route appears, a broken file is refused, stickiness stays.
    let text = std::fs::read_to_string(&s.routes).unwrap();
    let extra_route = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other, namespace: e2e}
spec:
  hostnames: [other.test]
  rules:
  - backendRefs: [{name: web, port: 80}]
";
    std::fs::write(&s.routes, format!("{extra_route}---\n{text}")).unwrap();
    reloads(&s.gateways, "ok", 1.0, "the gateway reloads the route file").await;
    assert_eq!(
        sticky(gw, a, "/", 2).await,
        a_backend,
        "a reload keeps stickiness"
    );
    let other = get_ok(gw[1], a, "/", &[("host", "other.test")]).await;
    assert_eq!(
        other.header("affinity-decision"),
        "round-robin",
        "{other:?}"
    );
    std::fs::write(
        &s.routes,
        "kind: HTTPRoute\nspec: {rules: [{backendRefs: 7}]}\n",
    )
    .unwrap();
    reloads(
        &s.gateways,
        "error",
        1.0,
        "the gateway refuses the broken route file",
    )
    .await;
    assert_eq!(
        sticky(gw, b, "/", 2).await,
        a_backend,
        "a refused reload changes nothing"
    );
    std::fs::write(&s.routes, &text).unwrap();
    reloads(
        &s.gateways,
        "ok",
        2.0,
        "the gateway reloads the mended file",
    )
    .await;

    // Kill the backend 127.1.2.0/24 is stuck to: both replicas move it to the same new
    // backend, replaced once; prefixes on other backends stay.
    s.backend_mut(&a_backend).kill();
    let mut replaced = 0;
    let mut moved_to = BTreeSet::new();
    for i in 0..6 {
        let client = if i % 3 == 0 { b } else { a };
        let answer = get_ok(gw[i % 2], client, "/", &[]).await;
        if answer.header("affinity-lease") == "replaced" {
            replaced += 1;
        }
        moved_to.insert(answer.backend().to_string());
    }
    assert_eq!(moved_to.len(), 1, "127.1.2.0/24 moved to {moved_to:?}");
    let new_backend = moved_to.into_iter().next().unwrap();
    assert_ne!(new_backend, a_backend);
    assert_eq!(replaced, 1, "the lease is replaced once, for both replicas");
    for (client, before) in &mut placed {
        let now = sticky(gw, *client, "/", 2).await;
        if *before == a_backend {
            assert_ne!(now, a_backend, "{client} left the dead backend");
        } else {
            assert_eq!(
                &now, before,
                "{client} was not on the dead backend and stays"
            );
        }
        *before = now;
    }

    // Kill the store's leader: no request fails, nobody moves.
    let all = s.cluster.ids();
    let leader = s.cluster.wait_leader(&all).await;
    s.cluster.kill(leader);
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let elected = AtomicBool::new(false);
    let requests = async {
        let mut rounds = 0;
        while !elected.load(Ordering::Relaxed) || rounds < 2 {
            for (i, (client, backend)) in placed.iter().enumerate() {
                let answer = get_ok(gw[(i + rounds) % 2], *client, "/", &[]).await;
                assert_eq!(answer.backend(), backend, "{client} during the failover");
            }
            rounds += 1;
        }
        rounds
    };
    let election = async {
        let new_leader = s.cluster.wait_leader(&rest).await;
        elected.store(true, Ordering::Relaxed);
        new_leader
    };
    let (rounds, new_leader) = tokio::join!(requests, election);
    assert_ne!(new_leader, leader);
    assert!(rounds >= 2);

    // Restart one replica: its memory is gone, the decisions are in the store.
    s.gateways[0].kill();
    s.gateways[0].spawn();
    s.gateways[0].wait_ready().await;
    for (client, backend) in &placed {
        let answer = get_ok(gw[0], *client, "/", &[]).await;
        assert_eq!(
            answer.backend(),
            backend,
            "{client} after the replica restarted"
        );
        assert!(
            matches!(answer.header("affinity-lease"), "kept" | ""),
            "{client}: the lease is not made again: {answer:?}"
        );
    }

    // After absoluteTimeout (3 s on /short) the prefix is decided anew.
    wait::until_wall_clock(short_created_ms + 3_000).await;
    wait::until(
        "the short lease ends and is decided again",
        Duration::from_secs(10),
        || async {
            let answer = get_ok(gw[1], a, "/short", &[]).await;
            match answer.header("affinity-lease") {
                "created" => Ok(()),
                other => Err(other.to_string()),
            }
        },
    )
    .await;

    // Stop the whole store: requests still succeed and both replicas agree.
    for id in s.cluster.running() {
        s.cluster.kill(id);
    }
    for (client, backend) in &placed {
        for g in gw {
            let answer = get_ok(g, *client, "/", &[]).await;
            assert_eq!(answer.backend(), backend, "{client} with the store down");
        }
    }
    let newcomer = ip("127.1.250.1");
    let one = get_ok(gw[0], newcomer, "/", &[]).await;
    let other = get_ok(gw[1], newcomer, "/", &[]).await;
    assert_eq!(one.header("affinity-decision"), "fallback", "{one:?}");
    assert_eq!(other.header("affinity-decision"), "fallback", "{other:?}");
    assert_eq!(
        one.backend(),
        other.backend(),
        "replicas agree without the store"
    );
    assert_ne!(one.backend(), a_backend, "the dead backend is not eligible");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_behind_a_trusted_hop() {
    let mut s = Setup::start("gateway-e2e-v6", 64, &["--trusted-hops", "1"]).await;
    let gw = s.pair();
    let lo = ip("127.0.0.1");
    let via = |client: &'static str| [("x-forwarded-for", client)];

    // Two clients of one /64, through both replicas: one backend. The client's own
    // (untrusted) entries left of the trusted hop do not matter.
    let first = get_ok(gw[0], lo, "/", &via("2001:db8:1:2::10")).await;
    assert_eq!(
        first.header("affinity-prefix"),
        "2001:db8:1:2::/64",
        "{first:?}"
    );
    let stuck = first.backend().to_string();
    for (i, client) in [
        "2001:db8:1:2::10",
        "2001:db8:1:2:ffff::1",
        "198.51.100.7, 2001:db8:1:2::abcd",
        "[2001:db8:1:2::20]:4711",
    ]
    .into_iter()
    .enumerate()
    {
        let answer = get_ok(gw[i % 2], lo, "/", &[("x-forwarded-for", client)]).await;
        assert_eq!(answer.backend(), stuck, "{client}");
        assert_eq!(answer.header("affinity-prefix"), "2001:db8:1:2::/64");
    }

    // Other /64s spread, and each sticks across replicas.
    let others = [
        "2001:db8:1:3::1",
        "2001:db8:1:4::1",
        "2001:db8:1:5::1",
        "2001:db8:1:6::1",
        "2001:db8:2::1",
        "2001:db8:3::1",
    ];
    let mut placed = BTreeMap::new();
    for client in others {
        let mut seen = BTreeSet::new();
        for g in [gw[0], gw[1], gw[0], gw[1]] {
            seen.insert(get_ok(g, lo, "/", &via(client)).await.backend().to_string());
        }
        assert_eq!(seen.len(), 1, "{client} reached {seen:?}");
        placed.insert(client, seen.into_iter().next().unwrap());
    }
    let used: BTreeSet<&String> = placed.values().collect();
    assert!(used.len() >= 2, "six /64s all went to {used:?}");

    // The stuck backend dies: the /64 moves once, to one backend, on both replicas.
    s.backend_mut(&stuck).kill();
    let mut replaced = 0;
    let mut moved_to = BTreeSet::new();
    for i in 0..6 {
        let answer = get_ok(gw[i % 2], lo, "/", &via("2001:db8:1:2::10")).await;
        replaced += usize::from(answer.header("affinity-lease") == "replaced");
        moved_to.insert(answer.backend().to_string());
    }
    assert_eq!(moved_to.len(), 1, "the /64 moved to {moved_to:?}");
    assert!(!moved_to.contains(&stuck));
    assert_eq!(replaced, 1);
    for (client, before) in &placed {
        if *before != stuck {
            let answer = get_ok(gw[1], lo, "/", &via(client)).await;
            assert_eq!(&answer.backend(), before, "{client} stays");
        }
    }
}
