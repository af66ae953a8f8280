//! Deployment: the Kubernetes manifests and the compose file, checked offline, and a
//! rehearsal of the StatefulSet with containers.
//!
//! - `manifests`: every kustomization renders; the objects validate against the
//!   Kubernetes OpenAPI schemas (`kubernetes-validate`, installed by `tests/install-deps.sh`)
//!   and follow the project's rules; the arguments and config file pass `affinityd check`.
//! - `crds`: the ClientIPSessionPersistencePolicy CRD validates against the Kubernetes
//!   schemas; the example policies pass its schema, and bad ones are refused naming the
//!   field, as the project's `sessionPersistence` parser refuses them.
//! - `rehearsal`: containers named and started exactly as the StatefulSet starts its pods
//!   form a cluster by ordinal, grow to four nodes and shrink back to three.
//!
//! Tools the checks need (Docker, `kubernetes-validate`, `docker-compose`) are skipped
//! loudly when absent; `AFFINITY_REQUIRE_DOCKER=1` (CI) turns absence into a failure.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod crds;
mod manifests;
mod rehearsal;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_path_buf()
}

/// The rendered objects of a kustomization under `deploy/kubernetes`.
pub fn render(dir: &str) -> Vec<Value> {
    let path = root().join("deploy/kubernetes").join(dir);
    affinity_tests::kustomize::render(&path).unwrap_or_else(|e| panic!("render {dir}: {e}"))
}

/// The one object of `kind` named `name`.
pub fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} {name}");
    found[0]
}

/// The StatefulSet's store container.
pub fn store_container(objects: &[Value]) -> &Value {
    let sts = object(objects, "StatefulSet", "affinity");
    let containers = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["name"] == "affinityd")
        .expect("a container named affinityd")
}

/// The ConfigMap's `affinityd.toml`, written to `dir`.
pub fn config_file(objects: &[Value], dir: &Path) -> PathBuf {
    let map = object(objects, "ConfigMap", "affinity-config");
    let text = map["data"]["affinityd.toml"]
        .as_str()
        .expect("the ConfigMap holds affinityd.toml");
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("affinityd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A test's output folder under the target folder.
pub fn out_dir(test: &str) -> PathBuf {
    let dir = affinity_tests::bins::dir()
        .parent()
        .expect("<target>/<profile>")
        .join("test-output/deploy")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub use affinity_tests::tools::{required as tools_required, skip};
