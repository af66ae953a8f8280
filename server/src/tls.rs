//! TLS on the gRPC ports, and on the connections this node opens to its peers.
//!
//! Serving: the node's certificate and key, and the CAs it trusts for client
//! certificates, are read from PEM files and read again whenever any of them changes
//! (cert-manager rotates them in place), checked every `reload_interval`; files that do not
//! load are logged and the configuration in force stays. When a client CA or a peer CA is
//! given, every connection must present a certificate signed by one of them (mutual TLS). A
//! node that serves peers on a port of their own trusts only the client CA on its client
//! port and only the peer CA (or the client CA when there is no peer CA) on its peer port
//! ([`Side`]). Handshakes run concurrently, each bounded by [`HANDSHAKE_TIMEOUT`], so a
//! client that stalls holds nothing else up.
//!
//! Dialing peers: with TLS on, peer channels use `https`, verify the peer's certificate
//! against the peer CA (or the client CA when no peer CA is given) for the host of its
//! address, and present this node's certificate, as read when the channel is made; when
//! the files change, new channels are made ([`crate::network::Peers`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM), served to clients and presented to peers.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA (PEM) that signs gateways' and operators' client certificates: when given,
    /// clients must present one (mTLS).
    pub client_ca: Option<PathBuf>,
    /// CA (PEM) that signs the nodes' certificates: peers must present one, and this node
    /// verifies its peers' server certificates with it. Defaults to the client CA.
    pub peer_ca: Option<PathBuf>,
    /// How often the certificate and key files are checked for changes.
    pub reload_interval: Duration,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {}: {reason}", path.display())]
pub struct TlsError {
    /// The setting (flag name).
    pub setting: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        setting,
        path: path.to_path_buf(),
        reason: format!("cannot read it: {e}"),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key from PEM files, ready to serve.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read("tls-cert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError {
            setting: "tls-cert",
            path: cert.to_path_buf(),
            reason: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError {
            setting: "tls-cert",
            path: cert.to_path_buf(),
            reason: "holds no certificate".into(),
        });
    }
    let key_pem = read("tls-key", key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError {
        setting: "tls-key",
        path: key.to_path_buf(),
        reason: format!("not a PEM private key: {e}"),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError {
            setting: "tls-key",
            path: key.to_path_buf(),
            reason: format!("unusable key: {e}"),
        })?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| TlsError {
        setting: "tls-key",
        path: key.to_path_buf(),
        reason: format!("does not match the certificate in --tls-cert: {e}"),
    })?;
    Ok(pair)
}

fn roots(setting: &'static str, path: &Path, into: &mut RootCertStore) -> Result<(), TlsError> {
    let pem = read(setting, path)?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| TlsError {
            setting,
            path: path.to_path_buf(),
            reason: format!("not a PEM certificate: {e}"),
        })?;
        into.add(cert).map_err(|e| TlsError {
            setting,
            path: path.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
        added += 1;
    }
    if added == 0 {
        return Err(TlsError {
            setting,
            path: path.to_path_buf(),
            reason: "holds no certificate".into(),
        });
    }
    Ok(())
}

/// Which callers a TLS listener serves, and so which CAs it trusts for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Clients and peers on one port: the client CA and the peer CA.
    Both,
    /// Clients only (the node has a peer port): the client CA.
    Clients,
    /// Peers only (`--peer-listen`): the peer CA, or the client CA when none is given.
    Peers,
}

/// What serves TLS on one listener: the server configuration in force (certificate, key
/// and trusted CAs), replaced whenever one of its files changes.
pub struct Server {
    current: Arc<ArcSwap<ServerConfig>>,
    config: TlsConfig,
    side: Side,
}

impl Server {
    /// Load the files of `config` for a listener serving `side`. Errors name the setting
    /// and the file.
    pub fn new(config: &TlsConfig, side: Side) -> Result<Server, TlsError> {
        Ok(Server {
            current: Arc::new(ArcSwap::from(server_config(config, side)?)),
            config: config.clone(),
            side,
        })
    }

