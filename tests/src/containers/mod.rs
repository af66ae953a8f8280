//! A cluster of `affinityd` containers, and the faults the chaos tests inflict on it.
//!
//! Layout, as a Kubernetes StatefulSet would give it: node `i` (id `i + 1`) runs in a
//! container with hostname `affinity-i`, reachable by its peers as `affinity-i:7400` on the
//! cluster's private peer network (the headless service), with its data in its own named
//! volume (the PersistentVolumeClaim). Container, network and volume names carry a prefix
//! unique to the test run, so runs never collide.
//!
//! The test reaches node `i` on a second network that only that node is on (its "access"
//! network), by the node's address there. Cutting a node off its peers therefore leaves it
//! reachable by the test: it can observe, and send writes to, a node on the wrong side of
//! a partition, as a gateway could.
//!
//! The faults live beside this file: `faults.rs` (kill, stop, pause, cut off, restart,
//! replace), `net.rs` (latency and one-way loss on a node's incoming peer traffic, with
//! netfilter in its namespace) and `clock.rs` (a node restarted with a skewed wall clock).
//!
//! Each container's output is streamed to `<target>/test-output/chaos/<test>/affinity-i.log`.
//! Dropping the cluster removes every container, network and volume it made, also when the
//! test failed (the logs stay, and their folder is printed).

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use affinity_proto::pb;
use affinity_proto::pb::cluster_client::ClusterClient;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, Mount, MountType, NetworkConnectRequest,
    NetworkCreateRequest, NetworkingConfig, VolumeCreateRequest,
};
use bollard::query_parameters::{CreateContainerOptions, LogsOptions};
use futures::StreamExt;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::{bins, docker, wait};

mod clock;
mod faults;
mod net;

pub use clock::LIBFAKETIME;
pub use net::{NetHealed, network_tools_missing};

/// The gRPC port inside every container.
pub const GRPC_PORT: u16 = 7400;

/// Settings of a container cluster.
#[derive(Debug, Clone)]
pub struct ContainerOptions {
    /// Voters (ids 1..=n).
    pub nodes: usize,
    /// Raft heartbeat; `None`: not passed, `affinityd`'s default.
    pub heartbeat: Option<&'static str>,
    /// Raft election timeout (minimum); `None`: not passed, `affinityd`'s default.
    pub election_timeout: Option<&'static str>,
    /// Sweep interval; `None`: not passed, `affinityd`'s default.
    pub sweep_interval: Option<&'static str>,
    /// Log filter of every node.
    pub log_level: &'static str,
    /// How the nodes learn their ids and find each other.
    pub layout: Layout,
}

/// How the nodes learn their ids and find each other.
#[derive(Debug, Clone)]
pub enum Layout {
    /// `AFFINITY_NODE_ID` and an `AFFINITY_PEERS` list naming every initial node, with the
    /// timing and log settings of [`ContainerOptions`].
    StaticPeers,
    /// Exactly as a StatefulSet runs the pods: these arguments, with `$(POD_NAME)` and
    /// `$(POD_NAMESPACE)` set as the downward API sets them; `config` mounted read-only at
    /// `/etc/affinity/affinityd.toml`; a read-only root file system; node `i` reachable
    /// by its peers as `affinity-i.<service>.<namespace>.svc` (and `affinity-i`). The
    /// timing and log settings of [`ContainerOptions`] are not used: the file has them.
    StatefulSet {
        /// The container's `args`.
        args: Vec<String>,
        /// The ConfigMap's `affinityd.toml`, as a file on this machine.
        config: PathBuf,
        /// The headless service's name.
        service: String,
        /// The namespace.
        namespace: String,
    },
}

impl Default for ContainerOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            // Production defaults: the chaos tests measure what an operator gets.
            heartbeat: None,
            election_timeout: None,
            sweep_interval: None,
            log_level: "info,openraft=warn",
            layout: Layout::StaticPeers,
        }
    }
}

/// One node's Docker objects.
struct Node {
    container: String,
    access: String,
    volume: String,
    ip: Mutex<Option<IpAddr>>,
    /// Timestamp of the last log line written, so a restarted log stream skips old lines.
    last_log: Arc<Mutex<String>>,
    /// Environment and mounts added to this node's container when it is (re)created, such
    /// as a skewed wall clock (see `clock.rs`).
    extra: Mutex<(Vec<String>, Vec<Mount>)>,
}

