//! Who may call what: roles from a client certificate's names (mutual TLS) or from a bearer
//! token, checked on every call before it reaches a service.
//!
//! A certificate's names are its SAN DNS names and addresses, and its subject common
//! name (CN), for CAs that still put the name there.
//!
//! Roles:
//! - `gateway`: `Resolve`, `Lookup`, `Reassign`, `Release`, `Watch`;
//! - `admin`: every client and operator RPC (`List`, `DrainEndpoint`, the `Cluster`
//!   service) as well;
//! - `peer`: another node: everything, including the `Raft` service and calls a follower
//!   forwards on a client's behalf (the follower checked the client first).
//!
//! Health checks and reflection need no role. The file (`--authz`, TOML):
//!
//! ```toml
//! [[identity]]          # a client certificate for this name (SAN, or CN)
//! name = "gateway.shop.svc"
//! role = "gateway"
//!
//! [[identity]]          # names may be patterns with one leading `*.` label
//! name = "*.affinity-peers.store.svc"
//! role = "peer"
//!
//! [[token]]             # `authorization: Bearer <token>`
//! token = "a long random string"
//! role = "admin"
//! ```
//!
//! A call with neither a matching certificate nor a matching token is refused with
//! PERMISSION_DENIED, which says which role the RPC needs. Without `--authz`, every call
//! that gets through TLS is allowed. The file is read again when it changes
//! ([`Reloading`]); a file that does not load is logged and the roles in force stay.

use std::path::Path;

use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Per-client lease calls.
    Gateway,
    /// Every client and operator call.
    Admin,
    /// Another node.
    Peer,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Admin => "admin",
            Role::Peer => "peer",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    name: String,
    role: Role,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    token: String,
    role: Role,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    identity: Vec<Identity>,
    #[serde(default)]
    token: Vec<Token>,
}

/// The roles of a node's callers.
#[derive(Debug)]
pub struct Authz {
    identities: Vec<Identity>,
    tokens: Vec<Token>,
}

/// An authorization file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("authz {}: {reason}", path.display())]
pub struct AuthzError {
    /// The file.
    pub path: std::path::PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// The role an RPC needs at least, by its gRPC path; `None` for calls open to anyone.
fn needs(path: &str) -> Option<&'static [Role]> {
    const GATEWAY: &[Role] = &[Role::Gateway, Role::Admin, Role::Peer];
    const ADMIN: &[Role] = &[Role::Admin, Role::Peer];
    const PEER: &[Role] = &[Role::Peer];
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => None,
        "affinity.v1.Affinity" => Some(match method {
            "Resolve" | "Lookup" | "Reassign" | "Release" | "Watch" => GATEWAY,
            _ => ADMIN,
        }),
        "affinity.v1.Raft" => Some(PEER),
        _ => Some(ADMIN),
    }
}

