//! Assembles and runs a node: storage, Raft, the gRPC services (with health and
//! reflection), the metrics endpoint and the leader's expiry sweeper, on listeners the
//! caller has already bound, until the caller's shutdown signal.
//!
//! Stopping: health turns NOT_SERVING and Watch streams end; a leader hands leadership to
//! another voter; the server stops accepting connections and waits (up to the grace period)
//! for requests in flight; then Raft stops and the data directory is closed.
//!
//! A node whose Raft stops by itself (openraft treats a storage error, such as a full disk,
//! as fatal) stops the same way and returns an error, so that its process exits and a
//! supervisor starts it again: what is on disk is intact, and a restart once the cause is
//! gone (space freed) recovers every acknowledged write.

use openraft::async_runtime::watch::WatchReceiver as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use affinity_proto::pb;
use openraft::ServerState;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::Instrument;

use crate::config::{Config, ConfigError};
use crate::grpc::affinity::AffinityService;
use crate::grpc::cluster::ClusterService;
use crate::grpc::peer::PeerService;
use crate::grpc::{CLIENT_MAX_MESSAGE_BYTES, Ctx};
use crate::metrics::{self, Metrics};
use crate::network::{PEER_MAX_MESSAGE_BYTES, Peers};
use crate::node::{Budget, Node, StartError};
use crate::sm::{Op, Outcome};

/// Sockets a node serves on, bound by the caller (port 0 works).
pub struct Listeners {
    /// The gRPC services of clients and operators, and of peers too unless `peer` is given.
    pub grpc: TcpListener,
    /// Peer traffic on a port of its own (`--peer-listen`): Raft, forwarded calls and joins.
    /// The client port then serves no Raft service.
    pub peer: Option<TcpListener>,
    /// `/metrics`, `/healthz`, `/readyz`; `None` to serve none.
    pub metrics: Option<TcpListener>,
}

/// Why a node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener or the gRPC server failed.
    #[error("serving failed: {0}")]
    Serve(String),
}

/// The services named in health checks that follow readiness: the whole server (`""`)
/// and the client service.
const HEALTH_SERVICES: [&str; 2] = ["", "affinity.v1.Affinity"];
/// The health check name for liveness: SERVING while the node's Raft runs (the gRPC twin of
/// `/healthz`), so a liveness probe does not restart nodes that merely lack a quorum.
const LIVENESS_SERVICE: &str = "liveness";

/// Run a node until `shutdown` completes, then stop it cleanly.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let span = tracing::info_span!("node", id = config.node_id);
    serve(config, listeners, shutdown).instrument(span).await
}

