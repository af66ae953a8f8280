//! Checked forms of the `Affinity` requests.
//!
//! Each wire request converts into its checked form with `TryFrom`, or fails with the first
//! [`ValidationError`] found, naming the field and the rule. The rules:
//!
//! | field | rule |
//! | --- | --- |
//! | `scope` | 1..=256 bytes of UTF-8, no control characters (may be empty only where it means "all scopes") |
//! | `client_ip` | an IPv4 or IPv6 address |
//! | `policy` | required where a lease may be created; masks 0..=32 / 0..=128; `absolute_timeout_ms` 1 ms ..= 30 days; `idle_timeout_ms` 1 ms ..= absolute |
//! | `endpoint`, `expected_endpoint`, `eligible_endpoints[i]` | 1..=255 bytes, no control characters |
//! | `eligible_endpoints` | at most 1024 entries, and they must include `endpoint` |
//! | `page_size` | 0 (default 100) ..= 1000 |
//! | `page_token` | at most 1024 bytes |
//! | `request_id` | empty (none), or 1..=128 printable ASCII characters without spaces |

use crate::error::ValidationError;
use crate::key::{ClientKey, Masks, truncate_for_message};
use crate::pb;
use crate::policy::{Policy, masks_from_pb};

/// Longest scope, in bytes.
pub const MAX_SCOPE_BYTES: usize = 256;
/// Longest endpoint, in bytes.
pub const MAX_ENDPOINT_BYTES: usize = 255;
/// Most entries in `eligible_endpoints`.
pub const MAX_ELIGIBLE_ENDPOINTS: usize = 1024;
/// Page size used when a List request gives 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page a List request may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Longest page token, in bytes.
pub const MAX_PAGE_TOKEN_BYTES: usize = 1024;
/// Longest request id, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Check a write's `request_id`: empty (no id), or 1..=128 printable ASCII characters
/// without spaces.
pub fn check_request_id(field: &'static str, id: &str) -> Result<(), ValidationError> {
    if id.len() > MAX_REQUEST_ID_BYTES {
        return Err(ValidationError::new(
            field,
            format!(
                "must be at most {MAX_REQUEST_ID_BYTES} bytes (got {})",
                id.len()
            ),
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ValidationError::new(
            field,
            format!(
                "must be printable ASCII without spaces (got {:?})",
                truncate_for_message(id)
            ),
        ));
    }
    Ok(())
}

/// A fresh name for one logical write, to send as its `request_id` and keep across its
/// retries: 128 random bits as 32 hex digits.
pub fn new_request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// Check a scope: 1..=256 bytes, no control characters.
pub fn check_scope(field: &'static str, scope: &str) -> Result<(), ValidationError> {
    check_text(field, scope, MAX_SCOPE_BYTES)
}

/// Check an endpoint: 1..=255 bytes, no control characters.
pub fn check_endpoint(field: impl Into<String>, endpoint: &str) -> Result<(), ValidationError> {
    check_text(field.into(), endpoint, MAX_ENDPOINT_BYTES)
}

fn check_text(
    field: impl Into<std::borrow::Cow<'static, str>>,
    text: &str,
    max: usize,
) -> Result<(), ValidationError> {
    if text.is_empty() {
        return Err(ValidationError::new(
            field,
            format!("must be 1..={max} bytes (got 0)"),
        ));
    }
    if text.len() > max {
        return Err(ValidationError::new(
            field,
            format!("must be 1..={max} bytes (got {})", text.len()),
        ));
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(ValidationError::new(
            field,
            format!(
                "must not contain control characters (found {c:?} in {:?})",
                truncate_for_message(text)
            ),
        ));
    }
    Ok(())
}

/// An empty scope means "every scope"; anything else must be a valid scope.
fn optional_scope(scope: String) -> Result<Option<String>, ValidationError> {
    if scope.is_empty() {
        Ok(None)
    } else {
        check_scope("scope", &scope)?;
        Ok(Some(scope))
    }
}

fn key(client_ip: &str, masks: Masks) -> Result<ClientKey, ValidationError> {
    ClientKey::parse_ip(client_ip, masks)
}

fn required_policy(policy: Option<&pb::Policy>) -> Result<Policy, ValidationError> {
    let wire = policy.ok_or_else(|| {
        ValidationError::new("policy", "is required (absolute_timeout_ms at least)")
    })?;
    Policy::from_pb(wire).map_err(|e| e.within("policy"))
}

fn masks_only(policy: Option<&pb::Policy>) -> Result<Masks, ValidationError> {
    policy
        .map_or(Ok(Masks::default()), masks_from_pb)
        .map_err(|e| e.within("policy"))
}

/// A checked `Resolve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolve {
    /// Persistence domain.
    pub scope: String,
    /// Masked client key.
    pub key: ClientKey,
    /// Masks and timeouts.
    pub policy: Policy,
    /// Proposed endpoint.
    pub endpoint: String,
    /// Endpoints that may serve; empty means any.
    pub eligible: Vec<String>,
    /// The caller's name for this write; empty: none.
    pub request_id: String,
}

