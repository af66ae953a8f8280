//! `affinityd`: the affinity store node.
//!
//! Settings come from flags, then `AFFINITY_*` environment variables, then an optional TOML
//! file (`--config`), then defaults; flags win. With no flags at all it runs a single-node
//! cluster in `./affinity-data`. `affinityd dev --nodes 3` runs a local cluster in one
//! process. Everything here is parsing; the node itself is `affinity_server::server::run`.

// The gRPC and Raft paths allocate many short-lived buffers per request; mimalloc served
// them with less CPU than glibc's allocator (docs/benchmarks.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use affinity_proto::GatewayDuration;
use affinity_server::config::{Config, parse_join, parse_peers};
use affinity_server::join::node_id_from_hostname;
use affinity_server::server::{self, Listeners};
use affinity_server::tls::TlsConfig;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "affinityd",
    version,
    about = "The affinity store node: Raft-replicated client-IP session persistence leases",
    after_help = "Every flag is also an environment variable AFFINITY_<FLAG> (e.g. AFFINITY_NODE_ID) and a key of the --config TOML file (e.g. node-id = 2). Flags win over the environment, which wins over the file."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local cluster of several nodes in this one process, for trying affinity out.
    Dev(DevArgs),
    /// Check the settings (flags, environment, --config) without starting, and print them
    /// as the node would use them (JSON), with what the data directory's Raft log holds.
    /// Exits 2 naming the first wrong setting, or the file and byte where the log is damaged.
    Check,
    /// Disaster recovery: write what this (stopped) node's data directory holds to a
    /// snapshot file, which `affinityctl restore` puts into a new cluster.
    Export {
        /// The file to write (replaced atomically), or `-` for standard output (the summary
        /// then goes to standard error).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Host the nodes listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// gRPC port of node 1; node N listens on base-port + N - 1.
    #[arg(long, default_value_t = 7400)]
    base_port: u16,
    /// Metrics port of node 1; node N serves metrics on metrics-base-port + N - 1.
    #[arg(long, default_value_t = 9400)]
    metrics_base_port: u16,
    /// Folder holding one data directory per node (node-1, node-2, ...).
    #[arg(long, default_value = "./affinity-dev")]
    data_dir: PathBuf,
}

