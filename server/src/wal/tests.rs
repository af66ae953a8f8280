//! The write-ahead log on real files (reopen, torn tails, damage, purge by segment) and on
//! a simulated disk crashed at thousands of random points.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;

use parking_lot::Mutex;

use super::fs::Dir;
use super::sim::SimDisk;
use super::{Options, Wal, WalError, segment_name};

fn small(segment_size: u64) -> Options {
    Options {
        segment_size,
        cache_bytes: 256,
        ..Options::default()
    }
}

/// One segment of 1 MiB, marks written on their own after `delay`.
fn with_delay(delay: std::time::Duration) -> Options {
    Options {
        marker_delay: delay,
        ..small(1 << 20)
    }
}

fn syncs<S: super::fs::Storage>(wal: &Wal<S>) -> u64 {
    wal.stats().syncs.load(std::sync::atomic::Ordering::Relaxed)
}

fn record(index: u64, version: u64, len: usize) -> Arc<[u8]> {
    let seed = index.wrapping_mul(31).wrapping_add(version);
    (0..len)
        .map(|i| (seed.wrapping_add(i as u64) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Append and wait until durable.
fn append_sync<S: super::fs::Storage>(wal: &Wal<S>, entries: Vec<(u64, Arc<[u8]>)>) {
    append_result(wal, entries).unwrap();
}

/// Append and return what the callback was told.
fn append_result<S: super::fs::Storage>(
    wal: &Wal<S>,
    entries: Vec<(u64, Arc<[u8]>)>,
) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel();
    wal.append(entries, Box::new(move |r| tx.send(r).unwrap()));
    rx.recv().unwrap()
}

fn read_all<S: super::fs::Storage>(wal: &Wal<S>) -> BTreeMap<u64, Vec<u8>> {
    wal.read(..)
        .unwrap()
        .into_iter()
        .map(|(i, r)| (i, r.to_vec()))
        .collect()
}

#[test]
fn entries_and_markers_survive_a_reopen_and_reads_span_cache_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, recovery) = Wal::open(Dir::new(dir.path()).unwrap(), small(4096)).unwrap();
    assert_eq!((recovery.entries, recovery.segments), (0, 0));
    for i in 1..=100 {
        append_sync(&wal, vec![(i, record(i, 0, 50))]);
    }
    let (tx, rx) = mpsc::channel();
    wal.save_vote(b"vote-3".to_vec(), Box::new(move |r| tx.send(r).unwrap()));
    rx.recv().unwrap().unwrap();
    wal.save_committed(b"c-90".to_vec());
    wal.truncate(96);
    append_sync(&wal, vec![(96, record(96, 1, 70)), (97, record(97, 1, 70))]);
    // Most entries are no longer cached (256 bytes of cache): reads come from the files.
    let before = read_all(&wal);
    assert_eq!(before.len(), 97);
    assert_eq!(before[&10], record(10, 0, 50).to_vec());
    assert_eq!(before[&97], record(97, 1, 70).to_vec());
    assert!(wal.segments() > 1, "4 KiB segments roll");
    drop(wal);

    let (wal, recovery) = Wal::open(Dir::new(dir.path()).unwrap(), small(4096)).unwrap();
    assert_eq!(recovery.entries, 97);
    assert!(recovery.torn.is_none());
    assert_eq!(read_all(&wal), before);
    let markers = wal.markers();
    assert_eq!(markers.vote.as_deref(), Some(&b"vote-3"[..]));
    assert_eq!(markers.committed.as_deref(), Some(&b"c-90"[..]));
    assert_eq!(markers.purged, None);
    assert_eq!(wal.bounds(), Some((1, 97)));
}

