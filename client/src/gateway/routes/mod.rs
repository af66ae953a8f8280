//! The route file: Kubernetes Gateway API `HTTPRoute` documents, plus an optional
//! `Backends` document that says which `host:port` endpoints stand behind each Service
//! `backendRef` (the part a cluster's EndpointSlices would give).
//!
//! ```yaml
//! apiVersion: gateway.networking.k8s.io/v1
//! kind: HTTPRoute
//! metadata: {name: web, namespace: shop}
//! spec:
//!   hostnames: ["shop.example"]
//!   rules:
//!   - matches: [{path: {type: PathPrefix, value: /}}]
//!     backendRefs: [{name: web, port: 8080}]
//!     sessionPersistence: {type: ClientIP, absoluteTimeout: 10m, ipMask: 24}
//! ---
//! apiVersion: affinity.dev/v1alpha1
//! kind: Backends
//! endpoints:
//!   shop/web:8080: ["127.0.0.1:9001", "127.0.0.1:9002"]
//! ```
//!
//! A `backendRef` whose `name` is itself `host:port` (and has no `port`) is a static
//! endpoint and needs no `Backends` entry. Each rule is one persistence scope,
//! `namespace/name/rule-index`, so two rules never share stickiness even when they share a
//! Service (GEP-1619). Matches: `PathPrefix` (the default) and `Exact` paths; header, query
//! and method matches and filters are refused with an error naming the field, rather than
//! silently ignored. Fields a data plane does not act on (`parentRefs`, `timeouts`, ...)
//! are accepted and ignored.

use std::collections::BTreeMap;

use affinity_proto::{Policy, SessionPersistence, ValidationError};
use serde::Deserialize;

/// Every route of a route file, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTable {
    /// The routes.
    pub routes: Vec<Route>,
}

/// One `HTTPRoute`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `metadata.namespace` (`default` when unset).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.hostnames`, lower-cased; empty matches any host. `*.example.com` matches one
    /// or more labels in front of `example.com`.
    pub hostnames: Vec<String>,
    /// `spec.rules`, in order.
    pub rules: Vec<Rule>,
}

/// One rule of a route: where its requests go and whether they stick.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The persistence scope of this rule: `namespace/name/rule-index`.
    pub scope: String,
    /// Path matches; a request matching any of them matches the rule.
    pub matches: Vec<PathMatch>,
    /// The endpoints, each once, in the order given.
    pub endpoints: Vec<String>,
    /// `sessionPersistence`, when the rule has one.
    pub persistence: Option<Policy>,
}

/// A path match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// `PathPrefix`: the path equals the value or continues it after a `/`.
    Prefix(String),
    /// `Exact`: the path equals the value.
    Exact(String),
}

impl PathMatch {
    /// How well `path` matches: `None` if it does not; otherwise higher is more specific
    /// (exact matches over prefixes, longer prefixes over shorter).
    pub fn rank(&self, path: &str) -> Option<usize> {
        match self {
            PathMatch::Exact(value) => (path == value).then_some(usize::MAX),
            PathMatch::Prefix(value) => {
                let prefix = value.trim_end_matches('/');
                let rest = path.strip_prefix(prefix)?;
                (rest.is_empty() || rest.starts_with('/')).then_some(prefix.len())
            }
        }
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|front| front.len() > 1 && front.ends_with('.')),
        None => pattern == host,
    }
}

impl RouteTable {
    /// The rule a request for `host` (without port) and `path` goes to: among the routes
    /// whose hostnames match, the rule with the most specific path match; the first in file
    /// order on a tie.
    pub fn select(&self, host: &str, path: &str) -> Option<&Rule> {
        let host = host.to_ascii_lowercase();
        let mut best: Option<(usize, &Rule)> = None;
        for route in &self.routes {
            if !route.hostnames.is_empty()
                && !route.hostnames.iter().any(|p| host_matches(p, &host))
            {
                continue;
            }
            for rule in &route.rules {
                let rank = rule.matches.iter().filter_map(|m| m.rank(path)).max();
                if let Some(rank) = rank
                    && best.is_none_or(|(b, _)| rank > b)
                {
                    best = Some((rank, rule));
                }
            }
        }
        best.map(|(_, rule)| rule)
    }

