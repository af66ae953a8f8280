//! Bad configuration stops `affinity-agent` at start with a message naming the flag, or the
//! field of the route file, at fault.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_affinity-agent"))
        .args(args)
        .args(["--metrics-listen", "off"])
        .output()
        .expect("affinity-agent runs");
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_flags_and_route_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        "kind: HTTPRoute\nmetadata: {name: web}\nspec:\n  rules:\n  - backendRefs: [{name: \"backend.example:80\"}]\n",
    )
    .unwrap();
    let path = routes.to_str().unwrap();
    let err = refused(&[
        "--routes",
        path,
        "--listen-ext-proc",
        "off",
        "--listen-http",
        "off",
    ]);
    assert!(err.contains("nothing to serve"), "{err}");
    let err = refused(&["--routes", path, "--listen-ext-proc", "nowhere"]);
    assert!(err.contains("--listen-ext-proc"), "{err}");
    let err = refused(&[
        "--routes",
        path,
        "--listen-ext-proc",
        "127.0.0.1:0",
        "--listen-http",
        "127.0.0.1:0",
    ]);
    assert!(
        err.contains("backendRefs") && err.contains("IP:PORT"),
        "{err}"
    );
    let err = refused(&[
        "--routes",
        "/nonexistent/routes.yaml",
        "--listen-ext-proc",
        "127.0.0.1:0",
        "--listen-http",
        "127.0.0.1:0",
    ]);
    assert!(err.contains("--routes"), "{err}");
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "kind: HTTPRoute\nmetadata: {name: web}\nspec:\n  rules:\n  - backendRefs: [{name: \"127.0.0.1:9\"}]\n",
    )
    .unwrap();
    let path = good.to_str().unwrap();
    let free = [
        "--listen-ext-proc",
        "127.0.0.1:0",
        "--listen-http",
        "127.0.0.1:0",
    ];
    let err = refused(&[&["--routes", path, "--store-token-file", path][..], &free].concat());
    assert!(
        err.contains("--store-token-file needs --store-tls-ca"),
        "{err}"
    );
    let err = refused(&[&["--routes", path, "--health-interval", "0s"][..], &free].concat());
    assert!(err.contains("--health-interval"), "{err}");
}