#[derive(Args, Default)]
struct NodeArgs {
    /// TOML file with any of these settings (keys as the flag names, e.g. `node-id = 2`).
    #[arg(long, global = true, env = "AFFINITY_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (1 or more). [default: 1]
    #[arg(long, global = true, env = "AFFINITY_NODE_ID")]
    node_id: Option<u64>,
    /// Address to serve every gRPC service on (peers' too, unless --peer-listen is given).
    /// [default: 127.0.0.1:7400]
    #[arg(long, global = true, env = "AFFINITY_LISTEN")]
    listen: Option<String>,
    /// Address other nodes and clients reach this node at. [default: the listen address]
    #[arg(long, global = true, env = "AFFINITY_ADVERTISE")]
    advertise: Option<String>,
    /// Serve peer traffic (Raft, forwarded calls, joins) on this address instead of the
    /// client port, so that a NetworkPolicy can keep gateways off it; the client port then
    /// serves no Raft service. With TLS, each port trusts only its own CA.
    #[arg(long, global = true, env = "AFFINITY_PEER_LISTEN")]
    peer_listen: Option<String>,
    /// Address other nodes reach this node's peer port at. [default: the peer-listen
    /// address]
    #[arg(long, global = true, env = "AFFINITY_PEER_ADVERTISE")]
    peer_advertise: Option<String>,
    /// Data directory. [default: ./affinity-data]
    #[arg(long, global = true, env = "AFFINITY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Static initial membership, ID=HOST:PORT,... (this node included); a node with a peer
    /// port is written ID=HOST:PORT/PEER_HOST:PORT. Without it the node forms a single-node
    /// cluster of itself.
    #[arg(long, global = true, env = "AFFINITY_PEERS")]
    peers: Option<String>,
    /// Grow the cluster node by node instead of --peers: HOST:PORT,... of members to ask for
    /// admission (e.g. the first pods of a StatefulSet; their peer ports when nodes have
    /// them). Node 1 forms the cluster when no target belongs to one; every other node joins
    /// as a learner and becomes a voter once caught up.
    #[arg(long, global = true, env = "AFFINITY_JOIN")]
    join: Option<String>,
    /// Take the node id from the hostname's ordinal suffix: affinity-0 is node 1,
    /// affinity-1 node 2, ... (a StatefulSet pod's name). Cannot be combined with --node-id.
    #[arg(long, global = true, env = "AFFINITY_NODE_ID_FROM_HOSTNAME", num_args = 0..=1, default_missing_value = "true")]
    node_id_from_hostname: Option<bool>,
    /// Address for /metrics, /healthz and /readyz, or "off". [default: 127.0.0.1:9400]
    #[arg(long, global = true, env = "AFFINITY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Log format. [default: text]
    #[arg(long, global = true, env = "AFFINITY_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter: a level (info, debug, ...) or directives like "info,openraft=debug".
    /// [default: info,openraft=warn]
    #[arg(long, global = true, env = "AFFINITY_LOG_LEVEL")]
    log_level: Option<String>,
    /// Raft heartbeat interval (a duration like 100ms). [default: 100ms]
    #[arg(long, global = true, env = "AFFINITY_RAFT_HEARTBEAT")]
    raft_heartbeat: Option<GatewayDuration>,
    /// Raft election timeout, minimum (the maximum is twice this). [default: 800ms]
    #[arg(long, global = true, env = "AFFINITY_RAFT_ELECTION_TIMEOUT")]
    raft_election_timeout: Option<GatewayDuration>,
    /// Build a snapshot after this many log entries. [default: 50000]
    #[arg(long, global = true, env = "AFFINITY_RAFT_SNAPSHOT_THRESHOLD")]
    raft_snapshot_threshold: Option<u64>,
    /// Log entries kept behind a snapshot for followers that are a little behind. [default: 5000]
    #[arg(long, global = true, env = "AFFINITY_RAFT_LOGS_KEPT")]
    raft_logs_kept: Option<u64>,
    /// How often the leader removes ended leases. [default: 1s]
    #[arg(long, global = true, env = "AFFINITY_SWEEP_INTERVAL")]
    sweep_interval: Option<GatewayDuration>,
    /// How far a new leader's wall clock may move store time from where the previous leader
    /// left it. [default: 1s]
    #[arg(long, global = true, env = "AFFINITY_MAX_CLOCK_STEP")]
    max_clock_step: Option<GatewayDuration>,
    /// How long a write waits for a quorum before UNAVAILABLE. [default: 5s]
    #[arg(long, global = true, env = "AFFINITY_PROPOSAL_TIMEOUT")]
    proposal_timeout: Option<GatewayDuration>,
    /// How long a stopping node waits for requests in flight. [default: 10s]
    #[arg(long, global = true, env = "AFFINITY_SHUTDOWN_GRACE")]
    shutdown_grace: Option<GatewayDuration>,
    /// Changes a Watch subscriber may fall behind before its stream ends. [default: 16384]
    #[arg(long, global = true, env = "AFFINITY_WATCH_BUFFER")]
    watch_buffer: Option<usize>,
    /// Recent events kept so that a broken Watch can resume. [default: 65536]
    #[arg(long, global = true, env = "AFFINITY_WATCH_HISTORY")]
    watch_history: Option<usize>,
    /// Size of each Raft log segment file, in MiB (preallocated; 1 to 1024). [default: 16]
    #[arg(long, global = true, env = "AFFINITY_RAFT_LOG_SEGMENT_MIB")]
    raft_log_segment_mib: Option<u64>,
    /// Leases held before a Resolve that would create one more is refused
    /// (RESOURCE_EXHAUSTED). [default: 10000000]
    #[arg(long, global = true, env = "AFFINITY_MAX_LEASES")]
    max_leases: Option<u64>,
    /// The same per scope; 0 turns the per-scope limit off. [default: 0]
    #[arg(long, global = true, env = "AFFINITY_MAX_LEASES_PER_SCOPE")]
    max_leases_per_scope: Option<u64>,
    /// Client writes queued or in flight on the leader before more are shed with
    /// UNAVAILABLE and a retry hint. [default: 10000]
    #[arg(long, global = true, env = "AFFINITY_MAX_PENDING_WRITES")]
    max_pending_writes: Option<usize>,
    /// Watch streams served at once. [default: 1024]
    #[arg(long, global = true, env = "AFFINITY_MAX_WATCHERS")]
    max_watchers: Option<usize>,
    /// Concurrent calls (HTTP/2 streams) per client connection. [default: 1024]
    #[arg(long, global = true, env = "AFFINITY_MAX_STREAMS_PER_CONNECTION")]
    max_streams_per_connection: Option<u32>,
    /// Calls per second one connection may make (RESOURCE_EXHAUSTED beyond); 0 is no
    /// limit. [default: 0]
    #[arg(
        long,
        global = true,
        env = "AFFINITY_MAX_CALLS_PER_CONNECTION_PER_SECOND"
    )]
    max_calls_per_connection_per_second: Option<u32>,
    /// Serve TLS with this certificate chain (PEM), reloaded when the file changes; also
    /// this node's identity towards its peers. Needs --tls-key.
    #[arg(long, global = true, env = "AFFINITY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "AFFINITY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) of gateways' and operators' client certificates: clients must present one.
    #[arg(long, global = true, env = "AFFINITY_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// CA (PEM) of the nodes' certificates: peers must present one, and peers' server
    /// certificates are checked with it. [default: --tls-client-ca]
    #[arg(long, global = true, env = "AFFINITY_TLS_PEER_CA")]
    tls_peer_ca: Option<PathBuf>,
    /// How often the certificate and key files are checked for changes. [default: 10s]
    #[arg(long, global = true, env = "AFFINITY_TLS_RELOAD_INTERVAL")]
    tls_reload_interval: Option<GatewayDuration>,
    /// Roles of callers: client certificate names and bearer tokens (TOML; see
    /// docs/security.md). Needs TLS. [default: every call allowed]
    #[arg(long, global = true, env = "AFFINITY_AUTHZ")]
    authz: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    Text,
    Json,
}

