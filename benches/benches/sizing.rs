//! What a lease costs in memory and on disk, for sizing nodes (not a criterion benchmark:
//! it measures bytes, once).
//!
//! - memory: the resident set of this process before and after filling a lease table with
//!   N leases (one scope, IPv4 keys, 8 shared endpoints), per lease; and the same for a
//!   fresh process reading that table back from its snapshot (what a restart or a new
//!   member holds);
//! - snapshot: the size of the snapshot file of that table, per lease (what a snapshot, a
//!   backup and a new member's catch-up transfer cost);
//! - log: the encoded size of one `Resolve` command (one Raft log entry's payload);
//! - named writes: what the state machine keeps per remembered request id (a table of
//!   named resolves against the same table unnamed).
//!
//! `cargo bench -p affinity-bench --bench sizing`. With `AFFINITY_SIZING_BACKUP=FILE` it
//! also writes the 100k-lease table as a backup file, for measuring a real node
//! (`affinityctl restore FILE`, then the node's RSS and data directory).
//! `AFFINITY_SIZING_COUNTS=100000,1000000,5000000` sets the table sizes, and
//! `AFFINITY_SIZING_BACKUP_DIR=DIR` writes every table as `DIR/leases-N.backup`.

#![allow(clippy::expect_used, clippy::cast_precision_loss)]

use affinity_bench::{ENDPOINTS, resolve_command};
use affinity_proto::pb;
use affinity_server::sm::{LeaseTable, RequestId, snapshot};
use prost::Message;

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm has a resident field");
    pages * 4096
}

fn filled(n: u32) -> LeaseTable {
    filled_with(n, false)
}

/// `n` leases, each created by a resolve named with a request id when `named`.
fn filled_with(n: u32, named: bool) -> LeaseTable {
    let mut table = LeaseTable::new();
    let mut events = Vec::new();
    let stamp = affinity_server::clock::now_ms();
    for i in 0..n {
        let endpoint = ENDPOINTS[i as usize % ENDPOINTS.len()];
        let mut cmd = resolve_command("default/web/0", i, stamp, endpoint);
        if named {
            cmd.op = cmd
                .op
                .named(RequestId::checked(affinity_proto::request::new_request_id()));
        }
        table.apply(u64::from(i) + 1, &cmd, &mut events);
        events.clear();
    }
    table
}

/// Environment variable: read this snapshot, print the memory it took per lease, exit.
const READ_BACK: &str = "AFFINITY_SIZING_READ_BACK";

/// In a fresh process, the memory per lease of the table read from the snapshot at `path`.
fn read_back(path: &std::path::Path) -> String {
    let out = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env(READ_BACK, path)
        .output()
        .expect("run the read-back process");
    assert!(out.status.success(), "read-back failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main() {
    if let Some(path) = std::env::var_os(READ_BACK) {
        let before = rss();
        let file = std::fs::File::open(&path).expect("open the snapshot");
        let decoded = snapshot::read(std::io::BufReader::new(file)).expect("read the snapshot");
        let per_lease = rss().saturating_sub(before) as f64 / decoded.stats.lease_count as f64;
        println!("{per_lease:.0} B");
        return;
    }
    // criterion-style arguments (`--bench`) are accepted and ignored.
    println!(
        "| leases | memory per lease | memory per lease, read from the snapshot | snapshot bytes per lease |"
    );
    println!("| --- | --- | --- | --- |");
    let counts: Vec<u32> = std::env::var("AFFINITY_SIZING_COUNTS").map_or_else(
        |_| vec![100_000, 1_000_000],
        |text| {
            text.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        },
    );
    let backup_dir = std::env::var_os("AFFINITY_SIZING_BACKUP_DIR").map(std::path::PathBuf::from);
    if let Some(dir) = &backup_dir {
        std::fs::create_dir_all(dir).expect("create AFFINITY_SIZING_BACKUP_DIR");
    }
    for n in counts {
        let before = rss();
        let table = filled(n);
        let after = rss();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sizing.snapshot");
        let file = std::fs::File::create(&path).expect("create");
        let stats = snapshot::write(&table, pb::SnapshotMeta::default(), file).expect("write");
        let per_lease_memory = after.saturating_sub(before) as f64 / f64::from(n);
        let per_lease_snapshot = stats.bytes as f64 / f64::from(n);
        let read = read_back(&path);
        println!("| {n} | {per_lease_memory:.0} B | {read} | {per_lease_snapshot:.1} B |");
        if n == 100_000
            && let Some(out) = std::env::var_os("AFFINITY_SIZING_BACKUP")
        {
            std::fs::copy(&path, &out).expect("copy the backup");
            println!("(100k-lease backup written to {})", out.to_string_lossy());
        }
        if let Some(dir) = &backup_dir {
            let out = dir.join(format!("leases-{n}.backup"));
            std::fs::copy(&path, &out).expect("copy the backup");
            println!("({n}-lease backup written to {})", out.display());
        }
        drop(table);
    }
    let cmd = resolve_command("default/web/0", 77, 1_700_000_000_000, ENDPOINTS[0]);
    println!(
        "\nlog: one Resolve command encodes to {} bytes (scope \"default/web/0\", IPv4 /32 key, endpoint \"{}\")",
        cmd.to_pb().encoded_len(),
        ENDPOINTS[0]
    );
    let n = 200_000;
    let before = rss();
    let plain = filled_with(n, false);
    let middle = rss();
    let named = filled_with(n, true);
    let after = rss();
    let per_write =
        (after.saturating_sub(middle) as f64 - middle.saturating_sub(before) as f64) / f64::from(n);
    println!(
        "named writes: {per_write:.0} B more per resolve named with a request id ({} remembered; bound {})",
        named.remembered_len(),
        affinity_server::sm::once::MAX_REMEMBERED
    );
    drop((plain, named));
}
