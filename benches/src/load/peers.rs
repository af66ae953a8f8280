//! The peers affinity is compared with, started on loopback and driven with the same
//! workload. Each run starts a fresh peer with its files in a fresh folder, and stops it
//! after. Their binaries come from Debian's packages.
//!
//! - etcd (`apt-get install etcd-server`): three members on loopback, each with its own
//!   data folder and the default durability (WAL `fdatasync` before acknowledging).
//!   Get-or-create is one transaction: if the key's create revision is 0 (absent), put the
//!   value, else range-read the key. Calls are spread over the three members, as an etcd
//!   client given three endpoints does; members forward to the leader.
//! - Redis (`apt-get install redis-server`): one server, no persistence. Get-or-create is
//!   `SET key value NX PX`, then `GET` when the key exists.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::spawn::free_port;
use etcd::kv_client::KvClient;

/// The subset of etcd's v3 KV API used here (`proto/etcd/kv.proto`), generated at build.
#[allow(missing_docs, clippy::all, clippy::pedantic, unused_qualifications)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// A peer system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// etcd, three members.
    Etcd,
    /// Redis, one server.
    Redis,
}

/// Processes of a running peer, stopped on drop.
pub struct Running {
    children: Vec<Child>,
    /// Client addresses.
    pub endpoints: Vec<String>,
    dir: tempfile::TempDir,
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
        Peer::Etcd => {
            let etcd = binary("etcd", "etcd-server")?;
            let mut members = Vec::new();
            for i in 1..=3 {
                members.push((format!("m{i}"), free_port()?, free_port()?));
            }
            let cluster = members
                .iter()
                .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
                .collect::<Vec<_>>()
                .join(",");
            let token = dir.path().file_name().map_or_else(
                || "affinity-bench".into(),
                |n| n.to_string_lossy().into_owned(),
            );
            for (name, client, peer) in &members {
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let mut command = Command::new(&etcd);
                command
                    .arg("--name")
                    .arg(name)
                    .arg("--data-dir")
                    .arg(dir.path().join(name))
                    .args(["--listen-client-urls", &client_url])
                    .args(["--advertise-client-urls", &client_url])
                    .args(["--listen-peer-urls", &peer_url])
                    .args(["--initial-advertise-peer-urls", &peer_url])
                    .args(["--initial-cluster", &cluster])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", &token])
                    .args(["--logger", "zap", "--log-level", "warn"]);
                children.push(spawn(
                    &mut command,
                    &dir.path().join(format!("{name}.log")),
                )?);
                endpoints.push(format!("127.0.0.1:{client}"));
            }
        }
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
        dir,
    };
    // Ready when every member answers a get-or-create.
    let until = Instant::now() + Duration::from_secs(30);
    let mut ready = 0;
    let mut last = String::new();
    while Instant::now() < until {
        let probe = async {
            let mut c = Connection::open(peer, &running.endpoints, ready).await?;
            c.get_or_create("probe", "x", 60_000).await
        };
        match probe.await {
            Ok(_) => {
                ready += 1;
                if ready == running.endpoints.len() {
                    return Ok(running);
                }
            }
            Err(e) => {
                last = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(format!(
        "{peer:?} did not answer within 30 s: {last}\n{}",
        log_tails(running.dir.path())
    ))
}

/// The last lines of each peer log in `dir`, for an error message.
fn log_tails(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let _ = writeln!(out, "--- {}", path.display());
            for line in &lines[lines.len().saturating_sub(5)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A connection to a peer.
#[derive(Clone)]
pub enum Connection {
    /// One HTTP/2 connection to one etcd member.
    Etcd(KvClient<tonic::transport::Channel>),
    /// A multiplexed Redis connection.
    Redis(redis::aio::MultiplexedConnection),
}

impl Connection {
    /// Connect to `peer` at `endpoints`; the `n`-th connection of a run goes to endpoint
    /// `n` modulo their count.
    pub async fn open(peer: Peer, endpoints: &[String], n: usize) -> Result<Connection, String> {
        match peer {
            Peer::Etcd => {
                if endpoints.is_empty() {
                    return Err("no endpoint".into());
                }
                let address = &endpoints[n % endpoints.len()];
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| format!("etcd {address}: {e}"))?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(5))
                    .connect()
                    .await
                    .map_err(|e| format!("etcd {address}: {e}"))?;
                Ok(Connection::Etcd(KvClient::new(channel)))
            }
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
            Connection::Etcd(client) => {
                let key = key.as_bytes().to_vec();
                let txn = etcd::TxnRequest {
                    compare: vec![etcd::Compare {
                        result: etcd::compare::CompareResult::Equal.into(),
                        target: etcd::compare::CompareTarget::Create.into(),
                        key: key.clone(),
                        target_union: Some(etcd::compare::TargetUnion::CreateRevision(0)),
                    }],
                    success: vec![etcd::RequestOp {
                        request: Some(etcd::request_op::Request::RequestPut(etcd::PutRequest {
                            key: key.clone(),
                            value: value.as_bytes().to_vec(),
                            lease: 0,
                        })),
                    }],
                    failure: vec![etcd::RequestOp {
                        request: Some(etcd::request_op::Request::RequestRange(
                            etcd::RangeRequest {
                                key,
                                ..Default::default()
                            },
                        )),
                    }],
                };
                let answer = client
                    .txn(txn)
                    .await
                    .map_err(|s| format!("etcd: {}", affinity_proto::code_name(s.code())))?
                    .into_inner();
                if answer.succeeded {
                    return Ok(value.to_string());
                }
                let held = answer.responses.into_iter().find_map(|r| match r.response {
                    Some(etcd::response_op::Response::ResponseRange(range)) => {
                        range.kvs.into_iter().next()
                    }
                    _ => None,
                });
                held.map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                    .ok_or_else(|| "etcd: the key vanished between compare and range".into())
            }
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
