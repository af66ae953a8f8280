//! One `HTTPRoute` checked and turned into rules: matches, endpoints with their weights,
//! and persistence (the rule's own block or an attached policy). Errors name the route,
//! the field and the rule; the route is then refused alone.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use affinity_proto::{Policy, ValidationError};

use super::sources::{Sources, State};
use super::{Notice, Options, PathMatch, Route, Rule, policy, wire};

/// What a route is checked against.
pub(super) struct Context<'a> {
    pub sources: &'a Sources,
    pub policies: &'a [policy::Attached],
    pub options: &'a Options,
}

fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// Gateway API's largest `backendRef` weight.
const MAX_WEIGHT: u32 = 1_000_000;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Spread each backendRef's weight evenly over its ready endpoints: with `L` the least
/// common multiple of the ready counts, an endpoint of a ref of weight `w` with `n` ready
/// endpoints weighs `w * L / n` (so traffic splits between refs as their weights say).
/// Falls back to `w * 1000 / n` (at least 1) if that would not fit.
fn spread(refs: &[(u32, Vec<(String, State)>)]) -> Vec<(String, u32)> {
    let ready = |list: &[(String, State)]| {
        u64::try_from(list.iter().filter(|(_, s)| *s == State::Ready).count()).unwrap_or(1)
    };
    let heaviest = refs.iter().map(|(w, _)| u64::from(*w)).max().unwrap_or(1);
    let lcm = refs
        .iter()
        .filter(|(w, list)| *w > 0 && ready(list) > 0)
        .try_fold(1_u64, |l, (_, list)| {
            let n = ready(list);
            let next = l / gcd(l, n) * n;
            (next <= 10_000 && u32::try_from(heaviest * next).is_ok()).then_some(next)
        });
    let mut out: Vec<(String, u32)> = Vec::new();
    for (w, list) in refs {
        let n = ready(list).max(1);
        let each = match lcm {
            Some(l) => u64::from(*w) * l / n,
            None => (u64::from(*w) * 1000 / n).max(u64::from(*w > 0)),
        };
        let each = u32::try_from(each).unwrap_or(u32::MAX);
        for (endpoint, state) in list {
            let weight = if *state == State::Ready { each } else { 0 };
            match out.iter_mut().find(|(e, _)| e == endpoint) {
                Some((_, sum)) => *sum = sum.saturating_add(weight),
                None => out.push((endpoint.clone(), weight)),
            }
        }
    }
    out
}

