//! What a data plane says about a route file: the log lines and the refused-routes gauge
//! when it loads one, and the report of `check --routes FILE` (text for people, JSON for
//! tools).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{Options, RouteTable, Rule};

impl RouteTable {
    /// Log every refusal (error), warning (warn) and ignored document (info) once, and set
    /// the gauge `refused_gauge` to the number of refusals.
    pub fn log_outcome(&self, refused_gauge: &'static str) {
        for refusal in &self.refused {
            tracing::error!(at = %refusal.field, rule = %refusal.rule, "route file: refused; the rest is served");
        }
        for warning in &self.warnings {
            tracing::warn!(at = %warning.at, "route file: {}", warning.message);
        }
        for ignored in &self.ignored {
            tracing::info!(at = %ignored.at, "route file: ignored, {}", ignored.message);
        }
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(refused_gauge).set(self.refused.len() as f64);
    }

    /// The table a data plane can serve: `Err` when nothing in it can be served (every
    /// route refused, or none given), naming the first refusal.
    pub fn servable(self) -> Result<RouteTable, String> {
        if self.routes.is_empty() {
            return Err(match self.refused.first() {
                Some(first) => format!(
                    "no route can be served ({} refused; the first: {first})",
                    self.refused.len()
                ),
                None => "no HTTPRoute to serve in the file (none given, or none attached to the --gateway)".into(),
            });
        }
        Ok(self)
    }

    /// Parse a route file for a data plane that connects to `IP:PORT` endpoints (the
    /// options' `ip_endpoints` is set): `Err` when the file is not YAML or nothing in it
    /// can be served. On a reload, `in_force` is the table served until now: a route the
    /// new file refuses keeps its version in force (with a warning) rather than vanish.
    pub fn parse_servable(
        text: &str,
        options: &Options,
        in_force: Option<&RouteTable>,
    ) -> Result<RouteTable, String> {
        let options = Options {
            ip_endpoints: true,
            ..options.clone()
        };
        let mut table = RouteTable::parse_with(text, &options).map_err(|e| e.to_string())?;
        if let Some(previous) = in_force {
            table.keep_in_force(previous);
        }
        table.servable()
    }

    /// Serve `previous`'s version of each route this table refused.
    fn keep_in_force(&mut self, previous: &RouteTable) {
        for id in &self.refused_routes {
            let served = |r: &&super::Route| format!("{}/{}", r.namespace, r.name) == *id;
            if self.routes.iter().any(|r| served(&r)) {
                continue;
            }
            if let Some(old) = previous.routes.iter().find(served) {
                self.routes.push(old.clone());
                self.warnings.push(super::Notice {
                    at: format!("HTTPRoute {id}"),
                    message:
                        "refused in the new file; the version in force stays until it is fixed"
                            .into(),
                });
            }
        }
    }

    /// The `check` report for people: per rule its scope, policy and endpoints, then
    /// every refusal, warning and ignored document.
    pub fn check_text(&self) -> String {
        let mut out = String::new();
        for route in &self.routes {
            let hosts = if route.hostnames.is_empty() {
                "any host".to_string()
            } else {
                route.hostnames.join(", ")
            };
            let _ = writeln!(
                out,
                "HTTPRoute {}/{} ({hosts})",
                route.namespace, route.name
            );
            for rule in &route.rules {
                let _ = writeln!(out, "  rule {}", rule.scope);
                let _ = writeln!(out, "    persistence: {}", persistence_text(rule));
                for (endpoint, weight) in rule.endpoints.iter().zip(&rule.weights) {
                    let state = if *weight > 0 {
                        format!("eligible, proposed (weight {weight})")
                    } else {
                        "eligible, not proposed (keeps its sessions)".into()
                    };
                    let _ = writeln!(out, "    endpoint {endpoint}: {state}");
                }
            }
        }
        for refusal in &self.refused {
            let _ = writeln!(out, "refused: {}: {}", refusal.field, refusal.rule);
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        for ignored in &self.ignored {
            let _ = writeln!(out, "ignored: {ignored}");
        }
        let _ = writeln!(
            out,
            "{} routes, {} rules served; {} refused, {} warnings, {} ignored",
            self.routes.len(),
            self.rules().count(),
            self.refused.len(),
            self.warnings.len(),
            self.ignored.len()
        );
        out
    }

    /// The `check` report for tools.
    pub fn check_json(&self) -> Value {
        let rules: Vec<Value> = self
            .routes
            .iter()
            .flat_map(|route| {
                route.rules.iter().map(move |rule| {
                    json!({
                        "route": format!("{}/{}", route.namespace, route.name),
                        "hostnames": route.hostnames,
                        "scope": rule.scope,
                        "persistence": rule.persistence.map(|p| json!({
                            "from": rule.persistence_from,
                            "ipv4Mask": p.masks().ipv4(),
                            "ipv6Mask": p.masks().ipv6(),
                            "absoluteTimeoutMs": p.absolute_timeout_ms(),
                            "idleTimeoutMs": p.idle_timeout_ms(),
                        })),
                        "endpoints": rule.endpoints.iter().zip(&rule.weights).map(|(e, w)| json!({
                            "endpoint": e,
                            "eligible": true,
                            "proposed": *w > 0,
                            "weight": w,
                        })).collect::<Vec<_>>(),
                    })
                })
            })
            .collect();
        let notices = |list: &[super::Notice]| -> Vec<Value> {
            list.iter()
                .map(|n| json!({"at": n.at, "message": n.message}))
                .collect()
        };
        json!({
            "rules": rules,
            "refused": self.refused.iter().map(|e| json!({"at": e.field, "rule": e.rule})).collect::<Vec<_>>(),
            "warnings": notices(&self.warnings),
            "ignored": notices(&self.ignored),
        })
    }
}

fn persistence_text(rule: &Rule) -> String {
    let Some(policy) = rule.persistence else {
        return "none (round robin)".into();
    };
    let masks = policy.masks();
    let idle = policy
        .idle_timeout_ms()
        .map(|ms| format!(", idle timeout {ms} ms"))
        .unwrap_or_default();
    format!(
        "client IP /{} (IPv4) /{} (IPv6), absolute timeout {} ms{idle}, from {}",
        masks.ipv4(),
        masks.ipv6(),
        policy.absolute_timeout_ms(),
        rule.persistence_from.as_deref().unwrap_or("-")
    )
}
