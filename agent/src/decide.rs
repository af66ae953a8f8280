//! The per-request decision both front ends share: which rule, which client, which
//! endpoint, and how it was decided, or a clear "no persistence" with its reason.
//!
//! A sticky rule asks the client's cache first, then the store (`Resolve`, with the rule's
//! healthy endpoints as `eligible`; a new lease proposes the rendezvous pick over them,
//! which is also what every replica answers while the store is away). A rule without
//! persistence gets the next healthy endpoint in round robin. [`Decider::served`] is the
//! other direction: a proxy reports which endpoint actually served a request, and when it
//! is not the leased one (the proxy's own health checks moved it), the lease follows it with
//! a compare-and-set `Reassign`, so every replica follows the proxy's view.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use affinity_client::gateway::Decided;
use affinity_client::{AffinityClient, ClientKey, Policy, Resolve};
use arc_swap::ArcSwap;

use crate::health::Health;
use crate::rules::{RuleState, Rules};

/// How a decision was made: the data planes' [`Decided`], or no persistence and why.
pub type How = Result<Decided, Reason>;

/// The `x-affinity-decision` value and metric label of `how`.
pub fn how_str(how: How) -> &'static str {
    how.map_or("none", Decided::as_str)
}

/// Why a request gets no persistence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No rule of the route file matches the scope, or the host and path, given.
    NoRule,
    /// The proxy sent no client address.
    NoClientAddress,
    /// The client address the proxy sent is not an IP address.
    BadClientAddress,
    /// The store refused or failed, and the fail mode is closed.
    StoreError,
    /// The store's answer is not one of the rule's endpoints (the route file changed).
    UnknownEndpoint,
}

impl Reason {
    /// The `x-affinity-reason` value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoRule => "no-rule",
            Reason::NoClientAddress => "no-client-address",
            Reason::BadClientAddress => "bad-client-address",
            Reason::StoreError => "store-error",
            Reason::UnknownEndpoint => "unknown-endpoint",
        }
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Where to send the request; `None` leaves the choice to the proxy.
    pub endpoint: Option<String>,
    /// How it was decided.
    pub how: How,
    /// The rule's scope, when a rule matched.
    pub scope: Option<String>,
    /// The client's key (masked prefix), for a sticky rule.
    pub prefix: Option<ClientKey>,
    /// The sticky rule's policy and client, to report what served.
    pub sticky: Option<(Policy, IpAddr)>,
}

impl Verdict {
    fn none(reason: Reason, scope: Option<String>) -> Verdict {
        Verdict {
            endpoint: None,
            how: Err(reason),
            scope,
            prefix: None,
            sticky: None,
        }
    }
}

/// What a request brings: the rule's scope (if the proxy names it), host and path (to
/// select it otherwise), and the client address already taken from the socket or a trusted
/// hop (`Err` holds the reason it is missing).
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    /// The rule's scope, if the proxy names it.
    pub scope: Option<&'a str>,
    /// The request's host, without port.
    pub host: &'a str,
    /// The request's path.
    pub path: &'a str,
    /// The client address.
    pub client: Result<IpAddr, Reason>,
}

/// Decides for both front ends.
#[derive(Clone)]
pub struct Decider {
    /// The store client (cache, watch, fallback).
    pub client: AffinityClient,
    /// The route file in force.
    pub rules: Arc<ArcSwap<Rules>>,
    /// Backend health.
    pub health: Arc<Health>,
}

impl Decider {
    /// Decide for one request; `via` (`envoy` or `nginx`) labels the metrics.
    pub async fn decide(&self, via: &'static str, ask: Ask<'_>) -> Verdict {
        let started = Instant::now();
        let rules = self.rules.load_full();
        let state = match ask.scope {
            Some(scope) if !scope.is_empty() => rules.by_scope(scope),
            _ => rules.select(ask.host, ask.path),
        };
        let verdict = match state {
            Some(state) => self.decide_rule(state, ask.client).await,
            None => Verdict::none(Reason::NoRule, ask.scope.map(str::to_string)),
        };
        let decision = how_str(verdict.how);
        metrics::counter!("affinity_agent_decisions_total", "via" => via, "decision" => decision)
            .increment(1);
        metrics::histogram!("affinity_agent_decision_seconds", "via" => via)
            .record(started.elapsed().as_secs_f64());
        if let Err(reason) = verdict.how {
            metrics::counter!("affinity_agent_no_persistence_total", "via" => via, "reason" => reason.as_str())
                .increment(1);
            tracing::debug!(
                via,
                scope = ask.scope.unwrap_or("-"),
                host = ask.host,
                path = ask.path,
                reason = reason.as_str(),
                "no persistence for this request"
            );
        }
        verdict
    }

