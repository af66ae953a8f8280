//! Chaos: a 3-node cluster of `affinityd` containers under a gateway-like workload while
//! nodes are killed, frozen, cut off, restarted and replaced; then the history, with a
//! `List` of the store after healing, is checked for linearizability key by key (see
//! `affinity_tests::checker`) and the figures reported.
//!
//! Needs Docker (skips loudly without it; fails with `AFFINITY_REQUIRE_DOCKER=1`). The
//! scenarios run one at a time: each is three containers plus the workload on a 2-core
//! machine. Each prints a report and writes it, with the containers' logs, every recorded
//! call (`history.txt`) and any violation (`violations.txt`), to
//! `target/test-output/chaos/<scenario>/`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod probes;
mod report;
mod scenarios;
mod scenarios_clock;
mod scenarios_leader;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use affinity_tests::checker::{self, CheckOptions, Listing};
use affinity_tests::containers::{ContainerCluster, ContainerOptions};
use affinity_tests::wait;
use affinity_tests::workload::{self, History, Workload, WorkloadOptions};

use report::Report;

/// One scenario at a time in this process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// After a fault heals, a write must succeed within this long.
pub const WRITE_BOUND: Duration = Duration::from_secs(10);

/// What a scenario gets to work with.
pub struct Run {
    /// The containers.
    pub cluster: ContainerCluster,
    /// What the scenario did and measured.
    pub report: Report,
    /// How far store times may be from the host clock around a call, in ms, for the
    /// checker: a few ms by default (the containers share the host's clock); a scenario
    /// that skews node clocks sets more (e.g. `run.clock_tolerance_ms = 1_100`).
    pub clock_tolerance_ms: i64,
    workload: Option<Workload>,
    progress: Arc<AtomicUsize>,
    options: WorkloadOptions,
}

impl Run {
    /// Wait until the workload has had `n` more successful calls: the cluster is taking
    /// writes, and whatever comes next happens under load.
    pub async fn under_load(&self, n: usize) {
        let from = self.progress.load(Ordering::Relaxed);
        let progress = Arc::clone(&self.progress);
        wait::until(
            &format!("the workload makes {n} more successful calls"),
            Duration::from_secs(60),
            || {
                let progress = Arc::clone(&progress);
                async move {
                    let done = progress.load(Ordering::Relaxed) - from;
                    if done >= n { Ok(()) } else { Err(done) }
                }
            },
        )
        .await;
    }

    /// Measure how long until a fresh write succeeds (from now), assert it is within
    /// [`WRITE_BOUND`], and record it.
    pub async fn writes_resume(&mut self, after: &str) -> Duration {
        let took = workload::time_to_write(&self.cluster.endpoints(), WRITE_BOUND)
            .await
            .unwrap_or_else(|| panic!("no write succeeded within {WRITE_BOUND:?} {after}"));
        self.report
            .did(format!("a write succeeded {} ms {after}", took.as_millis()));
        self.report.write_recoveries.push(took);
        took
    }
}

/// Start a cluster and the workload, run `faults`, heal, stop the workload, check the
/// history against the store, and report. Skips (returns) when Docker is absent.
pub async fn scenario<F>(name: &str, faults: F)
where
    F: AsyncFnOnce(&mut Run),
{
    let _one_at_a_time = SERIAL.lock().await;
    let Some(cluster) = ContainerCluster::start(name, ContainerOptions::default()).await else {
        return;
    };
    let options = WorkloadOptions::default();
    let progress = Arc::new(AtomicUsize::new(0));
    let workload = Workload::start_counting(&cluster.endpoints(), &options, &progress);
    let mut run = Run {
        report: Report::new(name, cluster.out_dir()),
        cluster,
        clock_tolerance_ms: CheckOptions::default().clock_tolerance_ms,
        workload: Some(workload),
        progress,
        options,
    };
    run.under_load(500).await;

    faults(&mut run).await;

    // Healed: every node serving, one leader, writes flowing.
    run.cluster.wait_all_ready().await;
    run.cluster.wait_leader(&run.cluster.all()).await;
    run.under_load(500).await;
    let history: History = run.workload.take().expect("the workload runs").stop().await;

    let leader = run.cluster.wait_leader(&run.cluster.all()).await;
    let mut listing = Listing {
        invoke_ms: workload::now_ms(),
        ..Listing::default()
    };
    for scope in [workload::LONG_SCOPE, workload::SHORT_SCOPE] {
        listing.leases.extend(
            workload::list_all(run.cluster.channel(leader), scope)
                .await
                .expect("List after healing"),
        );
    }
    listing.response_ms = workload::now_ms();
    save_history(&run, &history);

    let options = CheckOptions {
        clock_tolerance_ms: run.clock_tolerance_ms,
        ..CheckOptions::default()
    };
    let checked = checker::check(&history, &run.options, Some(&listing), &options);
    run.report.summary = Some(checked.summary.clone());
    run.report.violations = checked.violations.len();
    if !checked.passed() {
        let text: Vec<String> = checked.violations.iter().map(ToString::to_string).collect();
        let path = run.cluster.out_dir().join("violations.txt");
        let header = format!(
            "# times +s.mmm count from the workload's start, Unix ms {} ({} UTC, as in the container logs)\n\n",
            history.started_ms,
            utc(history.started_ms)
        );
        let _ = std::fs::write(&path, header + &text.join("\n\n") + "\n");
        run.report.finish();
        let message = format!(
            "{name}: {} violations (all in {}), first ones:\n{}",
            text.len(),
            path.display(),
            text.iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n\n")
        );
        // Printed last, without a backtrace after it, so that the end of the output (what
        // a CI summary keeps) shows the violations themselves.
        println!("{message}");
        std::panic::resume_unwind(Box::new(message));
    }
    run.report.finish();
}

/// Every recorded call, one a line, beside the containers' logs.
fn save_history(run: &Run, history: &History) {
    use std::fmt::Write as _;
    let mut text = format!(
        "# workload from {} to {} (Unix ms); invoke response worker via key request -> outcome\n",
        history.started_ms, history.ended_ms
    );
    for call in &history.calls {
        let _ = writeln!(text, "{call}");
    }
    let _ = std::fs::write(run.cluster.out_dir().join("history.txt"), text);
}

/// Unix ms as `YYYY-MM-DDTHH:MM:SS.mmm` (UTC), the form the container logs use.
fn utc(unix_ms: i64) -> String {
    let (days, ms) = (
        unix_ms.div_euclid(86_400_000),
        unix_ms.rem_euclid(86_400_000),
    );
    // Days since 1970-01-01 to a civil date, in 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1_000 % 60,
        ms % 1_000
    )
}

#[test]
fn unix_ms_print_as_the_logs_do() {
    assert_eq!(utc(0), "1970-01-01T00:00:00.000");
    assert_eq!(utc(1_796_167_178_817), "2026-12-01T23:19:38.817");
    assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000");
}
