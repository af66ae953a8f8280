//! The StatefulSet rehearsed with containers: pods `affinity-0..2` started with the
//! manifest's own arguments, config file and names, with no peer list, form a cluster by
//! ordinal; a fourth pod joins as a voter; removing it and scaling back leaves three.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use affinity_proto::pb;
use affinity_proto::pb::affinity_client::AffinityClient;
use affinity_tests::containers::{ContainerCluster, ContainerOptions, Layout};
use affinity_tests::{requests, wait};

use crate::{config_file, out_dir, render, store_container};

/// Voters and learners as the node `i` knows them: id -> voter.
async fn members(cluster: &ContainerCluster, i: usize) -> Result<BTreeMap<u64, bool>, String> {
    let status = cluster.status(i).await?;
    Ok(status.members.iter().map(|m| (m.id, m.voter)).collect())
}

/// Wait until every node in `nodes` sees exactly `voters` as voters and no learner.
async fn wait_voters(cluster: &ContainerCluster, nodes: &[usize], voters: &[u64]) {
    let want: BTreeMap<u64, bool> = voters.iter().map(|v| (*v, true)).collect();
    for &i in nodes {
        let want = want.clone();
        wait::until(
            &format!("node {i} sees voters {voters:?}"),
            Duration::from_secs(60),
            || {
                let want = want.clone();
                async move {
                    let seen = members(cluster, i).await?;
                    if seen == want {
                        Ok(())
                    } else {
                        Err(format!("{seen:?}"))
                    }
                }
            },
        )
        .await;
    }
}

async fn resolve(cluster: &ContainerCluster, i: usize, ip: &str, endpoint: &str) -> String {
    let client = AffinityClient::new(cluster.channel(i));
    let request = requests::resolve("rehearsal", ip, endpoint, Duration::from_secs(3600));
    wait::until(
        &format!("node {i} resolves {ip}"),
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            let request = request.clone();
            async move {
                client
                    .resolve(requests::with_deadline(request, Duration::from_secs(5)))
                    .await
                    .map(|r| r.into_inner().lease.map(|l| l.endpoint).unwrap_or_default())
                    .map_err(|s| s.message().to_string())
            }
        },
    )
    .await
}

async fn stale_lookup(cluster: &ContainerCluster, i: usize, ip: &str) -> Option<pb::Lease> {
    let mut client = AffinityClient::new(cluster.channel(i));
    let mut request = requests::lookup("rehearsal", ip);
    request.allow_stale = true;
    client
        .lookup(requests::with_deadline(request, Duration::from_secs(5)))
        .await
        .ok()
        .and_then(|r| r.into_inner().lease)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pods_form_a_cluster_by_ordinal_and_scale_to_four_and_back() {
    let test = "statefulset_rehearsal";
    let objects = render("base");
    let config = config_file(&objects, &out_dir(test));
    let args: Vec<String> = store_container(&objects)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let options = ContainerOptions {
        nodes: 3,
        layout: Layout::StatefulSet {
            args,
            config,
            service: "affinity-peers".into(),
            namespace: "default".into(),
        },
        ..ContainerOptions::default()
    };
    let Some(mut cluster) = ContainerCluster::start(test, options).await else {
        return;
    };

    // Formed by ordinal: node 1 (affinity-0) founded it, 2 and 3 joined as voters, each
    // known by its pod's DNS name.
    wait_voters(&cluster, &[0, 1, 2], &[1, 2, 3]).await;
    let status = cluster.status(0).await.unwrap();
    for m in &status.members {
        assert_eq!(
            m.address,
            format!("affinity-{}.affinity-peers.default.svc:7400", m.id - 1)
        );
    }
    assert_eq!(
        resolve(&cluster, 1, "198.51.100.7", "10.0.0.1:8080").await,
        "10.0.0.1:8080"
    );

    // Scale to four: affinity-3 joins as a learner, catches up, becomes a voter.
    let fourth = cluster.add_node().await;
    assert_eq!(fourth, 3);
    cluster.wait_ready(fourth).await;
    wait_voters(&cluster, &[0, 1, 2, 3], &[1, 2, 3, 4]).await;
    let copied = stale_lookup(&cluster, fourth, "198.51.100.7").await;
    assert_eq!(
        copied.map(|l| l.endpoint).as_deref(),
        Some("10.0.0.1:8080"),
        "the new node holds what was written before it joined"
    );
    assert_eq!(
        resolve(&cluster, fourth, "198.51.100.7", "10.0.0.9:8080").await,
        "10.0.0.1:8080",
        "first writer still wins through the new node"
    );

    // Scale back to three: remove node 4 from the membership, then the pod and its claim.
    let removed = Command::new(affinity_tests::bins::affinityctl())
        .arg("--endpoints")
        .arg(cluster.addr(0).to_string())
        .args(["members", "remove", "4"])
        .output()
        .expect("affinityctl runs");
    assert!(
        removed.status.success(),
        "affinityctl members remove 4: {}",
        String::from_utf8_lossy(&removed.stderr)
    );
    wait_voters(&cluster, &[0, 1, 2], &[1, 2, 3]).await;
    cluster.remove_last_node().await;
    assert_eq!(
        resolve(&cluster, 2, "203.0.113.9", "10.0.0.2:8080").await,
        "10.0.0.2:8080",
        "three nodes take writes after scaling down"
    );

    // A restarted pod keeps its identity and does not join twice.
    cluster.restart(2).await;
    cluster.wait_ready(2).await;
    wait_voters(&cluster, &[0, 1, 2], &[1, 2, 3]).await;
}