    async fn decide_rule(&self, state: &RuleState, client: Result<IpAddr, Reason>) -> Verdict {
        let rule = &state.rule;
        let scope = Some(rule.scope.clone());
        let eligible = self.health.eligible(&rule.endpoints);
        let Some(policy) = &rule.persistence else {
            // Round robin by weight (equally, if no eligible endpoint takes new requests).
            let weights = rule.weights_of(&eligible);
            return Verdict {
                endpoint: state.round_robin(&eligible, &weights).map(str::to_string),
                how: Ok(Decided::RoundRobin),
                scope,
                prefix: None,
                sticky: None,
            };
        };
        let ip = match client {
            Ok(ip) => ip,
            Err(reason) => return Verdict::none(reason, scope),
        };
        let sticky = |endpoint: &str, how: How| Verdict {
            endpoint: Some(endpoint.to_string()),
            how,
            scope: scope.clone(),
            prefix: Some(policy.key(ip)),
            sticky: Some((*policy, ip)),
        };
        if let Some(hit) = self.client.cached(&rule.scope, ip, policy)
            && eligible.iter().any(|e| *e == *hit)
        {
            return sticky(&hit, Ok(Decided::Cache));
        }
        // Weights matter only to a new lease: not worked out on a cache hit.
        let weights = rule.weights_of(&eligible);
        let decision = match self
            .client
            .resolve(
                Resolve::new(&rule.scope, ip, policy)
                    .eligible(&eligible)
                    .weights(&weights),
            )
            .await
        {
            Ok(decision) => decision,
            Err(e) => {
                tracing::warn!(scope = %rule.scope, client = %ip, error = %e, "no decision from the store");
                return Verdict::none(Reason::StoreError, scope);
            }
        };
        let how = Ok(Decided::from_source(decision.source));
        if !rule.endpoints.iter().any(|e| *e == *decision.endpoint) {
            tracing::warn!(scope = %rule.scope, endpoint = %decision.endpoint, "the store's decision is not one of the rule's endpoints");
            return Verdict::none(Reason::UnknownEndpoint, scope);
        }
        if let Ok(Decided::Store { replaced: true, .. }) = how {
            tracing::info!(scope = %rule.scope, prefix = %decision.prefix, endpoint = %decision.endpoint, "lease moved to another backend");
        }
        sticky(&decision.endpoint, how)
    }

