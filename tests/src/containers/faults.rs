//! The faults the chaos tests inflict on a [`ContainerCluster`], and their healing: kill,
//! graceful stop, pause, cut off from the peers, restart, stop and start everything,
//! replace a container on its volume.

use std::time::Duration;

use bollard::models::{EndpointSettings, NetworkConnectRequest, NetworkDisconnectRequest};
use bollard::query_parameters::{KillContainerOptions, StopContainerOptions};

use super::ContainerCluster;
use crate::{docker, wait};

impl ContainerCluster {
    /// Fault: SIGKILL node `i` (the container stops at once; its volume stays).
    pub async fn kill(&self, i: usize) {
        self.docker
            .kill_container(
                &self.nodes[i].container,
                Some(KillContainerOptions {
                    signal: "SIGKILL".into(),
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("kill node {i}: {e}"));
        self.wait_stopped(i).await;
    }

    /// Fault: stop node `i` gracefully (SIGTERM, then SIGKILL after 20 s).
    pub async fn stop(&self, i: usize) {
        self.docker
            .stop_container(
                &self.nodes[i].container,
                Some(StopContainerOptions {
                    t: Some(20),
                    signal: None,
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("stop node {i}: {e}"));
        self.wait_stopped(i).await;
    }

    /// Node `i`'s exit code, once its container has stopped.
    pub async fn exit_code(&self, i: usize) -> Option<i64> {
        let inspected = self
            .docker
            .inspect_container(&self.nodes[i].container, None)
            .await
            .ok()?;
        let state = inspected.state?;
        if state.running == Some(true) {
            None
        } else {
            state.exit_code
        }
    }

    async fn wait_stopped(&self, i: usize) {
        wait::until(
            &format!("node {i}'s container has stopped"),
            Duration::from_secs(30),
            || async move {
                match self.exit_code(i).await {
                    Some(code) => Ok(code),
                    None => Err("still running"),
                }
            },
        )
        .await;
    }

    /// Fault: freeze node `i` (`docker pause`): it stops answering without closing a
    /// connection.
    pub async fn pause(&self, i: usize) {
        self.docker
            .pause_container(&self.nodes[i].container)
            .await
            .unwrap_or_else(|e| panic!("pause node {i}: {e}"));
    }

    /// Heal: thaw node `i`.
    pub async fn unpause(&self, i: usize) {
        self.docker
            .unpause_container(&self.nodes[i].container)
            .await
            .unwrap_or_else(|e| panic!("unpause node {i}: {e}"));
    }

    /// Fault: cut node `i` off its peers (it stays reachable by the test). Cutting off the
    /// leader alone isolates it in a minority of one.
    pub async fn cut_off(&self, i: usize) {
        self.docker
            .disconnect_network(
                &self.peers,
                NetworkDisconnectRequest {
                    container: self.nodes[i].container.clone(),
                    force: Some(true),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("disconnect node {i}: {e}"));
    }

    /// Heal: put node `i` back on the peer network under its name.
    pub async fn reconnect(&self, i: usize) {
        self.docker
            .connect_network(
                &self.peers,
                NetworkConnectRequest {
                    container: self.nodes[i].container.clone(),
                    endpoint_config: Some(EndpointSettings {
                        aliases: Some(self.aliases(i)),
                        ..Default::default()
                    }),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("reconnect node {i}: {e}"));
    }

    /// Fault and heal: SIGKILL node `i` and start it again on the same volume.
    pub async fn restart(&self, i: usize) {
        self.kill(i).await;
        self.start_node(i).await;
    }

    /// Fault: stop every node gracefully.
    pub async fn stop_all(&self) {
        for i in self.all() {
            self.stop(i).await;
        }
    }

    /// Heal: start every node.
    pub async fn start_all(&self) {
        for i in self.all() {
            self.start_node(i).await;
        }
    }

    /// Replace node `i`'s container by a new one on the same volume, as a rescheduled pod
    /// gets: the old container is removed (SIGKILL), a new one created and, unless
    /// `isolated`, joined to the peer network. An isolated replacement starts cut off from
    /// its peers, to show what its volume alone gives it.
    pub async fn replace(&self, i: usize, isolated: bool) {
        docker::remove_container(&self.docker, &self.nodes[i].container).await;
        *self.nodes[i].last_log.lock() = String::new();
        *self.nodes[i].ip.lock() = None;
        self.create_container(i).await;
        if isolated {
            self.cut_off(i).await;
        }
        self.start_node(i).await;
    }
}
