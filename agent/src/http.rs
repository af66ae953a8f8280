//! nginx's front end: the `auth_request` endpoint (`GET /decide`) on `--listen-http`. (The
//! admin endpoint on `--metrics-listen` is the client crate's, as the gateway's is.)
//!
//! `/decide` reads the client address from `X-Affinity-Client` (nginx's `$remote_addr`;
//! with `--trusted-hops N`, the `X-Forwarded-For` entry N from the right instead), the
//! rule from `X-Affinity-Scope` or else from `X-Affinity-Host` and `X-Affinity-Path` (the
//! original request's host and URI), and answers `204` with `X-Affinity-Endpoint: IP:PORT`
//! and `X-Affinity-Decision`. Without a decision (no rule, no client address, store
//! closed) it still answers `204`, without the endpoint and with `X-Affinity-Reason`, so
//! nginx falls back to its own upstream group instead of failing the request. `auth_request`
//! treats any other status as a failure, so `/decide` never answers one for a request it
//! understood.

use std::net::IpAddr;

use affinity_client::gateway::client_ip::{Origin, client_ip, parse_entry};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use affinity_client::gateway::Decided;

use crate::decide::{Ask, Decider, Reason, how_str};

/// Settings of `/decide`.
#[derive(Clone)]
pub struct DecideState {
    /// Decides.
    pub decider: Decider,
    /// Proxies in front of nginx whose `X-Forwarded-For` entries are trusted.
    pub trusted_hops: usize,
}

/// Serve `/decide` (and `/healthz`) on `listener` until the process ends.
pub async fn serve_decide(listener: TcpListener, state: DecideState) {
    let app = Router::new()
        .route("/decide", get(decide))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "decide endpoint stopped");
    }
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn decide(State(state): State<DecideState>, headers: HeaderMap) -> impl IntoResponse {
    let client = match text(&headers, "x-affinity-client") {
        None => Err(Reason::NoClientAddress),
        Some(raw) => match parse_entry(raw) {
            None => Err(Reason::BadClientAddress),
            Some(peer) => {
                let forwarded = headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                let (ip, origin) = client_ip(peer.to_canonical(), forwarded, state.trusted_hops);
                if origin == Origin::PeerInstead {
                    metrics::counter!("affinity_agent_forwarded_for_unusable_total").increment(1);
                }
                Ok::<IpAddr, Reason>(ip)
            }
        },
    };
    let host = text(&headers, "x-affinity-host")
        .map(crate::ext_proc::host_of)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let path = text(&headers, "x-affinity-path").unwrap_or("/");
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let verdict = state
        .decider
        .decide(
            "nginx",
            Ask {
                scope: text(&headers, "x-affinity-scope"),
                host: &host,
                path,
                client,
            },
        )
        .await;
    let mut out = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            out.insert(name, v);
        }
    };
    put("x-affinity-decision", how_str(verdict.how));
    if let Some(endpoint) = &verdict.endpoint {
        put("x-affinity-endpoint", endpoint);
    }
    if let Some(lease) = verdict.how.ok().and_then(Decided::lease) {
        put("x-affinity-lease", lease);
    }
    if let Err(reason) = verdict.how {
        put("x-affinity-reason", reason.as_str());
    }
    (StatusCode::NO_CONTENT, out)
}
