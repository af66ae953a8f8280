//! The route file: Kubernetes Gateway API `HTTPRoute`s, where their endpoints come from,
//! and which rules stick, read from YAML as a cluster exports it (several documents,
//! `kubectl get ... -o yaml` `List`s, or both).
//!
//! ```yaml
//! apiVersion: gateway.networking.k8s.io/v1
//! kind: HTTPRoute
//! metadata: {name: web, namespace: shop}
//! spec:
//!   parentRefs: [{name: edge}]
//!   hostnames: ["shop.example"]
//!   rules:
//!   - name: api
//!     matches: [{path: {type: PathPrefix, value: /api}}]
//!     backendRefs: [{name: api, port: 8080}]
//! ---
//! apiVersion: affinity.dev/v1alpha1
//! kind: ClientIPSessionPersistencePolicy
//! metadata: {name: sticky-api, namespace: shop}
//! spec:
//!   targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web, sectionName: api}]
//!   absoluteTimeout: 10m
//!   ipv4Mask: 24
//!   ipv6Mask: 64
//! ---
//! apiVersion: affinity.dev/v1alpha1
//! kind: Backends
//! endpoints:
//!   shop/api:8080: ["127.0.0.1:9001", "127.0.0.1:9002"]
//! ```
//!
//! What each kind contributes:
//!
//! - `HTTPRoute`: the rules. Each rule is one persistence scope, `namespace/route/name`
//!   with the rule's `name` when set (renaming a rule therefore starts new sessions), else
//!   `namespace/route/index`; two rules never share stickiness even when they share a
//!   Service (GEP-1619). Path matches `PathPrefix` (the default) and `Exact`; header,
//!   query and method matches, rule filters and `backendRef` filters are refused by name,
//!   never ignored. `parentRefs` are honoured when [`Options::gateway`] names a Gateway.
//! - Persistence: a rule's own `sessionPersistence` with `type: ClientIP` (for
//!   implementations that extend the enum) or a `ClientIPSessionPersistencePolicy` (see
//!   [`policy`]); the rule's own block wins.
//! - Endpoints: `Backends`, `EndpointSlice`, `Service` and `ReferenceGrant` (see
//!   [`sources`]). A `backendRef` whose `name` is itself `host:port` (and has no `port`) is
//!   a static endpoint. Its `weight` divides new clients between the backendRefs (spread
//!   evenly over each one's ready endpoints); `weight: 0` takes no new clients but keeps its
//!   sessions (GEP-1619), as does an endpoint that is serving but no longer ready.
//! - Any other kind (`Gateway`, `GRPCRoute`, ...) is ignored, and listed in
//!   [`RouteTable::ignored`] so that a data plane logs it once.
//!
//! A document that cannot be used is refused alone ([`RouteTable::refused`]): the others
//! are served. Only a file that is not YAML fails as a whole. Settings that work but
//! surprise are in [`RouteTable::warnings`].

mod build;
mod policy;
mod report;
mod select;
mod sources;
#[cfg(test)]
mod tests;
mod watch;
mod wire;

use std::collections::BTreeSet;

use affinity_proto::{Policy, SessionPersistence, ValidationError};
use serde::Deserialize;

pub use watch::watch_file;

/// How to read a route file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve only the routes whose `parentRefs` name this Gateway (`namespace`, `name`);
    /// `None` serves every route.
    pub gateway: Option<(String, String)>,
    /// Refuse a rule with an endpoint that is not an `IP:PORT` (for data planes that do
    /// not resolve names).
    pub ip_endpoints: bool,
}

impl Options {
    /// Options for a data plane that connects to `IP:PORT` endpoints, serving the routes
    /// of `gateway` (the `--gateway NAMESPACE/NAME` flag) or every route.
    pub fn for_dataplane(gateway: Option<&str>) -> Result<Options, String> {
        let gateway = gateway
            .map(|text| match text.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    Ok((ns.to_string(), name.to_string()))
                }
                _ => Err(format!(
                    "--gateway {text:?} must be NAMESPACE/NAME, the Gateway whose routes to serve"
                )),
            })
            .transpose()?;
        Ok(Options {
            gateway,
            ip_endpoints: true,
        })
    }
}

/// Every route of a route file, in file order, and what was refused, ignored or is worth a
/// warning.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTable {
    /// The routes served.
    pub routes: Vec<Route>,
    /// Documents and routes refused, each alone, naming the document, field and rule.
    pub refused: Vec<ValidationError>,
    /// Settings accepted that may not do what their author expects.
    pub warnings: Vec<Notice>,
    /// Documents and routes left out on purpose (kinds this data plane does not read,
    /// routes of another Gateway).
    pub ignored: Vec<Notice>,
    /// The `namespace/name` of every `HTTPRoute` among [`refused`](Self::refused).
    pub refused_routes: Vec<String>,
}

