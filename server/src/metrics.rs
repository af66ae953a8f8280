//! Prometheus metrics (`affinity_*`) and the HTTP endpoint that serves them with the
//! liveness and readiness checks: `/metrics`, `/healthz`, `/readyz`.
//!
//! Request counters and latency histograms are recorded by the gRPC layer; everything about
//! Raft, the log, the leases and storage is read from the node at scrape time, so it is
//! never stale. Each node has its own registry (several nodes can share a process).
//! The full list is in `docs/metrics.md`.

use openraft::async_runtime::watch::WatchReceiver as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcCode {
    /// The RPC, e.g. `Resolve`.
    pub rpc: &'static str,
    /// The gRPC status code name, e.g. `OK`, `UNAVAILABLE`.
    pub code: &'static str,
}

/// Labels naming a limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

/// Labels naming an RPC.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rpc {
    /// The RPC.
    pub rpc: &'static str,
}

/// Requests being served; stopping waits until there are none.
#[derive(Default)]
pub struct InFlight {
    gauge: Gauge,
    idle: tokio::sync::Notify,
}

impl InFlight {
    /// Count one request until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.gauge.inc();
        InFlightGuard(Arc::clone(self))
    }

    /// Requests being served.
    pub fn count(&self) -> i64 {
        self.gauge.get()
    }

    /// Wait until no request is being served.
    pub async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.gauge.get() <= 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Counts one request in flight while it lives.
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.gauge.dec() <= 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Metrics recorded by the services.
pub struct Metrics {
    registry: Registry,
    /// Requests being served.
    pub in_flight: Arc<InFlight>,
    /// Requests by RPC and result code.
    pub requests: Family<RpcCode, Counter>,
    /// Request latency by RPC.
    pub latency: Family<Rpc, Histogram>,
    /// Requests sent on to the leader, by RPC.
    pub forwarded: Family<Rpc, Counter>,
}

