//! The proxy: Pingora's [`ProxyHttp`] filters that pick a rule for each request, decide its
//! backend (sticky through affinity, or round robin), retry elsewhere when a backend
//! refuses the connection, and say how the decision was made.
//!
//! Per request: the rule comes from host and path ([`Loaded::table`]); the client address
//! from the socket or a trusted `X-Forwarded-For` hop ([`crate::client_ip`]). A rule with
//! `sessionPersistence` asks [`AffinityClient::cached`] first (in place, no task switch) and
//! on a miss [`AffinityClient::resolve`] with the rule's healthy endpoints as `eligible` and
//! its round-robin pick as `proposed`. A backend that refuses the connection is left out for
//! the rest of that request and the decision is made again, so the store replaces the lease
//! once and every replica follows.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use affinity_client::gateway::Decided;
use affinity_client::{AffinityClient, Resolve};
use affinity_proto::ClientKey;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType};

use crate::backends::{Loaded, RuleState};
use crate::client_ip::{Origin, client_ip};

/// Settings of the proxy that do not change on reload.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Proxies in front of the gateway whose `X-Forwarded-For` entries are trusted.
    pub trusted_hops: usize,
    /// Add `affinity-decision`, `affinity-lease`, `affinity-endpoint` and `affinity-prefix`
    /// to responses.
    pub debug_headers: bool,
    /// Connect timeout to a backend.
    pub connect_timeout: Duration,
}

/// The proxy service.
pub struct Gateway {
    /// The route file in force; replaced whole on reload.
    pub routes: Arc<ArcSwap<Loaded>>,
    /// Backend health.
    pub health: Arc<LoadBalancer<RoundRobin>>,
    /// The affinity store client (cache, watch stream, connections).
    pub client: AffinityClient,
    /// Fixed settings.
    pub settings: Settings,
}

/// Per-request state.
pub struct Ctx {
    routes: Option<Arc<Loaded>>,
    scope: String,
    ip: IpAddr,
    excluded: Vec<usize>,
    decided: Option<Decided>,
    endpoint: Option<String>,
    prefix: Option<ClientKey>,
    decide_time: Duration,
}

#[allow(clippy::unnecessary_box_returns)] // Pingora's filters take and return boxed errors.
fn status(code: u16, why: String) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(code), why)
}

/// The host a request is for, without port, lower-cased: the URI's authority (HTTP/2,
/// absolute-form requests) or else the `Host` header.
fn request_host(session: &Session) -> String {
    let header = session.req_header();
    let host_header = header.headers.get("host").and_then(|v| v.to_str().ok());
    host_of(header.uri.host(), host_header)
}

fn host_of(uri_host: Option<&str>, host_header: Option<&str>) -> String {
    let raw = uri_host.or(host_header).unwrap_or_default();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    host.to_ascii_lowercase()
}