impl TryFrom<pb::ResolveRequest> for Resolve {
    type Error = ValidationError;

    fn try_from(req: pb::ResolveRequest) -> Result<Self, Self::Error> {
        check_scope("scope", &req.scope)?;
        let policy = required_policy(req.policy.as_ref())?;
        let key = key(&req.client_ip, policy.masks())?;
        check_endpoint("endpoint", &req.endpoint)?;
        if req.eligible_endpoints.len() > MAX_ELIGIBLE_ENDPOINTS {
            return Err(ValidationError::new(
                "eligible_endpoints",
                format!(
                    "must have at most {MAX_ELIGIBLE_ENDPOINTS} entries (got {})",
                    req.eligible_endpoints.len()
                ),
            ));
        }
        for (i, e) in req.eligible_endpoints.iter().enumerate() {
            check_endpoint(format!("eligible_endpoints[{i}]"), e)?;
        }
        if !req.eligible_endpoints.is_empty() && !req.eligible_endpoints.contains(&req.endpoint) {
            return Err(ValidationError::new(
                "endpoint",
                format!(
                    "must be one of eligible_endpoints when they are given ({:?} is not)",
                    truncate_for_message(&req.endpoint)
                ),
            ));
        }
        check_request_id("request_id", &req.request_id)?;
        Ok(Self {
            scope: req.scope,
            key,
            policy,
            endpoint: req.endpoint,
            eligible: req.eligible_endpoints,
            request_id: req.request_id,
        })
    }
}

impl From<&Resolve> for pb::ResolveRequest {
    /// The wire form of a checked request (to send it on): the key's network address stands
    /// for the client address, which the same masks map to the same key.
    fn from(r: &Resolve) -> Self {
        pb::ResolveRequest {
            scope: r.scope.clone(),
            client_ip: r.key.addr().to_string(),
            policy: Some(r.policy.to_pb()),
            endpoint: r.endpoint.clone(),
            eligible_endpoints: r.eligible.clone(),
            request_id: r.request_id.clone(),
        }
    }
}

/// A checked `Lookup`. Only the policy's masks matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Persistence domain.
    pub scope: String,
    /// Masked client key.
    pub key: ClientKey,
    /// Read the local replica without confirming leadership.
    pub allow_stale: bool,
}

impl TryFrom<pb::LookupRequest> for Lookup {
    type Error = ValidationError;

    fn try_from(req: pb::LookupRequest) -> Result<Self, Self::Error> {
        check_scope("scope", &req.scope)?;
        let masks = masks_only(req.policy.as_ref())?;
        let key = key(&req.client_ip, masks)?;
        Ok(Self {
            scope: req.scope,
            key,
            allow_stale: req.allow_stale,
        })
    }
}

/// A checked `Reassign`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassign {
    /// Persistence domain.
    pub scope: String,
    /// Masked client key.
    pub key: ClientKey,
    /// Masks and timeouts of the new lease.
    pub policy: Policy,
    /// Endpoint the live lease must name.
    pub expected_endpoint: String,
    /// Endpoint of the new lease.
    pub endpoint: String,
    /// The caller's name for this write; empty: none.
    pub request_id: String,
}

impl TryFrom<pb::ReassignRequest> for Reassign {
    type Error = ValidationError;

