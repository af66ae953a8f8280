//! The node's settings: flags, then `AFFINITY_*` environment variables, then the
//! `--config` TOML file, then defaults, layered into a [`Settings`]; flags win.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use affinity_proto::GatewayDuration;
use affinity_server::config::{Config, parse_join, parse_peers};
use affinity_server::join::node_id_from_hostname;
use affinity_server::tls::TlsConfig;
use clap::{Args, ValueEnum};
use serde::Deserialize;

#[derive(Args, Default)]
pub(crate) struct NodeArgs {
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
pub(crate) enum LogFormat {
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
pub(crate) struct Settings {
    pub(crate) config: Config,
    pub(crate) listen: String,
    pub(crate) peer_listen: Option<String>,
    pub(crate) metrics_listen: Option<String>,
    pub(crate) log_format: LogFormat,
    pub(crate) log_level: String,
}

fn read_file(path: &Path) -> Result<FileArgs, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))
}

pub(crate) fn layer(args: NodeArgs) -> Result<Settings, String> {
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
