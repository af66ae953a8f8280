//! `affinity-gateway` refuses store credentials it cannot use safely, naming the flag,
//! before it serves anything.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn refused(args: &[&str]) -> String {
    let routes = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/routes.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_affinity-gateway"))
        .args(["--routes", routes, "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "off"])
        .args(args)
        .env_remove("AFFINITY_GATEWAY_STORE_TLS_CA")
        .env_remove("AFFINITY_GATEWAY_STORE_TOKEN_FILE")
        .output()
        .expect("the gateway runs");
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_token_needs_tls_and_a_readable_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef-gw\n").unwrap();
    let token = token.to_str().unwrap();
    let err = refused(&["--store-token-file", token]);
    assert!(
        err.contains("--store-token-file needs --store-tls-ca"),
        "{err}"
    );
    let missing = dir.path().join("missing-ca.pem");
    let err = refused(&[
        "--store-token-file",
        token,
        "--store-tls-ca",
        missing.to_str().unwrap(),
    ]);
    assert!(err.contains("--store-tls-"), "{err}");
    let err = refused(&["--store-tls-cert", token]);
    assert!(err.contains("need --store-tls-ca"), "{err}");
}