/// The same settings, from the TOML file.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileArgs {
    node_id: Option<u64>,
    listen: Option<String>,
    advertise: Option<String>,
    peer_listen: Option<String>,
    peer_advertise: Option<String>,
    data_dir: Option<PathBuf>,
    peers: Option<String>,
    join: Option<String>,
    node_id_from_hostname: Option<bool>,
    metrics_listen: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    raft_heartbeat: Option<GatewayDuration>,
    raft_election_timeout: Option<GatewayDuration>,
    raft_snapshot_threshold: Option<u64>,
    raft_logs_kept: Option<u64>,
    sweep_interval: Option<GatewayDuration>,
    max_clock_step: Option<GatewayDuration>,
    proposal_timeout: Option<GatewayDuration>,
    shutdown_grace: Option<GatewayDuration>,
    watch_buffer: Option<usize>,
    watch_history: Option<usize>,
    raft_log_segment_mib: Option<u64>,
    max_leases: Option<u64>,
    max_leases_per_scope: Option<u64>,
    max_pending_writes: Option<usize>,
    max_watchers: Option<usize>,
    max_streams_per_connection: Option<u32>,
    max_calls_per_connection_per_second: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_peer_ca: Option<PathBuf>,
    tls_reload_interval: Option<GatewayDuration>,
    authz: Option<PathBuf>,
}

/// Settings after layering, plus what only the binary uses.
struct Settings {
    config: Config,
    listen: String,
    peer_listen: Option<String>,
    metrics_listen: Option<String>,
    log_format: LogFormat,
    log_level: String,
}

fn read_file(path: &Path) -> Result<FileArgs, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))
}

