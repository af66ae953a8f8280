//! Which rule a request goes to, in the order the `HTTPRoute` specification gives: first the
//! route whose matching hostname has the most characters outside a wildcard, then the most
//! characters in all; then across those routes' rules the most specific path match (an
//! exact match, then the longest prefix); on a tie the oldest route
//! (`metadata.creationTimestamp`), then the first by `namespace/name`, then the first rule.

use std::cmp::Ordering;

use super::{Route, RouteTable, Rule};

/// How a route's hostnames match a host: (characters of an exact match, characters of
/// the matching hostname); a route without hostnames matches every host at (0, 0).
fn host_rank(route: &Route, host: &str) -> Option<(usize, usize)> {
    if route.hostnames.is_empty() {
        return Some((0, 0));
    }
    route
        .hostnames
        .iter()
        .filter_map(|pattern| match pattern.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|front| front.len() > 1 && front.ends_with('.'))
                .then_some((0, pattern.len())),
            None => (pattern == host).then_some((pattern.len(), pattern.len())),
        })
        .max()
}

/// Older first; a route without a timestamp after every route with one.
fn by_age(a: &Route, b: &Route) -> Ordering {
    match (&a.created, &b.created) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
    .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
}

impl RouteTable {
    /// The rule a request for `host` (without port) and `path` goes to (see the module
    /// docs for the order).
    pub fn select(&self, host: &str, path: &str) -> Option<&Rule> {
        let host = host.to_ascii_lowercase();
        let mut best: Option<((usize, usize), usize, &Route, &Rule)> = None;
        for route in &self.routes {
            let Some(hosts) = host_rank(route, &host) else {
                continue;
            };
            for rule in &route.rules {
                let Some(rank) = rule.matches.iter().filter_map(|m| m.rank(path)).max() else {
                    continue;
                };
                let better = match &best {
                    None => true,
                    Some((h, r, other, _)) => (hosts, rank)
                        .cmp(&(*h, *r))
                        .then_with(|| by_age(other, route))
                        .is_gt(),
                };
                if better {
                    best = Some((hosts, rank, route, rule));
                }
            }
        }
        best.map(|(_, _, _, rule)| rule)
    }
}