#[test]
fn a_purge_deletes_whole_segments_once_durable_and_its_mark_outlives_them() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(Dir::new(dir.path()).unwrap(), small(1024)).unwrap();
    for i in 1..=200 {
        append_sync(&wal, vec![(i, record(i, 0, 40))]);
    }
    let before = wal.segments();
    wal.purge(150, b"p-150".to_vec());
    append_sync(&wal, vec![(201, record(201, 0, 40))]);
    // 51 entries of about 53 bytes are left: three or four segments of 1 KiB.
    assert!(
        wal.segments() <= 5,
        "{} of {before} segments left",
        wal.segments()
    );
    let deleted = wal
        .stats()
        .segments_deleted
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        deleted + 5 >= before as u64,
        "{deleted} of {before} deleted"
    );
    drop(wal);
    let (wal, _) = Wal::open(Dir::new(dir.path()).unwrap(), small(1024)).unwrap();
    assert_eq!(wal.bounds(), Some((151, 201)));
    assert_eq!(wal.markers().purged, Some((150, b"p-150".to_vec())));
}

#[test]
fn marks_without_a_waiter_ride_with_the_next_sync() {
    // Openraft saves the committed mark at every commit; were each one a sync of its own,
    // every create would pay two syncs per node and the next append would queue behind the
    // second.
    let dir = tempfile::tempdir().unwrap();
    let options = with_delay(std::time::Duration::from_secs(600));
    let (wal, _) = Wal::open(Dir::new(dir.path()).unwrap(), options).unwrap();
    for i in 1..=10 {
        append_sync(&wal, vec![(i, record(i, 0, 40))]);
    }
    let before = syncs(&wal);
    for c in 1..=50u32 {
        wal.save_committed(format!("c-{c}").into_bytes());
    }
    wal.truncate(10);
    wal.purge(3, b"p-3".to_vec());
    append_sync(&wal, vec![(10, record(10, 1, 40))]);
    assert_eq!(
        syncs(&wal) - before,
        1,
        "the marks and the append share one sync"
    );
    drop(wal);
    let (wal, _) = Wal::open(Dir::new(dir.path()).unwrap(), small(1 << 20)).unwrap();
    assert_eq!(wal.markers().committed.as_deref(), Some(&b"c-50"[..]));
    assert_eq!(wal.markers().purged, Some((3, b"p-3".to_vec())));
    assert_eq!(wal.bounds(), Some((4, 10)));
    assert_eq!(read_all(&wal)[&10], record(10, 1, 40).to_vec());
}

#[test]
fn a_lone_mark_is_written_after_the_delay_and_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let options = with_delay(std::time::Duration::from_millis(5));
    let (wal, _) = Wal::open(Dir::new(dir.path()).unwrap(), options).unwrap();
    append_sync(&wal, vec![(1, record(1, 0, 40))]);
    let before = syncs(&wal);
    let queued = std::time::Instant::now();
    wal.save_committed(b"c-1".to_vec());
    let deadline = queued + std::time::Duration::from_secs(30);
    while syncs(&wal) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the mark was never written"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(
        queued.elapsed() >= std::time::Duration::from_millis(5),
        "the mark waited for a frame to ride with first"
    );
    // Pending at close: written before the writer stops.
    let options = with_delay(std::time::Duration::from_secs(600));
    drop(wal);
    let (wal, _) = Wal::open(Dir::new(dir.path()).unwrap(), options).unwrap();
    assert_eq!(wal.markers().committed.as_deref(), Some(&b"c-1"[..]));
    wal.save_committed(b"c-2".to_vec());
    wal.close();
    drop(wal);
    let (wal, _) = Wal::open(Dir::new(dir.path()).unwrap(), small(1 << 20)).unwrap();
    assert_eq!(wal.markers().committed.as_deref(), Some(&b"c-2"[..]));
}

