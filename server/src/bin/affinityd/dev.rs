//! `affinityd dev`: a local cluster of several nodes in one process, for trying
//! affinity out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use affinity_server::server::{self, Listeners};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::node::{bind, stop_signal};
use crate::settings::Settings;

#[derive(Args)]
pub(crate) struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Host the nodes listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// gRPC port of node 1; node N listens on base-port + N - 1.
    #[arg(long, default_value_t = 7400)]
    base_port: u16,
    /// Metrics port of node 1; node N serves metrics on metrics-base-port + N - 1.
    #[arg(long, default_value_t = 9400)]
    metrics_base_port: u16,
    /// Folder holding one data directory per node (node-1, node-2, ...).
    #[arg(long, default_value = "./affinity-dev")]
    data_dir: PathBuf,
}

pub(crate) async fn run_dev(dev: DevArgs, base: Settings) -> Result<(), String> {
    if !(1..=9).contains(&dev.nodes) {
        return Err(format!("--nodes must be 1..=9 (got {})", dev.nodes));
    }
    let port = |base: u16, i: u64| -> Result<u16, String> {
        u16::try_from(u64::from(base) + i - 1).map_err(|_| "ports out of range".to_string())
    };
    let mut peers = BTreeMap::new();
    for i in 1..=dev.nodes {
        peers.insert(
            i,
            affinity_server::raft::Node::new(format!("{}:{}", dev.host, port(dev.base_port, i)?)),
        );
    }
    let stop = CancellationToken::new();
    let mut nodes = tokio::task::JoinSet::new();
    println!("affinity dev cluster: {} nodes", dev.nodes);
    println!("{:<6} {:<22} {:<22} data dir", "node", "gRPC", "metrics");
    for i in 1..=dev.nodes {
        let listen = peers[&i].addr.clone();
        let metrics_listen = format!("{}:{}", dev.host, port(dev.metrics_base_port, i)?);
        let data_dir = dev.data_dir.join(format!("node-{i}"));
        println!(
            "{i:<6} {listen:<22} {metrics_listen:<22} {}",
            data_dir.display()
        );
        let mut config = base.config.clone();
        config.node_id = i;
        config.advertise = None;
        config.peer_advertise = None;
        config.data_dir = data_dir;
        config.peers = peers.clone();
        let grpc = bind("listen", &listen).await?;
        let metrics = bind("metrics-listen", &metrics_listen).await?;
        let stop = stop.clone();
        nodes.spawn(async move {
            server::run(
                config,
                Listeners {
                    grpc,
                    peer: None,
                    metrics: Some(metrics),
                },
                stop.cancelled_owned(),
            )
            .await
            .map_err(|e| format!("node {i}: {e}"))
        });
    }
    let endpoints: Vec<&str> = peers.values().map(|n| n.addr.as_str()).collect();
    println!(
        "try: affinityctl --endpoints {} status",
        endpoints.join(",")
    );
    stop_signal().await;
    stop.cancel();
    let mut failed = Vec::new();
    while let Some(joined) = nodes.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}
