//! What a scenario did and measured: printed at the end, and written to `report.txt` (for
//! people) and `row.md` (its row of the table in docs/reliability.md) in its output folder:
//! the operations checked (by kind), failed calls by code, the faults done (the scenario's
//! steps), the longest stretch without a successful write, election and recovery times, and
//! what the check cost.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use affinity_tests::checker::Summary;

/// A scenario's report.
pub struct Report {
    name: String,
    out_dir: PathBuf,
    started: Instant,
    actions: Vec<(Duration, String)>,
    /// Time from a fault to a new leader agreed by the nodes that can see each other.
    pub elections: Vec<Duration>,
    /// Time from a fault (or its healing) to the first successful fresh write.
    pub write_recoveries: Vec<Duration>,
    /// The checked history's figures.
    pub summary: Option<Summary>,
    /// Violations the checker found.
    pub violations: usize,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn max_ms(ds: &[Duration]) -> String {
    ds.iter()
        .max()
        .map_or_else(|| "-".to_string(), |d| ms(*d).to_string())
}

impl Report {
    pub fn new(name: &str, out_dir: &Path) -> Report {
        Report {
            name: name.to_string(),
            out_dir: out_dir.to_path_buf(),
            started: Instant::now(),
            actions: Vec::new(),
            elections: Vec::new(),
            write_recoveries: Vec::new(),
            summary: None,
            violations: 0,
        }
    }

    /// Record a step.
    pub fn did(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!(
            "[{}] {:>7.1} s  {what}",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
        self.actions.push((self.started.elapsed(), what));
    }

    /// Record a new leader `took` after a fault.
    pub fn elected(&mut self, took: Duration, leader: usize) {
        self.did(format!(
            "node {leader} became the agreed leader {} ms after the fault",
            ms(took)
        ));
        self.elections.push(took);
    }

    /// Print the report and write it out.
    pub fn finish(&self) {
        let mut text = format!("scenario {}\n", self.name);
        for (at, what) in &self.actions {
            let _ = writeln!(text, "  {:>7.1} s  {what}", at.as_secs_f64());
        }
        if let Some(s) = &self.summary {
            let _ = writeln!(
                text,
                "  checked: {} operations ({}) on {} keys, {} cached answers apart, {} writes of unknown outcome ({} seen applied); {} violations",
                s.checked_total(),
                s.checked_by_kind(),
                s.keys,
                s.cached,
                s.unknown_writes,
                s.unknown_applied,
                self.violations
            );
            let _ = writeln!(
                text,
                "  calls: {} attempts, {} answered; failed: {} (of the client crate's, which retry: {})",
                s.calls,
                s.ok,
                s.errors_by_code(),
                s.client_errors_by_code()
            );
            let _ = writeln!(
                text,
                "  longest write unavailability {} ms; checker {} ms ({} search points)",
                s.longest_write_unavailable_ms, s.checker_ms, s.search_points
            );
        }
        let _ = writeln!(
            text,
            "  new leader after a fault: {} ms at most; writes back after a fault: {} ms at most; scenario took {:.0} s",
            max_ms(&self.elections),
            max_ms(&self.write_recoveries),
            self.started.elapsed().as_secs_f64()
        );
        // Past the test harness's capture: the report belongs in every run's output.
        let _ = writeln!(std::io::stderr(), "{text}");
        let _ = std::fs::write(self.out_dir.join("report.txt"), &text);
        if let Some(s) = &self.summary {
            let faults: Vec<&str> = self.actions.iter().map(|(_, what)| what.as_str()).collect();
            // | scenario | operations checked | by kind | cached answers | failed calls |
            // of them the client crate's | violations | faults done | longest write
            // unavailability (ms) | fault to new leader, worst (ms) | to a fresh write,
            // worst (ms) | checker (ms) |
            let row = format!(
                "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                self.name,
                s.checked_total(),
                s.checked_by_kind(),
                s.cached,
                s.errors_by_code(),
                s.client_errors_by_code(),
                self.violations,
                faults.join("; "),
                s.longest_write_unavailable_ms,
                max_ms(&self.elections),
                max_ms(&self.write_recoveries),
                s.checker_ms
            );
            let _ = std::fs::write(self.out_dir.join("row.md"), row);
        }
    }
}
