//! What every data plane process built on this crate runs beside its proxy: logging set
//! up like the store's, the Prometheus recorder, and the admin endpoint (`/metrics`,
//! `/healthz`, `/readyz`). Behind the `dataplane` feature, so a proxy that links the
//! client for its cache alone does not build a web server.
//!
//! `/readyz` answers `200` once the process serves: its body says whether the store's
//! watch stream is connected and whether the lease cache is current (warmed and within
//! `max_staleness`), but readiness does not depend on the store. Without it a data plane
//! still routes, by cache or fallback, and taking every replica out of service when the
//! store is down would be worse.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::AffinityClient;

/// Set up logging to stderr: `json` or text, filtered by `level` (a level or directives
/// such as `info,pingora=warn`). The error names `--log-level`.
pub fn init_logging(json: bool, level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("--log-level {level:?}: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    installed.map_err(|e| format!("logging: {e}"))
}

/// Install the process-wide metrics recorder, with histogram buckets from 10 us to 2.5 s.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets(&[
            0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
            0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ])
        .map_err(|e| format!("metric buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

#[derive(Clone)]
struct Admin {
    handle: PrometheusHandle,
    client: AffinityClient,
    cached_gauge: &'static str,
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until the process ends; each
/// scrape sets the gauge `cached_gauge` to the number of cached leases.
pub async fn serve_admin(
    listener: TcpListener,
    handle: PrometheusHandle,
    client: AffinityClient,
    cached_gauge: &'static str,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Admin {
            handle,
            client,
            cached_gauge,
        });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin endpoint stopped");
    }
}

async fn scrape(State(admin): State<Admin>) -> impl IntoResponse {
    admin.handle.run_upkeep();
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(admin.cached_gauge).set(admin.client.cache_len() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        admin.handle.render(),
    )
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    let watch = if admin.client.is_watching() {
        "connected"
    } else {
        "not connected (deciding by store calls or fallback)"
    };
    let cache = if admin.client.cache_is_current() {
        "current"
    } else {
        "stale (every request asks the store)"
    };
    (
        StatusCode::OK,
        format!("ready\nwatch: {watch}\ncache: {cache}\n"),
    )
}
