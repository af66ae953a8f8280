//! Docker for the container tests: connecting, deciding whether to run at all, the image,
//! and removing whatever a test run left behind.
//!
//! The Docker API client is `bollard`. Its client speaks a recent API version and a daemon
//! older than that refuses every call ("client version 1.53 is too new"), so the version is
//! agreed first: the daemon's own version is read from the unversioned `/version` endpoint
//! and the older of the two is used (see docs/decisions/0002).
//!
//! Without Docker the container tests skip, with a loud message; with
//! `AFFINITY_REQUIRE_DOCKER=1` (as `.ci/run` sets) they fail instead.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bollard::{ClientVersion, Docker};

use crate::bins;

/// Set to `1` to turn "Docker is absent" from a skip into a failure.
pub const REQUIRE_ENV: &str = "AFFINITY_REQUIRE_DOCKER";
/// The image the container tests run: `affinity:test-<n>`, `<n>` named after the folder of
/// the binaries under test, so that test runs of two checkouts on one machine never start
/// each other's binaries (each rebuilds its own tag, which stays one image per checkout).
pub fn image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bins::dir().hash(&mut hasher);
        format!("affinity:test-{:012x}", hasher.finish() & 0xffff_ffff_ffff)
    })
}
/// Label on everything a test creates: the run's prefix.
pub const LABEL: &str = "org.affinity.test";
/// Label with the test process's pid, to find what a killed test run left behind.
pub const PID_LABEL: &str = "org.affinity.test.pid";

/// A Docker connection, or `None` when Docker is absent and not required (after printing a
/// loud message saying the test was skipped and why).
pub async fn connect(test: &str) -> Option<Docker> {
    match try_connect() {
        Ok(docker) => {
            remove_leftovers(&docker).await;
            Some(docker)
        }
        Err(why) => {
            let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{test}: Docker is required ({REQUIRE_ENV}=1) but not usable: {why}"
            );
            // Straight to the process's stderr: the test harness captures `eprintln!` of
            // passing tests, and a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !! SKIPPED {test}: Docker is not usable here ({why}).\n\
                 !! The container tests did not run. Set {REQUIRE_ENV}=1 to make this a failure.\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            None
        }
    }
}

/// The daemon's Unix socket, from `DOCKER_HOST` or the default.
fn socket_path() -> Result<PathBuf, String> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .ok_or_else(|| format!("DOCKER_HOST={host}: only unix:// sockets are supported")),
        _ => Ok(PathBuf::from("/var/run/docker.sock")),
    }
}

fn try_connect() -> Result<Docker, String> {
    let socket = socket_path()?;
    let server = server_api_version(&socket)?;
    let client = bollard::API_DEFAULT_VERSION;
    let version = if (server.major_version, server.minor_version)
        < (client.major_version, client.minor_version)
    {
        server
    } else {
        *client
    };
    let path = socket
        .to_str()
        .ok_or_else(|| format!("{}: not UTF-8", socket.display()))?;
    Docker::connect_with_unix(path, 120, &version).map_err(|e| e.to_string())
}

/// The API version the daemon speaks, from its unversioned `/version` endpoint.
fn server_api_version(socket: &Path) -> Result<ClientVersion, String> {
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading /version: {e}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or("the daemon's /version answer has no body")?;
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("the daemon's /version: {e}"))?;
    let text = json["ApiVersion"]
        .as_str()
        .ok_or("the daemon's /version has no ApiVersion")?;
    let (major, minor) = text
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| format!("unreadable ApiVersion {text:?}"))?;
    Ok(ClientVersion {
        major_version: major,
        minor_version: minor,
    })
}

/// Build (or reuse, when current) the test image ([`image`]) from the binaries this test run
/// built, with `deploy/build-image.sh`. Once per test process.
pub fn ensure_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = bins::dir();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/build-image.sh");
        let output = Command::new(&script)
            .arg("--binary-dir")
            .arg(dir)
            .args(["--tag", image()])
            .output()
            .expect("deploy/build-image.sh runs");
        assert!(
            output.status.success(),
            "deploy/build-image.sh failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

/// Labels for something a test creates.
pub fn labels(prefix: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL.to_string(), prefix.to_string()),
        (PID_LABEL.to_string(), std::process::id().to_string()),
    ])
}

/// Whether the test process that labelled something is gone.
fn orphaned(labels: Option<&HashMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(PID_LABEL))
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Remove containers, networks and volumes left by test processes that no longer exist (a
/// test run killed before it could clean up). Once per process.
async fn remove_leftovers(docker: &Docker) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| remove_labelled(docker, PID_LABEL.to_string(), orphaned))
        .await;
}

type RemoveVolume = bollard::query_parameters::RemoveVolumeOptions;

/// Remove a container, running or not, and its anonymous volumes.
pub async fn remove_container(docker: &Docker, name: &str) {
    let _ = docker
        .remove_container(
            name,
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
}

/// Remove everything labelled with `prefix`: containers first, then networks and volumes.
pub async fn remove_all(docker: &Docker, prefix: &str) {
    remove_labelled(docker, format!("{LABEL}={prefix}"), |_| true).await;
}

/// Remove the containers, then the networks, then the volumes that carry `label` (a Docker
/// label filter, `KEY` or `KEY=VALUE`) and whose labels `pick` accepts.
async fn remove_labelled(
    docker: &Docker,
    label: String,
    pick: impl Fn(Option<&HashMap<String, String>>) -> bool,
) {
    let filters = HashMap::from([("label".to_string(), vec![label])]);
    if let Ok(containers) = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
    {
        for c in containers.iter().filter(|c| pick(c.labels.as_ref())) {
            if let Some(id) = &c.id {
                remove_container(docker, id).await;
            }
        }
    }
    if let Ok(networks) = docker
        .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
            filters: Some(filters.clone()),
        }))
        .await
    {
        for n in networks.iter().filter(|n| pick(n.labels.as_ref())) {
            if let Some(id) = &n.id {
                let _ = docker.remove_network(id).await;
            }
        }
    }
    if let Ok(volumes) = docker
        .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
            filters: Some(filters),
        }))
        .await
    {
        let volumes = volumes.volumes.unwrap_or_default();
        for v in volumes.iter().filter(|v| pick(Some(&v.labels))) {
            let _ = docker.remove_volume(&v.name, None::<RemoveVolume>).await;
        }
    }
}