async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let bound = listeners
        .grpc
        .local_addr()
        .map_err(|e| RunError::Serve(format!("gRPC listener: {e}")))?;
    let metrics_addr: Option<SocketAddr> =
        listeners.metrics.as_ref().and_then(|l| l.local_addr().ok());
    let peer_bound = match &listeners.peer {
        Some(l) => Some(
            l.local_addr()
                .map_err(|e| RunError::Serve(format!("peer listener: {e}")))?,
        ),
        None => None,
    };
    let advertise = config.resolve_advertise(bound, peer_bound)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node_id = config.node_id,
        listen = %bound,
        peer_listen = %peer_bound.map_or_else(|| "the client port".to_string(), |a| a.to_string()),
        advertise = %advertise,
        metrics = %metrics_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        data_dir = %config.data_dir.display(),
        peers = ?config.peers,
        join = ?config.join,
        "affinityd starting"
    );

    let authz = match &config.authz {
        Some(path) => Some(Arc::new(
            crate::authz::Reloading::load(path)
                .map_err(|e| RunError::Serve(format!("invalid {e}")))?,
        )),
        None => None,
    };
    // With a peer port, each port trusts only its own CA; otherwise the one port trusts both.
    let tls_for = |side| match &config.tls {
        Some(files) => crate::tls::Server::new(files, side)
            .map(Some)
            .map_err(|e| RunError::Serve(format!("invalid {e}"))),
        None => Ok(None),
    };
    let (tls, peer_tls) = if peer_bound.is_some() {
        (
            tls_for(crate::tls::Side::Clients)?,
            tls_for(crate::tls::Side::Peers)?,
        )
    } else {
        (tls_for(crate::tls::Side::Both)?, None)
    };
    let peers = Peers::new(Duration::from_secs(2), config.tls.clone());
    let node = Node::start(&config, advertise, peers.clone()).await?;
    crate::join::bootstrap(&node, &config, &peers).await?;
    // Checks on every call, cheapest first: the connection's rate, then its role. A peer
    // port checks roles only: a follower forwards all its clients' writes on one
    // connection.
    let mut gates: Vec<Arc<dyn crate::gate::Gate>> = Vec::new();
    let mut peer_gates: Vec<Arc<dyn crate::gate::Gate>> = Vec::new();
    let rate = config.limits.max_calls_per_connection_per_second;
    if rate > 0 {
        gates.push(Arc::new(crate::ratelimit::Limiter::new(
            rate,
            Arc::clone(&node.refusals().rate),
        )));
    }
    if let Some(authz) = &authz {
        gates.push(authz.clone());
        peer_gates.push(authz.clone());
    }
    let stopping = CancellationToken::new();
    let metrics = Metrics::new(Arc::clone(&node));
    let ctx = Arc::new(Ctx {
        node: Arc::clone(&node),
        peers,
        metrics: Arc::clone(&metrics),
        shutdown: stopping.clone(),
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, false).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RunError::Serve(format!("reflection: {e}")))?;

    let server_stop = CancellationToken::new();
    let routes = tonic::service::Routes::default()
        .add_service(
            pb::affinity_server::AffinityServer::new(AffinityService::new(Arc::clone(&ctx)))
                .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::cluster_server::ClusterServer::new(ClusterService::new(Arc::clone(&ctx)))
                .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES),
        )
        .add_service(health_service)
        .add_service(reflection);
    let raft_service = pb::raft_server::RaftServer::new(PeerService::new(Arc::clone(&node)))
        .max_decoding_message_size(PEER_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(PEER_MAX_MESSAGE_BYTES);
    let mut peer_task = None;
    let client_routes = match listeners.peer {
        Some(peer_listener) => {
            let peer_routes = routes.clone().add_service(raft_service);
            let served = serve_grpc(
                &config,
                peer_routes,
                peer_gates,
                peer_tls,
                peer_listener,
                &server_stop,
            );
            peer_task = Some(tokio::spawn(served.in_current_span()));
            routes
        }
        None => routes.add_service(raft_service),
    };
    let grpc = serve_grpc(
        &config,
        client_routes,
        gates,
        tls,
        listeners.grpc,
        &server_stop,
    );
    let mut grpc_task = tokio::spawn(grpc.in_current_span());
    let peer_stopped = async {
        match &mut peer_task {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };

    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(authz), Some(tls)) = (authz, &config.tls) {
        tasks.spawn(
            authz
                .follow(tls.reload_interval, stopping.clone())
                .in_current_span(),
        );
    }
    tasks.spawn(
        ctx.peers
            .clone()
            .follow_tls_files(stopping.clone())
            .in_current_span(),
    );
    tasks
        .spawn(sweep(Arc::clone(&node), config.sweep_interval, stopping.clone()).in_current_span());
    tasks.spawn(
        report_health(Arc::clone(&node), health.clone(), stopping.clone()).in_current_span(),
    );
    tasks.spawn(
        watch_clock(Arc::clone(&node), config.max_clock_step, stopping.clone()).in_current_span(),
    );
    tasks.spawn(
        mark_applied(Arc::clone(&node), config.data_dir.clone(), stopping.clone())
            .in_current_span(),
    );
    if !config.join.is_empty() {
        tasks.spawn(
            crate::join::run(
                Arc::clone(&node),
                config.join.clone(),
                ctx.peers.clone(),
                stopping.clone(),
            )
            .in_current_span(),
        );
    }
    if let Some(listener) = listeners.metrics {
        tasks.spawn(
            metrics::serve(
                listener,
                Arc::clone(&metrics),
                Arc::clone(&node),
                stopping.clone(),
            )
            .in_current_span(),
        );
    }

    let stopped_by_itself =
        |port: &str,
         joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>| {
            RunError::Serve(match joined {
                Ok(Ok(())) => format!("the {port} gRPC server stopped by itself"),
                Ok(Err(e)) => format!("{port} port: {e}"),
                Err(e) => format!("{port} port: {e}"),
            })
        };
    // A task that ended here must not be awaited again below.
    let (mut grpc_ended, mut peer_ended) = (false, false);
    let served = tokio::select! {
        () = shutdown => Ok(()),
        reason = raft_stopped(&node) => Err(RunError::Serve(format!(
            "Raft stopped: {reason}; exiting so that the node is started again (the data on disk is intact)"
        ))),
        joined = &mut grpc_task => {
            grpc_ended = true;
            Err(stopped_by_itself("client", joined))
        }
        joined = peer_stopped => {
            peer_ended = true;
            Err(stopped_by_itself("peer", joined))
        }
    };

    tracing::info!("stopping");
    set_health(&health, false).await;
    set_liveness(&health, false).await;
    stopping.cancel();
    step_down(&node).await;
    server_stop.cancel();
    if tokio::time::timeout(config.shutdown_grace, metrics.in_flight.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = metrics.in_flight.count(),
            "requests still in flight after the grace period; stopping anyway"
        );
    }
    node.shutdown().await;
    if !grpc_ended
        && tokio::time::timeout(Duration::from_secs(2), &mut grpc_task)
            .await
            .is_err()
    {
        grpc_task.abort();
    }
    if let Some(mut task) = peer_task
        && !peer_ended
        && tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
    {
        task.abort();
    }
    while tasks.join_next().await.is_some() {}
    drop(ctx);
    tracing::info!("stopped");
    served
}

