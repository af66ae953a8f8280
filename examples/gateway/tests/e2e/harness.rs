//! Real processes for the end-to-end tests: backends and gateway replicas; the HTTP client
//! that sends from a chosen loopback source address is the test harness's.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use affinity_tests::wait;

pub use affinity_tests::cluster::reserve_port;
pub use affinity_tests::http::get_ok;

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
