//! The manifests, checked offline: Kubernetes schemas, project rules, and `affinityd check`
//! on the very arguments and config file the pods get.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::{config_file, object, out_dir, render, root, skip, store_container};

/// The Kubernetes release whose schemas the manifests must satisfy.
pub(crate) const KUBERNETES_VERSION: &str = "1.34.0";

/// `kubernetes-validate` on the PATH, or where `tests/install-deps.sh` puts it.
pub(crate) fn kubernetes_validate() -> Option<PathBuf> {
    let installed = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/affinity/venv/bin/kubernetes-validate"));
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("kubernetes-validate"))
            .find(|p| p.is_file())
    });
    on_path.or(installed.filter(|p| p.is_file()))
}

/// Run `kubernetes-validate --strict` on `file`: whether it passed, and what it said.
pub(crate) fn validate(tool: &std::path::Path, file: &std::path::Path) -> (bool, String) {
    let output = Command::new(tool)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .expect("kubernetes-validate runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[test]
fn every_kustomization_validates_against_the_kubernetes_schemas() {
    let test = "every_kustomization_validates_against_the_kubernetes_schemas";
    let Some(tool) = kubernetes_validate() else {
        skip(test, "kubernetes-validate is not installed");
        return;
    };
    let out = out_dir(test);
    for dir in ["base", "overlays/five-replicas", "overlays/tls"] {
        let objects = render(dir);
        assert!(
            objects.len() >= 6,
            "{dir} rendered only {} objects",
            objects.len()
        );
        let file = out.join(format!("{}.yaml", dir.replace('/', "-")));
        let text: Vec<String> = objects
            .iter()
            .map(|o| serde_norway::to_string(o).unwrap())
            .collect();
        std::fs::write(&file, text.join("---\n")).unwrap();
        let (passed, said) = validate(&tool, &file);
        assert!(
            passed,
            "{dir} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{said}"
        );
        let valid = said.matches(" passed for resource ").count();
        assert_eq!(
            valid,
            objects.len(),
            "{dir}: every object must be reported valid:\n{said}"
        );
    }
}

fn labels(value: &Value) -> BTreeSet<(String, String)> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn port_named(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("the container has no port named {name}"))
}

#[test]
fn the_base_follows_the_project_rules() {
    let objects = render("base");
    let sts = object(&objects, "StatefulSet", "affinity");
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    let selector = labels(&spec["selector"]["matchLabels"]);
    let pod_labels = labels(&spec["template"]["metadata"]["labels"]);
    assert!(!selector.is_empty() && selector.is_subset(&pod_labels));
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let anti =
        &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert!(labels(&anti["labelSelector"]["matchLabels"]).is_subset(&pod_labels));

    let container = store_container(&objects);
    let grpc = port_named(container, "grpc");
    let metrics = port_named(container, "metrics");
    for (probe, service) in [
        ("startupProbe", "liveness"),
        ("livenessProbe", "liveness"),
        ("readinessProbe", "affinity.v1.Affinity"),
    ] {
        let probe_spec = &container[probe]["grpc"];
        assert_eq!(probe_spec["port"], grpc, "{probe} must probe the gRPC port");
        assert_eq!(probe_spec["service"], service, "{probe} health service");
    }
    for (kind, what) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            container["resources"][kind][what].is_string(),
            "resources.{kind}.{what} must be set"
        );
    }
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);

    // The claim is mounted where the config puts the data.
    let claim = &spec["volumeClaimTemplates"][0]["metadata"]["name"];
    let mounts = container["volumeMounts"].as_array().unwrap();
    let data_mount = mounts
        .iter()
        .find(|m| &m["name"] == claim)
        .expect("the volume claim is mounted");
    let config = config_file(&objects, &out_dir("rules"));
    let toml = std::fs::read_to_string(config).unwrap();
    let data_dir = format!("data-dir = {}", data_mount["mountPath"]);
    assert!(toml.contains(&data_dir), "the config must say {data_dir}");

    // Services: the headless one names the StatefulSet, both select its pods by named ports.
    let peers = object(&objects, "Service", spec["serviceName"].as_str().unwrap());
    assert_eq!(peers["spec"]["clusterIP"], "None");
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true);
    let gateways = object(&objects, "Service", "affinity");
    for service in [peers, gateways] {
        assert_eq!(labels(&service["spec"]["selector"]), selector);
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = port["targetPort"].as_str().unwrap();
            let number = port_named(container, target);
            assert_eq!(port["port"], number, "service port {target}");
        }
    }
    assert!(
        peers["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "metrics" && p["port"] == metrics),
        "a ServiceMonitor selects the metrics port by name"
    );

    // The disruption budget covers exactly these pods, one at a time.
    let pdb = object(&objects, "PodDisruptionBudget", "affinity");
    assert_eq!(labels(&pdb["spec"]["selector"]["matchLabels"]), selector);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    // The network policy guards these pods and opens the gRPC port to peers and gateways.
    let policy = object(&objects, "NetworkPolicy", "affinity");
    assert_eq!(
        labels(&policy["spec"]["podSelector"]["matchLabels"]),
        selector
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let open_to = |port: u64| {
        rules
            .iter()
            .filter(|r| {
                r["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["port"] == port)
            })
            .count()
    };
    assert_eq!(open_to(grpc), 2, "peers and gateways reach the gRPC port");
    assert_eq!(open_to(metrics), 1, "monitoring reaches the metrics port");
    let from_peers = rules.iter().any(|r| {
        labels(&r["from"][0]["podSelector"]["matchLabels"]) == selector
            && r["from"][0].get("namespaceSelector").is_none()
    });
    assert!(from_peers, "a rule lets the store pods reach each other");
}

#[test]
fn the_five_replica_overlay_changes_only_the_count() {
    let base = render("base");
    let mut five = render("overlays/five-replicas");
    assert_eq!(base.len(), five.len());
    for object in &mut five {
        if object["kind"] == "StatefulSet" {
            assert_eq!(object["spec"]["replicas"], 5);
            object["spec"]["replicas"] = Value::from(3);
        }
    }
    assert_eq!(base, five);
}

/// Run `affinityd check` with the pod's arguments for `pod` (ordinal) and the config file.
fn check(objects: &[Value], pod: usize, config: &std::path::Path) -> Result<Value, String> {
    let container = store_container(objects);
    let mut args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("$(POD_NAME)", &format!("affinity-{pod}"))
                .replace("$(POD_NAMESPACE)", "default")
        })
        .collect();
    // This machine's hostname is not a pod's: give the id the ordinal gives.
    let by_hostname = args
        .iter()
        .position(|a| a == "--node-id-from-hostname")
        .expect("pods take their id from the hostname");
    args[by_hostname] = format!("--node-id={}", pod + 1);
    let config_arg = args
        .iter()
        .position(|a| a.starts_with("--config="))
        .expect("pods read the ConfigMap");
    args[config_arg] = format!("--config={}", config.display());
    let output = Command::new(affinity_tests::bins::affinityd())
        .arg("check")
        .args(&args)
        .env_clear()
        .output()
        .expect("affinityd runs");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&output.stdout).expect("check prints JSON"))
}