impl Authz {
    /// Read the file at `path`.
    pub fn load(path: &Path) -> Result<Authz, AuthzError> {
        let bad = |reason: String| AuthzError {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let file: File = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        for identity in &file.identity {
            let bare = identity.name.strip_prefix("*.").unwrap_or(&identity.name);
            if ServerName::try_from(bare).is_err() || bare.contains('*') {
                return Err(bad(format!(
                    "identity name {:?} is not a DNS name (a leading `*.` label is allowed)",
                    identity.name
                )));
            }
        }
        if let Some(short) = file.token.iter().find(|t| t.token.len() < 16) {
            return Err(bad(format!(
                "a token for role {} is {} characters; use at least 16 random ones",
                short.role.name(),
                short.token.len()
            )));
        }
        Ok(Authz {
            identities: file.identity,
            tokens: file.token,
        })
    }

    /// The roles of a caller: from its bearer token and its certificate.
    fn roles(&self, certificate: Option<&CertificateDer<'_>>, bearer: Option<&str>) -> Vec<Role> {
        let mut roles = Vec::new();
        if let Some(bearer) = bearer {
            roles.extend(
                self.tokens
                    .iter()
                    .filter(|t| constant_time_eq(t.token.as_bytes(), bearer.as_bytes()))
                    .map(|t| t.role),
            );
        }
        if let Some(der) = certificate
            && let Ok(cert) = webpki::EndEntityCert::try_from(der)
        {
            let common_names = common_names(der);
            roles.extend(
                self.identities
                    .iter()
                    .filter(|i| {
                        valid_for(&cert, &i.name)
                            || common_names.iter().any(|cn| name_matches(&i.name, cn))
                    })
                    .map(|i| i.role),
            );
        }
        roles
    }

    /// Whether a call to `path` with this certificate and `authorization` header may go on.
    pub fn check(
        &self,
        path: &str,
        certificate: Option<&CertificateDer<'_>>,
        authorization: Option<&str>,
    ) -> Result<(), Status> {
        let Some(allowed) = needs(path) else {
            return Ok(());
        };
        let bearer = authorization.and_then(|h| h.strip_prefix("Bearer "));
        let roles = self.roles(certificate, bearer);
        if roles.iter().any(|r| allowed.contains(r)) {
            return Ok(());
        }
        let wanted: Vec<&str> = allowed.iter().map(|r| r.name()).collect();
        let had = if roles.is_empty() {
            "no role (no client certificate or bearer token named in --authz)".to_string()
        } else {
            let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
            format!("role {}", names.join(", "))
        };
        Err(Status::permission_denied(format!(
            "{path} needs role {}; this caller has {had}",
            wanted.join(" or ")
        )))
    }
}

/// The subject common names of a certificate (DER), lower-cased.
fn common_names(der: &[u8]) -> Vec<String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| {
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `name` matches `pattern`: equal (ignoring case), or for `*.rest`, one label in
/// front of `rest`.
fn name_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(rest) => name
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => pattern == name,
    }
}

