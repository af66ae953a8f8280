//! The latency-against-throughput plot of a set of runs, as a PNG.
//!
//! One panel per workload; in each, one colour per system (affinity, etcd, Redis), a point
//! per caller count at (ops/s, latency), p50 filled and joined by a line, p99 hollow.
//! Both axes are logarithmic: the systems differ by orders of magnitude. Rounds of the
//! same (system, workload, callers) are averaged. Text is drawn with a TrueType font read
//! from the system (DejaVu Sans, Debian's `fonts-dejavu-core`), or the one given.

// Figures are for display.
#![allow(clippy::cast_precision_loss)]

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

/// Where the font is looked for when none is given.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// One averaged point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Concurrent callers.
    pub callers: u64,
    /// Successful operations per second.
    pub ops: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// Points by workload, then by system, ordered by callers.
pub type Series = BTreeMap<String, BTreeMap<String, Vec<Point>>>;

/// Group closed-loop `records` (as written by `--json-out`) into series, averaging rounds.
pub fn series(records: &[Value]) -> Series {
    // (workload, system, callers) -> sums of (ops/s, p50, p99, rounds).
    type Sums = BTreeMap<(String, String, u64), (f64, f64, f64, f64)>;
    let mut sums = Sums::new();
    for r in records {
        let s = &r["settings"];
        let (Some(workload), Some(system), Some(callers)) = (
            s["workload"].as_str(),
            s["system"].as_str(),
            s["callers"].as_u64(),
        ) else {
            continue;
        };
        let ops = r["ops_per_sec"].as_f64().unwrap_or(0.0);
        let p50 = r["latency_us"]["p50"].as_f64().unwrap_or(0.0) / 1000.0;
        let p99 = r["latency_us"]["p99"].as_f64().unwrap_or(0.0) / 1000.0;
        if ops <= 0.0 {
            continue;
        }
        let e = sums
            .entry((workload.to_string(), system.to_string(), callers))
            .or_default();
        *e = (e.0 + ops, e.1 + p50, e.2 + p99, e.3 + 1.0);
    }
    let mut out = Series::new();
    for ((workload, system, callers), (ops, p50, p99, n)) in sums {
        out.entry(workload)
            .or_default()
            .entry(system)
            .or_default()
            .push(Point {
                callers,
                ops: ops / n,
                p50_ms: (p50 / n).max(0.001),
                p99_ms: (p99 / n).max(0.001),
            });
    }
    out
}

fn colour(system: &str) -> RGBColor {
    match system {
        "affinity" => RGBColor(0x1f, 0x77, 0xb4),
        "etcd" => RGBColor(0xd6, 0x27, 0x28),
        "redis" => RGBColor(0x2c, 0xa0, 0x2c),
        _ => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

fn load_font(given: Option<&Path>) -> Result<(), String> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => FONTS
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .map(Path::to_path_buf)
            .ok_or("no TrueType font for the plot's text: apt-get install fonts-dejavu-core, or pass --plot-font FILE.ttf")?,
    };
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The font lives as long as the process; it is loaded once per plot.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{}: not a usable TrueType font", path.display()))
}

/// Draw `series` to `out` (PNG), with `title` on top.
pub fn draw(series: &Series, title: &str, font: Option<&Path>, out: &Path) -> Result<(), String> {
    if series.is_empty() {
        return Err("nothing to plot: no closed-loop runs".into());
    }
    load_font(font)?;
    let panels = series.len();
    let columns = panels.min(2);
    let rows = panels.div_ceil(columns);
    let width = 720 * u32::try_from(columns).unwrap_or(1);
    let height = 60 + 520 * u32::try_from(rows).unwrap_or(1);
    let root = BitMapBackend::new(out, (width, height)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", out.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let root = root
        .titled(title, ("sans-serif", 26))
        .map_err(|e| fail(&e))?;
    let areas = root.split_evenly((rows, columns));
    for ((workload, systems), area) in series.iter().zip(areas) {
        let all: Vec<&Point> = systems.values().flatten().collect();
        let x_lo = all.iter().map(|p| p.ops).fold(f64::MAX, f64::min) / 2.0;
        let x_hi = all.iter().map(|p| p.ops).fold(0.0, f64::max) * 2.0;
        let y_lo = all.iter().map(|p| p.p50_ms).fold(f64::MAX, f64::min) / 2.0;
        let y_hi = all.iter().map(|p| p.p99_ms).fold(0.0, f64::max) * 2.0;
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!("{workload}: latency against throughput"),
                ("sans-serif", 20),
            )
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("operations per second")
            .y_desc("latency, ms (p50 filled, p99 hollow)")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(|e| fail(&e))?;
        for (system, points) in systems {
            let c = colour(system);
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.ops, p.p50_ms)),
                    c.stroke_width(2),
                ))
                .map_err(|e| fail(&e))?
                .label(system.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.ops, p.p99_ms)),
                    c.mix(0.5).stroke_width(1),
                ))
                .map_err(|e| fail(&e))?;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new((p.ops, p.p50_ms), 5, c.filled())),
                )
                .map_err(|e| fail(&e))?;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new((p.ops, p.p99_ms), 5, c.stroke_width(2))),
                )
                .map_err(|e| fail(&e))?;
            chart
                .draw_series(points.iter().map(|p| {
                    Text::new(
                        format!("{}", p.callers),
                        (p.ops, p.p50_ms),
                        ("sans-serif", 13).into_font().color(&BLACK),
                    )
                }))
                .map_err(|e| fail(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(system: &str, workload: &str, callers: u64, ops: f64, p50: u64) -> Value {
        json!({
            "settings": {"system": system, "workload": workload, "callers": callers},
            "ops_per_sec": ops,
            "latency_us": {"p50": p50, "p99": p50 * 3},
        })
    }

    #[test]
    fn rounds_are_averaged_and_grouped_by_workload_and_system() {
        let records = vec![
            record("affinity", "create", 1, 100.0, 1000),
            record("etcd", "create", 1, 50.0, 2000),
            record("affinity", "create", 1, 300.0, 3000),
            record("affinity", "create", 16, 1000.0, 4000),
            record("redis", "hit", 1, 10.0, 100),
            json!({"settings": {"system": "affinity", "workload": "hit", "rate": 5.0}}),
        ];
        let s = series(&records);
        assert_eq!(s.len(), 2);
        let ours = &s["create"]["affinity"];
        assert_eq!(ours.len(), 2);
        assert_eq!(ours[0].callers, 1);
        assert!((ours[0].ops - 200.0).abs() < 1e-9);
        assert!((ours[0].p50_ms - 2.0).abs() < 1e-9);
        assert!((ours[0].p99_ms - 6.0).abs() < 1e-9);
        assert_eq!(ours[1].callers, 16);
        assert_eq!(s["hit"].len(), 1, "the open-loop record has no callers");
    }

    #[test]
    fn draws_a_png_when_a_font_is_present() {
        if !FONTS.iter().any(|p| Path::new(p).is_file()) {
            eprintln!(
                "SKIPPED: no DejaVu font on this machine (apt-get install fonts-dejavu-core)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let out = dir.path().join("plot.png");
        let records = vec![
            record("affinity", "create", 1, 100.0, 1000),
            record("affinity", "create", 16, 1000.0, 2000),
            record("etcd", "create", 1, 50.0, 2000),
        ];
        draw(&series(&records), "test", None, &out).unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(&out).unwrap_or_default();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
        assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
    }
}
