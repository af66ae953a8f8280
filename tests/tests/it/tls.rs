//! TLS and mutual TLS on real processes: a 3-node cluster whose client port and peer
//! traffic use certificates made for the test (rcgen), clients with and without the right
//! certificates, the client crate and `affinityctl` over TLS, and a certificate rotated in
//! place while the nodes run.

use std::sync::Arc;
use std::time::Duration;

use affinity_client::{AffinityClient, ClientTls, Resolve};
use affinity_proto::Policy;
use affinity_tests::requests::resolve;
use affinity_tests::{Cluster, ClusterOptions, bins, wait};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::certs::{Ca, MutualTls, arg, channel, harness_tls, write};

const MINUTE: Duration = Duration::from_secs(60);

/// The certificate (DER) `addr` serves now.
async fn served_serial(addr: std::net::SocketAddr, ca_pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    // The node asks for a client certificate; the handshake's first flight still carries
    // the server's certificate, which is all this reads.
    let tls = connector.connect(name, tcp).await;
    let Ok(tls) = tls else {
        return Vec::new();
    };
    let (_, session) = tls.get_ref();
    session.peer_certificates().unwrap()[0].to_vec()
}

use rustls_pki_types::pem::PemObject as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_on_clients_and_peers_with_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let node_ca = Ca::new("affinity nodes");
    let client_ca = Ca::new("affinity gateways");
    let (node_cert, node_key) = node_ca.issue("affinity-node", &["127.0.0.1", "localhost"]);
    let (gw_cert, gw_key) = client_ca.issue("gateway", &["gateway.test"]);
    let files = MutualTls::write(dir.path(), &node_ca, &client_ca, &node_cert, &node_key);
    let (node_ca_path, client_ca_path) = (files.node_ca.clone(), files.client_ca.clone());
    let (cert_path, key_path) = (files.cert.clone(), files.key.clone());

    let mut extra_args = files.args();
    extra_args.extend(["--tls-reload-interval".into(), "200ms".into()]);
    let options = ClusterOptions {
        extra_args,
        client_tls: Some(harness_tls(&node_ca, &gw_cert, &gw_key)),
        ..ClusterOptions::default()
    };
    // Starting waits for a leader, which needs Raft over mutual TLS between the nodes.
    let cluster = Cluster::start("tls", options).await;

    // A gateway with its certificate: writes through every node (followers forward to the
    // leader over the peers' TLS).
    for id in 1..=3 {
        let mut client = cluster.client(id);
        let answer = client
            .resolve(resolve(
                "ns/tls/0",
                &format!("10.0.{id}.1"),
                "10.9.0.1:80",
                MINUTE,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.created, "node {id}");
    }

    let addr = cluster.addr(1);
    let gw_identity = Identity::from_pem(&gw_cert, &gw_key);
    let trust_nodes = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&node_ca.pem))
            .domain_name("127.0.0.1")
    };
    let refused = |tls: Option<ClientTlsConfig>, what: &'static str| {
        let channel = channel(addr, tls);
        async move {
            let mut client = affinity_proto::pb::affinity_client::AffinityClient::new(channel);
            let answer = client
                .resolve(resolve("ns/tls/0", "10.7.7.1", "10.9.0.1:80", MINUTE))
                .await;
            assert!(answer.is_err(), "{what} was served");
        }
    };
    refused(None, "a plaintext client").await;
    refused(Some(trust_nodes()), "a client without a certificate").await;
    let stranger = Ca::new("someone else");
    let (s_cert, s_key) = stranger.issue("intruder", &["intruder.test"]);
    refused(
        Some(trust_nodes().identity(Identity::from_pem(&s_cert, &s_key))),
        "a client certificate from an unknown CA",
    )
    .await;
    let mut ok = affinity_proto::pb::affinity_client::AffinityClient::new(channel(
        addr,
        Some(trust_nodes().identity(gw_identity)),
    ));
    ok.resolve(resolve("ns/tls/0", "10.7.7.1", "10.9.0.1:80", MINUTE))
        .await
        .unwrap();

    // The client crate over mutual TLS.
    let client = AffinityClient::builder()
        .endpoints(cluster.endpoints().split(','))
        .tls(ClientTls::new(node_ca.pem.clone()).identity(gw_cert.clone(), gw_key.clone()))
        .build()
        .unwrap();
    let policy = Policy::new(MINUTE).unwrap();
    let decision = client
        .resolve(
            Resolve::new("ns/tls/1", "10.8.0.1".parse().unwrap(), &policy).proposed("10.9.0.2:80"),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            decision.source,
            affinity_client::Source::Store { created: true, .. }
        ),
        "{decision:?}"
    );

    // affinityctl over mutual TLS.
    let gw_cert_path = write(dir.path(), "gw.pem", &gw_cert);
    let gw_key_path = write(dir.path(), "gw-key.pem", &gw_key);
    let out = std::process::Command::new(bins::affinityctl())
        .args(["--endpoints", &cluster.endpoints(), "--json"])
        .args(["--tls-ca", &arg(&node_ca_path)])
        .args(["--tls-cert", &arg(&gw_cert_path)])
        .args(["--tls-key", &arg(&gw_key_path)])
        .arg("status")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "affinityctl status over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Rotate the node certificate in place: new connections get the new one.
    let before = served_serial(addr, &node_ca.pem).await;
    assert!(!before.is_empty());
    let (new_cert, new_key) = node_ca.issue("affinity-node", &["127.0.0.1", "localhost"]);
    std::fs::write(&key_path, &new_key).unwrap();
    std::fs::write(&cert_path, &new_cert).unwrap();
    let expected = rustls_pki_types::CertificateDer::from_pem_slice(new_cert.as_bytes())
        .unwrap()
        .to_vec();
    wait::until(
        "node 1 serves the rotated certificate",
        Duration::from_secs(10),
        || {
            let expected = expected.clone();
            let ca = node_ca.pem.clone();
            async move {
                let now = served_serial(addr, &ca).await;
                if now == expected {
                    Ok(())
                } else {
                    Err(now.len())
                }
            }
        },
    )
    .await;
    // Still serving the gateway after the rotation, through every node: followers dial
    // the leader again with the rotated certificate.
    for id in 1..=3 {
        cluster
            .client(id)
            .resolve(resolve(
                "ns/tls/0",
                &format!("10.0.9{id}.1"),
                "10.9.0.1:80",
                MINUTE,
            ))
            .await
            .unwrap();
    }

    // A second gateway CA joins the client CA file (a CA rotation): its gateways are
    // served once the nodes have read the file again, without a restart.
    let next_ca = Ca::new("affinity gateways, next");
    let (next_cert, next_key) = next_ca.issue("gateway-next", &["gateway-next.test"]);
    std::fs::write(&client_ca_path, format!("{}{}", client_ca.pem, next_ca.pem)).unwrap();
    wait::until(
        "node 1 accepts a certificate of the new client CA",
        Duration::from_secs(10),
        || {
            let channel = channel(
                addr,
                Some(
                    trust_nodes().identity(Identity::from_pem(next_cert.clone(), next_key.clone())),
                ),
            );
            async move {
                affinity_proto::pb::affinity_client::AffinityClient::new(channel)
                    .resolve(resolve("ns/tls/2", "10.6.0.1", "10.9.0.1:80", MINUTE))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_from_certificates_and_tokens() {
    use affinity_proto::pb;
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let node_ca = Ca::new("affinity nodes");
    let client_ca = Ca::new("affinity clients");
    let (node_cert, node_key) = node_ca.issue("affinity-node", &["127.0.0.1", "localhost"]);
    let (gw_cert, gw_key) = client_ca.issue("gateway", &["gateway.test"]);
    let (ops_cert, ops_key) = client_ca.issue("ops", &["ops.test"]);
    let (nobody_cert, nobody_key) = client_ca.issue("nobody", &["nobody.test"]);
    let token = "0123456789abcdef-operator-token";
    let gw_token = "0123456789abcdef-gateway-token";
    let authz = write(
        dir.path(),
        "authz.toml",
        &format!(
            "[[identity]]\nname = \"localhost\"\nrole = \"peer\"\n\n\
             [[identity]]\nname = \"gateway.test\"\nrole = \"gateway\"\n\n\
             [[identity]]\nname = \"ops.test\"\nrole = \"admin\"\n\n\
             [[token]]\ntoken = \"{token}\"\nrole = \"admin\"\n\n\
             [[token]]\ntoken = \"{gw_token}\"\nrole = \"gateway\"\n"
        ),
    );
    let files = MutualTls::write(dir.path(), &node_ca, &client_ca, &node_cert, &node_key);
    let mut extra_args = files.args();
    extra_args.extend([
        "--authz".into(),
        arg(&authz),
        "--tls-reload-interval".into(),
        "200ms".into(),
    ]);
    let options = ClusterOptions {
        extra_args,
        // The harness itself operates the cluster: it needs the admin role.
        client_tls: Some(harness_tls(&node_ca, &ops_cert, &ops_key)),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start("authz", options).await;
    let as_who = |cert: &str, key: &str, id: u64| {
        channel(
            cluster.addr(id),
            Some(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&node_ca.pem))
                    .identity(Identity::from_pem(cert, key))
                    .domain_name("127.0.0.1"),
            ),
        )
    };

    // A gateway: lease calls, through any node (followers forward as peers).
    for id in 1..=3 {
        let mut gw = pb::affinity_client::AffinityClient::new(as_who(&gw_cert, &gw_key, id));
        gw.resolve(resolve(
            "ns/authz/0",
            &format!("10.0.{id}.1"),
            "10.9.0.1:80",
            MINUTE,
        ))
        .await
        .unwrap();
    }
    let mut gw = pb::affinity_client::AffinityClient::new(as_who(&gw_cert, &gw_key, 1));
    let denied = gw.list(pb::ListRequest::default()).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("needs role admin or peer")
            && denied.message().contains("gateway"),
        "{}",
        denied.message()
    );
    let mut gw_admin = pb::cluster_client::ClusterClient::new(as_who(&gw_cert, &gw_key, 1));
    let denied = gw_admin.status(pb::StatusRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // An operator: everything but the peers' own service.
    let mut ops = pb::affinity_client::AffinityClient::new(as_who(&ops_cert, &ops_key, 1));
    ops.list(pb::ListRequest::default()).await.unwrap();
    let mut ops_raft = pb::raft_client::RaftClient::new(as_who(&ops_cert, &ops_key, 1));
    let denied = ops_raft
        .vote(pb::RaftVoteRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("needs role peer"),
        "{}",
        denied.message()
    );

    // A certificate the CA signed but no role names: refused, except for health checks.
    let mut nobody = pb::affinity_client::AffinityClient::new(as_who(&nobody_cert, &nobody_key, 1));
    let denied = nobody
        .resolve(resolve("ns/authz/0", "10.0.9.1", "10.9.0.1:80", MINUTE))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("no role"), "{}", denied.message());
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(as_who(&nobody_cert, &nobody_key, 1));
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();

    // affinityctl with a gateway certificate: refused alone, allowed with the admin token.
    let gw_cert_path = write(dir.path(), "gw.pem", &gw_cert);
    let gw_key_path = write(dir.path(), "gw-key.pem", &gw_key);
    let node_ca_path = files.node_ca.clone();
    let ctl = |token: Option<&str>| {
        let mut command = std::process::Command::new(bins::affinityctl());
        command
            .args(["--endpoints", &cluster.endpoints()])
            .args(["--tls-ca", &arg(&node_ca_path)])
            .args(["--tls-cert", &arg(&gw_cert_path)])
            .args(["--tls-key", &arg(&gw_key_path)]);
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        command.arg("status").output().unwrap()
    };
    let refused = ctl(None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("PERMISSION_DENIED"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let allowed = ctl(Some(token));
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );

    // The client crate with a bearer token: a certificate that no role names, plus the
    // gateway token, may resolve; without the token it may not.
    let client_with = |token: Option<&str>| {
        let mut builder = AffinityClient::builder()
            .endpoints(cluster.endpoints().split(','))
            .tls(
                ClientTls::new(node_ca.pem.clone())
                    .identity(nobody_cert.clone(), nobody_key.clone()),
            )
            .fail_mode(affinity_client::FailMode::Closed)
            .cache_capacity(0)
            .watch(false);
        if let Some(token) = token {
            builder = builder.token(token);
        }
        builder.build().unwrap()
    };
    let policy = Policy::new(MINUTE).unwrap();
    let ip = "10.5.0.1".parse().unwrap();
    client_with(Some(gw_token))
        .resolve(Resolve::new("ns/authz/1", ip, &policy).proposed("10.9.0.1:80"))
        .await
        .unwrap();
    let refused = client_with(None)
        .resolve(Resolve::new("ns/authz/1", ip, &policy).proposed("10.9.0.1:80"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("PERMISSION_DENIED")
            || refused.to_string().contains("needs role"),
        "{refused}"
    );
    let plaintext = AffinityClient::builder()
        .endpoints(cluster.endpoints().split(','))
        .token(gw_token)
        .watch(false)
        .build()
        .unwrap_err();
    assert!(
        plaintext.to_string().contains("token needs tls"),
        "{plaintext}"
    );

    // The authorization file changes while the nodes run: "nobody.test" becomes a gateway
    // and is served without a token, without a restart. A broken file is refused and the
    // roles in force stay.
    std::fs::write(
        &authz,
        format!(
            "{}\n[[identity]]\nname = \"nobody.test\"\nrole = \"gateway\"\n",
            std::fs::read_to_string(&authz).unwrap()
        ),
    )
    .unwrap();
    wait::until(
        "every node takes the new authorization file",
        Duration::from_secs(10),
        || {
            let client = client_with(None);
            async move {
                client
                    .resolve(Resolve::new("ns/authz/2", ip, &policy).proposed("10.9.0.1:80"))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    std::fs::write(&authz, "[[identity]\nbroken").unwrap();
    let reloads_refused = wait::until(
        "node 1 logs the broken authorization file",
        Duration::from_secs(10),
        || {
            let log = cluster.log(1);
            async move {
                if log.contains("authorization file not reloaded") {
                    Ok(())
                } else {
                    Err("not yet")
                }
            }
        },
    );
    reloads_refused.await;
    client_with(None)
        .resolve(Resolve::new("ns/authz/3", ip, &policy).proposed("10.9.0.1:80"))
        .await
        .unwrap();
}
