//! A local cluster of `affinityd` processes for the load generator (`--spawn N`).
//!
//! Each node gets loopback ports and its own data folder under a fresh folder in
//! `--data-root` (real disk by default: the current directory), with the production
//! durability settings. The processes are killed and the folder removed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use affinity_proto::pb;
use affinity_proto::pb::cluster_client::ClusterClient;

/// A running local cluster.
pub struct LocalCluster {
    children: Vec<Child>,
    /// gRPC addresses, node 1 first.
    pub endpoints: Vec<String>,
    dir: Option<tempfile::TempDir>,
}

/// Where `affinityd` is: the given path, or next to this binary.
pub fn find_affinityd(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this binary: {e}"))?;
    let dir = exe.parent().ok_or("this binary has no folder")?;
    for candidate in [dir.join("affinityd"), dir.join("../affinityd")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "no affinityd next to {}; build it with `cargo build --release -p affinity-server --bins` or pass --affinityd PATH",
        exe.display()
    ))
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("reserve a port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("reserve a port: {e}"))
}

impl LocalCluster {
    /// Start `nodes` voters of `affinityd` (at `binary`) with data under `data_root`.
    pub fn start(nodes: u64, binary: &Path, data_root: &Path) -> Result<LocalCluster, String> {
        std::fs::create_dir_all(data_root)
            .map_err(|e| format!("create {}: {e}", data_root.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("affinity-bench-")
            .tempdir_in(data_root)
            .map_err(|e| format!("create a data folder in {}: {e}", data_root.display()))?;
        let mut endpoints = Vec::new();
        for _ in 0..nodes {
            endpoints.push(format!("127.0.0.1:{}", free_port()?));
        }
        let peers = endpoints
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LocalCluster {
            children: Vec::new(),
            endpoints,
            dir: None,
        };
        for (i, address) in cluster.endpoints.clone().iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("node-{}.log", i + 1)))
                .map_err(|e| format!("node log: {e}"))?;
            let log_err = log.try_clone().map_err(|e| format!("node log: {e}"))?;
            let child = Command::new(binary)
                .arg("--node-id")
                .arg((i + 1).to_string())
                .arg("--listen")
                .arg(address)
                .args(["--metrics-listen", "off", "--log-level", "warn"])
                .arg("--data-dir")
                .arg(dir.path().join(format!("node-{}", i + 1)))
                .arg("--peers")
                .arg(&peers)
                .env_remove("AFFINITY_CONFIG")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .map_err(|e| format!("start {}: {e}", binary.display()))?;
            cluster.children.push(child);
        }
        cluster.dir = Some(dir);
        Ok(cluster)
    }

    /// SIGKILL the node serving `address`; its data stays. Its 1-based node id.
    pub fn kill(&mut self, address: &str) -> Result<usize, String> {
        let i = self
            .endpoints
            .iter()
            .position(|a| a == address)
            .ok_or_else(|| format!("{address} is not a node of this cluster"))?;
        let child = &mut self.children[i];
        child
            .kill()
            .map_err(|e| format!("kill node {}: {e}", i + 1))?;
        let _ = child.wait();
        Ok(i + 1)
    }

    /// The data folder (each node's log file is there too).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Wait until every endpoint answers `Status` and they agree on a leader; its address.
pub async fn wait_leader(endpoints: &[String], timeout: Duration) -> Result<String, String> {
    if endpoints.is_empty() {
        return Err("no endpoints to ask".into());
    }
    let until = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < until {
        let mut leaders = Vec::new();
        for address in endpoints {
            match status(address).await {
                Ok(s) if s.leader_id != 0 => leaders.push((s.leader_id, s.leader_address)),
                Ok(_) => last = format!("{address} knows no leader"),
                Err(e) => last = e,
            }
        }
        if leaders.len() == endpoints.len() && leaders.windows(2).all(|w| w[0] == w[1]) {
            return Ok(leaders[0].1.clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("no agreed leader within {timeout:?}: {last}"))
}

async fn status(address: &str) -> Result<pb::StatusResponse, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("{address}: {e}"))?
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    let mut request = tonic::Request::new(pb::StatusRequest {});
    request.set_timeout(Duration::from_secs(1));
    ClusterClient::new(channel)
        .status(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{address}: {}", s.message()))
}