fn matches(
    rule: Vec<wire::Match>,
    here: &dyn Fn(&str) -> String,
) -> Result<Vec<PathMatch>, ValidationError> {
    let mut out = Vec::new();
    for (m, wire) in rule.into_iter().enumerate() {
        let field = |f: &str| here(&format!(".matches[{m}]{f}"));
        if !wire.headers.is_empty() || !wire.query_params.is_empty() || wire.method.is_some() {
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
        out.push(match kind.as_deref().unwrap_or("PathPrefix") {
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
    if out.is_empty() {
        out.push(PathMatch::Prefix("/".into()));
    }
    Ok(out)
}

/// Check `route` and turn it into rules; warnings go to `warnings`.
pub(super) fn build(
    route: wire::HttpRoute,
    context: &Context<'_>,
    warnings: &mut Vec<Notice>,
) -> Result<Route, ValidationError> {
    let namespace = route.metadata.namespace().to_string();
    let name = route.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(ValidationError::new(
            format!("HTTPRoute {namespace}/ metadata.name"),
            "is required",
        ));
    }
    let at = |field: String| format!("HTTPRoute {namespace}/{name} {field}");
    let mut rules = Vec::new();
    let mut names = BTreeSet::new();
    for (r, rule) in route.spec.rules.into_iter().enumerate() {
        let here = |field: &str| at(format!("spec.rules[{r}]{field}"));
        if let Some(rule_name) = &rule.name
            && !names.insert(rule_name.clone())
        {
            return Err(ValidationError::new(
                here(".name"),
                format!("{rule_name:?} names two rules; rule names must be unique in a route"),
            ));
        }
        if !rule.filters.is_empty() {
            return Err(ValidationError::new(
                here(".filters"),
                format!(
                    "filters are not supported ({})",
                    wire::filter_types(&rule.filters)
                ),
            ));
        }
        let matches = matches(rule.matches, &here)?;
        let mut refs = Vec::new();
        let mut services = Vec::new();
        for (b, backend) in rule.backend_refs.into_iter().enumerate() {
            let field = |f: &str| here(&format!(".backendRefs[{b}]{f}"));
            if !backend.filters.is_empty() {
                return Err(ValidationError::new(
                    field(".filters"),
                    format!(
                        "backendRef filters are not supported ({})",
                        wire::filter_types(&backend.filters)
                    ),
                ));
            }
            let group = backend.group.as_deref().unwrap_or_default();
            let kind = backend.kind.as_deref().unwrap_or("Service");
            if !group.is_empty() || kind != "Service" {
                return Err(ValidationError::new(
                    field(".kind"),
                    format!("must be a core Service, not {kind:?} of group {group:?}"),
                ));
            }
            let weight = backend.weight.unwrap_or(1);
            if weight > MAX_WEIGHT {
                return Err(ValidationError::new(
                    field(".weight"),
                    format!("must be 0..={MAX_WEIGHT} (got {weight})"),
                ));
            }
            let found = if backend.port.is_none() && is_host_port(&backend.name) {
                vec![(backend.name, State::Ready)]
            } else {
                let port = backend.port.ok_or_else(|| {
                    ValidationError::new(
                        field(".port"),
                        "is required for a Service (or give name as host:port)",
                    )
                })?;
                let ns = backend.namespace.as_deref().unwrap_or(&namespace);
                if !context.sources.granted(&namespace, ns, &backend.name) {
                    return Err(ValidationError::new(
                        field(".namespace"),
                        format!(
                            "Service {ns}/{} is in another namespace and no ReferenceGrant in {ns} lets HTTPRoutes of {namespace} refer to it",
                            backend.name
                        ),
                    ));
                }
                services.push((ns.to_string(), backend.name.clone()));
                let found = context
                    .sources
                    .endpoints(ns, &backend.name, port)
                    .map_err(|rule| ValidationError::new(field(""), rule))?;
                if found.is_empty() {
                    // A Service scaled to zero, or one drained and removed: the rule is
                    // served by its other backendRefs, if any.
                    warnings.push(Notice {
                        at: field(""),
                        message: format!(
                            "no ready or serving endpoint for {ns}/{}:{port} (add its EndpointSlices, or list them under a Backends document's endpoints); the rule's other backendRefs serve",
                            backend.name
                        ),
                    });
                }
                found
            };
            for (endpoint, _) in &found {
                if !is_host_port(endpoint) {
                    return Err(ValidationError::new(
                        field(""),
                        format!("endpoint {endpoint:?} is not host:port"),
                    ));
                }
                if context.options.ip_endpoints && endpoint.parse::<SocketAddr>().is_err() {
                    return Err(ValidationError::new(
                        field(""),
                        format!(
                            "endpoint {endpoint:?} must be an IP:PORT (this data plane does not resolve names)"
                        ),
                    ));
                }
            }
            refs.push((weight, found));
        }
        let (endpoints, weights): (Vec<String>, Vec<u32>) = spread(&refs).into_iter().unzip();
        if endpoints.is_empty() {
            return Err(ValidationError::new(
                here(".backendRefs"),
                "must name at least one endpoint (a ready or serving one, when they come from EndpointSlices)",
            ));
        }
        if weights.iter().all(|w| *w == 0) {
            warnings.push(Notice {
                at: here(".backendRefs"),
                message: "no endpoint takes new clients (every weight is 0, or no endpoint is ready): they are spread over the endpoints that keep their sessions".into(),
            });
        }
        let own = rule
            .session_persistence
            .as_ref()
            .map(|block| {
                super::warn_about(block, &here(".sessionPersistence"), warnings);
                Policy::from_session_persistence(block)
            })
            .transpose()
            .map_err(|e| ValidationError::new(here(&format!(".{}", e.field)), e.rule))?;
        let attached = policy::choose(
            context.policies,
            &here(""),
            (&namespace, &name, rule.name.as_deref()),
            &services,
            own.is_some(),
            warnings,
        );
        let (persistence, persistence_from) = match (own, attached) {
            (Some(own), _) => (Some(own), Some("sessionPersistence".to_string())),
            (None, Some(p)) => (
                Some(p.policy),
                Some(format!("ClientIPSessionPersistencePolicy {}", p.id)),
            ),
            (None, None) => (None, None),
        };
        let scope = match &rule.name {
            Some(rule_name) => format!("{namespace}/{name}/{rule_name}"),
            None => format!("{namespace}/{name}/{r}"),
        };
        if rules.iter().any(|other: &Rule| other.scope == scope) {
            return Err(ValidationError::new(
                here(".name"),
                format!(
                    "gives the scope {scope:?} that another rule's index gives; name that rule too"
                ),
            ));
        }
        rules.push(Rule {
            scope,
            name: rule.name,
            matches,
            endpoints,
            weights,
            services,
            persistence,
            persistence_from,
        });
    }
    if rules.is_empty() {
        return Err(ValidationError::new(
            at("spec.rules".into()),
            "must hold at least one rule",
        ));
    }
    let hostnames = route
        .spec
        .hostnames
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    Ok(Route {
        namespace,
        name,
        created: route.metadata.creation_timestamp,
        hostnames,
        rules,
    })
}
