//! A run's figures: one line for people, one JSON object for tools.

// Figures are for display: an f64 is exact far beyond any count or microsecond here.
#![allow(clippy::cast_precision_loss)]

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::run::Measured;

/// Latency percentiles of a run, in microseconds.
pub fn percentiles(m: &Measured) -> Value {
    let h = &m.latency_us;
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p99_9": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": h.mean().round(),
    })
}

/// The JSON record of one run, with its settings.
pub fn record(settings: &Value, m: &Measured) -> Value {
    json!({
        "settings": settings,
        "ok": m.ok,
        "errors": m.errors,
        "elapsed_s": m.elapsed.as_secs_f64(),
        "ops_per_sec": m.ops_per_sec().round(),
        "latency_us": percentiles(m),
    })
}

/// One human line: throughput and latency in milliseconds.
pub fn line(label: &str, m: &Measured) -> String {
    let h = &m.latency_us;
    let ms = |us: u64| us as f64 / 1000.0;
    let errors: u64 = m.errors.values().sum();
    format!(
        "{label:<28} {:>10.0} ops/s  p50 {:>8.3}  p90 {:>8.3}  p99 {:>8.3}  p99.9 {:>8.3}  max {:>8.3} ms  ok {} errors {}{}",
        m.ops_per_sec(),
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        m.ok,
        errors,
        if errors > 0 {
            format!(" {:?}", m.errors)
        } else {
            String::new()
        }
    )
}

/// A Markdown table of closed-loop runs: per workload and caller count, each system's
/// ops/s, p50 and p99 (rounds averaged), and affinity's throughput as a ratio to each peer.
pub fn table(series: &super::plot::Series) -> String {
    let mut systems: Vec<&str> = Vec::new();
    for by_system in series.values() {
        for system in by_system.keys() {
            if !systems.contains(&system.as_str()) {
                systems.push(system);
            }
        }
    }
    // affinity first, then the peers in name order.
    systems.sort_by_key(|s| (*s != "affinity", *s));
    let peers: Vec<&str> = systems
        .iter()
        .copied()
        .filter(|s| *s != "affinity")
        .collect();
    let mut out = String::from("| workload | callers |");
    let mut rule = String::from("| --- | ---: |");
    for s in &systems {
        let _ = write!(out, " {s} ops/s | p50 ms | p99 ms |");
        rule.push_str(" ---: | ---: | ---: |");
    }
    for p in &peers {
        let _ = write!(out, " vs {p} |");
        rule.push_str(" ---: |");
    }
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for (workload, by_system) in series {
        let mut callers: Vec<u64> = by_system.values().flatten().map(|p| p.callers).collect();
        callers.sort_unstable();
        callers.dedup();
        for c in callers {
            let point = |s: &str| {
                by_system
                    .get(s)
                    .and_then(|ps| ps.iter().find(|p| p.callers == c))
            };
            let _ = write!(out, "| {workload} | {c} |");
            for s in &systems {
                match point(s) {
                    Some(p) => {
                        let _ = write!(out, " {:.0} | {:.3} | {:.3} |", p.ops, p.p50_ms, p.p99_ms);
                    }
                    None => out.push_str(" - | - | - |"),
                }
            }
            for p in &peers {
                match (point("affinity"), point(p)) {
                    (Some(a), Some(b)) if b.ops > 0.0 => {
                        let _ = write!(out, " {:.2}x |", a.ops / b.ops);
                    }
                    _ => out.push_str(" - |"),
                }
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::plot::series;
    use super::*;

    #[test]
    fn the_table_gives_each_system_and_the_ratio_to_each_peer() {
        let rec = |system: &str, callers: u64, ops: f64| {
            json!({
                "settings": {"system": system, "workload": "create", "callers": callers},
                "ops_per_sec": ops,
                "latency_us": {"p50": 1500, "p99": 4000},
            })
        };
        let records = vec![
            rec("etcd", 1, 500.0),
            rec("affinity", 1, 1000.0),
            rec("redis", 1, 4000.0),
            rec("affinity", 16, 8000.0),
        ];
        let table = table(&series(&records));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].starts_with("| workload | callers | affinity ops/s"),
            "{table}"
        );
        assert!(lines[0].contains("vs etcd") && lines[0].contains("vs redis"));
        assert_eq!(
            lines[2],
            "| create | 1 | 1000 | 1.500 | 4.000 | 500 | 1.500 | 4.000 | 4000 | 1.500 | 4.000 | 2.00x | 0.25x |"
        );
        assert!(lines[3].ends_with("| - | - |"), "{table}");
    }
}
