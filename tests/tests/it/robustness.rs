//! Hostile and broken input against a real node: garbage and abusive HTTP/2 on the gRPC
//! port while a well-behaved client keeps being served with bounded memory, and a damaged
//! snapshot file that stops the node at start with an error naming it.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use affinity_proto::pb;
use affinity_tests::requests::{lookup, resolve};
use affinity_tests::{Cluster, ClusterOptions, wait};
use tonic::Code;
use tonic::metadata::MetadataValue;

const MINUTE: Duration = Duration::from_secs(60);

fn one_node() -> ClusterOptions {
    ClusterOptions {
        nodes: 1,
        ..ClusterOptions::default()
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// An HTTP/2 frame header: length, type, flags, stream.
fn frame(length: u32, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
    let mut out = length.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_connections_do_not_stop_a_node_from_serving() {
    let cluster = Cluster::start("abuse", one_node()).await;
    let addr = cluster.addr(1);
    let pid = cluster.pid(1).unwrap();
    let mut client = cluster.client(1);
    client
        .resolve(resolve("ns/abuse/0", "10.0.0.1", "10.9.0.1:80", MINUTE))
        .await
        .unwrap();
    let before = rss_kib(pid);

    let mut held = Vec::new();
    // Garbage instead of HTTP/2.
    for i in 0..50u8 {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&[i; 4096]);
        held.push(s);
    }
    // Slow clients: a preface cut short, then nothing.
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&PREFACE[..10]);
        held.push(s);
    }
    // Frames that lie: a HEADERS frame claiming 16 MiB, and a SETTINGS frame of bad length.
    for lie in [frame(16 << 20, 0x1, 0x4, 1), frame(5, 0x4, 0, 0)] {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(PREFACE);
        let _ = s.write_all(&frame(0, 0x4, 0, 0));
        let _ = s.write_all(&lie);
        let _ = s.write_all(&[0u8; 64]);
        held.push(s);
    }
    // A stream reset storm on one connection: HEADERS then RST_STREAM, many times.
    {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(PREFACE);
        let _ = s.write_all(&frame(0, 0x4, 0, 0));
        for stream in (1..4000u32).step_by(2) {
            // An empty header block: a malformed request, answered with a reset or an error.
            let _ = s.write_all(&frame(0, 0x1, 0x4, stream));
            let mut rst = frame(4, 0x3, 0, stream);
            rst.extend(8u32.to_be_bytes());
            let _ = s.write_all(&rst);
        }
        held.push(s);
    }

    // Huge metadata on a real call: refused, not a crash.
    let mut request = tonic::Request::new(lookup("ns/abuse/0", "10.0.0.1"));
    let big = "x".repeat(256 * 1024);
    request
        .metadata_mut()
        .insert("x-big", MetadataValue::try_from(big.as_str()).unwrap());
    let refused = client.lookup(request).await.unwrap_err();
    assert_ne!(refused.code(), Code::Ok);

    // Far more concurrent calls on one connection than --max-streams-per-connection: they
    // wait their turn and all succeed. On a new connection: the refused metadata may end
    // the old one, and calls sent while it closes fail for that reason, not this one.
    client = cluster.client(1);
    let calls = (0..3000u32).map(|i| {
        let mut client = client.clone();
        async move {
            client
                .lookup(lookup(
                    "ns/abuse/0",
                    &format!("10.{}.{}.1", i / 256, i % 256),
                ))
                .await
        }
    });
    let answers = futures::future::join_all(calls).await;
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 3000 calls failed: {:?}",
        failed.len(),
        failed.first()
    );

    // Still serving, with the abusers connected, and memory bounded.
    let kept = client
        .resolve(resolve("ns/abuse/0", "10.0.0.9", "10.9.0.2:80", MINUTE))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.lease.unwrap().endpoint, "10.9.0.1:80");
    let after = rss_kib(pid);
    eprintln!("node RSS before the abuse {before} KiB, after {after} KiB");
    assert!(
        after < before + 128 * 1024,
        "RSS grew from {before} KiB to {after} KiB under abuse"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_stops_the_node_at_start_and_says_which_file() {
    let mut cluster = Cluster::start("damaged-snapshot", one_node()).await;
    let mut client = cluster.client(1);
    for i in 1..=5 {
        client
            .resolve(resolve(
                "ns/snap/0",
                &format!("10.0.{i}.1"),
                "10.9.0.1:80",
                MINUTE,
            ))
            .await
            .unwrap();
    }
    cluster
        .admin(1)
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap();
    assert!(cluster.stop(1).await.success());
    let dir = cluster.data_dir(1).join("snapshots");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "bin"))
        .expect("a snapshot file");
    let good = std::fs::read(&file).unwrap();
    let name = file.file_name().unwrap().to_string_lossy().to_string();

    let damages: [(&str, Vec<u8>); 3] = [
        ("a flipped bit in a lease", {
            let mut b = good.clone();
            let at = b.len() / 2;
            b[at] ^= 0x10;
            b
        }),
        ("a cut-off tail", good[..good.len() - 7].to_vec()),
        ("a wrong magic", {
            let mut b = good.clone();
            b[0] ^= 0xff;
            b
        }),
    ];
    for (what, bytes) in damages {
        std::fs::write(&file, &bytes).unwrap();
        let logged_before = cluster.log(1).len();
        cluster.spawn(1);
        let status = cluster.wait_exit(1, Duration::from_secs(20)).await;
        assert!(
            !status.success(),
            "{what}: the node started on a damaged snapshot"
        );
        let log = cluster.log(1);
        let said = &log[logged_before..];
        assert!(
            said.contains(&name),
            "{what}: the error names the file: {said}"
        );
    }
    // With the file mended, the node starts and serves what it held.
    std::fs::write(&file, &good).unwrap();
    cluster.spawn(1);
    cluster.wait_leader(&[1]).await;
    let mut client = cluster.client(1);
    let held = client
        .lookup(lookup("ns/snap/0", "10.0.3.1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.lease.unwrap().endpoint, "10.9.0.1:80");
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(megabytes: u32) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { path, _dir: dir })
    }

    /// Take all but `leave_kib` of the free space.
    fn fill(&self, leave_kib: u64) {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-k"])
            .arg(&self.path)
            .output()
            .unwrap();
        let avail: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap();
        let filler = vec![0u8; usize::try_from(avail.saturating_sub(leave_kib) * 1024).unwrap()];
        std::fs::write(self.path.join("filler"), filler).unwrap();
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_clearly_and_the_restarted_node_has_every_acknowledged_lease() {
    let disk = match Tmpfs::mount(24) {
        Ok(disk) => disk,
        Err(why) => {
            assert!(
                std::env::var("AFFINITY_REQUIRE_DOCKER").as_deref() != Ok("1"),
                "cannot mount a tmpfs for the disk-full test (needs root): {why}"
            );
            eprintln!(
                "\n*** SKIPPED disk-full test: cannot mount a tmpfs (needs root): {why} ***\n"
            );
            return;
        }
    };
    let options = ClusterOptions {
        nodes: 1,
        data_parent: Some(disk.path.clone()),
        // Small preallocated segments, so that the log fits the small disk and rolls to
        // new segments (and so meets the full disk) while the test writes.
        extra_args: vec!["--raft-log-segment-mib".into(), "1".into()],
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start("disk-full", options).await;
    let mut client = cluster.client(1);
    disk.fill(256);

    // Write until the disk refuses; every write either is acknowledged or fails clearly.
    let scope = format!("ns/{}/0", "d".repeat(200));
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for i in 0..20_000u32 {
        let ip = format!("10.{}.{}.1", i / 256, i % 256);
        match client
            .resolve(resolve(&scope, &ip, "10.9.0.1:80", MINUTE))
            .await
        {
            Ok(_) => acknowledged.push(ip),
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let refusal = refusal.expect("the disk filled up");
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    assert!(
        refusal.message().contains("No space left on device"),
        "the error says why: {}",
        refusal.message()
    );
    assert!(!acknowledged.is_empty());
    // Its Raft has stopped, so the node exits with an error that says why, for a
    // supervisor to start it again.
    let refused_at = std::time::Instant::now();
    let status = cluster.wait_exit(1, Duration::from_secs(20)).await;
    eprintln!(
        "the node exited {:?} after the refusal",
        refused_at.elapsed()
    );
    assert!(
        !status.success(),
        "the node exits with an error: {status:?}"
    );
    let log = cluster.log(1);
    assert!(
        log.contains("Raft stopped") && log.contains("No space left on device"),
        "the node says why it exits:\n{log}"
    );

    // Space comes back; the node is started again and holds every acknowledged lease.
    disk.free();
    cluster.spawn(1);
    cluster.wait_leader(&[1]).await;
    let mut client = cluster.client(1);
    for ip in &acknowledged {
        let held = client
            .lookup(lookup(&scope, ip))
            .await
            .unwrap()
            .into_inner();
        assert!(held.lease.is_some(), "acknowledged lease of {ip} was lost");
    }
    let again = client
        .resolve(resolve(&scope, "10.250.0.1", "10.9.0.1:80", MINUTE))
        .await
        .unwrap()
        .into_inner();
    assert!(again.created);
    eprintln!(
        "disk full after {} acknowledged writes; all {} present after the restart",
        acknowledged.len(),
        acknowledged.len()
    );
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_stops_the_node_at_start_instead_of_losing_writes_silently() {
    let mut cluster = Cluster::start("damaged-log", one_node()).await;
    let mut client = cluster.client(1);
    for i in 0..60u32 {
        client
            .resolve(resolve(
                "ns/log/0",
                &format!("10.0.{i}.1"),
                "10.9.0.1:80",
                MINUTE,
            ))
            .await
            .unwrap();
    }
    // The node records how far its log reaches (applied and on disk) every second.
    let data = cluster.data_dir(1).to_path_buf();
    wait::until(
        "the node records that its log reaches past 60 entries",
        Duration::from_secs(10),
        || {
            let data = data.clone();
            async move {
                match affinity_server::store::read_applied_mark(&data) {
                    Ok(Some(n)) if n >= 60 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    assert!(cluster.stop(1).await.success());

    // Damage a frame in the middle of the log: the frames after it were synced, so this
    // is not a torn write, and reading past it would drop acknowledged leases.
    let segment = data.join("wal").join(affinity_server::wal::segment_name(1));
    let mut bytes = std::fs::read(&segment).unwrap();
    let written = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    let (from, to) = (written * 4 / 10, written * 4 / 10 + 16);
    for b in &mut bytes[from..to] {
        *b ^= 0x5a;
    }
    std::fs::write(&segment, &bytes).unwrap();

    // `affinityd check` says so without starting the node.
    let checked = std::process::Command::new(affinity_tests::bins::affinityd())
        .arg("--data-dir")
        .arg(&data)
        .arg("check")
        .output()
        .unwrap();
    let check_said = String::from_utf8_lossy(&checked.stderr).to_string();
    assert_eq!(checked.status.code(), Some(2), "check: {check_said}");
    assert!(
        check_said.contains("the Raft log is damaged at byte")
            && check_said.contains(&segment.display().to_string()),
        "check names the file and offset: {check_said}"
    );

    let logged_before = cluster.log(1).len();
    cluster.spawn(1);
    let status = cluster.wait_exit(1, Duration::from_secs(20)).await;
    assert!(!status.success(), "the node started on a damaged log");
    let said = cluster.log(1)[logged_before..].to_string();
    assert!(
        said.contains("the Raft log is damaged at byte")
            && said.contains(&segment.display().to_string()),
        "the error names the file and offset: {said}"
    );
}