#[test]
fn a_log_written_with_larger_segments_reopens_and_goes_on_in_smaller_ones() {
    // A node whose segment size setting was lowered (the default went from 64 to 16 MiB)
    // keeps its old segments as they are and rolls to the new size.
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(Dir::new(dir.path()).unwrap(), small(16 * 1024)).unwrap();
    for i in 1..=60 {
        append_sync(&wal, vec![(i, record(i, 0, 60))]);
    }
    assert_eq!(wal.segments(), 1, "60 entries fit in one 16 KiB segment");
    drop(wal);
    let (wal, recovery) = Wal::open(Dir::new(dir.path()).unwrap(), small(1024)).unwrap();
    assert!(recovery.torn.is_none());
    for i in 61..=120 {
        append_sync(&wal, vec![(i, record(i, 0, 60))]);
    }
    assert!(wal.segments() > 2, "new frames roll at the new size");
    let before = read_all(&wal);
    assert_eq!(before.len(), 120);
    drop(wal);
    let (wal, recovery) = Wal::open(Dir::new(dir.path()).unwrap(), small(1024)).unwrap();
    assert!(recovery.torn.is_none());
    assert_eq!(read_all(&wal), before);
    assert_eq!(before[&30], record(30, 0, 60).to_vec());
    assert_eq!(before[&120], record(120, 0, 60).to_vec());
}

#[test]
fn a_failed_sync_fails_every_later_write_and_a_restart_sees_what_was_synced() {
    let disk = SimDisk::default();
    let (wal, _) = Wal::open(disk.handle(), small(4096)).unwrap();
    for i in 1..=5 {
        append_sync(&wal, vec![(i, record(i, 0, 40))]);
    }
    let synced = syncs(&wal);
    disk.fail_next_sync();
    let failed = append_result(&wal, vec![(6, record(6, 0, 40))]);
    assert!(failed.is_err(), "the append whose sync failed is refused");
    let reason = wal.failed().expect("the log says why it stopped");
    assert!(reason.contains("stays failed"), "{reason}");
    // Nothing more is written: a later frame after the lost one would read as damage.
    let later = append_result(&wal, vec![(6, record(6, 1, 40))]);
    assert!(later.is_err(), "a later append fails too");
    let (tx, rx) = mpsc::channel();
    wal.save_vote(b"vote-9".to_vec(), Box::new(move |r| tx.send(r).unwrap()));
    assert!(rx.recv().unwrap().is_err(), "a vote fails too");
    let (tx, rx) = mpsc::channel();
    wal.flush(Box::new(move |r| tx.send(r).unwrap()));
    assert!(rx.recv().unwrap().is_err(), "a flush fails too");
    assert_eq!(syncs(&wal), synced, "no frame was synced after the failure");
    drop(wal);

    // The restarted process sees the five synced entries, and writes on.
    let (wal, recovery) = Wal::open(disk.handle(), small(4096)).unwrap();
    assert!(recovery.torn.is_none());
    assert_eq!(wal.bounds(), Some((1, 5)));
    assert_eq!(wal.markers().vote, None);
    append_sync(&wal, vec![(6, record(6, 2, 40))]);
    assert_eq!(read_all(&wal)[&6], record(6, 2, 40).to_vec());
}

/// The last frame of the newest segment file in `dir`, and that file.
fn last_frame(dir: &std::path::Path) -> (std::path::PathBuf, usize, usize) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let path = names.pop().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (mut at, mut last) = (0, 0);
    while let Ok(Some((_, end))) = super::recover::frame_at(&bytes, at) {
        last = at;
        at = end;
    }
    (path, last, at)
}

#[test]
fn a_torn_last_frame_is_cut_off_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(Dir::new(dir.path()).unwrap(), small(1 << 20)).unwrap();
    for i in 1..=10 {
        append_sync(&wal, vec![(i, record(i, 0, 100))]);
    }
    drop(wal);
    // A crash in the middle of writing frame 10: its second half never reached the disk.
    let (path, start, end) = last_frame(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[usize::midpoint(start, end)..end].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    let (wal, recovery) = Wal::open(Dir::new(dir.path()).unwrap(), small(1 << 20)).unwrap();
    let (file, offset) = recovery.torn.expect("the torn frame is reported");
    assert_eq!(
        (file.ends_with(&segment_name(1)), offset),
        (true, start as u64)
    );
    assert_eq!(wal.bounds(), Some((1, 9)));
    append_sync(&wal, vec![(10, record(10, 1, 100))]);
    drop(wal);
    let (wal, recovery) = Wal::open(Dir::new(dir.path()).unwrap(), small(1 << 20)).unwrap();
    assert!(recovery.torn.is_none());
    assert_eq!(read_all(&wal)[&10], record(10, 1, 100).to_vec());
}

