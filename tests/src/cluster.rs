//! A cluster of real `affinityd` processes on loopback.
//!
//! Ports are reserved by binding port 0 and releasing it just before the node starts. Each
//! node writes its log to `node-N.log` in the cluster's folder. Dropping the cluster kills
//! every process and removes the folder, except when the test is failing: then the folder is
//! kept, its path printed, and the end of every node's log shown.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use affinity_proto::pb;
use affinity_proto::pb::affinity_client::AffinityClient;
use affinity_proto::pb::cluster_client::ClusterClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint};

use crate::relay::PeerRelay;
use crate::{bins, wait};

/// Settings of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Initial voters (ids 1..=n).
    pub nodes: u64,
    /// Raft heartbeat.
    pub heartbeat: &'static str,
    /// Raft election timeout (minimum).
    pub election_timeout: &'static str,
    /// Sweep interval.
    pub sweep_interval: &'static str,
    /// Entries between snapshots.
    pub snapshot_threshold: u64,
    /// Log entries kept behind a snapshot.
    pub logs_kept: u64,
    /// More `affinityd` arguments for every node.
    pub extra_args: Vec<String>,
    /// Environment variables for every node.
    pub extra_env: Vec<(String, String)>,
    /// Environment variables for some nodes only, by id (after `extra_env`).
    pub node_env: BTreeMap<u64, Vec<(String, String)>>,
    /// Folder to hold the nodes' data folders (for example a small mount); by default the
    /// cluster's own temporary folder.
    pub data_parent: Option<PathBuf>,
    /// How the harness's own channels reach nodes that serve TLS: the CA (PEM) and a client
    /// certificate and key (PEM). Plaintext when `None`.
    pub client_tls: Option<ClientTlsFiles>,
    /// Give every node a peer port of its own (`--peer-listen`).
    pub peer_ports: bool,
    /// Put a [`PeerRelay`] in front of this node's peer port (needs `peer_ports`), so the
    /// test can cut what it receives from its peers ([`Cluster::relay`]).
    pub peer_relay: Option<u64>,
}

/// PEM contents for TLS channels to the nodes.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    /// CA of the nodes' certificates.
    pub ca: Vec<u8>,
    /// Client certificate chain.
    pub cert: Vec<u8>,
    /// Its key.
    pub key: Vec<u8>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            heartbeat: "100ms",
            election_timeout: "1s",
            sweep_interval: "100ms",
            snapshot_threshold: 10_000,
            logs_kept: 1_000,
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            node_env: BTreeMap::new(),
            data_parent: None,
            client_tls: None,
            peer_ports: false,
            peer_relay: None,
        }
    }
}

/// One node process.
struct NodeProc {
    grpc: SocketAddr,
    peer: Option<SocketAddr>,
    metrics: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running cluster of `affinityd` processes.
pub struct Cluster {
    name: String,
    root: Option<tempfile::TempDir>,
    options: ClusterOptions,
    nodes: BTreeMap<u64, NodeProc>,
    /// The static membership given to nodes started with `--peers`.
    initial_peers: BTreeMap<u64, (SocketAddr, Option<SocketAddr>)>,
    relay: Option<PeerRelay>,
}

/// A free loopback port for a process this test starts: bound, released, then bound again
/// by that process. The kernel may offer a port it just released again, so a port is never
/// handed out twice in one test process (two nodes given one port would talk to
/// themselves).
pub fn reserve_port() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
        let addr = listener.local_addr().expect("bound address");
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

impl Cluster {
    /// Start `options.nodes` voters with `--peers` and wait until they agree on a leader.
    pub async fn start(name: &str, options: ClusterOptions) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix(&format!("affinity-{name}-"))
            .tempdir()
            .expect("temp dir");
        let mut cluster = Cluster {
            name: name.to_string(),
            root: Some(root),
            options: options.clone(),
            nodes: BTreeMap::new(),
            initial_peers: BTreeMap::new(),
            relay: None,
        };
        assert!(
            options.peer_relay.is_none() || options.peer_ports,
            "a peer relay needs peer_ports"
        );
        let mut listens = BTreeMap::new();
        for id in 1..=options.nodes {
            let mut peer = options.peer_ports.then(reserve_port);
            listens.insert(id, peer);
            if options.peer_relay == Some(id)
                && let Some(target) = peer
            {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
                let relay = PeerRelay::start(listener, target);
                peer = Some(relay.addr());
                cluster.relay = Some(relay);
            }
            cluster.initial_peers.insert(id, (reserve_port(), peer));
        }
        for id in 1..=options.nodes {
            let (grpc, _) = cluster.initial_peers[&id];
            cluster.add_proc(id, grpc, listens[&id]);
            cluster.spawn(id);
        }
        let all: Vec<u64> = (1..=options.nodes).collect();
        cluster.wait_leader(&all).await;
        cluster
    }

