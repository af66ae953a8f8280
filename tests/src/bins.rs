//! The workspace's binaries, built on first use by this test process.
//!
//! `cargo test -p affinity-tests` does not build another package's binaries, and a binary
//! left from an older build would test old code. So the first test that needs one runs
//! `cargo build -p affinity-server --bins` (a no-op when nothing changed) in the same target
//! folder and profile as the test binary itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `affinityd` binary.
pub fn affinityd() -> PathBuf {
    built().join("affinityd")
}

/// The `affinityctl` binary.
pub fn affinityctl() -> PathBuf {
    built().join("affinityctl")
}

/// The folder holding both binaries (built first if needed).
pub fn dir() -> &'static Path {
    built()
}

fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The test binary lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("the test binary knows its path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary is in <target>/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir
            .parent()
            .expect("<target>/<profile>")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args([
                "build",
                "--quiet",
                "-p",
                "affinity-server",
                "--bins",
                "--target-dir",
            ])
            .arg(&target_dir);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(
            status.success(),
            "building affinityd and affinityctl failed"
        );
        profile_dir
    })
}