    /// Every rule of every route.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.routes.iter().flat_map(|r| r.rules.iter())
    }

    /// Parse a route file (YAML, one or more documents). Errors name the document, the
    /// field and the rule.
    pub fn parse(text: &str) -> Result<RouteTable, ValidationError> {
        let mut routes = Vec::new();
        let mut backends: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
            let value = serde_norway::Value::deserialize(document)
                .map_err(|e| ValidationError::new(format!("document {}", i + 1), e.to_string()))?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(serde_norway::Value::as_str)
                .unwrap_or_default()
                .to_string();
            let whole = |e: serde_norway::Error| {
                ValidationError::new(format!("document {} ({kind})", i + 1), e.to_string())
            };
            match kind.as_str() {
                "HTTPRoute" => {
                    routes.push(serde_norway::from_value::<WireRoute>(value).map_err(whole)?);
                }
                "Backends" => {
                    let doc: WireBackends = serde_norway::from_value(value).map_err(whole)?;
                    for (key, endpoints) in doc.endpoints {
                        backends.entry(key).or_default().extend(endpoints);
                    }
                }
                other => {
                    return Err(ValidationError::new(
                        format!("document {}.kind", i + 1),
                        format!("must be HTTPRoute or Backends, not {other:?}"),
                    ));
                }
            }
        }
        let routes = routes
            .into_iter()
            .map(|r| r.check(&backends))
            .collect::<Result<_, _>>()?;
        Ok(RouteTable { routes })
    }
}

