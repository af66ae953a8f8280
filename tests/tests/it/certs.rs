//! Certificates and TLS channels for the tests: a CA made with rcgen that issues leaf
//! certificates, files to hand to `affinityd`, and channels with chosen TLS settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{ClientTlsConfig, Endpoint};

/// A CA that signs certificates for the test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses): (cert PEM, key PEM).
    pub fn issue(&self, common_name: &str, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// A channel to `addr` with these TLS settings (None: plaintext).
pub fn channel(
    addr: std::net::SocketAddr,
    tls: Option<ClientTlsConfig>,
) -> tonic::transport::Channel {
    let endpoint = match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap(),
        None => Endpoint::from_shared(format!("http://{addr}")).unwrap(),
    };
    endpoint
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// The files of a cluster with mutual TLS, written into a folder: the nodes' certificate
/// and key, the gateways' (client) CA and the nodes' (peer) CA.
pub struct MutualTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub node_ca: PathBuf,
}

impl MutualTls {
    /// Write the nodes' `cert` and `key`, and both CAs, into `dir`.
    pub fn write(dir: &Path, node_ca: &Ca, client_ca: &Ca, cert: &str, key: &str) -> Self {
        MutualTls {
            cert: write(dir, "node.pem", cert),
            key: write(dir, "node-key.pem", key),
            client_ca: write(dir, "client-ca.pem", &client_ca.pem),
            node_ca: write(dir, "node-ca.pem", &node_ca.pem),
        }
    }

    /// The `affinityd` arguments that turn it on.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            arg(&self.cert),
            "--tls-key".into(),
            arg(&self.key),
            "--tls-client-ca".into(),
            arg(&self.client_ca),
            "--tls-peer-ca".into(),
            arg(&self.node_ca),
        ]
    }
}

/// How the test harness reaches nodes: trusting `node_ca`, presenting `cert` and `key`.
pub fn harness_tls(node_ca: &Ca, cert: &str, key: &str) -> affinity_tests::ClientTlsFiles {
    affinity_tests::ClientTlsFiles {
        ca: node_ca.pem.clone().into_bytes(),
        cert: cert.as_bytes().to_vec(),
        key: key.as_bytes().to_vec(),
    }
}
