//! `affinity-gateway`: an HTTP reverse proxy on Pingora that routes by Gateway API
//! `HTTPRoute` rules and keeps each client IP (or masked subnet) on the same backend across
//! every gateway replica, through the affinity store.
//!
//! Threads: Pingora runs the proxy and the health checker on its own runtimes; a small
//! Tokio runtime of this binary hosts the affinity client's connections and watch stream,
//! the route file watcher and the admin endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use affinity_client::gateway::serve;
use affinity_client::{AffinityClient, FailMode};
use affinity_gateway::backends::{Membership, health_checker};
use affinity_gateway::proxy::{Gateway, Settings};
use affinity_gateway::reload;
use affinity_gateway::routes::{Options, RouteTable};
use affinity_proto::GatewayDuration;
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand, ValueEnum};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;

#[derive(Parser)]
#[command(
    name = "affinity-gateway",
    version,
    about = "HTTP gateway with client-IP session persistence shared across replicas",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The route file: HTTPRoutes and where their endpoints come from (YAML; see
    /// docs/gateway-integration.md).
    #[arg(long, env = "AFFINITY_GATEWAY_ROUTES", required = true)]
    routes: Option<PathBuf>,
    /// Serve only the HTTPRoutes whose parentRefs name this Gateway, NAMESPACE/NAME
    /// (default: every route in the file).
    #[arg(long, env = "AFFINITY_GATEWAY_GATEWAY")]
    gateway: Option<String>,
    /// Address the proxy listens on.
    #[arg(
        long,
        env = "AFFINITY_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    listen: String,
    /// Store nodes, HOST:PORT,... (any node answers any request).
    #[arg(
        long,
        env = "AFFINITY_ENDPOINTS",
        default_value = "127.0.0.1:7400",
        value_delimiter = ','
    )]
    store: Vec<String>,
    /// Proxies in front of the gateway that append to X-Forwarded-For; the client address
    /// is the entry this many from the right. 0 ignores the header (any client can write it).
    #[arg(long, env = "AFFINITY_GATEWAY_TRUSTED_HOPS", default_value_t = 0)]
    trusted_hops: usize,
    /// Add affinity-decision (cache|store|fallback|round-robin), affinity-lease
    /// (created|replaced|kept), affinity-endpoint and affinity-prefix (the client's masked
    /// key) to responses.
    #[arg(long, env = "AFFINITY_GATEWAY_DEBUG_HEADERS")]
    debug_headers: bool,
    /// How long a decision waits for the store before falling back.
    #[arg(long, env = "AFFINITY_GATEWAY_STORE_TIMEOUT", default_value = "1s")]
    store_timeout: GatewayDuration,
    /// When the store cannot answer: open routes by rendezvous hash (the same on every
    /// replica); closed answers 503.
    #[arg(
        long,
        env = "AFFINITY_GATEWAY_FAIL_MODE",
        value_enum,
        default_value = "open"
    )]
    fail_mode: Mode,
    /// Talk TLS to the store, trusting node certificates this CA (PEM) signs.
    #[arg(long, env = "AFFINITY_GATEWAY_STORE_TLS_CA")]
    store_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for stores that require one (mTLS); needs
    /// --store-tls-key.
    #[arg(long, env = "AFFINITY_GATEWAY_STORE_TLS_CERT")]
    store_tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "AFFINITY_GATEWAY_STORE_TLS_KEY")]
    store_tls_key: Option<PathBuf>,
    /// File holding a bearer token to send to the store (for nodes whose --authz file
    /// gives roles to tokens); needs --store-tls-ca.
    #[arg(long, env = "AFFINITY_GATEWAY_STORE_TOKEN_FILE")]
    store_token_file: Option<PathBuf>,
    /// Leases this replica caches.
    #[arg(
        long,
        env = "AFFINITY_GATEWAY_CACHE_CAPACITY",
        default_value_t = 100_000
    )]
    cache_capacity: usize,
    /// Interval of backend health checks (TCP connect).
    #[arg(long, env = "AFFINITY_GATEWAY_HEALTH_INTERVAL", default_value = "1s")]
    health_interval: GatewayDuration,
    /// How long to wait for a backend to accept a connection before trying another.
    #[arg(long, env = "AFFINITY_GATEWAY_CONNECT_TIMEOUT", default_value = "1s")]
    connect_timeout: GatewayDuration,
    /// How often the route file is checked for changes.
    #[arg(long, env = "AFFINITY_GATEWAY_RELOAD_INTERVAL", default_value = "1s")]
    reload_interval: GatewayDuration,
    /// Address for /metrics, /healthz and /readyz, or "off".
    #[arg(
        long,
        env = "AFFINITY_GATEWAY_METRICS_LISTEN",
        default_value = "127.0.0.1:9480"
    )]
    metrics_listen: String,
    /// Proxy worker threads.
    #[arg(long, env = "AFFINITY_GATEWAY_THREADS", default_value_t = 2)]
    threads: usize,
    /// Seconds a stopping gateway keeps serving requests in flight.
    #[arg(long, env = "AFFINITY_GATEWAY_SHUTDOWN_GRACE", default_value = "5s")]
    shutdown_grace: GatewayDuration,
    /// Log format.
    #[arg(long, env = "AFFINITY_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter: a level or directives like "info,pingora=warn".
    #[arg(
        long,
        env = "AFFINITY_LOG_LEVEL",
        default_value = "info,pingora_core=warn,pingora_proxy=warn,pingora_load_balancing=error"
    )]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Check a route file without serving: per rule its scope, persistence and endpoints,
    /// then every refusal (document, field, rule), warning and ignored document. Exits 0
    /// only when nothing was refused and some route is served.
    Check {
        /// The route file to check.
        #[arg(long)]
        routes: PathBuf,
        /// Check as `--gateway NAMESPACE/NAME` would serve it.
        #[arg(long)]
        gateway: Option<String>,
        /// Print JSON for tools instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `check`: the report, and whether nothing was refused.
fn check(routes: &std::path::Path, gateway: Option<&str>, json: bool) -> Result<bool, String> {
    let options = Options::for_dataplane(gateway)?;
    let bytes = std::fs::read(routes)
        .map_err(|e| format!("cannot read --routes {}: {e}", routes.display()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("--routes {}: not UTF-8", routes.display()))?;
    let table = RouteTable::parse_with(text, &options)
        .map_err(|e| format!("--routes {}: {e}", routes.display()))?;
    if json {
        println!("{:#}", table.check_json());
    } else {
        print!("{}", table.check_text());
    }
    // What the gateway would refuse to start on fails the check too.
    Ok(table.refused.is_empty() && !table.routes.is_empty())
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

fn check_listen(flag: &str, addr: &str) -> Result<SocketAddr, String> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| format!("--{flag} {addr:?} is not an IP:PORT to listen on"))?;
    // Fail now, with a clear message, rather than inside the proxy's runtime.
    std::net::TcpListener::bind(parsed)
        .map_err(|e| format!("cannot listen on {addr} (--{flag}): {e}"))?;
    Ok(parsed)
}

fn run(cli: &Cli) -> Result<(), String> {
    serve::init_logging(matches!(cli.log_format, LogFormat::Json), &cli.log_level)?;
    if cli.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    for (flag, value) in [
        ("health-interval", cli.health_interval),
        ("connect-timeout", cli.connect_timeout),
        ("reload-interval", cli.reload_interval),
        ("store-timeout", cli.store_timeout),
    ] {
        if value.as_millis() == 0 {
            return Err(format!("--{flag} must be more than 0"));
        }
    }
    let listen = check_listen("listen", &cli.listen)?;
    let metrics_listen = match cli.metrics_listen.as_str() {
        "off" => None,
        addr => Some(check_listen("metrics-listen", addr)?),
    };
    let options = Options::for_dataplane(cli.gateway.as_deref())?;
    let routes_file = cli.routes.clone().ok_or("--routes is required")?;
    let (content, loaded) = reload::load(&routes_file, &options)?;
    let handle = serve::install_recorder()?;

    let membership = Arc::new(Membership::default());
    let backends = loaded.backends();
    tracing::info!(
        routes = %routes_file.display(),
        rules = loaded.rules.len(),
        backends = backends.len(),
        "route file loaded"
    );
    membership.set(backends);
    loaded.table.log_outcome(reload::REFUSED_GAUGE);
    let routes = Arc::new(ArcSwap::from_pointee(loaded));

    // The affinity client and the gateway's own tasks live on this runtime, which lives as
    // long as the process (Pingora's run_forever never returns).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("affinity-client")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the client runtime: {e}"))?;
    let client = {
        let _inside = runtime.enter();
        let builder = affinity_client::gateway::store_security(
            AffinityClient::builder(),
            cli.store_tls_ca.as_deref(),
            cli.store_tls_cert.as_deref(),
            cli.store_tls_key.as_deref(),
            cli.store_token_file.as_deref(),
        )?;
        builder
            .endpoints(cli.store.iter().cloned())
            .request_timeout(cli.store_timeout.as_std())
            .cache_capacity(cli.cache_capacity)
            .fail_mode(match cli.fail_mode {
                Mode::Open => FailMode::Open,
                Mode::Closed => FailMode::Closed,
            })
            .build()
            .map_err(|e| format!("--store: {e}"))?
    };
    runtime.spawn(reload::watch(
        routes_file,
        cli.reload_interval.as_std(),
        content,
        options,
        routes.clone(),
        membership.clone(),
    ));
    if let Some(addr) = metrics_listen {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|e| format!("cannot listen on {addr} (--metrics-listen): {e}"))?;
        runtime.spawn(serve::serve_admin(
            listener,
            handle,
            client.clone(),
            "affinity_gateway_cached_leases",
        ));
        tracing::info!(%addr, "admin endpoint (/metrics, /healthz, /readyz) listening");
    }

    let grace = cli.shutdown_grace.as_std().as_secs();
    let conf = ServerConf {
        threads: cli.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(grace.max(1)),
        pid_file: std::env::temp_dir()
            .join(format!("affinity-gateway-{}.pid", std::process::id()))
            .display()
            .to_string(),
        upgrade_sock: std::env::temp_dir()
            .join(format!("affinity-gateway-{}.sock", std::process::id()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let checker = background_service(
        "backend health checks",
        health_checker(membership, cli.health_interval.as_std()),
    );
    let gateway = Gateway {
        routes,
        health: checker.task(),
        client,
        settings: Settings {
            trusted_hops: cli.trusted_hops,
            debug_headers: cli.debug_headers,
            connect_timeout: cli.connect_timeout.as_std(),
        },
    };
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "affinity-gateway",
    );
    proxy.add_tcp(&listen.to_string());
    server.add_service(checker);
    server.add_service(proxy);
    tracing::info!(
        %listen,
        store = %cli.store.join(","),
        trusted_hops = cli.trusted_hops,
        "affinity-gateway listening"
    );
    // Keep the client runtime alive for as long as the server runs.
    let _runtime = runtime;
    server.run_forever();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Check {
        routes,
        gateway,
        json,
    }) = &cli.command
    {
        return match check(routes, gateway.as_deref(), *json) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("affinity-gateway check: {e}");
                ExitCode::from(2)
            }
        };
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("affinity-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
