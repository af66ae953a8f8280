//! `affinity-agent`: the sidecar that gives Envoy (ext_proc) and nginx (auth_request)
//! client-IP session persistence shared across every proxy replica, through the affinity
//! store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use affinity_agent::decide::Decider;
use affinity_agent::ext_proc::Processor;
use affinity_agent::health::Health;
use affinity_agent::http::{self, DecideState};
use affinity_agent::rules;
use affinity_client::gateway::routes::Options;
use affinity_client::gateway::serve;
use affinity_client::{AffinityClient, FailMode, GatewayDuration};
use arc_swap::ArcSwap;
use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;

#[derive(Parser)]
#[command(
    name = "affinity-agent",
    version,
    about = "Sidecar deciding sticky backends for Envoy (ext_proc) and nginx (auth_request)"
)]
struct Cli {
    /// The route file: HTTPRoute documents and an optional Backends document (YAML), the
    /// same file affinity-gateway reads.
    #[arg(long, env = "AFFINITY_AGENT_ROUTES")]
    routes: PathBuf,
    /// Serve only the HTTPRoutes whose parentRefs name this Gateway, NAMESPACE/NAME
    /// (default: every route in the file).
    #[arg(long, env = "AFFINITY_AGENT_GATEWAY")]
    gateway: Option<String>,
    /// Store nodes, HOST:PORT,... (any node answers any request).
    #[arg(
        long,
        env = "AFFINITY_ENDPOINTS",
        default_value = "127.0.0.1:7400",
        value_delimiter = ','
    )]
    store: Vec<String>,
    /// Address of the Envoy ext_proc gRPC service, or "off".
    #[arg(
        long,
        env = "AFFINITY_AGENT_LISTEN_EXT_PROC",
        default_value = "127.0.0.1:9510"
    )]
    listen_ext_proc: String,
    /// Address of the nginx auth_request endpoint (GET /decide), or "off".
    #[arg(
        long,
        env = "AFFINITY_AGENT_LISTEN_HTTP",
        default_value = "127.0.0.1:9511"
    )]
    listen_http: String,
    /// Address for /metrics, /healthz and /readyz, or "off".
    #[arg(
        long,
        env = "AFFINITY_AGENT_METRICS_LISTEN",
        default_value = "127.0.0.1:9512"
    )]
    metrics_listen: String,
    /// Proxies in front of Envoy or nginx that append to X-Forwarded-For; the client
    /// address is the entry this many from the right. 0 ignores the header (any client can
    /// write it).
    #[arg(long, env = "AFFINITY_AGENT_TRUSTED_HOPS", default_value_t = 0)]
    trusted_hops: usize,
    /// Through Envoy: add affinity-decision, affinity-lease, affinity-endpoint and
    /// affinity-served to responses.
    #[arg(long, env = "AFFINITY_AGENT_DEBUG_HEADERS")]
    debug_headers: bool,
    /// How long a decision waits for the store before falling back.
    #[arg(long, env = "AFFINITY_AGENT_STORE_TIMEOUT", default_value = "1s")]
    store_timeout: GatewayDuration,
    /// When the store cannot answer: open decides by rendezvous hash (the same on every
    /// replica); closed gives no persistence (the proxy picks).
    #[arg(
        long,
        env = "AFFINITY_AGENT_FAIL_MODE",
        value_enum,
        default_value = "open"
    )]
    fail_mode: Mode,
    /// Talk TLS to the store, trusting node certificates this CA (PEM) signs.
    #[arg(long, env = "AFFINITY_AGENT_STORE_TLS_CA")]
    store_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for stores that require one (mTLS); needs
    /// --store-tls-key.
    #[arg(long, env = "AFFINITY_AGENT_STORE_TLS_CERT")]
    store_tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "AFFINITY_AGENT_STORE_TLS_KEY")]
    store_tls_key: Option<PathBuf>,
    /// File holding a bearer token to send to the store; needs --store-tls-ca.
    #[arg(long, env = "AFFINITY_AGENT_STORE_TOKEN_FILE")]
    store_token_file: Option<PathBuf>,
    /// Leases this agent caches.
    #[arg(long, env = "AFFINITY_AGENT_CACHE_CAPACITY", default_value_t = 100_000)]
    cache_capacity: usize,
    /// Interval of backend health checks (TCP connect).
    #[arg(long, env = "AFFINITY_AGENT_HEALTH_INTERVAL", default_value = "1s")]
    health_interval: GatewayDuration,
    /// How often the route file is checked for changes.
    #[arg(long, env = "AFFINITY_AGENT_RELOAD_INTERVAL", default_value = "1s")]
    reload_interval: GatewayDuration,
    /// Worker threads.
    #[arg(long, env = "AFFINITY_AGENT_THREADS", default_value_t = 2)]
    threads: usize,
    /// Log format.
    #[arg(long, env = "AFFINITY_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter: a level or directives like "info,affinity_client=debug".
    #[arg(long, env = "AFFINITY_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Open,
    Closed,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `off`, or an address this process can listen on (checked by binding it now).