    /// Accept connections on `listener` until `stop`, and yield each once its handshake
    /// completes. Also keeps the configuration current.
    pub fn incoming(
        self,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (ready, stream) = mpsc::channel(64);
        let current = self.current;
        tokio::spawn({
            let current = Arc::clone(&current);
            let (config, side) = (self.config.clone(), self.side);
            on_change(
                files(&config, side),
                config.reload_interval,
                stop.clone(),
                move || match server_config(&config, side) {
                    Ok(fresh) => {
                        current.store(fresh);
                        tracing::info!(cert = %config.cert.display(), ?side, "TLS certificate, key and CAs reloaded");
                        true
                    }
                    Err(e) => {
                        // A rotation writes the files one after the other: try again on
                        // the next check.
                        tracing::warn!(error = %e, "TLS files not reloaded; keeping those in force");
                        false
                    }
                },
            )
        });
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(current.load_full());
                let ready = ready.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(stream)
    }
}

/// The CA files a listener serving `side` trusts for client certificates, by setting.
fn trusted(config: &TlsConfig, side: Side) -> Vec<(&'static str, &PathBuf)> {
    let client_ca = config.client_ca.as_ref().map(|ca| ("tls-client-ca", ca));
    let peer_ca = config.peer_ca.as_ref().map(|ca| ("tls-peer-ca", ca));
    match side {
        Side::Both => vec![client_ca, peer_ca],
        Side::Clients => vec![client_ca],
        Side::Peers => vec![peer_ca.or(client_ca)],
    }
    .into_iter()
    .flatten()
    .collect()
}

/// Every file a listener serving `side` reads.
fn files(config: &TlsConfig, side: Side) -> Vec<PathBuf> {
    let mut files = vec![config.cert.clone(), config.key.clone()];
    files.extend(trusted(config, side).into_iter().map(|(_, p)| p.clone()));
    files
}

/// Every TLS file a node reads, serving or dialing peers: what [`crate::network::Peers`]
/// watches to dial with current files.
pub fn all_files(config: &TlsConfig) -> Vec<PathBuf> {
    files(config, Side::Both)
}

/// The server configuration from the files, for a listener serving `side`.
fn server_config(config: &TlsConfig, side: Side) -> Result<Arc<ServerConfig>, TlsError> {
    let pair = Arc::new(load_pair(&config.cert, &config.key)?);
    let mut client_roots = RootCertStore::empty();
    for (setting, ca) in trusted(config, side) {
        roots(setting, ca, &mut client_roots)?;
    }
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            setting: "tls-cert",
            path: config.cert.clone(),
            reason: e.to_string(),
        })?;
    let builder = if client_roots.is_empty() {
        builder.with_no_client_auth()
    } else {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider())
                .build()
                .map_err(|e| TlsError {
                    setting: "tls-client-ca",
                    path: config.client_ca.clone().unwrap_or_default(),
                    reason: e.to_string(),
                })?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut server = builder.with_cert_resolver(Arc::new(Fixed(pair)));
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(server))
}

/// One certificate for every handshake of a server configuration.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// Run `changed` whenever the contents of `paths` differ from those last taken, checked
/// every `interval`, until `stop`. `changed` says whether it took them; if not (say, one
/// file of a pair written and not yet the other), it runs again on the next check. Files
/// that cannot be read are left for the next check.
pub async fn on_change(
    paths: Vec<PathBuf>,
    interval: Duration,
    stop: CancellationToken,
    mut changed: impl FnMut() -> bool + Send,
) {
    let read = |paths: &[PathBuf]| -> Option<Vec<Vec<u8>>> {
        paths.iter().map(|p| std::fs::read(p).ok()).collect()
    };
    let mut taken = read(&paths);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(now) = read(&paths) else {
            continue;
        };
        if taken.as_ref() == Some(&now) {
            continue;
        }
        if changed() {
            taken = Some(now);
        }
    }
}

/// The client side of peer connections: `https` with the peer CA and this node's
/// certificate as its identity, for the host of `address` (HOST:PORT).
pub fn peer_client_config(
    config: &TlsConfig,
    address: &str,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let ca_path = config
        .peer_ca
        .as_ref()
        .or(config.client_ca.as_ref())
        .ok_or_else(|| TlsError {
            setting: "tls-peer-ca",
            path: PathBuf::new(),
            reason: "is needed to verify peers when TLS is on (or give --tls-client-ca)".into(),
        })?;
    // A node dials its peers as any client of the store does.
    let client = affinity_client::ClientTls::new(read("tls-peer-ca", ca_path)?).identity(
        read("tls-cert", &config.cert)?,
        read("tls-key", &config.key)?,
    );
    Ok(client.for_address(address))
}
