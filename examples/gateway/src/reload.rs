//! Reloading the route file when it changes.
//!
//! The file is read again every interval and compared with what is in force (by content, so
//! a Kubernetes ConfigMap's symlink swap or an editor's rename both count, and a touch
//! alone does not). A file that parses replaces the routes whole and the health checker's
//! membership; one that does not is logged with the field and rule at fault and the routes
//! in force stay. Stickiness does not depend on the gateway's memory: scopes are
//! `namespace/name/rule-index`, the leases are in the store, and the client's cache is
//! untouched, so a reload that keeps a rule keeps its clients where they are.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::backends::{Loaded, Membership};

/// Read and parse the route file. Errors say which file and what is wrong.
pub fn load(path: &std::path::Path) -> Result<(Vec<u8>, Loaded), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read --routes {}: {e}", path.display()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("--routes {}: not UTF-8", path.display()))?;
    let loaded = Loaded::parse(text).map_err(|e| format!("--routes {}: {e}", path.display()))?;
    Ok((bytes, loaded))
}

/// Watch `path` every `interval`; `current` is the content in force.
pub async fn watch(
    path: PathBuf,
    interval: Duration,
    mut current: Vec<u8>,
    routes: Arc<ArcSwap<Loaded>>,
    membership: Arc<Membership>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(bytes) = tokio::fs::read(&path).await else {
            // A ConfigMap update briefly removes the file; the next tick sees the new one.
            continue;
        };
        if bytes == current {
            continue;
        }
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|_| "not UTF-8".to_string())
            .and_then(|text| Loaded::parse(text).map_err(|e| e.to_string()));
        match parsed {
            Ok(loaded) => {
                let rules = loaded.rules.len();
                membership.set(loaded.backends());
                routes.store(Arc::new(loaded));
                metrics::counter!("affinity_gateway_route_reloads_total", "result" => "ok")
                    .increment(1);
                tracing::info!(path = %path.display(), rules, "route file reloaded");
            }
            Err(e) => {
                metrics::counter!("affinity_gateway_route_reloads_total", "result" => "error")
                    .increment(1);
                tracing::error!(path = %path.display(), error = %e, "route file not reloaded; keeping the routes in force");
            }
        }
        current = bytes;
    }
}
