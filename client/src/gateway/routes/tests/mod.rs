//! Tests of the route file parser and of request-to-rule selection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use super::{PathMatch, RouteTable};

mod attach;

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
            "HTTPRoute default/r spec.rules[0].backendRefs",
            "at least one endpoint",
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
            "document 1 (HTTPRoute default/r)",
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
        ("metadata: {name: r}\n", "document 1.kind", "is required"),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - backendRefs: [{name: web, port: 80, filters: [{type: RequestMirror}]}]\n",
            "spec.rules[0].backendRefs[0].filters",
            "RequestMirror",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r, namespace: a}\nspec:\n  rules:\n  - backendRefs: [{name: web, namespace: b, port: 80}]\n---\nkind: Backends\nendpoints:\n  b/web:80: [\"10.0.0.1:80\"]\n",
            "spec.rules[0].backendRefs[0].namespace",
            "no ReferenceGrant in b",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - {name: a, backendRefs: [{name: \"h:1\"}]}\n  - {name: a, backendRefs: [{name: \"h:2\"}]}\n",
            "spec.rules[1].name",
            "unique",
        ),
        (
            "kind: ClientIPSessionPersistencePolicy\nmetadata: {name: p}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]\n  absoluteTimeout: 10m\n  ipv4Mask: 40\n",
            "ClientIPSessionPersistencePolicy default/p spec.ipv4Mask",
            "32",
        ),
        (
            "kind: ClientIPSessionPersistencePolicy\nmetadata: {name: p}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}]\n  absoluteTimeout: 10m\n",
            "spec.targetRefs[0].kind",
            "HTTPRoute or GRPCRoute",
        ),
        (
            "kind: EndpointSlice\nmetadata: {name: s}\nendpoints: [{addresses: [10.0.0.1]}]\n",
            "EndpointSlice default/s metadata.labels",
            "kubernetes.io/service-name",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\n",
            "spec.rules",
            "at least one rule",
        ),
    ];
    for (text, field, rule) in cases {
        let table = RouteTable::parse(text).expect("YAML parses");
        assert!(table.routes.is_empty(), "{text}: nothing is served");
        let [err] = table.refused.as_slice() else {
            panic!("{text}: one refusal expected, got {:?}", table.refused);
        };
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

#[test]
fn a_file_that_is_not_yaml_fails_whole() {
    let err = RouteTable::parse("kind: [\n").expect_err("not YAML");
    assert_eq!(err.field, "document 1");
}

const STATIC: &str = "  - backendRefs: [{name: \"10.9.9.9:80\"}]\n";

fn route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  rules:\n{rules}"
    )
}

#[test]
fn one_bad_route_is_refused_alone_and_the_rest_is_served() {
    let text = format!(
        "{}---\n{}---\nkind: Gateway\nmetadata: {{name: edge, namespace: shop}}\n",
        route("good", STATIC),
        route(
            "bad",
            "  - matches: [{method: GET}]\n    backendRefs: [{name: \"10.0.0.1:80\"}]\n"
        )
    );
    let table = RouteTable::parse(&text).unwrap();
    assert_eq!(table.routes.len(), 1);
    assert_eq!(table.routes[0].name, "good");
    assert_eq!(table.refused.len(), 1);
    assert!(
        table.refused[0]
            .field
            .starts_with("HTTPRoute shop/bad spec.rules[0].matches[0]"),
        "{:?}",
        table.refused
    );
    assert_eq!(
        table.ignored.len(),
        1,
        "the Gateway is ignored, with a note"
    );
    assert!(table.ignored[0].at.contains("Gateway shop/edge"));
}

#[test]
fn a_weight_0_backend_keeps_its_sessions_but_takes_no_new_ones() {
    // GEP-1619: a backendRef set to weight 0 must keep its existing sessions, so its
    // endpoints stay eligible (a lease on them is kept) while new clients go elsewhere.
    let text = "
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  rules:
  - backendRefs:
    - {name: \"10.0.0.1:80\", weight: 2}
    - {name: \"10.0.0.2:80\", weight: 0}
    - {name: \"10.0.0.3:80\"}
    sessionPersistence: {type: ClientIP, absoluteTimeout: 10m}
";
    let table = RouteTable::parse(text).unwrap();
    let rule = table.rules().next().unwrap();
    assert_eq!(
        rule.endpoints,
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
        "a weight-0 endpoint stays eligible"
    );
    assert_eq!(rule.weights, [2, 0, 1]);
    assert_eq!(
        rule.proposed().collect::<Vec<_>>(),
        ["10.0.0.1:80", "10.0.0.3:80"]
    );
    // Of the healthy ones, only weight-0 endpoints left: spread new clients over them.
    assert!(rule.weights_of(&["10.0.0.2:80".into()]).is_empty());
    assert_eq!(
        rule.weights_of(&["10.0.0.3:80".into(), "10.0.0.2:80".into()]),
        [1, 0]
    );
}

#[test]
fn weights_split_between_backend_refs_not_endpoints() {
    let text = "
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  rules:
  - backendRefs: [{name: a, port: 80, weight: 1}, {name: b, port: 80, weight: 1}]
---
kind: Backends
endpoints:
  shop/a:80: [\"10.0.0.1:80\", \"10.0.0.2:80\"]
  shop/b:80: [\"10.0.1.1:80\", \"10.0.1.2:80\", \"10.0.1.3:80\"]
";
    let table = RouteTable::parse(text).unwrap();
    let rule = table.rules().next().unwrap();
    assert_eq!(rule.weights, [3, 3, 2, 2, 2], "a: 6 of 12, b: 6 of 12");
}

#[test]
fn endpoint_slices_give_ready_serving_and_gone_endpoints() {
    let text = "
apiVersion: v1
kind: List
items:
- kind: HTTPRoute
  metadata: {name: web, namespace: shop}
  spec:
    rules:
    - backendRefs: [{name: api, port: 80}]
- kind: Service
  metadata: {name: api, namespace: shop}
  spec: {ports: [{name: metrics, port: 9090}, {name: http, port: 80, targetPort: 8080}]}
- kind: EndpointSlice
  metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
  addressType: IPv4
  ports: [{name: metrics, port: 9090}, {name: http, port: 8080}]
  endpoints:
  - addresses: [10.0.0.1]
    conditions: {ready: true}
  - addresses: [10.0.0.2]
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [10.0.0.3]
    conditions: {ready: false, serving: false, terminating: true}
  - addresses: [10.0.0.4]
- kind: EndpointSlice
  metadata: {name: api-2, namespace: shop, labels: {kubernetes.io/service-name: api}}
  addressType: IPv6
  ports: [{name: http, port: 8080}]
  endpoints:
  - addresses: ['2001:db8::5']
";
    let table = RouteTable::parse(text).unwrap();
    assert!(table.refused.is_empty(), "{:?}", table.refused);
    let rule = table.rules().next().unwrap();
    assert_eq!(
        rule.endpoints,
        [
            "10.0.0.1:8080",
            "10.0.0.2:8080",
            "10.0.0.4:8080",
            "[2001:db8::5]:8080"
        ],
        "not serving is left out; the service port maps to the slice port of its name"
    );
    assert_eq!(
        rule.weights,
        [1, 0, 1, 1],
        "serving but not ready keeps its clients only"
    );
    assert_eq!(rule.services, [("shop".to_string(), "api".to_string())]);
}

#[test]
fn a_reference_grant_lets_a_route_name_another_namespace() {
    let text = "
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  rules:
  - backendRefs: [{name: api, namespace: backend, port: 80}]
---
kind: ReferenceGrant
metadata: {name: shop-may-use-api, namespace: backend}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: '', kind: Service, name: api}]
---
kind: Backends
endpoints:
  backend/api:80: [\"10.0.0.1:80\"]
";
    let table = RouteTable::parse(text).unwrap();
    assert!(table.refused.is_empty(), "{:?}", table.refused);
    let other = text.replace("name: api}]", "name: other}]");
    let table = RouteTable::parse(&other).unwrap();
    let [refusal] = table.refused.as_slice() else {
        panic!("the grant names another Service: {:?}", table.refused);
    };
    assert_eq!(
        refusal.field,
        "HTTPRoute shop/web spec.rules[0].backendRefs[0].namespace"
    );
}

#[test]
fn the_rule_name_is_the_scope_and_the_index_otherwise() {
    let text = route(
        "web",
        "  - name: api\n    backendRefs: [{name: \"10.0.0.1:80\"}]\n  - backendRefs: [{name: \"10.0.0.2:80\"}]\n",
    );
    let table = RouteTable::parse(&text).unwrap();
    let scopes: Vec<&str> = table.rules().map(|r| r.scope.as_str()).collect();
    assert_eq!(scopes, ["shop/web/api", "shop/web/1"]);
    let clash = route(
        "web",
        "  - name: \"1\"\n    backendRefs: [{name: \"10.0.0.1:80\"}]\n  - backendRefs: [{name: \"10.0.0.2:80\"}]\n",
    );
    let table = RouteTable::parse(&clash).unwrap();
    assert_eq!(table.refused.len(), 1, "two rules would share shop/web/1");
}

#[test]
fn ip_mask_alone_is_accepted_with_a_warning_about_ipv6() {
    let text = route(
        "web",
        "  - backendRefs: [{name: \"10.0.0.1:80\"}]\n    sessionPersistence: {type: ClientIP, absoluteTimeout: 10m, ipMask: 24, idleTimeout: 5m}\n",
    );
    let table = RouteTable::parse(&text).unwrap();
    let policy = table.rules().next().unwrap().persistence.unwrap();
    assert_eq!((policy.masks().ipv4(), policy.masks().ipv6()), (24, 24));
    let at: Vec<&str> = table.warnings.iter().map(|w| w.at.as_str()).collect();
    assert_eq!(
        at,
        [
            "HTTPRoute shop/web spec.rules[0].sessionPersistence.ipMask",
            "HTTPRoute shop/web spec.rules[0].sessionPersistence.idleTimeout"
        ]
    );
    assert!(table.warnings[0].message.contains("ipv6Mask"));
    assert!(table.warnings[1].message.contains("v1.6"));
    for quiet in ["ipMask: 24, ipv6Mask: 64", "ipMask: 48"] {
        let text = text.replace("ipMask: 24, idleTimeout: 5m", quiet);
        assert!(
            RouteTable::parse(&text).unwrap().warnings.is_empty(),
            "{quiet}"
        );
    }
}

#[test]
fn a_backend_ref_without_endpoints_leaves_the_rule_to_the_others() {
    let text = "
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  rules:
  - backendRefs: [{name: next, port: 80}, {name: old, port: 80, weight: 0}]
---
kind: EndpointSlice
metadata: {name: old-empty, namespace: shop, labels: {kubernetes.io/service-name: old}}
addressType: IPv4
ports: null
endpoints: null
---
kind: EndpointSlice
metadata: {name: next-1, namespace: shop, labels: {kubernetes.io/service-name: next}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2], conditions: {ready: false, serving: true}}]
---
kind: EndpointSlice
metadata: {name: next-2, namespace: shop, labels: {kubernetes.io/service-name: next}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
---
kind: EndpointSlice
metadata: {name: next-placeholder, namespace: shop, labels: {kubernetes.io/service-name: next}}
addressType: IPv4
ports: null
endpoints: []
";
    let table = RouteTable::parse(text).unwrap();
    assert!(table.refused.is_empty(), "{:?}", table.refused);
    let rule = table.rules().next().unwrap();
    assert_eq!(
        rule.endpoints,
        ["10.0.0.1:8080", "10.0.0.2:8080"],
        "one address in two slices counts once; the placeholder maps no port"
    );
    assert_eq!(
        rule.weights,
        [1, 0],
        "serving, not ready: keeps its clients"
    );
    assert_eq!(table.warnings.len(), 1, "{:?}", table.warnings);
    assert!(table.warnings[0].at.ends_with("backendRefs[1]"));
}

#[test]
fn every_weight_0_is_served_with_a_warning_and_weights_are_bounded() {
    let text = route(
        "web",
        "  - backendRefs: [{name: \"10.0.0.1:80\", weight: 0}]\n",
    );
    let table = RouteTable::parse(&text).unwrap();
    assert_eq!(table.rules().next().unwrap().weights, [0]);
    assert!(
        table.warnings[0]
            .message
            .contains("no endpoint takes new clients")
    );
    let heavy = route(
        "web",
        "  - backendRefs: [{name: \"10.0.0.1:80\", weight: 1000001}]\n",
    );
    let table = RouteTable::parse(&heavy).unwrap();
    assert!(table.refused[0].field.ends_with("backendRefs[0].weight"));
}

#[test]
fn a_reload_that_refuses_a_route_keeps_its_version_in_force() {
    let options = super::Options::for_dataplane(None).unwrap();
    let first = format!("{}---\n{}", route("a", STATIC), route("b", STATIC));
    let in_force = RouteTable::parse_servable(&first, &options, None).unwrap();
    let broken = format!(
        "{}---\n{}",
        route("a", STATIC),
        route("b", "  - backendRefs: [{name: \"b.example:80\"}]\n")
    );
    let table = RouteTable::parse_servable(&broken, &options, Some(&in_force)).unwrap();
    let names: Vec<&str> = table.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "b stays as it was");
    assert_eq!(table.refused.len(), 1);
    assert!(
        table
            .warnings
            .iter()
            .any(|w| w.message.contains("version in force"))
    );
    let fresh = RouteTable::parse_servable(&broken, &options, None).unwrap();
    assert_eq!(
        fresh.routes.len(),
        1,
        "at start there is no version in force"
    );
    let err = RouteTable::parse_servable(
        &route("b", "  - backendRefs: [{name: \"b.example:80\"}]\n"),
        &options,
        None,
    )
    .unwrap_err();
    assert!(err.contains("no route can be served"), "{err}");
}