    /// The proxy says `served` answered a request decided as `verdict`. When that is
    /// another of the rule's endpoints than the leased one, move the lease to it
    /// (compare-and-set on the leased endpoint, so of several replicas reporting at once
    /// one wins and the rest follow it). Returns whether this call moved it.
    pub async fn served(&self, verdict: &Verdict, served: &str) -> bool {
        let (Some(scope), Some(leased), Some((policy, ip)), true) = (
            &verdict.scope,
            &verdict.endpoint,
            &verdict.sticky,
            matches!(
                verdict.how,
                Ok(Decided::Cache | Decided::Store { .. } | Decided::Fallback)
            ),
        ) else {
            return false;
        };
        // Compare addresses, not spellings: Envoy writes them in canonical form.
        let same = |a: &str, b: &str| {
            a == b
                || matches!(
                    (a.parse::<std::net::SocketAddr>(), b.parse::<std::net::SocketAddr>()),
                    (Ok(x), Ok(y)) if x == y
                )
        };
        if same(leased, served) {
            return false;
        }
        let rules = self.rules.load();
        let known = rules
            .by_scope(scope)
            .and_then(|s| s.rule.endpoints.iter().find(|e| same(e, served)).cloned());
        drop(rules);
        let Some(served) = known else {
            metrics::counter!("affinity_agent_reassigns_total", "result" => "unknown-endpoint")
                .increment(1);
            tracing::debug!(%scope, %served, "the proxy served from an endpoint the rule does not name; lease left alone");
            return false;
        };
        let served = served.as_str();
        match self
            .client
            .reassign(scope, *ip, policy, leased, served)
            .await
        {
            Ok((lease, swapped)) => {
                if let Some(lease) = &lease {
                    self.client.remember(lease);
                }
                let result = if swapped { "moved" } else { "already-moved" };
                metrics::counter!("affinity_agent_reassigns_total", "result" => result)
                    .increment(1);
                if swapped {
                    tracing::info!(%scope, client = %ip, from = %leased, to = %served, "the proxy served from another backend; lease moved to it");
                }
                swapped
            }
            Err(e) => {
                metrics::counter!("affinity_agent_reassigns_total", "result" => "error")
                    .increment(1);
                tracing::warn!(%scope, client = %ip, error = %e, "could not move the lease to the backend that served");
                false
            }
        }
    }
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
  - backendRefs: [{name: \"127.0.0.1:9001\"}, {name: \"127.0.0.1:9002\"}]
    sessionPersistence: {type: ClientIP, absoluteTimeout: 10m, ipMask: 24}
  - matches: [{path: {value: /plain}}]
    backendRefs: [{name: \"127.0.0.1:9001\"}, {name: \"127.0.0.1:9002\"}]
";

    fn decider() -> Decider {
        // Nothing listens on port 1: no test here may reach the store.
        let client = AffinityClient::builder()
            .endpoints(["127.0.0.1:1"])
            .watch(false)
            .build()
            .expect("client");
        Decider {
            client,
            rules: Arc::new(ArcSwap::from_pointee(Rules::parse(FILE).expect("rules"))),
            health: Arc::new(Health::default()),
        }
    }

    fn ask<'a>(scope: Option<&'a str>, path: &'a str, client: Result<IpAddr, Reason>) -> Ask<'a> {
        Ask {
            scope,
            host: "shop.example",
            path,
            client,
        }
    }

    #[tokio::test]
    async fn a_request_without_what_is_needed_gets_no_persistence_and_its_reason() {
        let d = decider();
        let none = d
            .decide("nginx", ask(None, "/", Err(Reason::NoClientAddress)))
            .await;
        assert_eq!(none.how, Err(Reason::NoClientAddress));
        assert_eq!(none.endpoint, None);
        assert_eq!(none.scope.as_deref(), Some("shop/web/0"));
        let bad = d
            .decide("nginx", ask(None, "/", Err(Reason::BadClientAddress)))
            .await;
        assert_eq!(bad.how, Err(Reason::BadClientAddress));
        let ip = "192.0.2.7".parse().expect("ip");
        let unknown = d
            .decide("envoy", ask(Some("shop/web/9"), "/", Ok(ip)))
            .await;
        assert_eq!(unknown.how, Err(Reason::NoRule));
        assert_eq!(how_str(unknown.how), "none");
        assert_eq!(Reason::NoRule.as_str(), "no-rule");
    }

    #[tokio::test]
    async fn a_rule_without_persistence_turns_round_robin_and_needs_no_client() {
        let d = decider();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let v = d
                .decide("nginx", ask(None, "/plain", Err(Reason::NoClientAddress)))
                .await;
            assert_eq!(v.how, Ok(Decided::RoundRobin));
            assert!(v.sticky.is_none());
            seen.push(v.endpoint.expect("an endpoint"));
        }
        assert_eq!(seen, ["127.0.0.1:9001", "127.0.0.1:9002"]);
    }

    #[tokio::test]
    async fn what_served_a_non_sticky_request_moves_nothing() {
        let d = decider();
        let v = d
            .decide("envoy", ask(None, "/plain", Err(Reason::NoClientAddress)))
            .await;
        assert!(!d.served(&v, "127.0.0.1:9002").await);
    }
}