/// A running cluster of `affinityd` containers.
pub struct ContainerCluster {
    docker: Docker,
    prefix: String,
    peers: String,
    options: ContainerOptions,
    nodes: Vec<Node>,
    out_dir: PathBuf,
    /// Network faults in force (see `net.rs`); healed when the cluster is dropped.
    net: net::NetFaults,
}

/// The name of node `i` among its peers: a StatefulSet pod's name.
pub fn peer_name(i: usize) -> String {
    format!("affinity-{i}")
}

impl ContainerCluster {
    /// Start `options.nodes` containers and wait until they are healthy and agree on a
    /// leader. `None` when Docker is absent and not required (the test is then skipped).
    pub async fn start(test: &str, options: ContainerOptions) -> Option<ContainerCluster> {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let docker = docker::connect(test).await?;
        docker::ensure_image();
        let prefix = format!(
            "aff-{}-{}-{}",
            test.replace('_', "-"),
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let out_dir = bins::dir()
            .parent()
            .expect("<target>/<profile>")
            .join("test-output/chaos")
            .join(test);
        let _ = std::fs::remove_dir_all(&out_dir);
        std::fs::create_dir_all(&out_dir).expect("create the test's output folder");
        let mut cluster = ContainerCluster {
            peers: format!("{prefix}-peers"),
            docker,
            prefix,
            nodes: Vec::new(),
            out_dir,
            options,
            net: net::NetFaults::default(),
        };
        cluster.create_network(&cluster.peers).await;
        for _ in 0..cluster.options.nodes {
            cluster.create_node().await;
        }
        for i in cluster.all() {
            cluster.start_node(i).await;
        }
        cluster.wait_all_ready().await;
        cluster.wait_leader(&cluster.all()).await;
        Some(cluster)
    }

    /// Make the next node's network, volume and container (not started); its ordinal.
    async fn create_node(&mut self) -> usize {
        let i = self.nodes.len();
        let prefix = &self.prefix;
        self.nodes.push(Node {
            container: format!("{prefix}-{}", peer_name(i)),
            access: format!("{prefix}-access-{i}"),
            volume: format!("{prefix}-data-{i}"),
            ip: Mutex::new(None),
            last_log: Arc::new(Mutex::new(String::new())),
            extra: Mutex::new((Vec::new(), Vec::new())),
        });
        self.create_network(&self.nodes[i].access).await;
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(self.nodes[i].volume.clone()),
                labels: Some(docker::labels(&self.prefix)),
                ..Default::default()
            })
            .await
            .expect("create a volume");
        self.create_container(i).await;
        i
    }

    /// Scale up: start one more node (the next ordinal) and return its ordinal. It is not
    /// waited on: how it joins is what the caller tests.
    pub async fn add_node(&mut self) -> usize {
        let i = self.create_node().await;
        self.start_node(i).await;
        i
    }

    /// Scale down: remove the node with the highest ordinal, its container, network and
    /// volume (as a StatefulSet scaled down and its claim deleted).
    pub async fn remove_last_node(&mut self) {
        let Some(node) = self.nodes.pop() else {
            return;
        };
        docker::remove_container(&self.docker, &node.container).await;
        let _ = self.docker.remove_network(&node.access).await;
        let _ = self
            .docker
            .remove_volume(
                &node.volume,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await;
    }

    /// The names node `i` has on the peer network.
    fn aliases(&self, i: usize) -> Vec<String> {
        let mut names = vec![peer_name(i)];
        if let Layout::StatefulSet {
            service, namespace, ..
        } = &self.options.layout
        {
            names.push(format!("{}.{service}.{namespace}.svc", peer_name(i)));
        }
        names
    }

    async fn create_network(&self, name: &str) {
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                labels: Some(docker::labels(&self.prefix)),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create network {name}: {e}"));
    }

    /// `AFFINITY_PEERS`: the initial nodes (the options' count, also while they are made).
    fn peers_flag(&self) -> String {
        (0..self.options.nodes)
            .map(|i| format!("{}={}:{GRPC_PORT}", i + 1, peer_name(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Create node `i`'s container (not started): on the peer network as `affinity-i`, on
    /// its access network, with its volume.
    async fn create_container(&self, i: usize) {
        let node = &self.nodes[i];
        let mut mounts = vec![Mount {
            target: Some("/var/lib/affinity".into()),
            source: Some(node.volume.clone()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        }];
        let (mut env, cmd, read_only) = match &self.options.layout {
            Layout::StaticPeers => {
                let mut env = vec![
                    format!("AFFINITY_NODE_ID={}", i + 1),
                    format!("AFFINITY_ADVERTISE={}:{GRPC_PORT}", peer_name(i)),
                    format!("AFFINITY_PEERS={}", self.peers_flag()),
                    format!("AFFINITY_LOG_LEVEL={}", self.options.log_level),
                ];
                let timing = [
                    ("AFFINITY_RAFT_HEARTBEAT", self.options.heartbeat),
                    (
                        "AFFINITY_RAFT_ELECTION_TIMEOUT",
                        self.options.election_timeout,
                    ),
                    ("AFFINITY_SWEEP_INTERVAL", self.options.sweep_interval),
                ];
                env.extend(
                    timing
                        .into_iter()
                        .filter_map(|(name, value)| Some(format!("{name}={}", value?))),
                );
                (env, None, false)
            }
            Layout::StatefulSet {
                args,
                config,
                namespace,
                ..
            } => {
                mounts.push(Mount {
                    target: Some("/etc/affinity/affinityd.toml".into()),
                    source: Some(config.display().to_string()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    ..Default::default()
                });
                let args = args
                    .iter()
                    .map(|a| {
                        a.replace("$(POD_NAME)", &peer_name(i))
                            .replace("$(POD_NAMESPACE)", namespace)
                    })
                    .collect();
                (
                    vec![
                        format!("POD_NAME={}", peer_name(i)),
                        format!("POD_NAMESPACE={namespace}"),
                    ],
                    Some(args),
                    true,
                )
            }
        };
        {
            let extra = node.extra.lock();
            env.extend(extra.0.iter().cloned());
            mounts.extend(extra.1.iter().cloned());
        }
        let body = ContainerCreateBody {
            image: Some(docker::image().to_string()),
            hostname: Some(peer_name(i)),
            env: Some(env),
            cmd,
            labels: Some(docker::labels(&self.prefix)),
            host_config: Some(HostConfig {
                network_mode: Some(self.peers.clone()),
                mounts: Some(mounts),
                readonly_rootfs: Some(read_only),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.peers.clone(),
                    EndpointSettings {
                        aliases: Some(self.aliases(i)),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(node.container.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .unwrap_or_else(|e| panic!("create container {}: {e}", node.container));
        self.docker
            .connect_network(
                &node.access,
                NetworkConnectRequest {
                    container: node.container.clone(),
                    endpoint_config: None,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("connect {} to its access network: {e}", node.container));
    }

    /// Start node `i`'s container, stream its output, and learn its address.
    pub async fn start_node(&self, i: usize) {
        let node = &self.nodes[i];
        let since = i32::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
        .unwrap_or(0);
        self.docker
            .start_container(&node.container, None)
            .await
            .unwrap_or_else(|e| panic!("start {}: {e}", node.container));
        self.follow_logs(i, since.saturating_sub(1));
        let inspected = self
            .docker
            .inspect_container(&node.container, None)
            .await
            .unwrap_or_else(|e| panic!("inspect {}: {e}", node.container));
        let ip = inspected
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|n| n.get(&node.access).cloned())
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .unwrap_or_else(|| panic!("{} has no address on its access network", node.container));
        let mut known = node.ip.lock();
        if let Some(before) = *known {
            assert_eq!(
                before, ip,
                "{}'s address changed across a restart; clients would lose it",
                node.container
            );
        }
        *known = Some(ip);
    }

    /// Append node `i`'s output to its log file from `since` (Unix s) on, skipping lines
    /// already written by an earlier stream.
    fn follow_logs(&self, i: usize, since: i32) {
        let node = &self.nodes[i];
        let path = self.out_dir.join(format!("{}.log", peer_name(i)));
        let mut stream = self.docker.logs(
            &node.container,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                timestamps: true,
                since,
                ..Default::default()
            }),
        );
        let last = Arc::clone(&node.last_log);
        tokio::spawn(async move {
            let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            else {
                return;
            };
            while let Some(Ok(chunk)) = stream.next().await {
                let text = chunk.to_string();
                for line in text.lines() {
                    let stamp = line.split(' ').next().unwrap_or_default().to_string();
                    let mut last = last.lock();
                    if stamp.as_str() <= last.as_str() {
                        continue;
                    }
                    let _ = writeln!(file, "{line}");
                    *last = stamp;
                }
            }
        });
    }

    /// Ordinals of every node.
    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    /// Node `i`'s gRPC address, as the test reaches it.
    pub fn addr(&self, i: usize) -> SocketAddr {
        let ip = self.nodes[i]
            .ip
            .lock()
            .expect("a node's address is known once it has started");
        SocketAddr::new(ip, GRPC_PORT)
    }

    /// Every node's address, for a client's endpoint list.
    pub fn endpoints(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .map(|i| self.addr(i).to_string())
            .collect()
    }

    /// Where this test's container logs are written.
    pub fn out_dir(&self) -> &std::path::Path {
        &self.out_dir
    }

    /// A channel to node `i` (lazy; short connect timeout, as a paused node never answers).
    pub fn channel(&self, i: usize) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr(i)))
            .expect("a valid URI")
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy()
    }

    /// `Status` of node `i`, within one second.
    pub async fn status(&self, i: usize) -> Result<pb::StatusResponse, String> {
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(Duration::from_secs(1));
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            ClusterClient::new(self.channel(i)).status(request),
        )
        .await;
        match answer {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(format!("node {i}: {}", status.message())),
            Err(_) => Err(format!("node {i}: no answer")),
        }
    }

    /// Whether node `i` reports `SERVING` on `grpc.health.v1`.
    pub async fn serving(&self, i: usize) -> Result<(), String> {
        let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(Duration::from_secs(1));
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            HealthClient::new(self.channel(i)).check(request),
        )
        .await;
        match answer {
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
            Ok(Ok(r)) => Err(format!("node {i}: status {}", r.get_ref().status)),
            Ok(Err(status)) => Err(format!("node {i}: {}", status.message())),
            Err(_) => Err(format!("node {i}: no answer")),
        }
    }

    /// Wait until node `i` is healthy (knows a leader and has applied the log).
    pub async fn wait_ready(&self, i: usize) {
        wait::until(
            &format!("node {i} reports SERVING"),
            Duration::from_secs(60),
            || self.serving(i),
        )
        .await;
    }

    /// Wait until every node is healthy.
    pub async fn wait_all_ready(&self) {
        for i in self.all() {
            self.wait_ready(i).await;
        }
    }

    /// Wait until every node in `among` reports the same leader, one of them; return its
    /// ordinal.
    pub async fn wait_leader(&self, among: &[usize]) -> usize {
        let among = among.to_vec();
        wait::until(
            &format!("nodes {among:?} agree on a leader among them"),
            Duration::from_secs(30),
            || {
                let among = among.clone();
                async move {
                    let mut leaders = Vec::new();
                    for i in &among {
                        leaders.push(self.status(*i).await?.leader_id);
                    }
                    let first = leaders.first().copied().unwrap_or(0);
                    let ordinal = usize::try_from(first).unwrap_or(0).wrapping_sub(1);
                    if first != 0 && among.contains(&ordinal) && leaders.iter().all(|l| *l == first)
                    {
                        Ok(ordinal)
                    } else {
                        Err(format!("leader ids seen: {leaders:?}"))
                    }
                }
            },
        )
        .await
    }
}

impl Drop for ContainerCluster {
    fn drop(&mut self) {
        // Release held packets and stop the queue readers before the containers go.
        self.net.heal_all();
        let docker = self.docker.clone();
        let prefix = self.prefix.clone();
        // Drop cannot await, and may run inside a runtime: clean up from a thread of its own.
        let cleaned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(docker::remove_all(&docker, &prefix));
            }
        })
        .join();
        if cleaned.is_err() {
            eprintln!("could not remove the containers of {}", self.prefix);
        }
        if std::thread::panicking() {
            eprintln!(
                "container logs of the failed test are in {}",
                self.out_dir.display()
            );
        }
    }
}
