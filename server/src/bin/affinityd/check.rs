//! `affinityd check`: the settings as a start would use them, and what the data
//! directory's Raft log holds, without starting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use crate::settings::Settings;

/// The settings as a node would use them, after every check a start makes before it
/// touches the data directory.
pub(crate) fn check(settings: &Settings) -> Result<serde_json::Value, String> {
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
