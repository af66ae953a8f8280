//! The route file's documents as they are written: the serde shapes of the Kubernetes
//! kinds the parser reads (`HTTPRoute`, `EndpointSlice`, `Service`, `ReferenceGrant`,
//! `ClientIPSessionPersistencePolicy`, and affinity's own `Backends`). Fields a data plane
//! does not act on are left out and so ignored; fields it cannot honour are read so that
//! the parser can refuse them by name.

use std::collections::BTreeMap;

use affinity_proto::SessionPersistence;
use serde::Deserialize;

/// `metadata` of any object.
#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub(super) struct Metadata {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Metadata {
    /// `namespace/name`, with `default` for an unset namespace.
    pub fn id(&self) -> String {
        format!(
            "{}/{}",
            self.namespace(),
            self.name.as_deref().unwrap_or_default()
        )
    }

    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// `kind: List`, as `kubectl get ... -o yaml` prints several objects.
#[derive(Deserialize)]
pub(super) struct List {
    #[serde(default)]
    pub items: Vec<serde_norway::Value>,
}

/// affinity's own `Backends`: `namespace/service:port` -> endpoints, all ready.
#[derive(Deserialize)]
pub(super) struct Backends {
    #[serde(default)]
    pub endpoints: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
pub(super) struct HttpRoute {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: RouteSpec,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[derive(Deserialize)]
pub(super) struct ParentRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<Match>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub session_persistence: Option<SessionPersistence>,
    #[serde(default)]
    pub filters: Vec<Filter>,
}

/// A filter, read only to be refused by its type.
#[derive(Deserialize)]
pub(super) struct Filter {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

/// The filters' types, for a message.
pub(super) fn filter_types(filters: &[Filter]) -> String {
    filters
        .iter()
        .map(|f| f.kind.as_deref().unwrap_or("(no type)"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Match {
    #[serde(default)]
    pub path: Option<Path>,
    #[serde(default)]
    pub headers: Vec<serde_norway::Value>,
    #[serde(default)]
    pub query_params: Vec<serde_norway::Value>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Path {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct BackendRef {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub filters: Vec<Filter>,
}

/// `discovery.k8s.io/v1` `EndpointSlice`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EndpointSlice {
    pub metadata: Metadata,
    #[serde(default)]
    pub address_type: Option<String>,
    #[serde(default)]
    pub ports: Option<Vec<SlicePort>>,
    #[serde(default)]
    pub endpoints: Option<Vec<SliceEndpoint>>,
}

#[derive(Deserialize)]
pub(super) struct SlicePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Deserialize)]
pub(super) struct SliceEndpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Conditions,
}

#[derive(Deserialize, Default)]
pub(super) struct Conditions {
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub serving: Option<bool>,
}

/// `v1` `Service`: only its ports matter (service port -> port name).
#[derive(Deserialize)]
pub(super) struct Service {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ServiceSpec,
}

#[derive(Deserialize, Default)]
pub(super) struct ServiceSpec {
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub target_port: Option<serde_norway::Value>,
}

/// `gateway.networking.k8s.io` `ReferenceGrant`.
#[derive(Deserialize)]
pub(super) struct ReferenceGrant {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: GrantSpec,
}

#[derive(Deserialize, Default)]
pub(super) struct GrantSpec {
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

#[derive(Deserialize)]
pub(super) struct GrantFrom {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Deserialize)]
pub(super) struct GrantTo {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// `affinity.dev/v1alpha1` `ClientIPSessionPersistencePolicy`.
#[derive(Deserialize)]
pub(super) struct Policy {
    pub metadata: Metadata,
    pub spec: PolicySpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PolicySpec {
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub absolute_timeout: Option<String>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub ip_mask: Option<u32>,
    #[serde(default)]
    pub ipv4_mask: Option<u32>,
    #[serde(default)]
    pub ipv6_mask: Option<u32>,
}

impl PolicySpec {
    /// The same settings as a rule-level block, so one parser checks both.
    pub fn as_block(&self) -> SessionPersistence {
        SessionPersistence {
            kind: Some("ClientIP".into()),
            absolute_timeout: self.absolute_timeout.clone(),
            idle_timeout: self.idle_timeout.clone(),
            ip_mask: self.ip_mask,
            ipv4_mask: self.ipv4_mask,
            ipv6_mask: self.ipv6_mask,
            ..SessionPersistence::default()
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
}
