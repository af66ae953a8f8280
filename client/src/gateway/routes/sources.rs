//! Where a Service `backendRef`'s endpoints come from, and whether a route may name a
//! Service in another namespace.
//!
//! Endpoints come from `Backends` documents (each endpoint ready) and from
//! `discovery.k8s.io/v1` `EndpointSlice`s, owned by a Service through the
//! `kubernetes.io/service-name` label: a `ready` endpoint may take new clients and keep
//! its own (proposed and eligible); one `serving` but not ready (terminating) keeps its
//! clients only (eligible); one not serving is left out. An unset `ready` counts as ready
//! and an unset `serving` as `ready`, as Kubernetes defines them. A slice's ports are the
//! Pods' ports: a `Service` document maps the `backendRef`'s service port to the slice port
//! of the same name; without one, the slice port equal to the service port is used, or the
//! slice's only port. A `ReferenceGrant` in the Service's namespace lets `HTTPRoute`s of
//! the namespaces it names refer to it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::wire;

/// How an endpoint may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Takes new clients and keeps its own.
    Ready,
    /// Keeps the clients it has; no new ones.
    Serving,
}

struct Slice {
    ports: Vec<(Option<String>, u16)>,
    endpoints: Vec<(String, State)>,
}

struct Grant {
    namespace: String,
    from: Vec<String>,
    services: Option<Vec<String>>,
}

/// Every source of endpoints and grants in a route file.
#[derive(Default)]
pub(super) struct Sources {
    backends: BTreeMap<String, Vec<String>>,
    slices: BTreeMap<(String, String), Vec<Slice>>,
    services: BTreeMap<(String, String), Vec<wire::ServicePort>>,
    grants: Vec<Grant>,
}

fn join(address: &str, port: u16) -> String {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{address}:{port}"),
    }
}

impl Sources {
    pub fn add_backends(&mut self, doc: wire::Backends) {
        for (key, endpoints) in doc.endpoints {
            self.backends.entry(key).or_default().extend(endpoints);
        }
    }

    /// Add a slice; `Err` names the field at fault.
    pub fn add_slice(&mut self, doc: wire::EndpointSlice) -> Result<(), (String, String)> {
        let service = doc
            .metadata
            .labels
            .get("kubernetes.io/service-name")
            .cloned()
            .ok_or_else(|| {
                (
                    "metadata.labels".to_string(),
                    "must name the owning Service under kubernetes.io/service-name".to_string(),
                )
            })?;
        if let Some(kind) = doc.address_type.as_deref()
            && !matches!(kind, "IPv4" | "IPv6")
        {
            return Err((
                "addressType".into(),
                format!(
                    "must be IPv4 or IPv6 (got {kind:?}; this data plane does not resolve names)"
                ),
            ));
        }
        let mut ports = Vec::new();
        for (p, port) in doc.ports.unwrap_or_default().into_iter().enumerate() {
            let number = port.port.ok_or_else(|| {
                (
                    format!("ports[{p}].port"),
                    "is required (a slice port without a number means every port, which a Service backendRef cannot use)"
                        .to_string(),
                )
            })?;
            ports.push((port.name.filter(|n| !n.is_empty()), number));
        }
        let mut endpoints = Vec::new();
        for (e, endpoint) in doc.endpoints.unwrap_or_default().into_iter().enumerate() {
            // Kubernetes: consumers use the first address.
            let Some(address) = endpoint.addresses.first() else {
                return Err((
                    format!("endpoints[{e}].addresses"),
                    "must hold at least one address".into(),
                ));
            };
            if address.parse::<IpAddr>().is_err() {
                return Err((
                    format!("endpoints[{e}].addresses[0]"),
                    format!("{address:?} is not an IP address"),
                ));
            }
            // Kubernetes: an unset `ready` means ready; an unset `serving` defers to it.
            let ready = endpoint.conditions.ready.unwrap_or(true);
            let serving = endpoint.conditions.serving.unwrap_or(ready);
            let state = if ready {
                State::Ready
            } else if serving {
                State::Serving
            } else {
                continue;
            };
            endpoints.push((address.clone(), state));
        }
        let namespace = doc.metadata.namespace().to_string();
        self.slices
            .entry((namespace, service))
            .or_default()
            .push(Slice { ports, endpoints });
        Ok(())
    }