fn listener(flag: &str, addr: &str) -> Result<Option<std::net::TcpListener>, String> {
    if addr == "off" {
        return Ok(None);
    }
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| format!("--{flag} {addr:?} is not an IP:PORT to listen on, or \"off\""))?;
    let socket = std::net::TcpListener::bind(parsed)
        .map_err(|e| format!("cannot listen on {addr} (--{flag}): {e}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("--{flag}: {e}"))?;
    Ok(Some(socket))
}

fn run(cli: &Cli) -> Result<(), String> {
    serve::init_logging(matches!(cli.log_format, LogFormat::Json), &cli.log_level)?;
    if cli.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    for (flag, value) in [
        ("health-interval", cli.health_interval),
        ("reload-interval", cli.reload_interval),
        ("store-timeout", cli.store_timeout),
    ] {
        if value.as_millis() == 0 {
            return Err(format!("--{flag} must be more than 0"));
        }
    }
    let ext_proc = listener("listen-ext-proc", &cli.listen_ext_proc)?;
    let decide_http = listener("listen-http", &cli.listen_http)?;
    let admin = listener("metrics-listen", &cli.metrics_listen)?;
    if ext_proc.is_none() && decide_http.is_none() {
        return Err("--listen-ext-proc and --listen-http are both off: nothing to serve".into());
    }
    let options = Options::for_dataplane(cli.gateway.as_deref())?;
    let (content, loaded) = rules::load(&cli.routes, &options)?;
    let handle = serve::install_recorder()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads)
        .thread_name("affinity-agent")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(
        cli,
        content,
        loaded,
        handle,
        ext_proc,
        decide_http,
        admin,
    ))
}

async fn serve(
    cli: &Cli,
    content: Vec<u8>,
    loaded: rules::Rules,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    ext_proc: Option<std::net::TcpListener>,
    decide_http: Option<std::net::TcpListener>,
    admin: Option<std::net::TcpListener>,
) -> Result<(), String> {
    let client = affinity_client::gateway::store_security(
        AffinityClient::builder(),
        cli.store_tls_ca.as_deref(),
        cli.store_tls_cert.as_deref(),
        cli.store_tls_key.as_deref(),
        cli.store_token_file.as_deref(),
    )?
    .endpoints(cli.store.iter().cloned())
    .request_timeout(cli.store_timeout.as_std())
    .cache_capacity(cli.cache_capacity)
    .fail_mode(match cli.fail_mode {
        Mode::Open => FailMode::Open,
        Mode::Closed => FailMode::Closed,
    })
    .build()
    .map_err(|e| format!("--store: {e}"))?;

    let health = Arc::new(Health::default());
    health.watch(loaded.endpoints());
    loaded.table().log_outcome(rules::REFUSED_GAUGE);
    tracing::info!(
        routes = %cli.routes.display(),
        rules = loaded.len(),
        endpoints = loaded.endpoints().len(),
        "route file loaded"
    );
    let rules = Arc::new(ArcSwap::from_pointee(loaded));
    tokio::spawn(health.clone().run(cli.health_interval.as_std()));
    let watched = health.clone();
    tokio::spawn(rules::watch(
        cli.routes.clone(),
        cli.reload_interval.as_std(),
        content,
        Options::for_dataplane(cli.gateway.as_deref())?,
        rules.clone(),
        move |new| watched.watch(new.endpoints()),
    ));
    let decider = Decider {
        client: client.clone(),
        rules,
        health,
    };
    let tokio_listener = |socket: std::net::TcpListener, flag: &str| {
        tokio::net::TcpListener::from_std(socket).map_err(|e| format!("--{flag}: {e}"))
    };
    if let Some(socket) = admin {
        let addr = socket.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(serve::serve_admin(
            tokio_listener(socket, "metrics-listen")?,
            handle,
            client.clone(),
            "affinity_agent_cached_leases",
        ));
        tracing::info!(%addr, "admin endpoint (/metrics, /healthz, /readyz) listening");
    }
    if let Some(socket) = decide_http {
        let addr = socket.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(http::serve_decide(
            tokio_listener(socket, "listen-http")?,
            DecideState {
                decider: decider.clone(),
                trusted_hops: cli.trusted_hops,
            },
        ));
        tracing::info!(%addr, "nginx auth_request endpoint (GET /decide) listening");
    }
    let grpc = match ext_proc {
        Some(socket) => {
            let addr = socket.local_addr().map_err(|e| e.to_string())?;
            // Each message of an ext_proc stream is small and answered at once: without
            // TCP_NODELAY, Nagle's algorithm and delayed ACKs hold answers for tens of ms.
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(tokio_listener(
                    socket,
                    "listen-ext-proc",
                )?),
                |accepted| {
                    accepted.inspect(|stream| {
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                        }
                    })
                },
            );
            let (reporter, health_service) = tonic_health::server::health_reporter();
            reporter
                .set_serving::<ExternalProcessorServer<Processor>>()
                .await;
            let processor = Processor {
                decider,
                trusted_hops: cli.trusted_hops,
                debug_headers: cli.debug_headers,
            };
            tracing::info!(%addr, store = %cli.store.join(","), trusted_hops = cli.trusted_hops, "Envoy ext_proc service listening");
            Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(health_service)
                    .add_service(ExternalProcessorServer::new(processor))
                    .serve_with_incoming_shutdown(incoming, stop()),
            ))
        }
        None => None,
    };
    let Some(grpc) = grpc else {
        stop().await;
        tracing::info!("stopping");
        return Ok(());
    };
    // The gRPC server stops on SIGTERM or SIGINT itself; if it ends otherwise, the agent
    // cannot do its job and exits with the reason.
    match grpc.await {
        Ok(Ok(())) => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(format!("the ext_proc service stopped: {e}")),
        Err(e) => Err(format!("the ext_proc service failed: {e}")),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("affinity-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
