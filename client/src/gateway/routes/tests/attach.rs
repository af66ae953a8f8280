//! Tests of policy attachment, parentRefs and hostname precedence.

use super::super::{Options, RouteTable};
use super::{STATIC, route};

const POLICY: &str = "
---
apiVersion: affinity.dev/v1alpha1
kind: ClientIPSessionPersistencePolicy
metadata: {name: NAME, namespace: shop, creationTimestamp: 'CREATED'}
spec:
  targetRefs: [TARGET]
  absoluteTimeout: TIMEOUT
  ipv4Mask: 24
  ipv6Mask: 64
";

fn policy(name: &str, created: &str, target: &str, timeout: &str) -> String {
    POLICY
        .replace("NAME", name)
        .replace("CREATED", created)
        .replace("TARGET", target)
        .replace("TIMEOUT", timeout)
}

#[test]
fn policies_attach_to_a_rule_a_route_or_a_service_and_the_rule_block_wins() {
    let rules = "  - name: api\n    backendRefs: [{name: api, port: 80}]\n  - name: web\n    backendRefs: [{name: web, port: 80}]\n  - name: own\n    backendRefs: [{name: web, port: 80}]\n    sessionPersistence: {type: ClientIP, absoluteTimeout: 1m, ipv4Mask: 32}\n";
    let backends = "---\nkind: Backends\nendpoints:\n  shop/api:80: [\"10.0.0.1:80\"]\n  shop/web:80: [\"10.0.0.2:80\"]\n";
    let text = format!(
        "{}{backends}{}{}{}",
        route("r", rules),
        policy(
            "on-rule",
            "2026-01-02T00:00:00Z",
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: api}",
            "1h"
        ),
        policy(
            "on-service",
            "2026-01-01T00:00:00Z",
            "{group: '', kind: Service, name: web}",
            "2h"
        ),
        policy(
            "on-route",
            "2026-01-03T00:00:00Z",
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}",
            "3h"
        ),
    );
    let table = RouteTable::parse(&text).unwrap();
    assert!(table.refused.is_empty(), "{:?}", table.refused);
    let got: Vec<(&str, u64, &str)> = table
        .rules()
        .map(|r| {
            (
                r.scope.as_str(),
                r.persistence.unwrap().absolute_timeout_ms() / 60_000,
                r.persistence_from.as_deref().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "shop/r/api",
                60,
                "ClientIPSessionPersistencePolicy shop/on-rule"
            ),
            (
                "shop/r/web",
                180,
                "ClientIPSessionPersistencePolicy shop/on-route"
            ),
            ("shop/r/own", 1, "sessionPersistence"),
        ],
        "rule over route over Service; the rule's own block over any policy"
    );
    let conflicted = table
        .warnings
        .iter()
        .filter(|w| w.message.contains("Conflicted"))
        .count();
    // api: on-route loses; web: on-service loses; own: on-route and on-service lose.
    assert_eq!(conflicted, 4, "{:#?}", table.warnings);
}

#[test]
fn of_two_equal_policies_the_older_wins() {
    let text = format!(
        "{}{}{}",
        route("r", STATIC),
        policy(
            "newer",
            "2026-02-01T00:00:00Z",
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}",
            "1h"
        ),
        policy(
            "older",
            "2026-01-01T00:00:00Z",
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}",
            "2h"
        ),
    );
    let table = RouteTable::parse(&text).unwrap();
    let rule = table.rules().next().unwrap();
    assert_eq!(
        rule.persistence_from.as_deref(),
        Some("ClientIPSessionPersistencePolicy shop/older")
    );
    assert!(
        table
            .warnings
            .iter()
            .any(|w| w.message.contains("shop/newer is Conflicted"))
    );
}

#[test]
fn a_policy_naming_nothing_is_reported() {
    let text = format!(
        "{}{}",
        route("r", STATIC),
        policy(
            "p",
            "2026-01-01T00:00:00Z",
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: nope}",
            "1h"
        )
    );
    let table = RouteTable::parse(&text).unwrap();
    assert!(table.rules().next().unwrap().persistence.is_none());
    assert!(
        table
            .warnings
            .iter()
            .any(|w| w.message.contains("TargetNotFound")),
        "{:?}",
        table.warnings
    );
}

#[test]
fn parent_refs_choose_the_routes_of_one_gateway() {
    let text = format!(
        "{}---\n{}",
        route("mine", STATIC).replace("spec:\n", "spec:\n  parentRefs: [{name: edge}]\n"),
        route("theirs", STATIC).replace(
            "spec:\n",
            "spec:\n  parentRefs: [{name: edge, namespace: other}]\n"
        )
    );
    let options = Options::for_dataplane(Some("shop/edge")).unwrap();
    let table = RouteTable::parse_with(&text, &options).unwrap();
    let names: Vec<&str> = table.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["mine"]);
    assert_eq!(table.ignored.len(), 1);
    assert_eq!(
        RouteTable::parse(&text).unwrap().routes.len(),
        2,
        "no --gateway: all"
    );
    for bad in ["edge", "shop/", "/edge", "a/b/c"] {
        let err = Options::for_dataplane(Some(bad)).unwrap_err();
        assert!(err.contains("NAMESPACE/NAME"), "{bad}: {err}");
    }
}

#[test]
fn hostnames_order_routes_exact_then_longer_wildcards_then_age_then_name() {
    let with = |name: &str, hosts: &str, created: &str| {
        route(name, STATIC)
            .replace("spec:\n", &format!("spec:\n  hostnames: [{hosts}]\n"))
            .replace(
                "namespace: shop}",
                &format!("namespace: shop, creationTimestamp: '{created}'}}"),
            )
    };
    let text = [
        with("any", "'*.example.com'", "2026-01-01T00:00:00Z"),
        with("eu", "'*.eu.example.com'", "2026-01-03T00:00:00Z"),
        with("exact", "'www.eu.example.com'", "2026-01-04T00:00:00Z"),
        with("b-same", "'*.example.org'", "2026-01-05T00:00:00Z"),
        with("a-same", "'*.example.org'", "2026-01-05T00:00:00Z"),
        with("young", "'*.example.net'", "2026-01-09T00:00:00Z"),
        with("old", "'*.example.net'", "2026-01-02T00:00:00Z"),
    ]
    .join("---\n");
    let table = RouteTable::parse(&text).unwrap();
    let route_of = |host: &str| {
        let rule = table.select(host, "/").unwrap();
        table
            .routes
            .iter()
            .find(|r| r.rules.iter().any(|x| std::ptr::eq(x, rule)))
            .unwrap()
            .name
            .clone()
    };
    assert_eq!(route_of("www.eu.example.com"), "exact");
    assert_eq!(route_of("api.eu.example.com"), "eu", "the longer wildcard");
    assert_eq!(route_of("api.example.com"), "any");
    assert_eq!(route_of("a.example.org"), "a-same", "same age: by name");
    assert_eq!(route_of("a.example.net"), "old", "the older route");
}
