//! Skewed wall clocks: a node's container made again, on its volume, with libfaketime
//! preloaded, so that its wall clock runs a fixed offset from the host's while its
//! monotonic clock is left alone (as a badly set host clock would be).
//!
//! The image is `FROM scratch`, so the host's `libfaketime.so.1` (Debian's `faketime`,
//! which `tests/install-deps.sh` installs; it needs only the libc and libm the image
//! already holds) is bind-mounted read-only at the same path, with `LD_PRELOAD`,
//! `FAKETIME=+N`/`-N` (seconds) and `DONT_FAKE_MONOTONIC=1`: the settings of
//! `tests/it/clock_steps.rs`, with the offset given once at start instead of from a file.
//! A preloaded library takes effect when a process starts, so skewing a node restarts it
//! (gracefully, SIGTERM).

use bollard::models::{Mount, MountType};

use super::ContainerCluster;

/// The host's libfaketime.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

impl ContainerCluster {
    /// Fault: stop node `i` (SIGTERM) and start it again on its volume with its wall clock
    /// `offset_s` seconds off the real one (negative: behind); wait until it serves.
    pub async fn skew_wall_clock(&self, i: usize, offset_s: i64) {
        assert!(
            std::path::Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: apt-get install faketime (tests/install-deps.sh does)"
        );
        let env = vec![
            format!("LD_PRELOAD={LIBFAKETIME}"),
            format!("FAKETIME={offset_s:+}"),
            "DONT_FAKE_MONOTONIC=1".to_string(),
        ];
        let mount = Mount {
            target: Some(LIBFAKETIME.into()),
            source: Some(LIBFAKETIME.into()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        };
        self.recreate_with(i, env, vec![mount]).await;
    }

    /// Heal: stop node `i` and start it again on its volume with the real wall clock.
    pub async fn unskew_wall_clock(&self, i: usize) {
        self.recreate_with(i, Vec::new(), Vec::new()).await;
    }

    async fn recreate_with(&self, i: usize, env: Vec<String>, mounts: Vec<Mount>) {
        let before = self.addr(i);
        self.stop(i).await;
        *self.nodes[i].extra.lock() = (env, mounts);
        self.replace(i, false).await;
        // The workload's clients know each node by its first address.
        assert_eq!(
            self.addr(i),
            before,
            "node {i} came back at another address; clients would lose it"
        );
        self.wait_ready(i).await;
    }
}