fn port_of(address: &Value) -> u64 {
    address
        .as_str()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{address} is not HOST:PORT"))
}

#[test]
fn the_pods_arguments_and_config_pass_affinityd_check() {
    let objects = render("base");
    let config = config_file(&objects, &out_dir("check"));
    let container = store_container(&objects);
    let grpc = port_named(container, "grpc");
    let metrics = port_named(container, "metrics");
    for pod in 0..3 {
        let resolved = check(&objects, pod, &config).unwrap_or_else(|e| panic!("pod {pod}: {e}"));
        assert_eq!(resolved["node_id"], pod as u64 + 1);
        assert_eq!(port_of(&resolved["listen"]), grpc, "listen port");
        assert_eq!(
            port_of(&resolved["metrics_listen"]),
            metrics,
            "metrics port"
        );
        assert_eq!(
            resolved["advertise"],
            format!("affinity-{pod}.affinity-peers.default.svc:{grpc}")
        );
        let join = resolved["join"].as_array().unwrap();
        assert_eq!(join.len(), 3);
        assert!(join.iter().all(|j| port_of(j) == grpc));
        // Room to step down and drain before Kubernetes sends SIGKILL.
        let grace = container
            .pointer("/terminationGracePeriodSeconds")
            .or_else(|| {
                object(&objects, "StatefulSet", "affinity")
                    .pointer("/spec/template/spec/terminationGracePeriodSeconds")
            })
            .and_then(Value::as_u64)
            .expect("a termination grace period");
        let needed = resolved["shutdown_grace_ms"].as_u64().unwrap()
            + 2 * resolved["raft_election_timeout_ms"].as_u64().unwrap();
        assert!(grace * 1000 > needed, "grace {grace}s < {needed}ms");
    }
    // The same check refuses what a start would refuse, naming the setting.
    let broken = out_dir("check-broken").join("affinityd.toml");
    std::fs::write(
        &broken,
        "listen = \"0.0.0.0:7400\"\nraft-heartbeat = \"900ms\"\n",
    )
    .unwrap();
    let err = check(&objects, 1, &broken).unwrap_err();
    assert!(err.contains("raft-election-timeout"), "{err}");
}

