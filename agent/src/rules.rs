//! The agent's route file made ready to answer: every rule by scope, its endpoints, and a
//! round-robin turn for rules without persistence; and reloading the file when it changes.
//!
//! The file is the one the example gateway reads (the client crate's
//! [`routes`](affinity_client::gateway::routes) parser). A proxy names the rule a request
//! belongs to by its scope (`namespace/route/rule`, which an Envoy route can carry as its
//! name, or nginx as a header); without one the agent selects the rule from host and path
//! as the gateway does. [`Rules`] is swapped whole on reload, so one request sees one file.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use affinity_client::gateway::routes::{Options, RouteTable, Rule, weighted_turn};
use arc_swap::ArcSwap;

/// One rule ready to answer.
#[derive(Debug)]
pub struct RuleState {
    /// The parsed rule: scope, matches, endpoints, persistence.
    pub rule: Rule,
    next: AtomicUsize,
}

impl RuleState {
    /// The next of `candidates` in round-robin order, each as often as its weight in
    /// `weights` (one per candidate; empty: equally); `None` when there are none.
    pub fn round_robin<'a>(&self, candidates: &'a [String], weights: &[u32]) -> Option<&'a str> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        weighted_turn(turn, candidates.len(), weights)
            .and_then(|i| candidates.get(i))
            .map(String::as_str)
    }
}

/// A route file ready to answer.
#[derive(Debug)]
pub struct Rules {
    table: RouteTable,
    by_scope: HashMap<String, RuleState>,
}

impl Rules {
    /// Parse a route file with the default options (every route, `IP:PORT` endpoints).
    pub fn parse(text: &str) -> Result<Rules, String> {
        Self::parse_with(text, &Options::default())
    }

    /// Parse a route file. Every endpoint must be an `IP:PORT` (the agent checks its
    /// health and the proxies connect to it as written): a rule naming another is refused
    /// with its route. Fails when nothing can be served.
    pub fn parse_with(text: &str, options: &Options) -> Result<Rules, String> {
        Self::reparse(text, options, None)
    }

    /// Parse a changed route file; a route it refuses keeps its version in `in_force`.
    pub fn reparse(
        text: &str,
        options: &Options,
        in_force: Option<&Rules>,
    ) -> Result<Rules, String> {
        let table = RouteTable::parse_servable(text, options, in_force.map(Rules::table))?;
        let by_scope = table
            .rules()
            .map(|rule| {
                (
                    rule.scope.clone(),
                    RuleState {
                        rule: rule.clone(),
                        next: AtomicUsize::new(0),
                    },
                )
            })
            .collect();
        Ok(Rules { table, by_scope })
    }

    /// The parsed file: its routes, and what was refused, ignored or warned about.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// The rule named by `scope`.
    pub fn by_scope(&self, scope: &str) -> Option<&RuleState> {
        self.by_scope.get(scope)
    }

    /// The rule a request for `host` and `path` goes to, as the gateway selects it.
    pub fn select(&self, host: &str, path: &str) -> Option<&RuleState> {
        let rule = self.table.select(host, path)?;
        self.by_scope.get(&rule.scope)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.by_scope.len()
    }

    /// Whether the file holds no rule (never true of a parsed file).
    pub fn is_empty(&self) -> bool {
        self.by_scope.is_empty()
    }

    /// Every endpoint of every rule, once.
    pub fn endpoints(&self) -> BTreeSet<String> {
        self.by_scope
            .values()
            .flat_map(|r| r.rule.endpoints.iter().cloned())
            .collect()
    }
}

/// The gauge of routes and documents the file in force refused.
pub const REFUSED_GAUGE: &str = "affinity_agent_routes_refused";

/// Read and parse the route file. Errors say which file and what is wrong.
pub fn load(path: &Path, options: &Options) -> Result<(Vec<u8>, Rules), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read --routes {}: {e}", path.display()))?;
    let rules =
        parse_bytes(&bytes, options).map_err(|e| format!("--routes {}: {e}", path.display()))?;
    Ok((bytes, rules))
}

