//! Real processes for the end-to-end tests: backends, gateway replicas, and an HTTP client
//! that sends from a chosen loopback source address.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use affinity_tests::wait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

pub use affinity_tests::cluster::reserve_port;

/// An `affinity-backend` process.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let mut child = Command::new(env!("CARGO_BIN_EXE_affinity-backend"))
            .args(["--name", name, "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("affinity-backend starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the backend prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Backend {
            name: name.to_string(),
            addr,
            child: Some(child),
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An `affinity-gateway` replica.
pub struct Gateway {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Gateway {
    /// Start a replica reading `routes`, talking to `store`, with `extra` arguments.
    pub fn start(dir: &Path, name: &str, routes: &Path, store: &str, extra: &[&str]) -> Gateway {
        let listen = reserve_port();
        let admin = reserve_port();
        let mut args: Vec<String> = vec![
            "--routes".into(),
            routes.display().to_string(),
            "--listen".into(),
            listen.to_string(),
            "--metrics-listen".into(),
            admin.to_string(),
            "--store".into(),
            store.into(),
            "--debug-headers".into(),
            "--health-interval".into(),
            "200ms".into(),
            "--connect-timeout".into(),
            "500ms".into(),
            "--reload-interval".into(),
            "100ms".into(),
            "--store-timeout".into(),
            "500ms".into(),
            "--log-level".into(),
            "info,pingora_core=warn,pingora_proxy=error,pingora_load_balancing=error".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_string()));
        let mut gateway = Gateway {
            listen,
            admin,
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        gateway.spawn();
        gateway
    }

    /// (Re)start the process with the same ports and arguments.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("gateway log file");
        let child = Command::new(env!("CARGO_BIN_EXE_affinity-gateway"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("affinity-gateway starts");
        self.child = Some(child);
    }

    /// SIGKILL: nothing of the replica's memory survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The admin endpoint's answer to `path` (empty when it does not answer).
    pub fn admin_get(&self, path: &str) -> String {
        affinity_tests::cluster::http_get(self.admin, path)
    }

    /// Wait until the replica proxies and its watch stream follows the store.
    pub async fn wait_ready(&self) {
        let admin = self.admin;
        let listen = self.listen;
        wait::until(
            &format!("gateway {listen} serves, watches the store and has a current cache"),
            Duration::from_secs(30),
            || async move {
                let body = affinity_tests::cluster::http_get(admin, "/readyz");
                let proxy_up = std::net::TcpStream::connect(listen).is_ok();
                if proxy_up && body.contains("watch: connected") && body.contains("cache: current")
                {
                    Ok(())
                } else {
                    Err(format!("proxy up: {proxy_up}; readyz: {body:?}"))
                }
            },
        )
        .await;
    }

    /// The value of a counter or gauge series on the admin endpoint (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        self.admin_get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {}:", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Answer {
    /// The backend that answered (its `x-backend` header).
    pub fn backend(&self) -> &str {
        self.header("x-backend")
    }

    /// A header's value, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// `GET path` through `gateway`, sent from `source` (a loopback address), with `headers`.
pub async fn get(
    gateway: SocketAddr,
    source: IpAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let exchange = async {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
        let mut stream = socket
            .connect(gateway)
            .await
            .map_err(|e| format!("connect {gateway}: {e}"))?;
        let mut request = format!("GET {path} HTTP/1.1\r\nconnection: close\r\n");
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request.push_str("host: web.test\r\n");
        }
        for (name, value) in headers {
            request = request + name + ": " + value + "\r\n";
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no complete head in {text:?}"))?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status line in {head:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Answer {
            status,
            headers,
            body: body.to_string(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("no answer from {gateway} within 10 s"))?
}

/// Like [`get`], but a failure or a status other than 200 fails the test.
pub async fn get_ok(
    gateway: SocketAddr,
    source: IpAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let answer = get(gateway, source, path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {path} from {source} via {gateway}: {e}"));
    assert_eq!(
        answer.status, 200,
        "GET {path} from {source} via {gateway}: {answer:?}"
    );
    assert_eq!(
        answer.body,
        format!("{}\n", answer.backend()),
        "the body is the backend's name"
    );
    answer
}

/// The route file: a sticky rule on `/` (mask `mask`, 10 minutes), a sticky rule on
/// `/short` (3 seconds), and a rule without persistence on `/plain`, all over `backends`.
pub fn route_file(backends: &[&Backend], mask: u32) -> String {
    let endpoints: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: e2e}}
spec:
  hostnames: [web.test]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{name: web, port: 80}}]
    sessionPersistence: {{type: ClientIP, absoluteTimeout: 10m, ipMask: {mask}}}
  - matches: [{{path: {{type: PathPrefix, value: /short}}}}]
    backendRefs: [{{name: web, port: 80}}]
    sessionPersistence: {{type: ClientIP, absoluteTimeout: 3s, ipMask: {mask}}}
  - matches: [{{path: {{type: PathPrefix, value: /plain}}}}]
    backendRefs: [{{name: web, port: 80}}]
---
apiVersion: affinity.dev/v1alpha1
kind: Backends
endpoints:
  e2e/web:80: [{}]
",
        endpoints.join(", ")
    )
}