fn layer(args: NodeArgs) -> Result<Settings, String> {
    let file = match &args.config {
        Some(path) => read_file(path)?,
        None => FileArgs::default(),
    };
    let defaults = Config::default();
    let duration =
        |flag: Option<GatewayDuration>, file: Option<GatewayDuration>, default: Duration| {
            flag.or(file).map_or(default, GatewayDuration::as_std)
        };
    let peers = match args.peers.or(file.peers) {
        Some(text) => parse_peers(&text).map_err(|e| e.to_string())?,
        None => BTreeMap::new(),
    };
    let join = match args.join.or(file.join) {
        Some(text) => parse_join(&text).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let explicit_id = args.node_id.or(file.node_id);
    let node_id = if args
        .node_id_from_hostname
        .or(file.node_id_from_hostname)
        .unwrap_or(false)
    {
        if explicit_id.is_some() {
            return Err(
                "invalid node-id-from-hostname: cannot be combined with node-id; give one".into(),
            );
        }
        let hostname = hostname()?;
        node_id_from_hostname(&hostname)
            .map_err(|e| format!("invalid node-id-from-hostname: {e}"))?
    } else {
        explicit_id.unwrap_or(defaults.node_id)
    };
    let mut config = Config {
        node_id,
        join,
        advertise: args.advertise.or(file.advertise),
        peer_advertise: args.peer_advertise.or(file.peer_advertise),
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or(defaults.data_dir.clone()),
        peers,
        sweep_interval: duration(
            args.sweep_interval,
            file.sweep_interval,
            defaults.sweep_interval,
        ),
        max_clock_step: duration(
            args.max_clock_step,
            file.max_clock_step,
            defaults.max_clock_step,
        ),
        proposal_timeout: duration(
            args.proposal_timeout,
            file.proposal_timeout,
            defaults.proposal_timeout,
        ),
        shutdown_grace: duration(
            args.shutdown_grace,
            file.shutdown_grace,
            defaults.shutdown_grace,
        ),
        ..defaults
    };
    config.raft.heartbeat = duration(
        args.raft_heartbeat,
        file.raft_heartbeat,
        config.raft.heartbeat,
    );
    config.raft.election_timeout = duration(
        args.raft_election_timeout,
        file.raft_election_timeout,
        config.raft.election_timeout,
    );
    config.raft.snapshot_threshold = args
        .raft_snapshot_threshold
        .or(file.raft_snapshot_threshold)
        .unwrap_or(config.raft.snapshot_threshold);
    config.storage.watch_history = args
        .watch_history
        .or(file.watch_history)
        .unwrap_or(config.storage.watch_history);
    if let Some(mib) = args.raft_log_segment_mib.or(file.raft_log_segment_mib) {
        if !(1..=1024).contains(&mib) {
            return Err(format!(
                "invalid raft-log-segment-mib: {mib} is not between 1 and 1024"
            ));
        }
        config.storage.log_segment_bytes = mib << 20;
    }
    config.storage.watch_buffer = args
        .watch_buffer
        .or(file.watch_buffer)
        .unwrap_or(config.storage.watch_buffer);
    let limits = &mut config.limits;
    limits.max_leases = args
        .max_leases
        .or(file.max_leases)
        .unwrap_or(limits.max_leases);
    limits.max_leases_per_scope = args
        .max_leases_per_scope
        .or(file.max_leases_per_scope)
        .unwrap_or(limits.max_leases_per_scope);
    limits.max_pending_writes = args
        .max_pending_writes
        .or(file.max_pending_writes)
        .unwrap_or(limits.max_pending_writes);
    limits.max_watchers = args
        .max_watchers
        .or(file.max_watchers)
        .unwrap_or(limits.max_watchers);
    limits.max_streams_per_connection = args
        .max_streams_per_connection
        .or(file.max_streams_per_connection)
        .unwrap_or(limits.max_streams_per_connection);
    limits.max_calls_per_connection_per_second = args
        .max_calls_per_connection_per_second
        .or(file.max_calls_per_connection_per_second)
        .unwrap_or(limits.max_calls_per_connection_per_second);
    config.authz = args.authz.or(file.authz);
    config.tls = tls_settings(
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
        args.tls_client_ca.or(file.tls_client_ca),
        args.tls_peer_ca.or(file.tls_peer_ca),
        duration(
            args.tls_reload_interval,
            file.tls_reload_interval,
            Duration::from_secs(10),
        ),
    )?;
    config.raft.logs_kept_after_snapshot = args
        .raft_logs_kept
        .or(file.raft_logs_kept)
        .unwrap_or(config.raft.logs_kept_after_snapshot);
    let metrics_listen = match args.metrics_listen.or(file.metrics_listen) {
        Some(off) if off == "off" => None,
        Some(addr) => Some(addr),
        None => Some("127.0.0.1:9400".to_string()),
    };
    Ok(Settings {
        config,
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7400".into()),
        peer_listen: args.peer_listen.or(file.peer_listen),
        metrics_listen,
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
        log_level: args
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info,openraft=warn".into()),
    })
}

/// This machine's (or pod's) hostname.
fn hostname() -> Result<String, String> {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    from_kernel
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .ok_or_else(|| {
            "invalid node-id-from-hostname: cannot read the hostname (/proc/sys/kernel/hostname or HOSTNAME)".into()
        })
}

fn init_logging(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("--log-level {level:?}: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| format!("logging: {e}"))
}

fn tls_settings(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    peer_ca: Option<PathBuf>,
    reload_interval: Duration,
) -> Result<Option<TlsConfig>, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            if reload_interval.is_zero() {
                return Err("invalid tls-reload-interval: must be more than 0".into());
            }
            Ok(Some(TlsConfig {
                cert,
                key,
                client_ca,
                peer_ca,
                reload_interval,
            }))
        }
        (None, None) if client_ca.is_none() && peer_ca.is_none() => Ok(None),
        (None, None) => Err(
            "invalid tls-client-ca/tls-peer-ca: they need TLS on (--tls-cert and --tls-key)".into(),
        ),
        (Some(_), None) => Err("invalid tls-cert: needs --tls-key".into()),
        (None, Some(_)) => Err("invalid tls-key: needs --tls-cert".into()),
    }
}