type Serving = std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Serve `routes` on `listener` (over TLS when given) until `stop`, behind `gates`.
fn serve_grpc(
    config: &Config,
    routes: tonic::service::Routes,
    gates: Vec<Arc<dyn crate::gate::Gate>>,
    tls: Option<crate::tls::Server>,
    listener: TcpListener,
    stop: &CancellationToken,
) -> Serving {
    let grpc = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(config.limits.max_streams_per_connection)
        .layer(crate::gate::GateLayer::new(gates))
        .add_routes(routes);
    match tls {
        Some(tls) => Box::pin(grpc.serve_with_incoming_shutdown(
            tls.incoming(listener, stop.clone()),
            stop.clone().cancelled_owned(),
        )),
        None => Box::pin(
            grpc.serve_with_incoming_shutdown(
                // Small answers must not wait for delayed ACKs (Nagle): no-delay on every
                // socket.
                TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(Duration::from_secs(60))),
                stop.clone().cancelled_owned(),
            ),
        ),
    }
}

/// Wait until this node's Raft stops by itself; why it stopped.
///
/// It follows the server metrics (role, leader, membership), which change rarely, rather
/// than the full metrics, which change several times per write and would wake this task
/// (on the main thread) for each. Raft's core drops their sender when it stops; its last
/// full metrics then say why.
async fn raft_stopped(node: &Node) -> String {
    let mut server = node.raft().server_metrics();
    loop {
        let ended = server.changed().await.is_err();
        if let Err(fatal) = &node.raft().metrics().borrow_watched().running_state {
            return fatal.to_string();
        }
        if ended {
            return "its metrics ended".into();
        }
    }
}

