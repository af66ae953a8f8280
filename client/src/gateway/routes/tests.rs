//! Tests of the route file parser and of request-to-rule selection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use super::routes::{PathMatch, RouteTable};

const FILE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: shop
spec:
  parentRefs: [{name: edge}]
  hostnames: ["Shop.Example", "*.shop.example"]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api/}}]
    backendRefs:
    - {name: api, port: 8080}
    - {name: "127.0.0.1:9009"}
    sessionPersistence: {type: ClientIP, absoluteTimeout: 10m, ipMask: 24}
  - matches: [{path: {type: Exact, value: /login}}, {path: {value: /static}}]
    backendRefs: [{name: web, port: 80, weight: 3}, {name: web, port: 80}]
  - backendRefs: [{name: "127.0.0.1:9010"}]
---
apiVersion: affinity.dev/v1alpha1
kind: Backends
endpoints:
  shop/api:8080: ["127.0.0.1:9001", "127.0.0.1:9002"]
  shop/web:80: ["127.0.0.1:9003"]
"#;

#[test]
fn a_route_file_becomes_rules_with_scopes_endpoints_and_policies() {
    let table = RouteTable::parse(FILE).unwrap();
    assert_eq!(table.routes.len(), 1);
    let route = &table.routes[0];
    assert_eq!(route.hostnames, ["shop.example", "*.shop.example"]);
    let rules: Vec<_> = table.rules().collect();
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0].scope, "shop/web/0");
    assert_eq!(
        rules[0].endpoints,
        ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9009"]
    );
    let policy = rules[0].persistence.unwrap();
    assert_eq!(policy.absolute_timeout_ms(), 600_000);
    assert_eq!(policy.masks().ipv4(), 24);
    assert_eq!(rules[1].scope, "shop/web/1");
    assert_eq!(
        rules[1].matches,
        [
            PathMatch::Exact("/login".into()),
            PathMatch::Prefix("/static".into())
        ]
    );
    assert_eq!(
        rules[1].endpoints,
        ["127.0.0.1:9003"],
        "one endpoint listed once"
    );
    assert!(rules[1].persistence.is_none());
    assert_eq!(
        rules[2].matches,
        [PathMatch::Prefix("/".into())],
        "no match means every path"
    );
    assert_eq!(
        Duration::from_millis(policy.absolute_timeout_ms()),
        Duration::from_secs(600)
    );
}

#[test]
fn requests_go_to_the_most_specific_rule_of_a_matching_host() {
    let table = RouteTable::parse(FILE).unwrap();
    let scope = |host: &str, path: &str| table.select(host, path).map(|r| r.scope.as_str());
    assert_eq!(scope("shop.example", "/api/cart"), Some("shop/web/0"));
    assert_eq!(
        scope("SHOP.example", "/api"),
        Some("shop/web/0"),
        "prefix /api/ matches /api"
    );
    assert_eq!(scope("eu.shop.example", "/login"), Some("shop/web/1"));
    assert_eq!(
        scope("shop.example", "/login/again"),
        Some("shop/web/2"),
        "Exact is exact"
    );
    assert_eq!(
        scope("shop.example", "/staticfile"),
        Some("shop/web/2"),
        "prefixes end at /"
    );
    assert_eq!(scope("shop.example", "/static/app.js"), Some("shop/web/1"));
    assert_eq!(scope("shop.example", "/"), Some("shop/web/2"));
    assert_eq!(scope("other.example", "/api/cart"), None);
    assert_eq!(scope("shop.example.evil", "/"), None);
}

#[test]
fn bad_route_files_name_the_field_and_the_rule() {
    let cases = [
        (
            "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - backendRefs: [{name: web, port: 80}]\n",
            "HTTPRoute default/r spec.rules[0].backendRefs[0]",
            "no endpoints for default/web:80",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - backendRefs: [{name: web}]\n",
            "spec.rules[0].backendRefs[0].port",
            "is required",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {type: RegularExpression, value: /a}}]\n    backendRefs: [{name: \"h:1\"}]\n",
            "spec.rules[0].matches[0].path.type",
            "PathPrefix or Exact",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matches: [{headers: [{name: x, value: y}]}]\n    backendRefs: [{name: \"h:1\"}]\n",
            "spec.rules[0].matches[0]",
            "only path matches",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - backendRefs: [{name: \"h:1\"}]\n    sessionPersistence: {type: ClientIP, absoluteTimeout: 10m, ipMsak: 24}\n",
            "document 1 (HTTPRoute)",
            "ipMsak",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - backendRefs: [{name: \"h:1\"}]\n    sessionPersistence: {type: Cookie, absoluteTimeout: 10m}\n",
            "spec.rules[0].sessionPersistence.type",
            "ClientIP",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - backendRefs: []\n",
            "spec.rules[0].backendRefs",
            "at least one endpoint",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - backendRefs: [{name: web, port: 80}]\n---\nkind: Backends\nendpoints:\n  default/web:80: [\"no-port\"]\n",
            "spec.rules[0].backendRefs[0]",
            "not host:port",
        ),
        (
            "kind: Gateway\n",
            "document 1.kind",
            "HTTPRoute or Backends",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\n",
            "spec.rules",
            "at least one rule",
        ),
        ("kind: [\n", "document 1", ""),
    ];
    for (text, field, rule) in cases {
        let err = RouteTable::parse(text).expect_err(text);
        assert!(
            err.field.contains(field),
            "{text}: field {:?} lacks {field:?}",
            err.field
        );
        assert!(
            err.rule.contains(rule),
            "{text}: rule {:?} lacks {rule:?}",
            err.rule
        );
    }
}
