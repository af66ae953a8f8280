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

/// Watch `path` every `interval`; `current` is the content in force. A file that parses
/// replaces the routes whole and the health checker's membership.
pub async fn watch(
    path: PathBuf,
    interval: Duration,
    current: Vec<u8>,
    routes: Arc<ArcSwap<Loaded>>,
    membership: Arc<Membership>,
) {
    affinity_client::gateway::routes::watch_file(
        path,
        interval,
        current,
        |text| Loaded::parse(text).map_err(|e| e.to_string()),
        move |loaded| {
            let rules = loaded.rules.len();
            membership.set(loaded.backends());
            routes.store(Arc::new(loaded));
            rules
        },
        "affinity_gateway_route_reloads_total",
    )
    .await;
}
