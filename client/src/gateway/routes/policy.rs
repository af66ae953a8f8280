//! `ClientIPSessionPersistencePolicy` (`affinity.dev/v1alpha1`): client-IP persistence for
//! route rules by GEP-713 direct policy attachment, since no released Gateway API CRD
//! accepts `sessionPersistence.type: ClientIP`.
//!
//! A policy's `targetRefs` name, in the policy's own namespace, an `HTTPRoute` (every rule
//! of it, or with `sectionName` the rule of that `name`) or a `Service` (every rule with a
//! `backendRef` to it). Which one applies to a rule, most specific first: the rule's own
//! `sessionPersistence` (GEP-1619 orders route over policy), a policy naming the rule, one
//! naming its route, one naming a Service it reaches; among equals the oldest
//! (`metadata.creationTimestamp`), then the first by `namespace/name`. Every policy that
//! loses is reported as conflicted for that rule. `GRPCRoute` targets are accepted by the
//! CRD; this data plane serves HTTP routes only and says so.

use affinity_proto::{Policy, ValidationError};

use super::{Notice, wire};

/// A checked policy.
pub(super) struct Attached {
    /// `namespace/name`.
    pub id: String,
    pub namespace: String,
    created: Option<String>,
    pub policy: Policy,
    pub targets: Vec<wire::TargetRef>,
}

const ROUTES: &str = "gateway.networking.k8s.io";

/// Check a policy document. `Err` names the field (`spec.ipMask`, `spec.targetRefs[0].kind`).
pub(super) fn check(
    doc: wire::Policy,
    warnings: &mut Vec<Notice>,
) -> Result<Attached, ValidationError> {
    let id = doc.metadata.id();
    let at = |field: String| format!("ClientIPSessionPersistencePolicy {id} {field}");
    if doc.spec.target_refs.is_empty() {
        return Err(ValidationError::new(
            at("spec.targetRefs".into()),
            "must name at least one HTTPRoute, GRPCRoute or Service",
        ));
    }
    for (t, target) in doc.spec.target_refs.iter().enumerate() {
        let field = |f: &str| at(format!("spec.targetRefs[{t}].{f}"));
        match (target.group.as_str(), target.kind.as_str()) {
            (ROUTES, "HTTPRoute" | "GRPCRoute") => {}
            ("", "Service") => {
                if target.section_name.is_some() {
                    return Err(ValidationError::new(
                        field("sectionName"),
                        "applies to a route's rule; a Service target takes none",
                    ));
                }
            }
            (group, kind) => {
                return Err(ValidationError::new(
                    field("kind"),
                    format!(
                        "must be HTTPRoute or GRPCRoute of group {ROUTES}, or Service of the core group \"\" (got {kind:?} of {group:?})"
                    ),
                ));
            }
        }
    }
    let block = doc.spec.as_block();
    let policy = Policy::from_session_persistence(&block).map_err(|e| {
        let field = e
            .field
            .strip_prefix("sessionPersistence.")
            .unwrap_or(&e.field);
        ValidationError::new(at(format!("spec.{field}")), e.rule)
    })?;
    super::warn_about(&block, &at("spec".into()), warnings);
    Ok(Attached {
        namespace: doc.metadata.namespace().to_string(),
        id,
        created: doc.metadata.creation_timestamp,
        policy,
        targets: doc.spec.target_refs,
    })
}

/// How specifically `policy` names a rule (3: the rule, 2: its route, 1: a Service it
/// reaches), or `None`.
fn specificity(
    policy: &Attached,
    route_ns: &str,
    route: &str,
    rule: Option<&str>,
    services: &[(String, String)],
) -> Option<u8> {
    policy
        .targets
        .iter()
        .filter_map(|t| match (t.group.as_str(), t.kind.as_str()) {
            (ROUTES, "HTTPRoute") if policy.namespace == route_ns && t.name == route => {
                match (&t.section_name, rule) {
                    (None, _) => Some(2),
                    (Some(s), Some(r)) if s == r => Some(3),
                    _ => None,
                }
            }
            ("", "Service")
                if services
                    .iter()
                    .any(|(ns, name)| *ns == policy.namespace && *name == t.name) =>
            {
                Some(1)
            }
            _ => None,
        })
        .max()
}