    fn root(&self) -> &Path {
        self.root
            .as_ref()
            .expect("root exists while the cluster lives")
            .path()
    }

    fn add_proc(&mut self, id: u64, grpc: SocketAddr, peer: Option<SocketAddr>) {
        let data_dir = self
            .options
            .data_parent
            .clone()
            .unwrap_or_else(|| self.root().to_path_buf())
            .join(format!("node-{id}"));
        let log = self.root().join(format!("node-{id}.log"));
        self.nodes.insert(
            id,
            NodeProc {
                grpc,
                peer,
                metrics: reserve_port(),
                data_dir,
                log,
                child: None,
            },
        );
    }

    fn peers_arg(&self, extra: Option<(u64, (SocketAddr, Option<SocketAddr>))>) -> String {
        let mut peers = self.initial_peers.clone();
        if let Some((id, addrs)) = extra {
            peers.insert(id, addrs);
        }
        peers
            .iter()
            .map(|(id, (addr, peer))| match peer {
                Some(peer) => format!("{id}={addr}/{peer}"),
                None => format!("{id}={addr}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// (Re)start node `id` with its data folder and ports.
    pub fn spawn(&mut self, id: u64) {
        let peers = if self.initial_peers.contains_key(&id) {
            self.peers_arg(None)
        } else {
            let node = &self.nodes[&id];
            self.peers_arg(Some((id, (node.grpc, node.peer))))
        };
        let options = self.options.clone();
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(node.child.is_none(), "node {id} is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log file");
        let log_err = log.try_clone().expect("log handle");
        let mut command = Command::new(bins::affinityd());
        command
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(node.grpc.to_string())
            .arg("--metrics-listen")
            .arg(node.metrics.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--peers")
            .arg(peers)
            .args(
                node.peer
                    .iter()
                    .flat_map(|peer| ["--peer-listen".to_string(), peer.to_string()]),
            )
            .args(
                self.relay
                    .as_ref()
                    .filter(|_| options.peer_relay == Some(id))
                    .map(|relay| ["--peer-advertise".to_string(), relay.addr().to_string()])
                    .into_iter()
                    .flatten(),
            )
            .args(["--raft-heartbeat", options.heartbeat])
            .args(["--raft-election-timeout", options.election_timeout])
            .args(["--sweep-interval", options.sweep_interval])
            .arg("--raft-snapshot-threshold")
            .arg(options.snapshot_threshold.to_string())
            .arg("--raft-logs-kept")
            .arg(options.logs_kept.to_string())
            .args(["--log-level", "info,openraft=warn"])
            .args(&options.extra_args)
            .envs(options.extra_env.iter().map(|(k, v)| (k, v)))
            .envs(
                options
                    .node_env
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v)),
            )
            .env_remove("AFFINITY_CONFIG")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        node.child = Some(command.spawn().expect("affinityd starts"));
    }

    /// The relay in front of `ClusterOptions::peer_relay`'s peer port.
    pub fn relay(&self) -> &PeerRelay {
        self.relay
            .as_ref()
            .expect("the cluster was started with a peer relay")
    }

    /// Add a node that is not in the initial membership and start it (it waits to be added).
    pub fn start_joiner(&mut self, id: u64) {
        let grpc = reserve_port();
        let peer = self.options.peer_ports.then(reserve_port);
        self.add_proc(id, grpc, peer);
        self.spawn(id);
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM node `id` and wait for it to exit; returns its exit status.
    pub async fn stop(&mut self, id: u64) -> ExitStatus {
        let node = self.nodes.get_mut(&id).expect("known node");
        let mut child = node.child.take().expect("node is running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
        kill(pid, Signal::SIGTERM).expect("signal the node");
        wait::until(
            &format!("node {id} exits after SIGTERM"),
            Duration::from_secs(20),
            || {
                let status = child.try_wait();
                async move {
                    match status {
                        Ok(Some(status)) => Ok(status),
                        other => Err(format!("{other:?}")),
                    }
                }
            },
        )
        .await
    }

    /// Node `id`'s process id, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes[&id].child.as_ref().map(Child::id)
    }

    /// Everything node `id` has logged (stdout and stderr, every start).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default()
    }

    /// Wait (up to `timeout`) for node `id` to exit on its own; its exit status. A node
    /// still running when the wait fails stays in the cluster, which kills it on drop.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            let child = node.child.as_mut().expect("node was started");
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Node `id`'s data folder.
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.nodes[&id].data_dir
    }

    /// The gRPC address of node `id`.
    pub fn addr(&self, id: u64) -> SocketAddr {
        self.nodes[&id].grpc
    }

    /// The peer address of node `id`, when it has a peer port.
    pub fn peer_addr(&self, id: u64) -> Option<SocketAddr> {
        self.nodes[&id].peer
    }

    /// The metrics address of node `id`.
    pub fn metrics_addr(&self, id: u64) -> SocketAddr {
        self.nodes[&id].metrics
    }

    /// The Prometheus text of node `id`'s `/metrics`.
    pub fn scrape(&self, id: u64) -> String {
        http_get(self.metrics_addr(id), "/metrics")
    }

    /// The value of metric `name` (no labels) on node `id`, if present.
    pub fn metric(&self, id: u64, name: &str) -> Option<f64> {
        self.scrape(id).lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            if key == name {
                value.trim().parse().ok()
            } else {
                None
            }
        })
    }