impl Metrics {
    /// A registry for `node`, with every metric registered.
    pub fn new(node: Arc<Node>) -> Arc<Self> {
        let mut registry = Registry::default();
        let requests = Family::<RpcCode, Counter>::default();
        registry.register(
            "affinity_grpc_requests",
            "Client and operator requests served, by RPC and gRPC status code",
            requests.clone(),
        );
        let latency = Family::<Rpc, Histogram>::new_with_constructor(|| {
            // 50 us .. about 13 s.
            Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
        });
        registry.register(
            "affinity_grpc_request_duration_seconds",
            "Time to answer a request, by RPC",
            latency.clone(),
        );
        let forwarded = Family::<Rpc, Counter>::default();
        registry.register(
            "affinity_forwarded_requests",
            "Requests this node sent on to the leader, by RPC",
            forwarded.clone(),
        );
        let in_flight = Arc::new(InFlight::default());
        registry.register(
            "affinity_grpc_requests_in_flight",
            "Client and operator requests being served",
            in_flight.gauge.clone(),
        );
        registry.register_collector(Box::new(NodeCollector(node)));
        Arc::new(Self {
            registry,
            in_flight,
            requests,
            latency,
            forwarded,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Record one answered request.
    pub fn observe(&self, rpc: &'static str, code: tonic::Code, elapsed: Duration) {
        self.requests
            .get_or_create(&RpcCode {
                rpc,
                code: affinity_proto::code_name(code),
            })
            .inc();
        self.latency
            .get_or_create(&Rpc { rpc })
            .observe(elapsed.as_secs_f64());
    }
}

/// Reads the node's state at scrape time.
struct NodeCollector(Arc<Node>);

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeCollector(node {})", self.0.id())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(m)
}

fn gauge_f64(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(m)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    let m = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(m)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl prometheus_client::collector::Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = &self.0;
        let m = node.raft().metrics().borrow_watched().clone();
        let index = |id: Option<crate::raft::LogId>| id.map_or(0, |id| id.index());
        let last_log = m.last_log_index.unwrap_or(0);
        let committed = index(m.local_committed);
        let applied = index(m.last_applied);
        let purged = index(m.purged);
        let is_leader = m.state == openraft::ServerState::Leader;
        gauge(
            &mut e,
            "affinity_leases",
            "Leases held by this replica (live, or ended and not yet swept)",
            signed(node.state().lease_count() as u64),
        )?;
        gauge(
            &mut e,
            "affinity_raft_term",
            "Current Raft term",
            signed(m.current_term),
        )?;
        gauge(
            &mut e,
            "affinity_raft_leader_id",
            "Node id of the known leader (0: none known)",
            signed(m.current_leader.unwrap_or(0)),
        )?;
        gauge(
            &mut e,
            "affinity_raft_is_leader",
            "1 if this node is the leader",
            i64::from(is_leader),
        )?;
        gauge(
            &mut e,
            "affinity_raft_last_log_index",
            "Index of the last entry in this node's log",
            signed(last_log),
        )?;
        gauge(
            &mut e,
            "affinity_raft_commit_index",
            "Highest log index this node knows is committed",
            signed(committed),
        )?;
        gauge(
            &mut e,
            "affinity_raft_applied_index",
            "Highest log index applied to the state machine",
            signed(applied),
        )?;
        gauge(
            &mut e,
            "affinity_raft_apply_lag",
            "Committed entries not yet applied",
            signed(committed.saturating_sub(applied)),
        )?;
        gauge(
            &mut e,
            "affinity_raft_log_entries",
            "Log entries held (not yet purged behind a snapshot)",
            signed(last_log.saturating_sub(purged)),
        )?;
        gauge(
            &mut e,
            "affinity_raft_snapshot_index",
            "Log index covered by the newest snapshot",
            signed(index(m.snapshot)),
        )?;
        gauge(
            &mut e,
            "affinity_node_ready",
            "1 if the node knows a leader and has applied (nearly) all that is committed",
            i64::from(node.is_ready()),
        )?;
        if let Some(offset) = node.clock_offset_ms() {
            #[allow(clippy::cast_precision_loss)] // milliseconds far below 2^52
            gauge_f64(
                &mut e,
                "affinity_clock_offset_seconds",
                "This node's wall clock minus the store time it knows (its own stamps while it leads, else the leader's last announcement)",
                offset as f64 / 1000.0,
            )?;
        }
        let snapshots = node.state().snapshot_counts();
        counter(
            &mut e,
            "affinity_snapshots_built",
            "Snapshots this node built since it started",
            snapshots.built,
        )?;
        counter(
            &mut e,
            "affinity_snapshots_installed",
            "Snapshots this node installed since it started (from a leader, or at start)",
            snapshots.installed,
        )?;
        gauge(
            &mut e,
            "affinity_watch_subscribers",
            "Open Watch streams on this node",
            signed(node.state().subscriber_count() as u64),
        )?;
        let wal = node.log().wal();
        let flush = wal.stats();
        counter(
            &mut e,
            "affinity_storage_syncs",
            "Frames written to the Raft log, each with one fdatasync",
            flush.syncs.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "affinity_storage_sync_requests",
            "Log writes (appends, votes, waits) completed by those syncs",
            flush.requests.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "affinity_log_bytes_written",
            "Bytes written to the Raft log's segment files",
            flush.bytes.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "affinity_log_segments",
            "Segment files the Raft log holds",
            signed(wal.segments() as u64),
        )?;
        counter(
            &mut e,
            "affinity_log_segments_deleted",
            "Raft log segment files deleted after a purge",
            flush.segments_deleted.load(Ordering::Relaxed),
        )?;
        let batches = node.batch_stats();
        counter(
            &mut e,
            "affinity_proposal_entries",
            "Log entries this node proposed for client writes (as leader)",
            batches.entries.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "affinity_proposal_writes",
            "Client writes carried by those entries (divide by entries for the batch size)",
            batches.ops.load(Ordering::Relaxed),
        )?;
        let refusals = node.refusals();
        let refused = [
            ("max-leases", refusals.leases.load(Ordering::Relaxed)),
            (
                "max-leases-per-scope",
                refusals.leases_per_scope.load(Ordering::Relaxed),
            ),
            ("max-pending-writes", batches.shed.load(Ordering::Relaxed)),
            ("max-watchers", refusals.watchers.load(Ordering::Relaxed)),
            (
                "max-calls-per-connection-per-second",
                refusals.rate.load(Ordering::Relaxed),
            ),
        ];
        let mut family = e.encode_descriptor(
            "affinity_limit_rejections",
            "Requests refused by a configured limit, by limit",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (limit, value) in refused {
            ConstCounter::new(value).encode(family.encode_family(&LimitLabel { limit })?)?;
        }
        let micros = flush.sync_micros.load(Ordering::Relaxed);
        let metric = ConstCounter::new(Duration::from_micros(micros).as_secs_f64());
        let enc = e.encode_descriptor(
            "affinity_storage_sync_seconds",
            "Time spent writing and syncing Raft log frames",
            None,
            metric.metric_type(),
        )?;
        metric.encode(enc)?;
        Ok(())
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    node: Arc<Node>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state((metrics, node));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}

type AppState = State<(Arc<Metrics>, Arc<Node>)>;

async fn scrape(State((metrics, _)): AppState) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn healthz(State((_, node)): AppState) -> impl IntoResponse {
    match node.raft().metrics().borrow_watched().running_state.clone() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(fatal) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft stopped: {fatal}\n"),
        ),
    }
}

async fn readyz(State((_, node)): AppState) -> impl IntoResponse {
    if node.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no known leader, or still applying the log\n",
        )
    }
}
