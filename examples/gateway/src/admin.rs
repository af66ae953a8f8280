//! The gateway's admin endpoint: `/metrics` (Prometheus text: the gateway's
//! `affinity_gateway_*` series and the client crate's `affinity_client_*` ones), `/healthz`
//! (the process serves) and `/readyz` (ready once routes are loaded, which is before the
//! proxy listens; the body says whether the store's watch stream is connected and whether
//! the lease cache is current (warmed from the store and within its `max_staleness`), but
//! readiness does not depend on the store: without it the gateway still routes, by cache or fallback,
//! and taking every replica out of service when the store is down would be worse).

use affinity_client::AffinityClient;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Install the process-wide metrics recorder.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets(&[
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5,
        ])
        .map_err(|e| format!("metric buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

type AppState = State<(PrometheusHandle, AffinityClient)>;

/// Serve the admin endpoint on `listener` until the process ends.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, client: AffinityClient) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state((handle, client));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin endpoint stopped");
    }
}

async fn scrape(State((handle, client)): AppState) -> impl IntoResponse {
    handle.run_upkeep();
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!("affinity_gateway_cached_leases").set(client.cache_len() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}

async fn readyz(State((_, client)): AppState) -> impl IntoResponse {
    let watch = if client.is_watching() {
        "connected"
    } else {
        "not connected (deciding by store calls or fallback)"
    };
    let cache = if client.cache_is_current() {
        "current"
    } else {
        "stale (every request asks the store)"
    };
    (
        StatusCode::OK,
        format!("ready\nwatch: {watch}\ncache: {cache}\n"),
    )
}