#[test]
fn damage_before_the_tail_refuses_to_open_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(Dir::new(dir.path()).unwrap(), small(1 << 20)).unwrap();
    for i in 1..=10 {
        append_sync(&wal, vec![(i, record(i, 0, 100))]);
    }
    drop(wal);
    let path = dir.path().join(segment_name(1));
    let mut bytes = std::fs::read(&path).unwrap();
    // One bit of the third frame's payload.
    let mut at = 0;
    for _ in 0..2 {
        at = super::recover::frame_at(&bytes, at).unwrap().unwrap().1;
    }
    bytes[at + 40] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let err = Wal::open(Dir::new(dir.path()).unwrap(), small(1 << 20))
        .err()
        .expect("a damaged log does not open");
    match &err {
        WalError::Damaged { file, offset, .. } => {
            assert!(file.ends_with(&segment_name(1)), "{file}");
            assert_eq!(*offset, at as u64);
        }
        other @ WalError::Io { .. } => panic!("{other}"),
    }
    let message = err.to_string();
    assert!(message.contains(&format!("at byte {at} of")), "{message}");
    // Nothing was changed: it refuses again, the same way.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

// ---- crashes on a simulated disk ----

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// The log as the model or a recovered log holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    entries: BTreeMap<u64, Vec<u8>>,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(u64, Arc<[u8]>)>),
    Truncate(u64),
    Purge(u64),
    Vote(Vec<u8>),
    Committed(Vec<u8>),
}

impl Model {
    fn of<S: super::fs::Storage>(wal: &Wal<S>) -> Model {
        let markers = wal.markers();
        Model {
            entries: read_all(wal),
            vote: markers.vote,
            committed: markers.committed,
            purged: markers.purged,
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(entries) => {
                for (index, record) in entries {
                    let _ = self.entries.split_off(index);
                    self.entries.insert(*index, record.to_vec());
                }
            }
            Op::Truncate(from) => {
                let _ = self.entries.split_off(from);
            }
            Op::Purge(upto) => {
                self.entries = self.entries.split_off(&(upto + 1));
                self.purged = Some((*upto, upto.to_le_bytes().to_vec()));
            }
            Op::Vote(v) => self.vote = Some(v.clone()),
            Op::Committed(c) => self.committed = (!c.is_empty()).then(|| c.clone()),
        }
    }
}

/// One process lifetime: random operations on `wal`, then a crash at a random point.
/// Returns the operations issued and which were acknowledged.
fn run_until_crash(
    rng: &mut Rng,
    disk: &SimDisk,
    wal: &Wal<SimDisk>,
    start: &Model,
    version: u64,
) -> (Vec<Op>, Vec<bool>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut ops = Vec::new();
    let mut model = start.clone();
    let crash_after = rng.below(40);
    // Half the time, crash in the middle of a write (a torn frame), else between calls.
    if rng.below(2) == 0 {
        disk.arm(rng.below(12), rng.next());
    }
    for n in 0..=crash_after {
        let last = model.entries.keys().next_back().copied();
        let next = last.map_or(model.purged.as_ref().map_or(1, |p| p.0 + 1), |l| l + 1);
        let op = match rng.below(10) {
            0 if last.is_some() => {
                let first = *model.entries.keys().next().unwrap_or(&next);
                Op::Truncate(first + rng.below(next - first))
            }
            1 if last.is_some() => {
                let first = *model.entries.keys().next().unwrap_or(&next);
                Op::Purge(first + rng.below(next - first))
            }
            2 => Op::Vote(format!("vote-{version}-{n}").into_bytes()),
            3 => Op::Committed(format!("c-{}", rng.below(100)).into_bytes()),
            _ => {
                let count = 1 + rng.below(4);
                Op::Append(
                    (next..next + count)
                        .map(|i| {
                            (
                                i,
                                record(
                                    i,
                                    version * 1000 + n,
                                    1 + usize::try_from(rng.below(90)).unwrap(),
                                ),
                            )
                        })
                        .collect(),
                )
            }
        };
        let slot = {
            let mut a = acked.lock();
            a.push(false);
            a.len() - 1
        };
        let ack = {
            let acked = acked.clone();
            Box::new(move |r: std::io::Result<()>| {
                if r.is_ok() {
                    acked.lock()[slot] = true;
                }
            })
        };
        match &op {
            Op::Append(entries) => wal.append(entries.clone(), ack),
            Op::Truncate(from) => wal.truncate(*from),
            Op::Purge(upto) => wal.purge(*upto, upto.to_le_bytes().to_vec()),
            Op::Vote(v) => wal.save_vote(v.clone(), ack),
            Op::Committed(c) => wal.save_committed(c.clone()),
        }
        model.apply(&op);
        ops.push(op);
        if rng.below(4) == 0 {
            std::thread::yield_now();
        }
    }
    disk.crash(|n| usize::try_from(rng.below(n as u64 + 1)).unwrap_or(0));
    let acked = acked.lock().clone();
    (ops, acked)
}

