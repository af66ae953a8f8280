//! TLS towards the store: the CA that signs the nodes' certificates, and, for mutual TLS,
//! this client's own certificate and key.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::error::ClientError;

/// TLS settings for [`crate::Builder::tls`]. The CA is required (there are no built-in
/// roots); the identity is needed when the nodes require client certificates
/// (`--tls-client-ca`).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    server_name: Option<String>,
}

impl ClientTls {
    /// Trust nodes whose certificates this CA (PEM) signs.
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            ca: ca_pem.into(),
            ..Self::default()
        }
    }

    /// Present this certificate chain and key (PEM) to the nodes.
    #[must_use]
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Check every node's certificate for this name instead of the host of its address.
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Read the CA and, when both are given, the client certificate and key from PEM files.
    pub fn from_files(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| ClientError::Config(format!("{what} {}: {e}", path.display())))
        };
        let tls = Self::new(read("CA", ca)?);
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(tls.identity(read("cert", cert)?, read("key", key)?)),
            (None, None) => Ok(tls),
            _ => Err(ClientError::Config(
                "a client certificate needs its key, and a key its certificate".into(),
            )),
        }
    }

    /// The tonic settings for a node at `address` (HOST:PORT), for tools that open their
    /// own channels.
    pub fn for_address(&self, address: &str) -> ClientTlsConfig {
        let host = address
            .rsplit_once(':')
            .map_or(address, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name(self.server_name.as_deref().unwrap_or(host));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}
