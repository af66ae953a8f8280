//! Addresses in the configuration: the peer list, join targets, and which addresses this
//! node advertises, checked against each other.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::raft::{Node as RaftNode, NodeId};

use super::{Config, ConfigError};

/// Parse `ID=HOST:PORT,...`; an entry `ID=HOST:PORT/PEER_HOST:PORT` names a node that
/// serves peer traffic on its own port (`--peer-listen`).
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, RaftNode>, ConfigError> {
    let mut peers: BTreeMap<NodeId, RaftNode> = BTreeMap::new();
    let mut taken: BTreeMap<String, NodeId> = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addrs) = item.split_once('=').ok_or_else(|| {
            ConfigError::new(
                "peers",
                format!("{item:?} is not ID=HOST:PORT or ID=HOST:PORT/PEER_HOST:PORT"),
            )
        })?;
        let id: NodeId = id.trim().parse().map_err(|_| {
            ConfigError::new(
                "peers",
                format!("{id:?} in {item:?} is not a node id (1 or more)"),
            )
        })?;
        if id == 0 {
            return Err(ConfigError::new("peers", "node ids start at 1"));
        }
        if peers.contains_key(&id) {
            return Err(ConfigError::new(
                "peers",
                format!("node {id} is listed twice"),
            ));
        }
        let (addr, peer) = match addrs.split_once('/') {
            Some((addr, peer)) => (addr.trim(), Some(peer.trim())),
            None => (addrs.trim(), None),
        };
        for address in std::iter::once(addr).chain(peer) {
            check_host_port("peers", address)?;
            if let Some(other) = taken.insert(address.to_string(), id) {
                return Err(ConfigError::new(
                    "peers",
                    if other == id {
                        format!(
                            "node {id} lists {address} twice; its peer address must differ from its client address"
                        )
                    } else {
                        format!(
                            "nodes {other} and {id} share the address {address}; each node needs its own"
                        )
                    },
                ));
            }
        }
        peers.insert(id, RaftNode::with_peer(addr, peer.map(str::to_string)));
    }
    Ok(peers)
}

/// Parse `HOST:PORT,HOST:PORT,...` (the join targets).
pub fn parse_join(text: &str) -> Result<Vec<String>, ConfigError> {
    let targets: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if targets.is_empty() {
        return Err(ConfigError::new("join", "give at least one HOST:PORT"));
    }
    for target in &targets {
        check_host_port("join", target)?;
    }
    Ok(targets)
}

/// Check `HOST:PORT` (host a name or an address, port 1..=65535).
pub fn check_host_port(setting: &'static str, text: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::new(setting, format!("{text:?} is not HOST:PORT"));
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if port == 0 || !host_ok {
        return Err(bad());
    }
    Ok(())
}

impl Config {
    /// Check the settings against each other, given the addresses the gRPC listener and
    /// the peer listener (when peer traffic has its own port) are bound to, and return this
    /// node's membership record: its advertised client and peer addresses.
    pub fn resolve_advertise(
        &self,
        bound: SocketAddr,
        peer_bound: Option<SocketAddr>,
    ) -> Result<RaftNode, ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::new("node-id", "node ids start at 1"));
        }
        let listed = self.peers.get(&self.node_id);
        let advertise = match &self.advertise {
            Some(a) => {
                check_host_port("advertise", a)?;
                a.clone()
            }
            None => match listed {
                Some(own) => own.addr.clone(),
                None => bound.to_string(),
            },
        };
        let peer_advertise = match (peer_bound, &self.peer_advertise) {
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "peer-advertise",
                    "needs --peer-listen: there is no peer port to advertise",
                ));
            }
            (None, None) => None,
            (Some(_), Some(a)) => {
                check_host_port("peer-advertise", a)?;
                Some(a.clone())
            }
            (Some(peer_bound), None) => Some(match listed.and_then(|n| n.peer_addr.clone()) {
                Some(listed) => listed,
                None => peer_bound.to_string(),
            }),
        };
        if peer_advertise.as_deref() == Some(advertise.as_str()) {
            return Err(ConfigError::new(
                "peer-advertise",
                format!("{advertise} is also the client address; the peer port must be another"),
            ));
        }
        let me = RaftNode::with_peer(advertise, peer_advertise);
        if !self.join.is_empty() {
            if !self.peers.is_empty() {
                return Err(ConfigError::new(
                    "join",
                    "cannot be combined with peers: use peers for a fixed initial membership, join to grow a cluster node by node",
                ));
            }
            for (setting, address) in [
                ("advertise", Some(&me.addr)),
                ("peer-advertise", me.peer_addr.as_ref()),
            ] {
                let unspecified = address
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .is_some_and(|a| a.ip().is_unspecified());
                if unspecified {
                    return Err(ConfigError::new(
                        setting,
                        format!(
                            "{} cannot be reached by peers; set --{setting} to this node's name or address when using join",
                            address.map_or("", String::as_str)
                        ),
                    ));
                }
            }
        }
        if !self.peers.is_empty() {
            match listed {
                None => {
                    return Err(ConfigError::new(
                        "peers",
                        format!(
                            "does not list this node ({}); list every initial member, this one included",
                            self.node_id
                        ),
                    ));
                }
                Some(own) if own.addr != me.addr => {
                    return Err(ConfigError::new(
                        "advertise",
                        format!(
                            "{} differs from this node's entry in peers ({}); they must match",
                            me.addr, own.addr
                        ),
                    ));
                }
                Some(own) if own.peer_addr != me.peer_addr => {
                    return Err(ConfigError::new(
                        "peer-advertise",
                        format!(
                            "this node's peer address is {} but its entry in peers says {}; they must match (write ID=ADDRESS/PEER_ADDRESS for a node with --peer-listen)",
                            me.peer_addr.as_deref().unwrap_or("the client address"),
                            own.peer_addr.as_deref().unwrap_or("the client address"),
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        if self.authz.is_some() && self.tls.is_none() {
            return Err(ConfigError::new(
                "authz",
                "needs TLS (--tls-cert and --tls-key): roles come from client certificates, and tokens must not cross the network in plaintext",
            ));
        }
        for (setting, value) in [
            ("max-leases", self.limits.max_leases),
            ("max-pending-writes", self.limits.max_pending_writes as u64),
            ("max-watchers", self.limits.max_watchers as u64),
            (
                "max-streams-per-connection",
                u64::from(self.limits.max_streams_per_connection),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        if self.raft.heartbeat.is_zero() || self.raft.election_timeout <= self.raft.heartbeat * 2 {
            return Err(ConfigError::new(
                "raft-election-timeout",
                format!(
                    "{:?} must be more than twice the heartbeat ({:?})",
                    self.raft.election_timeout, self.raft.heartbeat
                ),
            ));
        }
        if self.raft.snapshot_threshold == 0 {
            return Err(ConfigError::new(
                "raft-snapshot-threshold",
                "must be at least 1",
            ));
        }
        if self.sweep_interval.is_zero() {
            return Err(ConfigError::new("sweep-interval", "must be more than 0"));
        }
        Ok(me)
    }
}