    /// Every node's gRPC address, comma-separated (for `affinityctl --endpoints`).
    pub fn endpoints(&self) -> String {
        self.nodes
            .values()
            .map(|n| n.grpc.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node ids known to the harness.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the running nodes.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.child.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// A lazily connecting channel to node `id`.
    pub fn channel(&self, id: u64) -> Channel {
        let endpoint = match &self.options.client_tls {
            Some(tls) => Endpoint::from_shared(format!("https://{}", self.addr(id)))
                .expect("valid uri")
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca))
                        .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key))
                        .domain_name("127.0.0.1"),
                )
                .expect("TLS settings"),
            None => Endpoint::from_shared(format!("http://{}", self.addr(id))).expect("valid uri"),
        };
        endpoint
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy()
    }

    /// A client of the `Affinity` service of node `id`.
    pub fn client(&self, id: u64) -> AffinityClient<Channel> {
        AffinityClient::new(self.channel(id))
    }

    /// A client of the `Cluster` service of node `id`.
    pub fn admin(&self, id: u64) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel(id))
    }

    /// `Status` of node `id`.
    pub async fn status(&self, id: u64) -> Result<pb::StatusResponse, tonic::Status> {
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(Duration::from_secs(1));
        self.admin(id)
            .status(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Wait until every node in `among` reports the same leader, itself one of them; return it.
    pub async fn wait_leader(&self, among: &[u64]) -> u64 {
        let among = among.to_vec();
        wait::until(
            &format!("nodes {among:?} agree on a leader among them"),
            Duration::from_secs(20),
            || {
                let among = among.clone();
                async move {
                    let mut leaders = Vec::new();
                    for id in &among {
                        match self.status(*id).await {
                            Ok(s) => leaders.push(s.leader_id),
                            Err(e) => return Err(format!("node {id}: {}", e.message())),
                        }
                    }
                    match leaders.first() {
                        Some(&l)
                            if l != 0 && among.contains(&l) && leaders.iter().all(|x| *x == l) =>
                        {
                            Ok(l)
                        }
                        _ => Err(format!("leaders seen: {leaders:?}")),
                    }
                }
            },
        )
        .await
    }
}

/// A plain HTTP/1.0 GET on loopback; the body, or an empty string on any failure.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking()
            && let Some(root) = self.root.take()
        {
            let kept = root.keep();
            eprintln!(
                "==== cluster {} failed; its folder is kept at {}",
                self.name,
                kept.display()
            );
            for (id, node) in &self.nodes {
                let text = std::fs::read_to_string(&node.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(80)..];
                eprintln!(
                    "==== node {id} log (last {} lines):\n{}",
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
    }
}