    fn try_from(req: pb::ReassignRequest) -> Result<Self, Self::Error> {
        check_scope("scope", &req.scope)?;
        let policy = required_policy(req.policy.as_ref())?;
        let key = key(&req.client_ip, policy.masks())?;
        check_endpoint("expected_endpoint", &req.expected_endpoint)?;
        check_endpoint("endpoint", &req.endpoint)?;
        check_request_id("request_id", &req.request_id)?;
        Ok(Self {
            scope: req.scope,
            key,
            policy,
            expected_endpoint: req.expected_endpoint,
            endpoint: req.endpoint,
            request_id: req.request_id,
        })
    }
}

/// A checked `Release`. Only the policy's masks matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Persistence domain.
    pub scope: String,
    /// Masked client key.
    pub key: ClientKey,
    /// The caller's name for this write; empty: none.
    pub request_id: String,
}

impl TryFrom<pb::ReleaseRequest> for Release {
    type Error = ValidationError;

    fn try_from(req: pb::ReleaseRequest) -> Result<Self, Self::Error> {
        check_scope("scope", &req.scope)?;
        let masks = masks_only(req.policy.as_ref())?;
        let key = key(&req.client_ip, masks)?;
        check_request_id("request_id", &req.request_id)?;
        Ok(Self {
            scope: req.scope,
            key,
            request_id: req.request_id,
        })
    }
}

/// A checked `DrainEndpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainEndpoint {
    /// One scope, or `None` for all.
    pub scope: Option<String>,
    /// Endpoint whose leases go.
    pub endpoint: String,
    /// The caller's name for this write; empty: none.
    pub request_id: String,
}

impl TryFrom<pb::DrainEndpointRequest> for DrainEndpoint {
    type Error = ValidationError;

    fn try_from(req: pb::DrainEndpointRequest) -> Result<Self, Self::Error> {
        let scope = optional_scope(req.scope)?;
        check_endpoint("endpoint", &req.endpoint)?;
        check_request_id("request_id", &req.request_id)?;
        Ok(Self {
            scope,
            endpoint: req.endpoint,
            request_id: req.request_id,
        })
    }
}

/// A checked `List`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    /// One scope, or `None` for all.
    pub scope: Option<String>,
    /// Leases per page, 1..=1000.
    pub page_size: u32,
    /// Opaque continuation token; empty for the first page.
    pub page_token: String,
}

impl TryFrom<pb::ListRequest> for List {
    type Error = ValidationError;

    fn try_from(req: pb::ListRequest) -> Result<Self, Self::Error> {
        let scope = optional_scope(req.scope)?;
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n <= MAX_PAGE_SIZE => n,
            n => {
                return Err(ValidationError::new(
                    "page_size",
                    format!(
                        "must be 0 (default {DEFAULT_PAGE_SIZE}) ..= {MAX_PAGE_SIZE} (got {n})"
                    ),
                ));
            }
        };
        if req.page_token.len() > MAX_PAGE_TOKEN_BYTES {
            return Err(ValidationError::new(
                "page_token",
                format!(
                    "must be at most {MAX_PAGE_TOKEN_BYTES} bytes (got {}); pass the token a previous response returned",
                    req.page_token.len()
                ),
            ));
        }
        Ok(Self {
            scope,
            page_size,
            page_token: req.page_token,
        })
    }
}

/// A checked `Watch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// One scope, or `None` for all.
    pub scope: Option<String>,
    /// Replay from this revision (0: from now on).
    pub start_revision: u64,
}

impl TryFrom<pb::WatchRequest> for Watch {
    type Error = ValidationError;