fn parse_bytes(bytes: &[u8], options: &Options) -> Result<Rules, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    Rules::parse_with(text, options)
}

/// Read `path` every `interval` and put a changed file that parses in force, calling
/// `changed` with it first (the client crate's watcher: a file that does not parse is
/// logged and counted, and the rules in force stay).
pub async fn watch(
    path: PathBuf,
    interval: Duration,
    current: Vec<u8>,
    options: Options,
    rules: Arc<ArcSwap<Rules>>,
    changed: impl Fn(&Rules) + Send + 'static,
) {
    affinity_client::gateway::routes::watch_file(
        path,
        interval,
        current,
        {
            let rules = rules.clone();
            move |text| Rules::reparse(text, &options, Some(&rules.load()))
        },
        move |parsed| {
            parsed.table().log_outcome(REFUSED_GAUGE);
            changed(&parsed);
            let count = parsed.len();
            rules.store(Arc::new(parsed));
            count
        },
        "affinity_agent_route_reloads_total",
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  hostnames: [shop.example]
  rules:
  - backendRefs: [{name: web, port: 80}]
    sessionPersistence: {type: ClientIP, absoluteTimeout: 10m, ipMask: 24}
  - matches: [{path: {value: /static}}]
    backendRefs: [{name: \"10.0.0.9:8080\"}]
---
apiVersion: affinity.dev/v1alpha1
kind: Backends
endpoints:
  shop/web:80: [\"10.0.0.1:80\", \"10.0.0.2:80\"]
";

    #[test]
    fn rules_are_found_by_scope_and_by_host_and_path() {
        let rules = Rules::parse(FILE).expect("valid file");
        assert_eq!(rules.len(), 2);
        let sticky = rules.by_scope("shop/web/0").expect("rule 0");
        assert!(sticky.rule.persistence.is_some());
        assert_eq!(sticky.rule.endpoints, ["10.0.0.1:80", "10.0.0.2:80"]);
        let chosen = rules
            .select("shop.example", "/static/app.js")
            .expect("rule 1");
        assert_eq!(chosen.rule.scope, "shop/web/1");
        assert!(rules.select("other.example", "/").is_none());
        assert!(rules.by_scope("shop/web/7").is_none());
        assert_eq!(rules.endpoints().len(), 3);
    }

    #[test]
    fn a_named_endpoint_is_refused_with_its_route_alone() {
        let file = FILE.replace("10.0.0.9:8080", "static.example:8080");
        let err = Rules::parse(&file).expect_err("names are not resolved");
        assert!(
            err.contains("HTTPRoute shop/web spec.rules[1].backendRefs[0]")
                && err.contains("IP:PORT"),
            "{err}"
        );
        let two = format!(
            "{file}---\nkind: HTTPRoute\nmetadata: {{name: other, namespace: shop}}\nspec:\n  rules:\n  - backendRefs: [{{name: \"10.0.0.7:80\"}}]\n"
        );
        let rules = Rules::parse(&two).expect("the other route is served");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules.table().refused.len(), 1);
        assert!(rules.by_scope("shop/other/0").is_some());
    }

    #[test]
    fn round_robin_turns_over_the_candidates() {
        let rules = Rules::parse(FILE).expect("valid file");
        let rule = rules.by_scope("shop/web/1").expect("rule 1");
        let candidates = vec!["a:1".to_string(), "b:1".to_string()];
        let picks: Vec<_> = (0..3).map(|_| rule.round_robin(&candidates, &[])).collect();
        assert_eq!(picks, [Some("a:1"), Some("b:1"), Some("a:1")]);
        let picks: Vec<_> = (0..8)
            .map(|_| rule.round_robin(&candidates, &[1, 3]))
            .collect();
        let b = picks.iter().filter(|p| **p == Some("b:1")).count();
        assert_eq!(b, 6, "weights 1:3 over two cycles: {picks:?}");
        assert_eq!(rule.round_robin(&[], &[]), None);
    }
}