#[test]
fn the_compose_file_is_valid() {
    let test = "the_compose_file_is_valid";
    let file = root().join("deploy/compose.yaml");
    let Ok(output) = Command::new("docker-compose")
        .args(["-f"])
        .arg(&file)
        .args(["config"])
        .output()
    else {
        skip(test, "docker-compose is not installed");
        return;
    };
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "docker-compose config: {said}");
    let rendered: Value = serde_norway::from_slice(&output.stdout).unwrap();
    let services = rendered["services"].as_object().unwrap();
    assert_eq!(services.len(), 3);
    for i in 0..3 {
        let node = &services[&format!("affinity-{i}")];
        assert_eq!(node["hostname"], format!("affinity-{i}"));
        let command: Vec<&str> = node["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(command.contains(&"--node-id-from-hostname"));
        assert!(command.contains(&format!("--advertise=affinity-{i}:7400").as_str()));
        assert!(node["volumes"][0]["target"] == "/var/lib/affinity");
    }
}

#[test]
fn the_tls_overlay_turns_on_mutual_tls_and_probes_over_http() {
    let objects = render("overlays/tls");
    let container = store_container(&objects);
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    for (name, value) in [
        ("AFFINITY_TLS_CERT", "/etc/affinity/tls/tls.crt"),
        ("AFFINITY_TLS_KEY", "/etc/affinity/tls/tls.key"),
        ("AFFINITY_TLS_PEER_CA", "/etc/affinity/tls/ca.crt"),
        ("AFFINITY_TLS_CLIENT_CA", "/etc/affinity/client-ca/ca.crt"),
    ] {
        assert!(
            env.contains(&(name.to_string(), value.to_string())),
            "{name}={value} missing from {env:?}"
        );
    }
    // The base's own variables stay.
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "POD_NAME")
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert!(
            container[probe].get("grpc").is_none(),
            "{probe} still uses gRPC"
        );
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let sts = object(&objects, "StatefulSet", "affinity");
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    for (volume, secret) in [("tls", "affinity-tls"), ("client-ca", "affinity-client-ca")] {
        assert!(
            volumes
                .iter()
                .any(|v| v["name"] == volume && v["secret"]["secretName"] == secret),
            "volume {volume} from Secret {secret}"
        );
    }
    assert!(
        volumes.iter().any(|v| v["name"] == "config"),
        "the base's volume stays"
    );

    // Peer traffic on its own port: the pods' arguments say so and pass `affinityd check`,
    // the headless Service names it, and only the store's pods may reach it.
    let grpc = port_named(container, "grpc");
    let peer = port_named(container, "peer");
    assert_ne!(grpc, peer);
    let config = config_file(&objects, &out_dir("check-tls"));
    for pod in 0..3 {
        let resolved = check(&objects, pod, &config).unwrap_or_else(|e| panic!("pod {pod}: {e}"));
        assert_eq!(port_of(&resolved["listen"]), grpc);
        assert_eq!(port_of(&resolved["peer_listen"]), peer);
        assert_eq!(
            resolved["peer_advertise"],
            format!("affinity-{pod}.affinity-peers.default.svc:{peer}")
        );
        assert_eq!(
            resolved["advertise"],
            format!("affinity-{pod}.affinity-peers.default.svc:{grpc}")
        );
        let join = resolved["join"].as_array().unwrap();
        assert!(
            join.iter().all(|j| port_of(j) == peer),
            "joins go to peer ports"
        );
    }
    let headless = object(&objects, "Service", "affinity-peers");
    assert!(
        headless["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == peer && p["targetPort"] == "peer"),
        "the headless Service publishes the peer port"
    );
    let policy = object(&objects, "NetworkPolicy", "affinity");
    for rule in policy["spec"]["ingress"].as_array().unwrap() {
        let ports: Vec<u64> = rule["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["port"].as_u64())
            .collect();
        if ports.contains(&peer) {
            let from = &rule["from"][0];
            assert_eq!(
                from["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "store",
                "only the store's pods reach the peer port"
            );
            assert!(from.get("namespaceSelector").is_none());
        }
    }
}
