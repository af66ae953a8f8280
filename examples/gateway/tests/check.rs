//! `affinity-gateway check --routes FILE`: the report, and an exit status that is 0 only
//! when nothing was refused.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn check(file: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_affinity-gateway"))
        .arg("check")
        .arg("--routes")
        .arg(file)
        .args(extra)
        .output()
        .expect("the gateway runs")
}

#[test]
fn the_demo_file_checks_clean_and_reports_each_rule() {
    let demo = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/demo/routes.yaml"));
    let out = check(demo, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rule demo/web/0"), "{text}");
    assert!(
        text.contains("from ClientIPSessionPersistencePolicy demo/web-sticky"),
        "{text}"
    );
    assert!(
        text.contains("endpoint 127.0.0.1:9001: eligible, proposed"),
        "{text}"
    );
    assert!(text.contains("0 refused"), "{text}");
}

#[test]
fn a_refusal_fails_the_check_and_json_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        "kind: HTTPRoute\nmetadata: {name: good, namespace: a}\nspec:\n  rules:\n  - backendRefs: [{name: \"10.0.0.1:80\", weight: 0}, {name: \"10.0.0.2:80\"}]\n    sessionPersistence: {type: ClientIP, absoluteTimeout: 5m, ipMask: 16}\n---\nkind: HTTPRoute\nmetadata: {name: bad, namespace: a}\nspec:\n  rules:\n  - backendRefs: [{name: \"backend.example:80\"}]\n",
    )
    .unwrap();
    let out = check(&file, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("refused: HTTPRoute a/bad spec.rules[0].backendRefs[0]"),
        "{text}"
    );
    assert!(
        text.contains("endpoint 10.0.0.1:80: eligible, not proposed"),
        "{text}"
    );
    assert!(text.contains("warning: HTTPRoute a/good spec.rules[0].sessionPersistence.ipMask"));

    let out = check(&file, &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        report["refused"][0]["at"],
        "HTTPRoute a/bad spec.rules[0].backendRefs[0]"
    );
    let rule = &report["rules"][0];
    assert_eq!(rule["scope"], "a/good/0");
    assert_eq!(rule["persistence"]["ipv6Mask"], 16);
    assert_eq!(rule["endpoints"][0]["proposed"], false);
    assert_eq!(rule["endpoints"][1]["proposed"], true);

    std::fs::write(&file, "kind: [\n").unwrap();
    let out = check(&file, &[]);
    assert_eq!(out.status.code(), Some(2), "not YAML");
    assert!(String::from_utf8_lossy(&out.stderr).contains("document 1"));
}