async fn set_health(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

async fn set_liveness(reporter: &HealthReporter, alive: bool) {
    let status = if alive {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status(LIVENESS_SERVICE, status).await;
}

/// SERVING exactly while the node knows a leader and has applied what is committed; and
/// a log line whenever the leader or this node's role changes.
///
/// Role and leader changes are seen at once (the server metrics); how far the node has
/// applied is looked at every [`Node::readiness_interval`], not at each of the several
/// metrics updates every write makes.
async fn report_health(node: Arc<Node>, reporter: HealthReporter, stopping: CancellationToken) {
    let mut server = node.raft().server_metrics();
    let mut metrics = node.raft().metrics();
    let mut serving = None;
    let mut living = None;
    let mut seen = None;
    loop {
        let (state, leader, term, alive) = {
            let m = metrics.borrow_watched();
            (
                m.state,
                m.current_leader,
                m.current_term,
                m.running_state.is_ok(),
            )
        };
        if living != Some(alive) {
            set_liveness(&reporter, alive).await;
            living = Some(alive);
        }
        if seen != Some((state, leader)) {
            match leader {
                Some(id) if id == node.id() => tracing::info!(term, "this node is the leader"),
                Some(id) => {
                    tracing::info!(term, leader = id, role = ?state, "following the leader");
                }
                None => tracing::info!(term, role = ?state, "no leader known"),
            }
            seen = Some((state, leader));
        }
        let ready = node.is_ready();
        if serving != Some(ready) {
            set_health(&reporter, ready).await;
            tracing::info!(ready, "readiness changed");
            serving = Some(ready);
        }
        tokio::select! {
            () = stopping.cancelled() => return,
            changed = server.changed() => {
                if changed.is_err() {
                    // Raft stopped: say so before the task ends.
                    set_liveness(&reporter, false).await;
                    set_health(&reporter, false).await;
                    return;
                }
                // Raft sends the server metrics a moment before the full metrics that
                // readiness reads: wait for those to show the same role and leader.
                let (state, leader) = {
                    let s = server.borrow_watched();
                    (s.state, s.current_leader)
                };
                let caught_up = async {
                    loop {
                        let same = {
                            let m = metrics.borrow_watched();
                            m.state == state && m.current_leader == leader
                        };
                        if same || metrics.changed().await.is_err() {
                            return;
                        }
                    }
                };
                let _ = tokio::time::timeout(node.readiness_interval(), caught_up).await;
            },
            () = tokio::time::sleep(node.readiness_interval()) => {}
        }
    }
}

/// Every second, record in the data directory how far the log is known to reach: an entry
/// both applied (so committed, never to be truncated) and synced to disk here. A log found
/// shorter than that at start is damaged (see [`crate::store::StoreError::LogBehind`]).
async fn mark_applied(node: Arc<Node>, dir: std::path::PathBuf, stopping: CancellationToken) {
    let mut marked = crate::store::read_applied_mark(&dir)
        .ok()
        .flatten()
        .unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stop = tokio::select! {
            () = stopping.cancelled() => true,
            _ = tick.tick() => false,
        };
        let applied = node.state().last_applied().map_or(0, |id| id.index());
        let durable = node.log().durable_index();
        let reach = applied.min(durable);
        if reach > marked {
            let dir = dir.clone();
            match tokio::task::spawn_blocking(move || crate::store::write_applied_mark(&dir, reach))
                .await
            {
                Ok(Ok(())) => marked = reach,
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot record the applied index"),
                Err(e) => tracing::warn!(error = %e, "recording the applied index failed"),
            }
        }
        if stop {
            return;
        }
    }
}

/// Every few seconds, compare this node's wall clock with the store time it knows; warn
/// (at most once a minute while it lasts) when they are further apart than
/// `max-clock-step`, since this node would move store time by as much should it lead.
async fn watch_clock(node: Arc<Node>, max_step: Duration, stopping: CancellationToken) {
    let bound = i64::try_from(max_step.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = stopping.cancelled() => return,
            _ = tick.tick() => {}
        }
        match node.clock_offset_ms() {
            Some(offset) if offset.abs() > bound => {
                if warned.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
                    continue;
                }
                tracing::warn!(
                    offset_ms = offset,
                    max_clock_step_ms = bound,
                    "this node's wall clock is off the store's time by more than max-clock-step; synchronize it (NTP): were it to lead, new leases would be stamped up to max-clock-step off"
                );
                warned = Some(tokio::time::Instant::now());
            }
            Some(offset) if warned.is_some() => {
                tracing::info!(
                    offset_ms = offset,
                    "this node's wall clock agrees with the store's time again"
                );
                warned = None;
            }
            _ => {}
        }
    }
}

/// On the leader, propose removing ended leases whenever some have ended.
async fn sweep(node: Arc<Node>, interval: Duration, stopping: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopping.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !node.is_leader() {
            continue;
        }
        let now = node.stamp_now();
        if node.state().next_end_ms().is_none_or(|end| end > now) {
            continue;
        }
        match node
            .propose(Op::Sweep { up_to_ms: now }, node.default_budget())
            .await
        {
            Ok(Outcome::Swept(removed)) => tracing::debug!(removed, "swept ended leases"),
            Ok(other) => tracing::error!(?other, "a sweep returned something else"),
            Err(e) => tracing::debug!(error = %e, "sweep not applied"),
        }
    }
}

/// A leader hands leadership to another voter before stopping, so clients see no election
/// timeout. Bounded: if no voter takes over in time, the node stops anyway.
async fn step_down(node: &Node) {
    if node.raft().metrics().borrow_watched().state != ServerState::Leader {
        return;
    }
    let Some(to) = node.raft().voter_ids().find(|id| *id != node.id()) else {
        return;
    };
    match node
        .transfer_leader(to, Budget::within(Duration::from_secs(3)))
        .await
    {
        Ok(_) => tracing::info!(to, "handed leadership over"),
        Err(e) => tracing::warn!(to, error = %e, "could not hand leadership over; stopping anyway"),
    }
}