/// Whether `cert` is valid for `pattern`: a DNS name, or `*.rest` for any one label in front
/// of `rest`.
fn valid_for(cert: &webpki::EndEntityCert<'_>, pattern: &str) -> bool {
    let check = |name: &str| {
        ServerName::try_from(name).is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
    };
    match pattern.strip_prefix("*.") {
        // A certificate for `x.rest` (or for `*.rest` itself) matches `*.rest`: ask for a
        // name that only a wildcard or some one-label name could cover.
        Some(rest) => {
            check(&format!("affinity-authz-probe.{rest}"))
                || cert
                    .valid_dns_names()
                    .any(|n| n.split_once('.').is_some_and(|(_, tail)| tail == rest))
        }
        None => check(pattern),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The roles in force, from a file read again whenever it changes.
pub struct Reloading {
    path: std::path::PathBuf,
    current: arc_swap::ArcSwap<Authz>,
}

impl Reloading {
    /// Read the file at `path`.
    pub fn load(path: &Path) -> Result<Reloading, AuthzError> {
        Ok(Reloading {
            path: path.to_path_buf(),
            current: arc_swap::ArcSwap::from_pointee(Authz::load(path)?),
        })
    }

    /// Check the file every `interval` and take it when it changes and loads, until `stop`.
    pub async fn follow(
        self: std::sync::Arc<Self>,
        interval: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let path = self.path.clone();
        crate::tls::on_change(vec![path], interval, stop, || {
            match Authz::load(&self.path) {
                Ok(fresh) => {
                    self.current.store(std::sync::Arc::new(fresh));
                    tracing::info!(file = %self.path.display(), "authorization file reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "authorization file not reloaded; keeping the roles in force");
                }
            }
            // A broken file is not retried until it changes again.
            true
        })
        .await;
    }
}

impl crate::gate::Gate for Reloading {
    fn admit(&self, request: &http::Request<Body>) -> Result<(), Status> {
        self.current.load().admit(request)
    }
}

impl crate::gate::Gate for Authz {
    fn admit(&self, request: &http::Request<Body>) -> Result<(), Status> {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let leaf = certs.as_ref().and_then(|c| c.first());
        self.check(request.uri().path(), leaf, authorization)
            .inspect_err(|status| {
                tracing::info!(path = %request.uri().path(), reason = %status.message(), "call refused");
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Authz, AuthzError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authz.toml");
        std::fs::write(&path, text).unwrap();
        Authz::load(&path)
    }

    #[test]
    fn each_rpc_needs_its_role() {
        let gateway = Some(&[Role::Gateway, Role::Admin, Role::Peer][..]);
        let admin = Some(&[Role::Admin, Role::Peer][..]);
        for rpc in ["Resolve", "Lookup", "Reassign", "Release", "Watch"] {
            assert_eq!(
                needs(&format!("/affinity.v1.Affinity/{rpc}")),
                gateway,
                "{rpc}"
            );
        }
        assert_eq!(needs("/affinity.v1.Affinity/List"), admin);
        assert_eq!(needs("/affinity.v1.Affinity/DrainEndpoint"), admin);
        assert_eq!(needs("/affinity.v1.Cluster/Status"), admin);
        assert_eq!(needs("/affinity.v1.Raft/Vote"), Some(&[Role::Peer][..]));
        assert_eq!(needs("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            needs("/something.Else/Call"),
            admin,
            "unknown services need admin"
        );
    }

    #[test]
    fn tokens_grant_their_role_and_nothing_else() {
        let authz =
            load("[[token]]\ntoken = \"0123456789abcdef-gw\"\nrole = \"gateway\"\n").unwrap();
        let ok = authz.check(
            "/affinity.v1.Affinity/Resolve",
            None,
            Some("Bearer 0123456789abcdef-gw"),
        );
        assert!(ok.is_ok());
        let denied = authz
            .check(
                "/affinity.v1.Cluster/Status",
                None,
                Some("Bearer 0123456789abcdef-gw"),
            )
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("role gateway"),
            "{}",
            denied.message()
        );
        let wrong = authz
            .check(
                "/affinity.v1.Affinity/Resolve",
                None,
                Some("Bearer 0123456789abcdef-xx"),
            )
            .unwrap_err();
        assert!(wrong.message().contains("no role"), "{}", wrong.message());
        assert!(
            authz
                .check("/grpc.health.v1.Health/Check", None, None)
                .is_ok()
        );
    }

    #[test]
    fn certificates_name_their_holder_by_san_or_common_name() {
        let mut params =
            rcgen::CertificateParams::new(vec!["gw-1.gateways.test".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ops-team");
        let key = rcgen::KeyPair::generate().unwrap();
        let der = CertificateDer::from(params.self_signed(&key).unwrap().der().to_vec());
        let authz = load(
            "[[identity]]\nname = \"*.gateways.test\"\nrole = \"gateway\"\n\n\
             [[identity]]\nname = \"Ops-Team\"\nrole = \"admin\"\n",
        )
        .unwrap();
        let roles = authz.roles(Some(&der), None);
        assert!(
            roles.contains(&Role::Gateway),
            "SAN under a wildcard: {roles:?}"
        );
        assert!(roles.contains(&Role::Admin), "CN, ignoring case: {roles:?}");
        assert!(
            authz
                .check("/affinity.v1.Cluster/Status", Some(&der), None)
                .is_ok()
        );
        let other = load("[[identity]]\nname = \"someone.test\"\nrole = \"admin\"\n").unwrap();
        assert!(other.roles(Some(&der), None).is_empty());
    }

    #[test]
    fn bad_files_are_refused_naming_the_problem() {
        let short = load("[[token]]\ntoken = \"short\"\nrole = \"admin\"\n").unwrap_err();
        assert!(short.reason.contains("at least 16"), "{short}");
        let name = load("[[identity]]\nname = \"not a name\"\nrole = \"gateway\"\n").unwrap_err();
        assert!(name.reason.contains("not a DNS name"), "{name}");
        let role = load("[[identity]]\nname = \"a.test\"\nrole = \"root\"\n").unwrap_err();
        assert!(role.reason.contains("root"), "{role}");
        let field =
            load("[[identity]]\nname = \"a.test\"\nrole = \"admin\"\nextra = 1\n").unwrap_err();
        assert!(field.reason.contains("extra"), "{field}");
    }
}
