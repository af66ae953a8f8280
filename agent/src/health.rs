//! Backend health as the agent sees it: a TCP connect to every endpoint of the route file
//! at a fixed interval.
//!
//! An endpoint starts healthy (a new agent must not refuse every lease while its first
//! round runs); one failed connect takes it out, one success brings it back. A rule's
//! *eligible* endpoints are its healthy ones, or all of them when none is healthy: the
//! proxy then tries what it has rather than nothing. Envoy runs its own health checks as
//! well and reports which host served; this view is what nginx, which has none for a
//! variable `proxy_pass`, relies on.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

/// The health of every endpoint the agent knows.
#[derive(Debug, Default)]
pub struct Health {
    up: ArcSwap<HashMap<String, bool>>,
    watched: ArcSwap<BTreeSet<String>>,
}

impl Health {
    /// Check exactly `endpoints` from the next round on; new ones start healthy.
    pub fn watch(&self, endpoints: BTreeSet<String>) {
        self.watched.store(Arc::new(endpoints));
    }

    /// Whether `endpoint` passed its last check (unknown endpoints count as healthy).
    pub fn is_up(&self, endpoint: &str) -> bool {
        self.up.load().get(endpoint).copied().unwrap_or(true)
    }

    /// The endpoints of `all` that may serve now: the healthy ones, or every one when
    /// none is healthy.
    pub fn eligible(&self, all: &[String]) -> Vec<String> {
        let up = self.up.load();
        let healthy: Vec<String> = all
            .iter()
            .filter(|e| up.get(e.as_str()).copied().unwrap_or(true))
            .cloned()
            .collect();
        if healthy.is_empty() {
            all.to_vec()
        } else {
            healthy
        }
    }

    /// One round: connect to every watched endpoint at once, each within `timeout`, and
    /// record, log and count what changed.
    pub async fn check_once(&self, timeout: Duration) {
        let watched = self.watched.load_full();
        let checks = watched.iter().map(|endpoint| async move {
            let ok = match endpoint.parse::<SocketAddr>() {
                Ok(addr) => matches!(
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
                    Ok(Ok(_))
                ),
                Err(_) => false,
            };
            (endpoint.clone(), ok)
        });
        let results: HashMap<String, bool> = futures::future::join_all(checks)
            .await
            .into_iter()
            .collect();
        let before = self.up.load_full();
        for (endpoint, &ok) in &results {
            let was = before.get(endpoint).copied().unwrap_or(true);
            if was != ok {
                if ok {
                    tracing::info!(%endpoint, "backend passes its health check again");
                } else {
                    tracing::warn!(%endpoint, "backend failed its health check; not eligible");
                }
                metrics::counter!(
                    "affinity_agent_backend_health_changes_total",
                    "endpoint" => endpoint.clone(),
                    "healthy" => if ok { "true" } else { "false" },
                )
                .increment(1);
            }
            metrics::gauge!("affinity_agent_backend_up", "endpoint" => endpoint.clone())
                .set(if ok { 1.0 } else { 0.0 });
        }
        self.up.store(Arc::new(results));
    }

    /// Check every `interval` until the process ends (connect timeout: the interval, at
    /// most 1 s).
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let timeout = interval.min(Duration::from_secs(1));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check_once(timeout).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_down_and_a_listening_one_up() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let up = open.local_addr().expect("addr").to_string();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let health = Health::default();
        health.watch([up.clone(), closed.clone()].into_iter().collect());
        assert!(health.is_up(&closed), "endpoints start healthy");
        health.check_once(Duration::from_millis(500)).await;
        assert!(health.is_up(&up));
        assert!(!health.is_up(&closed));
        assert_eq!(health.eligible(&[up.clone(), closed.clone()]), [up]);
        assert_eq!(
            health.eligible(std::slice::from_ref(&closed)),
            [closed],
            "with none healthy, all are eligible"
        );
    }
}
