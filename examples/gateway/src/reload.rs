//! Reloading the route file when it changes.
//!
//! The file is read again every interval and compared with what is in force (by content, so
//! a Kubernetes ConfigMap's symlink swap or an editor's rename both count, and a touch
//! alone does not). A file that parses replaces the routes whole and the health checker's
//! membership; one that does not is logged with the field and rule at fault and the routes
//! in force stay (a file that parses but refuses some routes serves the rest: each
//! refusal is logged and counted). Stickiness does not depend on the gateway's memory: scopes are
//! `namespace/name/rule-name` (or the rule's index), the leases are in the store, and the client's cache is
//! untouched, so a reload that keeps a rule keeps its clients where they are.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::backends::{Loaded, Membership};
use crate::routes::Options;

/// The gauge of routes and documents the file in force refused.
pub const REFUSED_GAUGE: &str = "affinity_gateway_routes_refused";

/// Read and parse the route file. Errors say which file and what is wrong.
pub fn load(path: &std::path::Path, options: &Options) -> Result<(Vec<u8>, Loaded), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read --routes {}: {e}", path.display()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("--routes {}: not UTF-8", path.display()))?;
    let loaded = Loaded::parse_with(text, options)
        .map_err(|e| format!("--routes {}: {e}", path.display()))?;
    Ok((bytes, loaded))
}

/// Watch `path` every `interval`; `current` is the content in force. A file that parses
/// replaces the routes whole and the health checker's membership.
pub async fn watch(
    path: PathBuf,
    interval: Duration,
    current: Vec<u8>,
    options: Options,
    routes: Arc<ArcSwap<Loaded>>,
    membership: Arc<Membership>,
) {
    affinity_client::gateway::routes::watch_file(
        path,
        interval,
        current,
        {
            let routes = routes.clone();
            move |text| Loaded::reparse(text, &options, Some(&routes.load()))
        },
        move |loaded| {
            loaded.table.log_outcome(REFUSED_GAUGE);
            let rules = loaded.rules.len();
            membership.set(loaded.backends());
            routes.store(Arc::new(loaded));
            rules
        },
        "affinity_gateway_route_reloads_total",
    )
    .await;
}