async fn bind(what: &str, addr: &str) -> Result<TcpListener, String> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| format!("--{what} {addr:?} is not an IP:PORT to listen on"))?;
    TcpListener::bind(parsed)
        .await
        .map_err(|e| format!("cannot listen on {addr} (--{what}): {e}"))
}

/// SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    if let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    } else {
        tracing::warn!("cannot install signal handlers; stopping only on Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Warn when `listener` serves plaintext beyond loopback: `exposed` says what anyone who
/// reaches it can do, `remedy` how to stop that.
fn warn_if_plaintext(listener: &TcpListener, tls: bool, exposed: &str, remedy: &str) {
    if let Ok(bound) = listener.local_addr()
        && !bound.ip().is_loopback()
        && !tls
    {
        tracing::warn!(
            address = %bound,
            "serving plaintext beyond loopback: anyone who can reach this address can {exposed}; {remedy} or restrict it with a NetworkPolicy (docs/security.md)"
        );
    }
}

async fn run_node(settings: Settings) -> Result<(), String> {
    let tls = settings.config.tls.is_some();
    let grpc = bind("listen", &settings.listen).await?;
    warn_if_plaintext(
        &grpc,
        tls,
        "read and change leases",
        "turn TLS on (--tls-cert, and --tls-client-ca for mTLS)",
    );
    let peer = match &settings.peer_listen {
        Some(addr) => Some(bind("peer-listen", addr).await?),
        None => None,
    };
    if let Some(peer) = &peer {
        warn_if_plaintext(
            peer,
            tls,
            "take part in Raft",
            "turn TLS on (--tls-cert, --tls-peer-ca)",
        );
    }
    let metrics = match &settings.metrics_listen {
        Some(addr) => Some(bind("metrics-listen", addr).await?),
        None => None,
    };
    server::run(
        settings.config,
        Listeners {
            grpc,
            peer,
            metrics,
        },
        stop_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}

/// The settings as a node would use them, after every check a start makes before it
/// touches the data directory.
fn check(settings: &Settings) -> Result<serde_json::Value, String> {
    let bound: SocketAddr = settings
        .listen
        .parse()
        .map_err(|_| format!("invalid listen: {:?} is not an IP:PORT", settings.listen))?;
    if let Some(metrics) = &settings.metrics_listen {
        metrics.parse::<SocketAddr>().map_err(|_| {
            format!("invalid metrics-listen: {metrics:?} is not an IP:PORT or \"off\"")
        })?;
    }
    let peer_bound = match &settings.peer_listen {
        Some(peer) => Some(
            peer.parse::<SocketAddr>()
                .map_err(|_| format!("invalid peer-listen: {peer:?} is not an IP:PORT"))?,
        ),
        None => None,
    };
    let config = &settings.config;
    let me = config
        .resolve_advertise(bound, peer_bound)
        .map_err(|e| e.to_string())?;
    config.openraft().map_err(|e| e.to_string())?;
    let raft_log = check_log(&config.data_dir)?;
    Ok(serde_json::json!({
        "node_id": config.node_id,
        "raft_log": raft_log,
        "listen": settings.listen,
        "advertise": me.addr,
        "peer_listen": settings.peer_listen,
        "peer_advertise": me.peer_addr,
        "metrics_listen": settings.metrics_listen,
        "data_dir": config.data_dir,
        "raft_log_segment_mib": config.storage.log_segment_bytes >> 20,
        "peers": config.peers.iter().map(|(id, n)| (id.to_string(), n.to_string())).collect::<BTreeMap<_, _>>(),
        "join": config.join,
        "raft_heartbeat_ms": config.raft.heartbeat.as_millis(),
        "raft_election_timeout_ms": config.raft.election_timeout.as_millis(),
        "raft_snapshot_threshold": config.raft.snapshot_threshold,
        "sweep_interval_ms": config.sweep_interval.as_millis(),
        "max_clock_step_ms": config.max_clock_step.as_millis(),
        "proposal_timeout_ms": config.proposal_timeout.as_millis(),
        "shutdown_grace_ms": config.shutdown_grace.as_millis(),
        "max_leases": config.limits.max_leases,
        "max_leases_per_scope": config.limits.max_leases_per_scope,
        "max_pending_writes": config.limits.max_pending_writes,
        "max_watchers": config.limits.max_watchers,
        "max_streams_per_connection": config.limits.max_streams_per_connection,
        "max_calls_per_connection_per_second": config.limits.max_calls_per_connection_per_second,
        "tls": config.tls.as_ref().map(|t| serde_json::json!({
            "cert": t.cert,
            "key": t.key,
            "client_ca": t.client_ca,
            "peer_ca": t.peer_ca,
            "reload_interval_ms": t.reload_interval.as_millis(),
        })),
        "authz": config.authz,
    }))
}

/// What the data directory's Raft log holds, read without changing anything: the damage a
/// start would refuse is an error here too.
fn check_log(data_dir: &Path) -> Result<serde_json::Value, String> {
    use affinity_server::store;
    if !data_dir.join(store::WAL_DIR).exists() {
        let what = if data_dir.join("raft").exists() {
            "data version 1: converted to the current layout at the next start"
        } else {
            "none yet: created at the first start"
        };
        return Ok(serde_json::json!(what));
    }
    let found = store::check_log(data_dir).map_err(|e| e.to_string())?;
    Ok(serde_json::json!({
        "segments": found.segments,
        "entries": found.entries,
        "torn_tail": found.torn.map(|(file, offset)| format!(
            "{file} at byte {offset} (never acknowledged; cut off at the next start)"
        )),
    }))
}

async fn export(settings: &Settings, out: &Path) -> Result<(), String> {
    let config = &settings.config;
    let exported = if out == Path::new("-") {
        let stdout = std::io::stdout().lock();
        affinity_server::store::export::export_to(&config.data_dir, &config.storage, stdout).await
    } else {
        affinity_server::store::export::export(&config.data_dir, &config.storage, out).await
    }
    .map_err(|e| e.to_string())?;
    let summary = serde_json::json!({
        "file": out,
        "data_dir": config.data_dir,
        "last_log_index": exported.last_log_index,
        "replayed_entries": exported.replayed_entries,
        "lease_count": exported.lease_count,
        "bytes": exported.bytes,
    });
    if out == Path::new("-") {
        eprintln!("{summary}");
    } else {
        println!("{summary:#}");
    }
    Ok(())
}

async fn run_dev(dev: DevArgs, base: Settings) -> Result<(), String> {
    if !(1..=9).contains(&dev.nodes) {
        return Err(format!("--nodes must be 1..=9 (got {})", dev.nodes));
    }
    let port = |base: u16, i: u64| -> Result<u16, String> {
        u16::try_from(u64::from(base) + i - 1).map_err(|_| "ports out of range".to_string())
    };
    let mut peers = BTreeMap::new();
    for i in 1..=dev.nodes {
        peers.insert(
            i,
            affinity_server::raft::Node::new(format!("{}:{}", dev.host, port(dev.base_port, i)?)),
        );
    }
    let stop = CancellationToken::new();
    let mut nodes = tokio::task::JoinSet::new();
    println!("affinity dev cluster: {} nodes", dev.nodes);
    println!("{:<6} {:<22} {:<22} data dir", "node", "gRPC", "metrics");
    for i in 1..=dev.nodes {
        let listen = peers[&i].addr.clone();
        let metrics_listen = format!("{}:{}", dev.host, port(dev.metrics_base_port, i)?);
        let data_dir = dev.data_dir.join(format!("node-{i}"));
        println!(
            "{i:<6} {listen:<22} {metrics_listen:<22} {}",
            data_dir.display()
        );
        let mut config = base.config.clone();
        config.node_id = i;
        config.advertise = None;
        config.peer_advertise = None;
        config.data_dir = data_dir;
        config.peers = peers.clone();
        let grpc = bind("listen", &listen).await?;
        let metrics = bind("metrics-listen", &metrics_listen).await?;
        let stop = stop.clone();
        nodes.spawn(async move {
            server::run(
                config,
                Listeners {
                    grpc,
                    peer: None,
                    metrics: Some(metrics),
                },
                stop.cancelled_owned(),
            )
            .await
            .map_err(|e| format!("node {i}: {e}"))
        });
    }
    let endpoints: Vec<&str> = peers.values().map(|n| n.addr.as_str()).collect();
    println!(
        "try: affinityctl --endpoints {} status",
        endpoints.join(",")
    );
    stop_signal().await;
    stop.cancel();
    let mut failed = Vec::new();
    while let Some(joined) = nodes.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match layer(cli.node) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("affinityd: {e}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Some(Command::Check)) {
        return match check(&settings) {
            Ok(resolved) => {
                println!("{resolved:#}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("affinityd: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Err(e) = init_logging(settings.log_format, &settings.log_level) {
        eprintln!("affinityd: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("affinityd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Dev(dev)) => run_dev(dev, settings).await,
            Some(Command::Export { out }) => export(&settings, &out).await,
            Some(Command::Check) | None => run_node(settings).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("affinityd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let mut all = vec!["affinityd"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all).map_err(|e| e.to_string())?;
        layer(cli.node)
    }

    #[test]
    fn defaults_are_a_single_node_in_a_local_folder() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.config.node_id, 1);
        assert_eq!(s.listen, "127.0.0.1:7400");
        assert_eq!(s.metrics_listen.as_deref(), Some("127.0.0.1:9400"));
        assert_eq!(s.config.data_dir, PathBuf::from("./affinity-data"));
        assert!(s.config.peers.is_empty());
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("affinityd.toml");
        std::fs::write(
            &file,
            "node-id = 2\nlisten = \"0.0.0.0:7500\"\npeers = \"1=a:7400,2=b:7400\"\nraft-heartbeat = \"200ms\"\nmetrics-listen = \"off\"\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let s = settings(&["--config", path, "--node-id", "1"]).unwrap();
        assert_eq!(s.config.node_id, 1, "the flag wins");
        assert_eq!(s.listen, "0.0.0.0:7500", "the file wins over the default");
        assert_eq!(s.config.peers.len(), 2);
        assert_eq!(s.config.raft.heartbeat, Duration::from_millis(200));
        assert_eq!(s.metrics_listen, None);
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "node-idd = 2\n").unwrap();
        let err = settings(&["--config", file.to_str().unwrap()])
            .err()
            .unwrap();
        assert!(err.contains("node-idd"), "{err}");
        let err = settings(&["--peers", "1=a"]).err().unwrap();
        assert!(err.contains("peers"), "{err}");
        let err = settings(&["--raft-heartbeat", "1.5s"]).err().unwrap();
        assert!(err.contains("1.5s"), "{err}");
        let err = settings(&["--join", "affinity-0"]).err().unwrap();
        assert!(err.contains("join"), "{err}");
        let err = settings(&["--node-id", "2", "--node-id-from-hostname"])
            .err()
            .unwrap();
        assert!(err.contains("node-id-from-hostname"), "{err}");
    }

    #[test]
    fn check_resolves_what_a_start_would_use() {
        let s = settings(&[
            "--node-id",
            "2",
            "--listen",
            "0.0.0.0:7400",
            "--advertise",
            "affinity-1.affinity-peers.default.svc:7400",
            "--join",
            "affinity-0.affinity-peers.default.svc:7400",
        ])
        .unwrap();
        let resolved = check(&s).unwrap();
        assert_eq!(
            resolved["advertise"],
            "affinity-1.affinity-peers.default.svc:7400"
        );
        assert_eq!(
            resolved["join"][0],
            "affinity-0.affinity-peers.default.svc:7400"
        );
        let unreachable = settings(&["--listen", "0.0.0.0:7400", "--join", "a:7400"]).unwrap();
        assert!(check(&unreachable).unwrap_err().contains("advertise"));
        let bad_listen = settings(&["--listen", "localhost:7400"]).unwrap();
        assert!(check(&bad_listen).unwrap_err().contains("listen"));
    }
}
