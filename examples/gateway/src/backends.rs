//! The gateway's loaded configuration and its view of backend health.
//!
//! [`Loaded`] is one route file made ready to serve: each rule with its endpoints as socket
//! addresses and a round-robin counter. It is swapped as a whole on reload, so a request
//! sees one consistent file from start to end.
//!
//! Health comes from Pingora's load-balancing crate: one [`LoadBalancer`] holds every
//! endpoint of every rule (its membership is [`Membership`], which a reload replaces) and
//! runs a TCP connect check on each at a fixed interval as a Pingora background service.
//! Backends start healthy and a failed check takes one out at once; a successful one brings
//! it back. A rule's *eligible* endpoints are its healthy ones; when none is healthy the
//! gateway tries all of them rather than none.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthObserve, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};

use crate::routes::{Options, RouteTable, Rule, weighted_turn};

/// One endpoint of a rule.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// As written in the route file (`ip:port`); this is what the store records.
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Its identity in the health checker.
    pub backend: Backend,
}

/// A rule ready to serve.
#[derive(Debug)]
pub struct RuleState {
    /// The parsed rule (scope, matches, persistence).
    pub rule: Rule,
    /// Its endpoints, in file order.
    pub upstreams: Vec<Upstream>,
    next: AtomicUsize,
}

impl RuleState {
    /// The next endpoint in round-robin order among `candidates` (indexes into
    /// [`RuleState::upstreams`]), each as often as the rule's weight for it (equally when
    /// none of them has a weight above 0); `None` when there are none.
    pub fn round_robin(&self, candidates: &[usize]) -> Option<usize> {
        // Equal weights (the common case) need no weight list per request.
        if self.rule.weights.windows(2).all(|w| w[0] == w[1]) {
            let turn = self.next.fetch_add(1, Ordering::Relaxed);
            return weighted_turn(turn, candidates.len(), &[])
                .and_then(|i| candidates.get(i).copied());
        }
        let weights: Vec<u32> = candidates
            .iter()
            .map(|&i| self.rule.weights.get(i).copied().unwrap_or(0))
            .collect();
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        weighted_turn(turn, candidates.len(), &weights).and_then(|i| candidates.get(i).copied())
    }
}

/// A route file ready to serve.
#[derive(Debug)]
pub struct Loaded {
    /// The routes, for request matching.
    pub table: RouteTable,
    /// Each rule's state, by scope.
    pub rules: HashMap<String, RuleState>,
}

impl Loaded {
    /// Parse a route file with the default options (every route).
    pub fn parse(text: &str) -> Result<Loaded, String> {
        Self::parse_with(text, &Options::default())
    }

    /// Parse a route file. Every endpoint must be an `IP:PORT` this gateway can connect
    /// to: a rule naming another is refused with its route, and the others are served.
    /// Fails when nothing can be served.
    pub fn parse_with(text: &str, options: &Options) -> Result<Loaded, String> {
        Self::reparse(text, options, None)
    }

    /// Parse a changed route file; a route it refuses keeps its version in `in_force`.
    pub fn reparse(
        text: &str,
        options: &Options,
        in_force: Option<&Loaded>,
    ) -> Result<Loaded, String> {
        let table = RouteTable::parse_servable(text, options, in_force.map(|l| &l.table))?;
        let mut rules = HashMap::new();
        for rule in table.rules() {
            let mut upstreams = Vec::with_capacity(rule.endpoints.len());
            for name in &rule.endpoints {
                // The parser accepted only IP:PORT endpoints; upstreams and the rule's
                // weights share one order.
                let addr: SocketAddr = name.parse().map_err(|_| {
                    format!("rule {}: endpoint {name:?} is not an IP:PORT", rule.scope)
                })?;
                let backend = Backend::new(&addr.to_string())
                    .map_err(|e| format!("rule {}: endpoint {name:?}: {e}", rule.scope))?;
                upstreams.push(Upstream {
                    name: name.clone(),
                    addr,
                    backend,
                });
            }
            rules.insert(
                rule.scope.clone(),
                RuleState {
                    rule: rule.clone(),
                    upstreams,
                    next: AtomicUsize::new(0),
                },
            );
        }
        Ok(Loaded { table, rules })
    }

    /// Every endpoint of every rule, once.
    pub fn backends(&self) -> BTreeSet<Backend> {
        self.rules
            .values()
            .flat_map(|r| r.upstreams.iter().map(|u| u.backend.clone()))
            .collect()
    }
}

