//! Chaos: a 3-node cluster of `affinityd` containers under a gateway-like workload while
//! nodes are killed, frozen, cut off, restarted and replaced; then the history is checked
//! (see `affinity_tests::checker`) and the figures reported.
//!
//! Needs Docker (skips loudly without it; fails with `AFFINITY_REQUIRE_DOCKER=1`). The
//! scenarios run one at a time: each is three containers plus the workload on a 2-core
//! machine. Each prints a report and writes it, with the containers' logs, to
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

use affinity_tests::checker;
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
    let listed_at = workload::now_ms();
    let mut listed = Vec::new();
    for scope in [workload::LONG_SCOPE, workload::SHORT_SCOPE] {
        listed.extend(
            workload::list_all(run.cluster.channel(leader), scope)
                .await
                .expect("List after healing"),
        );
    }
    match checker::check(&history, &run.options, &listed, listed_at) {
        Ok(summary) => {
            run.report.summary = Some(summary);
            run.report.finish();
        }
        Err(violations) => {
            run.report.finish();
            panic!(
                "{name}: {} violations, first ones:\n{}",
                violations.len(),
                violations
                    .iter()
                    .take(20)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}