/// A warning or a note about one place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Where: the document or route, and the field.
    pub at: String,
    /// What.
    pub message: String,
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// One `HTTPRoute`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `metadata.namespace` (`default` when unset).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.creationTimestamp`, which orders routes that tie on a request.
    pub created: Option<String>,
    /// `spec.hostnames`, lower-cased; empty matches any host. `*.example.com` matches one
    /// or more labels in front of `example.com`.
    pub hostnames: Vec<String>,
    /// `spec.rules`, in order.
    pub rules: Vec<Rule>,
}

/// One rule of a route: where its requests go and whether they stick.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The persistence scope of this rule: `namespace/route/name`, or
    /// `namespace/route/index` for a rule without a name.
    pub scope: String,
    /// The rule's `name`, when set.
    pub name: Option<String>,
    /// Path matches; a request matching any of them matches the rule.
    pub matches: Vec<PathMatch>,
    /// The endpoints that may serve (eligible), each once, in the order given.
    pub endpoints: Vec<String>,
    /// One weight per endpoint: the share of new clients it takes. 0 keeps the clients it
    /// has and takes no new ones (a `weight: 0` backendRef, or an endpoint no longer ready).
    pub weights: Vec<u32>,
    /// The Services the rule's backendRefs reach, as (`namespace`, `name`).
    pub services: Vec<(String, String)>,
    /// Client-IP persistence, when the rule has it.
    pub persistence: Option<Policy>,
    /// Where [`persistence`](Self::persistence) comes from: `sessionPersistence` or
    /// `ClientIPSessionPersistencePolicy namespace/name`.
    pub persistence_from: Option<String>,
}

impl Rule {
    /// The endpoints that take new clients.
    pub fn proposed(&self) -> impl Iterator<Item = &String> {
        self.endpoints
            .iter()
            .zip(&self.weights)
            .filter(|(_, w)| **w > 0)
            .map(|(e, _)| e)
    }

    /// The weights of `endpoints` (a subset of this rule's, such as its healthy ones), in
    /// their order. Empty when none of them takes new clients, so that a client then
    /// spreads new clients over them all rather than refusing them.
    pub fn weights_of(&self, endpoints: &[String]) -> Vec<u32> {
        let weights: Vec<u32> = endpoints
            .iter()
            .map(|e| {
                self.endpoints
                    .iter()
                    .position(|x| x == e)
                    .and_then(|i| self.weights.get(i).copied())
                    .unwrap_or(0)
            })
            .collect();
        if weights.iter().all(|w| *w == 0) {
            Vec::new()
        } else {
            weights
        }
    }
}

/// Round robin by weight, for rules without persistence: the index that turn number
/// `turn` goes to, each index taking as many turns of every `sum(weights)` as its weight.
/// Empty `weights` (or all 0) means equal turns over `len` candidates; `None` when there
/// are none.
pub fn weighted_turn(turn: usize, len: usize, weights: &[u32]) -> Option<usize> {
    if len == 0 {
        return None;
    }
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if weights.len() != len || total == 0 {
        return Some(turn % len);
    }
    let mut left = u64::try_from(turn).unwrap_or(u64::MAX) % total;
    for (i, w) in weights.iter().enumerate() {
        let w = u64::from(*w);
        if left < w {
            return Some(i);
        }
        left -= w;
    }
    Some(len - 1)
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

/// Warnings a `sessionPersistence` block (or a policy's spec) deserves: `ipMask` below 33
/// without `ipv6Mask` groups IPv6 clients by as few bits; `idleTimeout` left Gateway API.
pub(super) fn warn_about(block: &SessionPersistence, at: &str, warnings: &mut Vec<Notice>) {
    if let Some(mask) = block.ip_mask
        && mask < 33
        && block.ipv6_mask.is_none()
    {
        warnings.push(Notice {
            at: format!("{at}.ipMask"),
            message: format!(
                "{mask} applies to IPv6 clients too: every IPv6 client within one /{mask} shares a backend; set ipv6Mask (for example 64) to group IPv6 clients by their own prefix"
            ),
        });
    }
    if block.idle_timeout.is_some() {
        warnings.push(Notice {
            at: format!("{at}.idleTimeout"),
            message:
                "was removed from Gateway API sessionPersistence in v1.6; affinity still applies it"
                    .into(),
        });
    }
}

/// The documents of a file, `List`s opened, each with its place (`document 3`,
/// `document 2 item 5`).
fn documents(text: &str) -> Result<Vec<(String, serde_norway::Value)>, ValidationError> {
    let mut out = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = serde_norway::Value::deserialize(document)
            .map_err(|e| ValidationError::new(format!("document {}", i + 1), e.to_string()))?;
        open(format!("document {}", i + 1), value, &mut out);
    }
    Ok(out)
}

fn open(place: String, value: serde_norway::Value, out: &mut Vec<(String, serde_norway::Value)>) {
    if value.is_null() {
        return;
    }
    if kind_of(&value) == "List"
        && let Ok(list) = serde_norway::from_value::<wire::List>(value.clone())
    {
        for (j, item) in list.items.into_iter().enumerate() {
            open(format!("{place} item {}", j + 1), item, out);
        }
        return;
    }
    out.push((place, value));
}