#[derive(Deserialize)]
struct WireBackends {
    #[serde(default)]
    endpoints: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct WireRoute {
    metadata: WireMetadata,
    #[serde(default)]
    spec: WireSpec,
}

#[derive(Deserialize)]
struct WireMetadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<WireRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRule {
    #[serde(default)]
    matches: Vec<WireMatch>,
    #[serde(default)]
    backend_refs: Vec<WireBackendRef>,
    #[serde(default)]
    session_persistence: Option<SessionPersistence>,
    #[serde(default)]
    filters: Vec<serde_norway::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMatch {
    #[serde(default)]
    path: Option<WirePath>,
    #[serde(default)]
    headers: Vec<serde_norway::Value>,
    #[serde(default)]
    query_params: Vec<serde_norway::Value>,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Deserialize)]
struct WirePath {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBackendRef {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    weight: Option<u32>,
}

fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

impl WireRoute {
    fn check(self, backends: &BTreeMap<String, Vec<String>>) -> Result<Route, ValidationError> {
        let namespace = self.metadata.namespace.unwrap_or_else(|| "default".into());
        let name = self.metadata.name;
        let at = |field: String| format!("HTTPRoute {namespace}/{name} {field}");
        let mut rules = Vec::new();
        for (r, rule) in self.spec.rules.into_iter().enumerate() {
            let here = |field: &str| at(format!("spec.rules[{r}]{field}"));
            if !rule.filters.is_empty() {
                return Err(ValidationError::new(
                    here(".filters"),
                    "filters are not supported",
                ));
            }
            let mut matches = Vec::new();
            for (m, wire) in rule.matches.into_iter().enumerate() {
                let field = |f: &str| here(&format!(".matches[{m}]{f}"));
                if !wire.headers.is_empty()
                    || !wire.query_params.is_empty()
                    || wire.method.is_some()
                {
                    return Err(ValidationError::new(
                        field(""),
                        "only path matches are supported (no headers, queryParams or method)",
                    ));
                }
                let (kind, value) = wire.path.map_or((None, None), |p| (p.kind, p.value));
                let value = value.unwrap_or_else(|| "/".into());
                if !value.starts_with('/') {
                    return Err(ValidationError::new(
                        field(".path.value"),
                        "must start with /",
                    ));
                }
                matches.push(match kind.as_deref().unwrap_or("PathPrefix") {
                    "PathPrefix" => PathMatch::Prefix(value),
                    "Exact" => PathMatch::Exact(value),
                    other => {
                        return Err(ValidationError::new(
                            field(".path.type"),
                            format!("must be PathPrefix or Exact, not {other:?}"),
                        ));
                    }
                });
            }
            if matches.is_empty() {
                matches.push(PathMatch::Prefix("/".into()));
            }
            let mut endpoints: Vec<String> = Vec::new();
            for (b, backend) in rule.backend_refs.into_iter().enumerate() {
                let field = |f: &str| here(&format!(".backendRefs[{b}]{f}"));
                if backend.weight == Some(0) {
                    continue;
                }
                if let Some(kind) = backend.kind.as_deref()
                    && kind != "Service"
                {
                    return Err(ValidationError::new(
                        field(".kind"),
                        format!("must be Service, not {kind:?}"),
                    ));
                }
                let found: Vec<String> = if backend.port.is_none() && is_host_port(&backend.name) {
                    vec![backend.name]
                } else {
                    let port = backend.port.ok_or_else(|| {
                        ValidationError::new(
                            field(".port"),
                            "is required for a Service (or give name as host:port)",
                        )
                    })?;
                    let ns = backend.namespace.as_deref().unwrap_or(&namespace);
                    let key = format!("{ns}/{}:{port}", backend.name);
                    backends.get(&key).cloned().ok_or_else(|| {
                        ValidationError::new(field(""), format!("no endpoints for {key}: add them under a Backends document's endpoints"))
                    })?
                };
                for endpoint in found {
                    if !is_host_port(&endpoint) {
                        return Err(ValidationError::new(
                            field(""),
                            format!("endpoint {endpoint:?} is not host:port"),
                        ));
                    }
                    if !endpoints.contains(&endpoint) {
                        endpoints.push(endpoint);
                    }
                }
            }
            if endpoints.is_empty() {
                return Err(ValidationError::new(
                    here(".backendRefs"),
                    "must name at least one endpoint",
                ));
            }
            let persistence = rule
                .session_persistence
                .as_ref()
                .map(Policy::from_session_persistence)
                .transpose()
                .map_err(|e| ValidationError::new(here(&format!(".{}", e.field)), e.rule))?;
            rules.push(Rule {
                scope: format!("{namespace}/{name}/{r}"),
                matches,
                endpoints,
                persistence,
            });
        }
        if rules.is_empty() {
            return Err(ValidationError::new(
                at("spec.rules".into()),
                "must hold at least one rule",
            ));
        }
        let hostnames = self
            .spec
            .hostnames
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        Ok(Route {
            namespace,
            name,
            hostnames,
            rules,
        })
    }
}

/// Read the route file at `path` every `interval`. When its content differs from `current`
/// (by content, so a ConfigMap's symlink swap or an editor's rename both count and a touch
/// alone does not) and `parse` accepts it, hand the result to `apply`, which puts it in
/// force and returns how many rules it holds; a file that does not parse is logged with
/// the field and rule at fault, and what is in force stays. Each outcome counts on the
/// counter `metric` (`result` = `ok` or `error`). Runs until the process ends.
pub async fn watch_file<T>(
    path: std::path::PathBuf,
    interval: std::time::Duration,
    mut current: Vec<u8>,
    parse: impl Fn(&str) -> Result<T, String>,
    apply: impl Fn(T) -> usize,
    metric: &'static str,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A ConfigMap update briefly removes the file; the next tick sees the new one.
        let Ok(bytes) = tokio::fs::read(&path).await else {
            continue;
        };
        if bytes == current {
            continue;
        }
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|_| "not UTF-8".to_string())
            .and_then(&parse);
        match parsed {
            Ok(table) => {
                let rules = apply(table);
                metrics::counter!(metric, "result" => "ok").increment(1);
                tracing::info!(path = %path.display(), rules, "route file reloaded");
            }
            Err(e) => {
                metrics::counter!(metric, "result" => "error").increment(1);
                tracing::error!(path = %path.display(), error = %e, "route file not reloaded; keeping the routes in force");
            }
        }
        current = bytes;
    }
}
