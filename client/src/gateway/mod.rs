//! Gateway API configuration: the `sessionPersistence` block of a route rule, from the YAML
//! or JSON a gateway reads, to a [`Policy`]; and [`routes`], the route file (`HTTPRoute`
//! documents and the endpoints behind their Services) that the example gateway and any
//! other data plane built on this crate read; and [`client_ip`], which address a request
//! counts as coming from (the socket peer, or a trusted `X-Forwarded-For` hop); with the
//! `dataplane` feature, [`serve`]: the logging and admin endpoint of a data plane process.
//!
//! The rules (type `ClientIP`, GEP-2257 durations, `ipMask` and the per-family masks) live in
//! `affinity-proto`, shared with the store; this module only parses text.

use std::path::Path;

use affinity_proto::{Policy, SessionPersistence, ValidationError};

use crate::{Builder, ClientTls, Source};

pub mod client_ip;
pub mod routes;
#[cfg(feature = "dataplane")]
pub mod serve;

/// How a data plane chose a request's backend: what its debug headers, logs and metric
/// labels say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// From this replica's lease cache.
    Cache,
    /// From the store.
    Store {
        /// The store created the lease on this request.
        created: bool,
        /// The store replaced a lease whose backend was not eligible.
        replaced: bool,
    },
    /// The store did not answer in time: rendezvous hashing over the eligible backends.
    Fallback,
    /// The rule has no session persistence: round robin.
    RoundRobin,
}

impl Decided {
    /// The decision of a sticky rule, from where the client's answer came.
    pub fn from_source(source: Source) -> Decided {
        match source {
            Source::Cache => Decided::Cache,
            Source::Store { created, replaced } => Decided::Store { created, replaced },
            // `Source` may grow; anything else is not the store's decision.
            _ => Decided::Fallback,
        }
    }

    /// The `affinity-decision` header value (and metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Decided::Cache => "cache",
            Decided::Store { .. } => "store",
            Decided::Fallback => "fallback",
            Decided::RoundRobin => "round-robin",
        }
    }

    /// The `affinity-lease` header value: what the store did with the lease.
    pub fn lease(self) -> Option<&'static str> {
        match self {
            Decided::Store { created: true, .. } => Some("created"),
            Decided::Store { replaced: true, .. } => Some("replaced"),
            Decided::Store { .. } => Some("kept"),
            _ => None,
        }
    }
}

/// The policy of a `sessionPersistence` block written in YAML.
pub fn policy_from_yaml(text: &str) -> Result<Policy, ValidationError> {
    let block: SessionPersistence = serde_norway::from_str(text).map_err(|e| {
        ValidationError::new(
            "sessionPersistence",
            format!("is not valid YAML for this block: {e}"),
        )
    })?;
    Policy::from_session_persistence(&block)
}

/// The policy of a `sessionPersistence` block written in JSON.
pub fn policy_from_json(text: &str) -> Result<Policy, ValidationError> {
    let block: SessionPersistence = serde_json::from_str(text).map_err(|e| {
        ValidationError::new(
            "sessionPersistence",
            format!("is not valid JSON for this block: {e}"),
        )
    })?;
    Policy::from_session_persistence(&block)
}

/// Apply a data plane's store security flags to `builder`: `--store-tls-ca` (trust node
/// certificates this CA signs), `--store-tls-cert` and `--store-tls-key` (a client
/// certificate for mTLS; both need the CA), `--store-token-file` (a bearer token, trimmed;
/// refused without TLS, so a token never crosses the network in plaintext). Errors name
/// the flag.
pub fn store_security(
    mut builder: Builder,
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    token_file: Option<&Path>,
) -> Result<Builder, String> {
    match ca {
        Some(ca) => {
            let tls =
                ClientTls::from_files(ca, cert, key).map_err(|e| format!("--store-tls-*: {e}"))?;
            builder = builder.tls(tls);
        }
        None if cert.is_some() || key.is_some() => {
            return Err("--store-tls-cert and --store-tls-key need --store-tls-ca".into());
        }
        None => {}
    }
    if let Some(path) = token_file {
        if ca.is_none() {
            return Err(
                "--store-token-file needs --store-tls-ca: a token must not cross the network in plaintext"
                    .into(),
            );
        }
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("--store-token-file {}: {e}", path.display()))?;
        builder = builder.token(token.trim());
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_give_the_same_policy() {
        let yaml = "type: ClientIP\nabsoluteTimeout: 10m\nidleTimeout: 2m\nipMask: 24\n";
        let json = r#"{"type":"ClientIP","absoluteTimeout":"10m","idleTimeout":"2m","ipMask":24}"#;
        assert_eq!(
            policy_from_yaml(yaml).unwrap(),
            policy_from_json(json).unwrap()
        );
    }

    #[test]
    fn errors_name_the_block() {
        assert_eq!(
            policy_from_yaml("type: [").unwrap_err().field,
            "sessionPersistence"
        );
        assert_eq!(
            policy_from_json("{\"typo\": 1}").unwrap_err().field,
            "sessionPersistence"
        );
        assert_eq!(
            policy_from_yaml("type: ClientIP\nabsoluteTimeout: 1.5h\n")
                .unwrap_err()
                .field,
            "sessionPersistence.absoluteTimeout"
        );
    }
}
