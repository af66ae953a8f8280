//! The load generator behind the `affinity-bench` binary.
//!
//! - [`spawn`] starts a local cluster of `affinityd` processes (data on disk, durability as
//!   in production) and waits until it has a leader;
//! - [`workload`] defines what one operation is for each workload (`create`, `hit`,
//!   `cached`, `mixed`, `churn`) and how keys are chosen (unique, uniform or Zipf);
//! - [`run`] drives operations closed-loop (N callers back to back) or open-loop (a fixed
//!   arrival rate, latency measured from each operation's scheduled start, so queueing is
//!   counted), and collects an HDR histogram and error counts;
//! - [`peers`] starts etcd or Redis on loopback and runs the same get-or-create on them;
//! - [`report`] prints a run and writes it as JSON;
//! - [`plot`] draws latency against throughput of a set of runs as a PNG.

pub mod peers;
pub mod plot;
pub mod report;
pub mod run;
pub mod spawn;
pub mod workload;