    pub fn add_service(&mut self, doc: wire::Service) {
        let key = (
            doc.metadata.namespace().to_string(),
            doc.metadata.name.clone().unwrap_or_default(),
        );
        self.services.insert(key, doc.spec.ports);
    }

    pub fn add_grant(&mut self, doc: wire::ReferenceGrant) {
        let from = doc
            .spec
            .from
            .into_iter()
            .filter(|f| f.group == "gateway.networking.k8s.io" && f.kind == "HTTPRoute")
            .map(|f| f.namespace)
            .collect();
        let mut services = Some(Vec::new());
        let mut any_service = false;
        for to in doc.spec.to {
            if !to.group.is_empty() || to.kind != "Service" {
                continue;
            }
            any_service = true;
            match (to.name, services.as_mut()) {
                (Some(name), Some(list)) => list.push(name),
                (None, _) => services = None,
                (Some(_), None) => {}
            }
        }
        if any_service {
            self.grants.push(Grant {
                namespace: doc.metadata.namespace().to_string(),
                from,
                services,
            });
        }
    }

    /// Whether an `HTTPRoute` in `from` may name Service `name` in `to`.
    pub fn granted(&self, from: &str, to: &str, name: &str) -> bool {
        from == to
            || self.grants.iter().any(|g| {
                g.namespace == to
                    && g.from.iter().any(|f| f == from)
                    && g.services
                        .as_ref()
                        .is_none_or(|s| s.iter().any(|n| n == name))
            })
    }

    /// The ready and serving endpoints of Service `namespace/name` at service port `port`
    /// (possibly none); `Err` when the port cannot be mapped.
    pub fn endpoints(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Result<Vec<(String, State)>, String> {
        let key = format!("{namespace}/{name}:{port}");
        let mut found: Vec<(String, State)> = self
            .backends
            .get(&key)
            .map(|list| list.iter().map(|e| (e.clone(), State::Ready)).collect())
            .unwrap_or_default();
        let id = (namespace.to_string(), name.to_string());
        let service_port = match self.services.get(&id) {
            Some(ports) => Some(
                ports
                    .iter()
                    .find(|p| p.port == port)
                    .ok_or_else(|| format!("Service {namespace}/{name} has no port {port}"))?,
            ),
            None => None,
        };
        let slices = self.slices.get(&id);
        // A slice without endpoints (such as the placeholder of a Service scaled to zero,
        // whose ports are null) adds nothing and maps no port.
        for slice in slices
            .into_iter()
            .flatten()
            .filter(|s| !s.endpoints.is_empty())
        {
            let target = if let Some(sp) = service_port {
                let wanted = sp.name.as_deref().filter(|n| !n.is_empty());
                slice
                    .ports
                    .iter()
                    .find(|(n, _)| n.as_deref() == wanted)
                    .map(|(_, p)| *p)
                    .or_else(|| match &sp.target_port {
                        // Unset: the target port is the service port.
                        None => Some(sp.port),
                        Some(v) => v.as_u64().and_then(|p| u16::try_from(p).ok()),
                    })
            } else {
                let only = match slice.ports.as_slice() {
                    [only] => Some(only),
                    _ => None,
                };
                slice
                    .ports
                    .iter()
                    .find(|(_, p)| *p == port)
                    .or(only)
                    .map(|(_, p)| *p)
            };
            let Some(target) = target else {
                return Err(format!(
                    "no port of the EndpointSlices of {namespace}/{name} matches service port {port} (add the Service document to map it)"
                ));
            };
            for (address, state) in &slice.endpoints {
                found.push((join(address, target), *state));
            }
        }
        // The same address listed twice (two slices, or a slice and a Backends entry)
        // counts once, in its best state.
        let mut unique: Vec<(String, State)> = Vec::with_capacity(found.len());
        for (endpoint, state) in found {
            match unique.iter_mut().find(|(e, _)| *e == endpoint) {
                Some((_, kept)) if state == State::Ready => *kept = State::Ready,
                Some(_) => {}
                None => unique.push((endpoint, state)),
            }
        }
        Ok(unique)
    }
}