    fn try_from(req: pb::WatchRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            scope: optional_scope(req.scope)?,
            start_revision: req.start_revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> pb::Policy {
        pb::Policy {
            ipv4_mask: Some(24),
            ipv6_mask: None,
            absolute_timeout_ms: 60_000,
            idle_timeout_ms: None,
        }
    }

    fn resolve() -> pb::ResolveRequest {
        pb::ResolveRequest {
            scope: "default/web/0".into(),
            client_ip: "10.1.2.3".into(),
            policy: Some(policy()),
            endpoint: "10.4.0.17:8080".into(),
            eligible_endpoints: vec![],
            request_id: String::new(),
        }
    }

    type Edit = Box<dyn FnOnce(&mut pb::ResolveRequest)>;

    fn resolve_error(edit: impl FnOnce(&mut pb::ResolveRequest)) -> ValidationError {
        let mut req = resolve();
        edit(&mut req);
        Resolve::try_from(req).unwrap_err()
    }

    #[test]
    fn a_checked_resolve_goes_back_to_the_same_request() {
        let wire = pb::ResolveRequest {
            client_ip: "::ffff:10.4.7.99".into(),
            eligible_endpoints: vec!["10.4.0.17:8080".into(), "10.4.0.18:8080".into()],
            request_id: new_request_id(),
            ..resolve()
        };
        let checked = Resolve::try_from(wire).unwrap();
        let again = Resolve::try_from(pb::ResolveRequest::from(&checked)).unwrap();
        assert_eq!(again, checked);
    }

    #[test]
    fn request_ids_are_optional_printable_and_bounded() {
        let named = pb::ResolveRequest {
            request_id: new_request_id(),
            ..resolve()
        };
        assert_eq!(named.request_id.len(), 32);
        assert_eq!(
            Resolve::try_from(named.clone()).unwrap().request_id,
            named.request_id
        );
        assert_eq!(Resolve::try_from(resolve()).unwrap().request_id, "");
        assert_ne!(new_request_id(), new_request_id());
        for (bad, rule) in [
            ("two words", "printable ASCII"),
            ("caf\u{e9}", "printable ASCII"),
            (&"x".repeat(129), "at most 128 bytes"),
        ] {
            let err = Resolve::try_from(pb::ResolveRequest {
                request_id: bad.to_string(),
                ..resolve()
            })
            .unwrap_err();
            assert_eq!(err.field, "request_id");
            assert!(err.rule.contains(rule), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_good_resolve_is_keyed_by_its_prefix() {
        let r = Resolve::try_from(resolve()).unwrap();
        assert_eq!(r.key.to_string(), "10.1.2.0/24");
        assert_eq!(r.policy.absolute_timeout_ms(), 60_000);
    }

    #[test]
    fn every_resolve_field_is_checked_by_name() {
        let long = |n| "a".repeat(n);
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|r| r.scope.clear()), "scope"),
            (Box::new(move |r| r.scope = long(257)), "scope"),
            (Box::new(|r| r.scope = "a\nb".into()), "scope"),
            (Box::new(|r| r.scope = "tab\there".into()), "scope"),
            (Box::new(|r| r.client_ip = "10.1.2".into()), "client_ip"),
            (Box::new(|r| r.client_ip.clear()), "client_ip"),
            (Box::new(|r| r.policy = None), "policy"),
            (
                Box::new(|r| r.policy.as_mut().unwrap().ipv4_mask = Some(40)),
                "policy.ipv4_mask",
            ),
            (
                Box::new(|r| r.policy.as_mut().unwrap().ipv6_mask = Some(129)),
                "policy.ipv6_mask",
            ),
            (
                Box::new(|r| r.policy.as_mut().unwrap().absolute_timeout_ms = 0),
                "policy.absolute_timeout_ms",
            ),
            (
                Box::new(|r| r.policy.as_mut().unwrap().idle_timeout_ms = Some(60_001)),
                "policy.idle_timeout_ms",
            ),
            (Box::new(|r| r.endpoint.clear()), "endpoint"),
            (Box::new(move |r| r.endpoint = long(256)), "endpoint"),
            (Box::new(|r| r.endpoint = "x\u{7f}".into()), "endpoint"),
            (
                Box::new(|r| r.eligible_endpoints = vec!["10.4.0.17:8080".into(), String::new()]),
                "eligible_endpoints[1]",
            ),
            (
                Box::new(|r| r.eligible_endpoints = vec!["10.4.0.18:8080".into()]),
                "endpoint",
            ),
            (
                Box::new(|r| r.eligible_endpoints = vec!["e".into(); MAX_ELIGIBLE_ENDPOINTS + 1]),
                "eligible_endpoints",
            ),
        ];
        for (edit, field) in cases {
            let err = resolve_error(edit);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let mut r = resolve();
        r.scope = "s".repeat(MAX_SCOPE_BYTES);
        r.endpoint = "e".repeat(MAX_ENDPOINT_BYTES);
        r.eligible_endpoints = vec![r.endpoint.clone()];
        assert!(Resolve::try_from(r).is_ok());
        // Multi-byte UTF-8 counts bytes, not characters.
        let mut r = resolve();
        r.scope = "é".repeat(129);
        assert_eq!(Resolve::try_from(r).unwrap_err().field, "scope");
    }

    #[test]
    fn lookup_and_release_need_only_masks() {
        let l = Lookup::try_from(pb::LookupRequest {
            scope: "s".into(),
            client_ip: "::ffff:10.1.2.3".into(),
            policy: None,
            allow_stale: true,
        })
        .unwrap();
        assert_eq!(l.key.to_string(), "10.1.2.3/32");
        let r = Release::try_from(pb::ReleaseRequest {
            scope: "s".into(),
            client_ip: "10.1.2.3".into(),
            policy: Some(policy()),
            request_id: String::new(),
        })
        .unwrap();
        assert_eq!(r.key.to_string(), "10.1.2.0/24");
        let err = Lookup::try_from(pb::LookupRequest {
            scope: "s".into(),
            client_ip: "10.1.2.3".into(),
            policy: Some(pb::Policy {
                ipv4_mask: Some(99),
                ..Default::default()
            }),
            allow_stale: false,
        })
        .unwrap_err();
        assert_eq!(err.field, "policy.ipv4_mask");
    }

    #[test]
    fn reassign_checks_both_endpoints() {
        let base = pb::ReassignRequest {
            scope: "s".into(),
            client_ip: "10.1.2.3".into(),
            policy: Some(policy()),
            expected_endpoint: "a:1".into(),
            endpoint: "b:1".into(),
            request_id: String::new(),
        };
        assert!(Reassign::try_from(base.clone()).is_ok());
        let mut bad = base.clone();
        bad.expected_endpoint.clear();
        assert_eq!(
            Reassign::try_from(bad).unwrap_err().field,
            "expected_endpoint"
        );
        let mut bad = base;
        bad.endpoint = "b\u{0}".into();
        assert_eq!(Reassign::try_from(bad).unwrap_err().field, "endpoint");
    }

    #[test]
    fn empty_scope_means_all_where_allowed() {
        let d = DrainEndpoint::try_from(pb::DrainEndpointRequest {
            scope: String::new(),
            endpoint: "a:1".into(),
            request_id: String::new(),
        })
        .unwrap();
        assert_eq!(d.scope, None);
        let err = DrainEndpoint::try_from(pb::DrainEndpointRequest {
            scope: "x\ty".into(),
            endpoint: "a:1".into(),
            request_id: String::new(),
        })
        .unwrap_err();
        assert_eq!(err.field, "scope");
        assert_eq!(
            Watch::try_from(pb::WatchRequest {
                scope: String::new(),
                start_revision: 7,
            })
            .unwrap(),
            Watch {
                scope: None,
                start_revision: 7
            }
        );
        let err = DrainEndpoint::try_from(pb::DrainEndpointRequest {
            scope: "s".into(),
            endpoint: String::new(),
            request_id: String::new(),
        })
        .unwrap_err();
        assert_eq!(err.field, "endpoint");
    }

    #[test]
    fn list_page_rules() {
        let list = |size, token: &str| {
            List::try_from(pb::ListRequest {
                scope: "s".into(),
                page_size: size,
                page_token: token.into(),
            })
        };
        assert_eq!(list(0, "").unwrap().page_size, DEFAULT_PAGE_SIZE);
        assert_eq!(list(MAX_PAGE_SIZE, "").unwrap().page_size, MAX_PAGE_SIZE);
        assert_eq!(list(MAX_PAGE_SIZE + 1, "").unwrap_err().field, "page_size");
        assert_eq!(
            list(10, &"t".repeat(MAX_PAGE_TOKEN_BYTES + 1))
                .unwrap_err()
                .field,
            "page_token"
        );
    }

    #[test]
    fn error_messages_are_bounded() {
        let err = resolve_error(|r| r.client_ip = "x".repeat(100_000));
        assert!(err.to_string().len() < 300, "{}", err.to_string().len());
    }
}