impl Gateway {
    /// Indexes of the rule's endpoints that may serve now: healthy and not refused during
    /// this request; if none is healthy, every one not refused.
    fn candidates(&self, state: &RuleState, excluded: &[usize]) -> Vec<usize> {
        let open: Vec<usize> = (0..state.upstreams.len())
            .filter(|i| !excluded.contains(i))
            .collect();
        let healthy: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| {
                state
                    .upstreams
                    .get(i)
                    .is_some_and(|u| self.health.backends().ready(&u.backend))
            })
            .collect();
        if healthy.is_empty() { open } else { healthy }
    }

    /// Choose the backend for this request: its index, how it was chosen, and the client's
    /// key when the rule is sticky.
    async fn decide(
        &self,
        state: &RuleState,
        ctx: &Ctx,
    ) -> pingora::Result<(usize, Decided, Option<ClientKey>)> {
        let candidates = self.candidates(state, &ctx.excluded);
        let scope = &state.rule.scope;
        let Some(pick) = state.round_robin(&candidates) else {
            return Err(status(502, format!("rule {scope}: no backend left to try")));
        };
        let Some(policy) = &state.rule.persistence else {
            return Ok((pick, Decided::RoundRobin, None));
        };
        let index_of = |endpoint: &str| {
            candidates
                .iter()
                .copied()
                .find(|&i| state.upstreams.get(i).is_some_and(|u| u.name == endpoint))
        };
        if let Some(hit) = self.client.cached(scope, ctx.ip, policy)
            && let Some(i) = index_of(hit.as_str())
        {
            return Ok((i, Decided::Cache, Some(policy.key(ctx.ip))));
        }
        let eligible: Vec<String> = candidates
            .iter()
            .filter_map(|&i| state.upstreams.get(i).map(|u| u.name.clone()))
            .collect();
        // A new lease proposes the rendezvous pick over the healthy backends, which is
        // also what every replica answers while the store is away: a client sent somewhere
        // during an outage stays there once the store is back.
        let decision = self
            .client
            .resolve(
                Resolve::new(scope, ctx.ip, policy)
                    .eligible(&eligible)
                    .weights(&state.rule.weights_of(&eligible)),
            )
            .await
            .map_err(|e| {
                tracing::warn!(%scope, client = %ctx.ip, error = %e, "no decision from the store");
                status(503, format!("rule {scope}: {e}"))
            })?;
        let decided = Decided::from_source(decision.source);
        let endpoint = decision.endpoint.as_str();
        let i = index_of(endpoint).ok_or_else(|| {
            status(
                502,
                format!(
                    "rule {scope}: the decision {endpoint} is not one of its eligible backends"
                ),
            )
        })?;
        if let Decided::Store { replaced: true, .. } = decided {
            tracing::info!(%scope, prefix = %decision.prefix, %endpoint, "lease moved to another backend");
        }
        Ok((i, decided, Some(decision.prefix)))
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            routes: None,
            scope: String::new(),
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            excluded: Vec::new(),
            decided: None,
            endpoint: None,
            prefix: None,
            decide_time: Duration::ZERO,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let routes = self.routes.load_full();
        let host = request_host(session);
        let path = session.req_header().uri.path().to_string();
        let Some(rule) = routes.table.select(&host, &path) else {
            metrics::counter!("affinity_gateway_unrouted_total").increment(1);
            session
                .respond_error_with_body(404, bytes::Bytes::from_static(b"no route\n"))
                .await?;
            return Ok(true);
        };
        ctx.scope.clone_from(&rule.scope);
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip().to_canonical());
        let forwarded = session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        let (ip, origin) = client_ip(peer, forwarded, self.settings.trusted_hops);
        if origin == Origin::PeerInstead {
            metrics::counter!("affinity_gateway_forwarded_for_unusable_total").increment(1);
            tracing::debug!(%peer, "X-Forwarded-For has no usable entry at the trusted hop; using the peer");
        }
        ctx.ip = ip;
        ctx.routes = Some(routes);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let routes = ctx
            .routes
            .clone()
            .ok_or_else(|| status(500, "no rule chosen".into()))?;
        let state = routes
            .rules
            .get(&ctx.scope)
            .ok_or_else(|| status(500, format!("rule {} vanished", ctx.scope)))?;
        let started = Instant::now();
        let (i, decided, prefix) = self.decide(state, ctx).await?;
        ctx.decide_time += started.elapsed();
        let upstream = state
            .upstreams
            .get(i)
            .ok_or_else(|| status(500, "backend index out of range".into()))?;
        ctx.decided = Some(decided);
        ctx.prefix = prefix;
        ctx.endpoint = Some(upstream.name.clone());
        let mut peer = HttpPeer::new(upstream.addr, false, String::new());
        peer.options.connection_timeout = Some(self.settings.connect_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(routes), Some(endpoint)) = (&ctx.routes, &ctx.endpoint)
            && let Some(state) = routes.rules.get(&ctx.scope)
            && let Some(i) = state.upstreams.iter().position(|u| &u.name == endpoint)
        {
            tracing::info!(scope = %ctx.scope, %endpoint, error = %e, "backend refused the connection; deciding again without it");
            metrics::counter!("affinity_gateway_connect_failures_total").increment(1);
            ctx.excluded.push(i);
            e.set_retry(ctx.excluded.len() < state.upstreams.len());
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        _ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if let Some(peer) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = peer.ip().to_canonical().to_string();
            // Every line of the header the client sent, in order, then the peer.
            let mut entries: Vec<&str> = upstream_request
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            entries.push(&ip);
            let value = entries.join(", ");
            upstream_request.insert_header("x-forwarded-for", value)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut pingora::http::ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if self.settings.debug_headers
            && let Some(decided) = ctx.decided
        {
            response.insert_header("affinity-decision", decided.as_str())?;
            if let Some(lease) = decided.lease() {
                response.insert_header("affinity-lease", lease)?;
            }
            if let Some(endpoint) = &ctx.endpoint {
                response.insert_header("affinity-endpoint", endpoint.as_str())?;
            }
            if let Some(prefix) = &ctx.prefix {
                response.insert_header("affinity-prefix", prefix.to_string())?;
            }
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let code = session.response_written().map_or(0, |r| r.status.as_u16());
        let decision = ctx.decided.map_or("none", Decided::as_str);
        metrics::counter!(
            "affinity_gateway_requests_total",
            "decision" => decision,
            "code" => code.to_string(),
        )
        .increment(1);
        if ctx.decided.is_some() {
            metrics::histogram!("affinity_gateway_decision_seconds", "decision" => decision)
                .record(ctx.decide_time.as_secs_f64());
        }
        if let Some(e) = e {
            tracing::warn!(
                scope = %ctx.scope, client = %ctx.ip, decision,
                endpoint = ctx.endpoint.as_deref().unwrap_or("-"), code, error = %e,
                "request failed"
            );
        } else {
            tracing::debug!(
                scope = %ctx.scope, client = %ctx.ip, decision,
                endpoint = ctx.endpoint.as_deref().unwrap_or("-"), code,
                "request served"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_loses_its_port_and_case() {
        assert_eq!(host_of(None, Some("Shop.Example:8080")), "shop.example");
        assert_eq!(host_of(None, Some("shop.example")), "shop.example");
        assert_eq!(host_of(Some("api.example"), Some("other")), "api.example");
        assert_eq!(host_of(None, Some("[2001:db8::1]:80")), "2001:db8::1");
        assert_eq!(host_of(None, None), "");
    }
}