/// The recovered log must be the model after some prefix of the operations that
/// includes every acknowledged one.
fn check_prefix(start: &Model, ops: &[Op], acked: &[bool], recovered: &Model, seed: u64) {
    let must = acked.iter().rposition(|a| *a).map_or(0, |i| i + 1);
    let mut model = start.clone();
    for op in &ops[..must] {
        model.apply(op);
    }
    if &model == recovered {
        return;
    }
    for op in &ops[must..] {
        model.apply(op);
        if &model == recovered {
            return;
        }
    }
    panic!(
        "seed {seed}: the recovered log is no prefix of the operations that keeps the {must} \
         acknowledged ones\nrecovered: {recovered:?}\nops: {ops:?}"
    );
}

#[test]
fn after_any_crash_the_log_is_a_prefix_with_every_acknowledged_write() {
    let rounds: u64 = std::env::var("AFFINITY_WAL_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    // AFFINITY_WAL_CRASH_SEED=N runs one seed again.
    let seeds = match std::env::var("AFFINITY_WAL_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(seed) => seed..=seed,
        None => 1..=rounds,
    };
    let mut torn = 0;
    for seed in seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let disk = SimDisk::default();
        let options = small(128 + rng.below(1024));
        let mut start = Model::default();
        for version in 0..3 {
            let (wal, recovery) = Wal::open(disk.handle(), options)
                .unwrap_or_else(|e| panic!("seed {seed}: the log does not open: {e}"));
            assert!(
                recovery.torn.is_none(),
                "seed {seed}: a torn tail came back"
            );
            let recovered = Model::of(&wal);
            if version > 0 {
                assert_eq!(recovered, start, "seed {seed}: reopening changed the log");
            }
            let (ops, acked) = run_until_crash(&mut rng, &disk, &wal, &recovered, version);
            drop(wal);
            let (after, recovery) = Wal::open(disk.handle(), options)
                .unwrap_or_else(|e| panic!("seed {seed}: the log does not open: {e}"));
            torn += usize::from(recovery.torn.is_some());
            let model = Model::of(&after);
            check_prefix(&recovered, &ops, &acked, &model, seed);
            drop(after);
            start = model;
        }
    }
    // About a quarter of the crashes tear a frame (2,259 of 9,000 in one run).
    assert!(
        torn as u64 >= rounds / 10,
        "only {torn} crashes left a torn frame: the test shows little"
    );
}

#[test]
fn a_flipped_bit_in_a_synced_frame_on_the_simulated_disk_is_damage() {
    let disk = SimDisk::default();
    let (wal, _) = Wal::open(disk.handle(), small(1 << 16)).unwrap();
    for i in 1..=5 {
        append_sync(&wal, vec![(i, record(i, 0, 30))]);
    }
    drop(wal);
    disk.flip(&segment_name(1), 20);
    assert!(matches!(
        Wal::open(disk.handle(), small(1 << 16)),
        Err(WalError::Damaged { offset: 0, .. })
    ));
}