/// The set of backends the health checker watches; replaced on reload.
#[derive(Default)]
pub struct Membership {
    backends: ArcSwap<BTreeSet<Backend>>,
}

impl Membership {
    /// Watch exactly `backends` from the next update on.
    pub fn set(&self, backends: BTreeSet<Backend>) {
        self.backends.store(Arc::new(backends));
    }
}

/// [`Membership`] as Pingora's service discovery.
struct Discovery(Arc<Membership>);

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((self.0.backends.load().as_ref().clone(), HashMap::new()))
    }
}

/// Logs and counts health changes.
struct Observer;

#[async_trait]
impl HealthObserve for Observer {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let endpoint = target.addr.to_string();
        if healthy {
            tracing::info!(%endpoint, "backend passes its health check again");
        } else {
            tracing::warn!(%endpoint, "backend failed its health check; not eligible");
        }
        metrics::counter!(
            "affinity_gateway_backend_health_changes_total",
            "endpoint" => endpoint.clone(),
            "healthy" => if healthy { "true" } else { "false" },
        )
        .increment(1);
        metrics::gauge!("affinity_gateway_backend_up", "endpoint" => endpoint).set(if healthy {
            1.0
        } else {
            0.0
        });
    }
}

/// The health checker over `membership`: checks every `interval` (connect timeout the same,
/// at most 1 s) and picks up membership changes as often. Run it as a Pingora background
/// service.
pub fn health_checker(membership: Arc<Membership>, interval: Duration) -> LoadBalancer<RoundRobin> {
    let mut backends = Backends::new(Box::new(Discovery(membership)));
    let mut check = TcpHealthCheck::new();
    check.peer_template.options.connection_timeout = Some(interval.min(Duration::from_secs(1)));
    check.health_changed_callback = Some(Box::new(Observer));
    backends.set_health_check(check);
    let mut balancer = LoadBalancer::from_backends(backends);
    balancer.health_check_frequency = Some(interval);
    balancer.update_frequency = Some(interval);
    balancer.parallel_health_check = true;
    balancer
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  rules:
  - backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /static}}]
    backendRefs: [{name: \"10.0.0.9:8080\"}]
---
apiVersion: affinity.dev/v1alpha1
kind: Backends
endpoints:
  shop/web:80: [\"10.0.0.1:80\", \"10.0.0.2:80\", \"[2001:db8::3]:80\"]
";

    #[test]
    fn every_endpoint_becomes_a_socket_address_once() {
        let loaded = Loaded::parse(FILE).expect("valid file");
        assert_eq!(loaded.rules.len(), 2);
        let web = &loaded.rules["shop/web/0"];
        let addrs: Vec<String> = web.upstreams.iter().map(|u| u.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80", "[2001:db8::3]:80"]);
        assert_eq!(loaded.backends().len(), 4);
    }

    #[test]
    fn a_host_name_endpoint_is_refused_naming_the_rule() {
        let file = FILE.replace("10.0.0.9:8080", "static.example:8080");
        let err = Loaded::parse(&file).expect_err("names are not resolved");
        assert!(
            err.contains("HTTPRoute shop/web spec.rules[1].backendRefs[0]"),
            "{err}"
        );
        assert!(err.contains("static.example:8080"), "{err}");
    }

    #[test]
    fn round_robin_turns_over_the_candidates_only() {
        let loaded = Loaded::parse(FILE).expect("valid file");
        let web = &loaded.rules["shop/web/0"];
        let picks: Vec<Option<usize>> = (0..4).map(|_| web.round_robin(&[0, 2])).collect();
        assert_eq!(picks, [Some(0), Some(2), Some(0), Some(2)]);
        assert_eq!(web.round_robin(&[]), None);
    }
}

#[cfg(test)]
mod demo_file {
    #[test]
    fn the_readme_demo_route_file_loads() {
        let loaded = super::Loaded::parse(include_str!("../demo/routes.yaml"))
            .expect("examples/gateway/demo/routes.yaml is valid");
        let sticky = &loaded.rules["demo/web/0"];
        assert!(sticky.rule.persistence.is_some());
        assert_eq!(
            sticky.rule.persistence_from.as_deref(),
            Some("ClientIPSessionPersistencePolicy demo/web-sticky")
        );
        assert_eq!(sticky.upstreams.len(), 3);
        assert!(loaded.table.refused.is_empty() && loaded.table.warnings.is_empty());
        assert!(loaded.rules["demo/web/1"].rule.persistence.is_none());
    }
}
