//! The peers affinity is compared with, started on loopback and driven with the same
//! workload. Redis (one server, no persistence) does get-or-create as `SET key value NX PX`,
//! then `GET` when the key exists. Its binary comes from Debian's packages
//! (`apt-get install redis-server`). Each run starts a fresh server with its files in a
//! fresh folder, and stops it after.
//!
//! etcd is not here yet: the maintained Rust client (`etcd-client`) compiles etcd's protos
//! with a system `protoc` at build time, which this workspace does not require.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::spawn::free_port;

/// A peer system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// Redis, one server.
    Redis,
}

/// Processes of a running peer, stopped on drop.
pub struct Running {
    children: Vec<Child>,
    /// Client addresses.
    pub endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn binary(name: &str, package: &str) -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| format!("{name} is not installed: apt-get install {package}"))
}

fn spawn(command: &mut Command, log: &Path) -> Result<Child, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("start {command:?}: {e}"))
}

/// Start `peer` with its data under `data_root`, and wait until it answers.
pub async fn start(peer: Peer, data_root: &Path) -> Result<Running, String> {
    let dir = tempfile::Builder::new()
        .prefix("affinity-bench-peer-")
        .tempdir_in(data_root)
        .map_err(|e| format!("data folder in {}: {e}", data_root.display()))?;
    let mut children = Vec::new();
    let mut endpoints = Vec::new();
    match peer {
        Peer::Redis => {
            let redis = binary("redis-server", "redis-server")?;
            let client = free_port()?;
            let mut command = Command::new(redis);
            command
                .args(["--bind", "127.0.0.1", "--port"])
                .arg(client.to_string())
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(dir.path());
            children.push(spawn(&mut command, &dir.path().join("redis.log"))?);
            endpoints.push(format!("127.0.0.1:{client}"));
        }
    }
    let running = Running {
        children,
        endpoints,
        _dir: dir,
    };
    let until = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < until {
        match Connection::open(peer, &running.endpoints).await {
            Ok(mut c) => match c.get_or_create("probe", "x", 60_000).await {
                Ok(_) => return Ok(running),
                Err(e) => last = e,
            },
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{peer:?} did not answer within 30 s: {last}"))
}

/// A connection to a peer.
#[derive(Clone)]
pub enum Connection {
    /// A multiplexed Redis connection.
    Redis(redis::aio::MultiplexedConnection),
}

impl Connection {
    /// Connect to `peer` at `endpoints`.
    pub async fn open(peer: Peer, endpoints: &[String]) -> Result<Connection, String> {
        match peer {
            Peer::Redis => {
                let url = format!("redis://{}/", endpoints.first().ok_or("no endpoint")?);
                let client = redis::Client::open(url).map_err(|e| format!("redis: {e}"))?;
                let connection = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| format!("redis: {e}"))?;
                Ok(Connection::Redis(connection))
            }
        }
    }

    /// Get-or-create `key` with `value` (endpoint and expiry) living `ttl_ms`: the value
    /// held afterwards, whoever wrote it.
    pub async fn get_or_create(
        &mut self,
        key: &str,
        value: &str,
        ttl_ms: u64,
    ) -> Result<String, String> {
        match self {
            Connection::Redis(connection) => {
                let set: Option<String> = redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(connection)
                    .await
                    .map_err(|e| format!("redis: {e}"))?;
                if set.is_some() {
                    return Ok(value.to_string());
                }
                let held: Option<String> = redis::cmd("GET")
                    .arg(key)
                    .query_async(connection)
                    .await
                    .map_err(|e| format!("redis: {e}"))?;
                held.ok_or_else(|| "redis: the key expired between SET and GET".into())
            }
        }
    }
}
