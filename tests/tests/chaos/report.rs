//! What a scenario did and measured: printed at the end, and written to `report.txt` (for
//! people) and `row.md` (its row of the table in docs/reliability.md) in its output folder.

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
            let _ = writeln!(text, "  history: {s}");
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
            let errors: Vec<String> = s.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let row = format!(
                "| `{}` | {} | {} | {} | {} | {} | {} | {} |\n",
                self.name,
                s.calls,
                s.ok,
                if errors.is_empty() {
                    "none".to_string()
                } else {
                    errors.join(", ")
                },
                s.longest_unavailable_ms,
                max_ms(&self.elections),
                max_ms(&self.write_recoveries),
                s.survivors_checked
            );
            let _ = std::fs::write(self.out_dir.join("row.md"), row);
        }
    }
}