fn kind_of(value: &serde_norway::Value) -> &str {
    value
        .get("kind")
        .and_then(serde_norway::Value::as_str)
        .unwrap_or_default()
}

fn id_of(value: &serde_norway::Value) -> String {
    serde_norway::from_value::<wire::Metadata>(value.get("metadata").cloned().unwrap_or_default())
        .map(|m| m.id())
        .unwrap_or_default()
}

impl RouteTable {
    /// Every rule of every route.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.routes.iter().flat_map(|r| r.rules.iter())
    }

    /// Parse a route file with the default [`Options`]. Fails only when the file is not
    /// YAML; what is refused is in [`refused`](Self::refused).
    pub fn parse(text: &str) -> Result<RouteTable, ValidationError> {
        Self::parse_with(text, &Options::default())
    }

    /// Parse a route file. Fails only when the file is not YAML; documents and routes that
    /// cannot be used are refused alone.
    pub fn parse_with(text: &str, options: &Options) -> Result<RouteTable, ValidationError> {
        let mut table = RouteTable::default();
        let mut sources = sources::Sources::default();
        let mut policies = Vec::new();
        let mut routes = Vec::new();
        for (place, value) in documents(text)? {
            let kind = kind_of(&value).to_string();
            let id = id_of(&value);
            let whole = |e: serde_norway::Error| {
                ValidationError::new(format!("{place} ({kind} {id})"), e.to_string())
            };
            match kind.as_str() {
                "HTTPRoute" => match serde_norway::from_value::<wire::HttpRoute>(value) {
                    Ok(route) => routes.push(route),
                    Err(e) => table.refused.push(whole(e)),
                },
                "Backends" => match serde_norway::from_value(value) {
                    Ok(doc) => sources.add_backends(doc),
                    Err(e) => table.refused.push(whole(e)),
                },
                "EndpointSlice" => match serde_norway::from_value(value) {
                    Ok(doc) => {
                        if let Err((field, rule)) = sources.add_slice(doc) {
                            table.refused.push(ValidationError::new(
                                format!("EndpointSlice {id} {field}"),
                                rule,
                            ));
                        }
                    }
                    Err(e) => table.refused.push(whole(e)),
                },
                "Service" => match serde_norway::from_value(value) {
                    Ok(doc) => sources.add_service(doc),
                    Err(e) => table.refused.push(whole(e)),
                },
                "ReferenceGrant" => match serde_norway::from_value(value) {
                    Ok(doc) => sources.add_grant(doc),
                    Err(e) => table.refused.push(whole(e)),
                },
                "ClientIPSessionPersistencePolicy" => {
                    match serde_norway::from_value::<wire::Policy>(value) {
                        Ok(doc) => match policy::check(doc, &mut table.warnings) {
                            Ok(p) => policies.push(p),
                            Err(e) => table.refused.push(e),
                        },
                        Err(e) => table.refused.push(whole(e)),
                    }
                }
                "" => table.refused.push(ValidationError::new(
                    format!("{place}.kind"),
                    "is required (HTTPRoute, EndpointSlice, Service, ReferenceGrant, ClientIPSessionPersistencePolicy or Backends)",
                )),
                other => table.ignored.push(Notice {
                    at: format!("{place} ({other} {id})"),
                    message: "not read by this data plane".into(),
                }),
            }
        }
        let mut seen = BTreeSet::new();
        for route in routes {
            let id = route.metadata.id();
            if !seen.insert(id.clone()) {
                table.refused.push(ValidationError::new(
                    format!("HTTPRoute {id}"),
                    "appears twice in the file; the first is served",
                ));
                continue;
            }
            if let Some(gateway) = &options.gateway
                && !attached(&route, gateway)
            {
                table.ignored.push(Notice {
                    at: format!("HTTPRoute {id} spec.parentRefs"),
                    message: format!("not attached to Gateway {}/{}", gateway.0, gateway.1),
                });
                continue;
            }
            let context = build::Context {
                sources: &sources,
                policies: &policies,
                options,
            };
            match build::build(route, &context, &mut table.warnings) {
                Ok(route) => table.routes.push(route),
                Err(e) => {
                    table.refused.push(e);
                    table.refused_routes.push(id);
                }
            }
        }
        policy::unmatched(&policies, &table.routes, &mut table.warnings);
        Ok(table)
    }
}

/// Whether one of `route`'s `parentRefs` names `gateway`.
fn attached(route: &wire::HttpRoute, (namespace, name): &(String, String)) -> bool {
    route.spec.parent_refs.iter().any(|p| {
        p.group
            .as_deref()
            .is_none_or(|g| g == "gateway.networking.k8s.io")
            && p.kind.as_deref().is_none_or(|k| k == "Gateway")
            && p.namespace.as_deref().unwrap_or(route.metadata.namespace()) == namespace
            && p.name == *name
    })
}
