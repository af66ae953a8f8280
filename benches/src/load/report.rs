//! A run's figures: one line for people, one JSON object for tools.

// Figures are for display: an f64 is exact far beyond any count or microsecond here.
#![allow(clippy::cast_precision_loss)]

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