/// The policy for one rule, and a warning for each that loses to another or to the rule's
/// own block. `has_own` says the rule has `sessionPersistence`.
pub(super) fn choose<'a>(
    policies: &'a [Attached],
    at: &str,
    (route_ns, route, rule): (&str, &str, Option<&str>),
    services: &[(String, String)],
    has_own: bool,
    warnings: &mut Vec<Notice>,
) -> Option<&'a Attached> {
    let mut found: Vec<(u8, &Attached)> = policies
        .iter()
        .filter_map(|p| specificity(p, route_ns, route, rule, services).map(|s| (s, p)))
        .collect();
    // Most specific, then oldest (unset last), then by name.
    found.sort_by(|(sa, a), (sb, b)| {
        sb.cmp(sa)
            .then_with(|| match (&a.created, &b.created) {
                (Some(x), Some(y)) => x.cmp(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
            .then_with(|| a.id.cmp(&b.id))
    });
    let winner = if has_own { None } else { found.first() };
    for (_, loser) in found.iter().skip(usize::from(!has_own)) {
        let over = match winner {
            Some((_, w)) => format!("ClientIPSessionPersistencePolicy {} applies instead", w.id),
            None => "the rule's own sessionPersistence takes precedence".into(),
        };
        warnings.push(Notice {
            at: at.to_string(),
            message: format!(
                "ClientIPSessionPersistencePolicy {} is Conflicted here: {over}",
                loser.id
            ),
        });
    }
    winner.map(|(_, p)| *p)
}

/// A warning for every target that names nothing in the file (`TargetNotFound`), and for
/// every `GRPCRoute` target, which this data plane does not serve.
pub(super) fn unmatched(
    policies: &[Attached],
    routes: &[super::Route],
    warnings: &mut Vec<Notice>,
) {
    for policy in policies {
        for (t, target) in policy.targets.iter().enumerate() {
            let at = format!(
                "ClientIPSessionPersistencePolicy {} spec.targetRefs[{t}]",
                policy.id
            );
            let message = match target.kind.as_str() {
                "GRPCRoute" => Some(format!(
                    "GRPCRoute {}/{}: this data plane serves HTTPRoutes only; the target is not used",
                    policy.namespace, target.name
                )),
                "HTTPRoute" => {
                    let route = routes
                        .iter()
                        .find(|r| r.namespace == policy.namespace && r.name == target.name);
                    match (route, &target.section_name) {
                        (None, _) => Some(format!(
                            "TargetNotFound: no HTTPRoute {}/{} is served from this file (absent, refused, or not attached to the --gateway)",
                            policy.namespace, target.name
                        )),
                        (Some(r), Some(section))
                            if !r.rules.iter().any(|x| x.name.as_deref() == Some(section)) =>
                        {
                            Some(format!(
                                "TargetNotFound: HTTPRoute {}/{} has no rule named {section:?}",
                                policy.namespace, target.name
                            ))
                        }
                        _ => None,
                    }
                }
                _ => {
                    let used = routes.iter().flat_map(|r| &r.rules).any(|rule| {
                        rule.services
                            .iter()
                            .any(|(ns, name)| *ns == policy.namespace && *name == target.name)
                    });
                    (!used).then(|| {
                        format!(
                            "TargetNotFound: no rule in this file reaches Service {}/{}",
                            policy.namespace, target.name
                        )
                    })
                }
            };
            if let Some(message) = message {
                warnings.push(Notice {
                    at: at.clone(),
                    message,
                });
            }
        }
    }
}
