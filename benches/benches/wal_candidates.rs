//! Log engines for the Raft log, side by side on real disk: the store's sled log (the
//! baseline), the store's own write-ahead log (`affinity_server::wal`), and, with
//! `--features log-candidates`, `raft-log` 0.4 (databend-meta's log; as configured by
//! default, which waits up to 1 ms for more writes to batch, and without that wait) and
//! `raft-engine` 0.4 (TiKV's). Each append of N entries is timed until it is durable (fsync), in the shapes
//! of `log_append`: `1x1`, `1x64` and `16x1` (sixteen appends in flight). Then the time to
//! reopen each log holding 200,000 entries.
//!
//! Entries are the store's own records: a `Resolve` command encoded as the log stores it
//! (about 100 bytes). `raft-engine` is driven through `LogBatch::put` (its key-value
//! records, written and synced through the same log files as its entries), because its
//! entry API needs a protobuf 2 message type.

// A benchmark that cannot set up should stop loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use affinity_bench::{append_round, log_entry};
use affinity_server::raft::codec::entry_to_pb;
use affinity_server::store::{self, StoreOptions};
use affinity_server::wal::{self, Wal};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;

const SHAPES: [(&str, usize, usize); 3] = [("1x1", 1, 1), ("1x64", 1, 64), ("16x1", 16, 1)];
const RECOVERY_ENTRIES: u64 = 200_000;

fn record(index: u64) -> Vec<u8> {
    entry_to_pb(&log_entry(index)).encode_to_vec()
}

/// A log under test: `round` issues `in_flight` appends of `batch` entries, from index
/// `next`, and returns once all are durable.
trait Engine {
    fn round(&mut self, next: &mut u64, in_flight: usize, batch: usize);
}

struct Sled {
    rt: tokio::runtime::Runtime,
    log: store::LogStore,
    _storage: store::Storage,
}

impl Engine for Sled {
    fn round(&mut self, next: &mut u64, in_flight: usize, batch: usize) {
        self.rt
            .block_on(append_round(&mut self.log, next, in_flight, batch))
            .unwrap();
    }
}

impl Engine for Wal<wal::fs::Dir> {
    fn round(&mut self, next: &mut u64, in_flight: usize, batch: usize) {
        let (tx, rx) = mpsc::channel();
        for _ in 0..in_flight {
            let entries = (0..batch)
                .map(|_| {
                    *next += 1;
                    (*next, Arc::from(record(*next)))
                })
                .collect();
            let tx = tx.clone();
            self.append(entries, Box::new(move |r| tx.send(r).unwrap()));
        }
        for _ in 0..in_flight {
            rx.recv().unwrap().unwrap();
        }
    }
}

fn open_wal(dir: &std::path::Path) -> (Wal<wal::fs::Dir>, wal::Recovery) {
    Wal::open(wal::fs::Dir::new(dir).unwrap(), wal::Options::default()).unwrap()
}

#[cfg(feature = "log-candidates")]
mod candidates {
    use std::io;
    use std::sync::mpsc::{SyncSender, sync_channel};
    use std::sync::{Arc, Barrier};

    use raft_log::api::raft_log_writer::RaftLogWriter;

    use super::{Engine, record};

    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct Types;

    impl raft_log::Types for Types {
        type LogId = (u64, u64);
        type LogPayload = Vec<u8>;
        type Vote = (u64, u64);
        type UserData = ();
        type Callback = SyncSender<io::Result<()>>;

        fn log_index(log_id: &Self::LogId) -> u64 {
            log_id.1
        }

        fn payload_size(payload: &Self::LogPayload) -> u64 {
            payload.len() as u64
        }
    }

    /// `raft-log` in `dir`; `no_wait` turns off its 1 ms wait for more writes to batch.
    pub fn open_raft_log(dir: &std::path::Path, no_wait: bool) -> raft_log::RaftLog<Types> {
        std::fs::create_dir_all(dir).unwrap();
        let mut config = raft_log::Config::new(dir.to_str().unwrap());
        if no_wait {
            config.wal.flush_batch_wait = Some(std::time::Duration::ZERO);
        }
        raft_log::RaftLog::open(Arc::new(config)).unwrap()
    }

    impl Engine for raft_log::RaftLog<Types> {
        fn round(&mut self, next: &mut u64, in_flight: usize, batch: usize) {
            let mut waiters = Vec::new();
            for _ in 0..in_flight {
                let entries: Vec<((u64, u64), Vec<u8>)> = (0..batch)
                    .map(|_| {
                        *next += 1;
                        ((1, *next), record(*next))
                    })
                    .collect();
                self.append(entries).unwrap();
                let (tx, rx) = sync_channel(1);
                self.flush(true, Some(tx)).unwrap();
                waiters.push(rx);
            }
            for rx in waiters {
                rx.recv().unwrap().unwrap();
            }
        }
    }

    pub fn open_raft_engine(dir: &std::path::Path) -> Arc<raft_engine::Engine> {
        let config = raft_engine::Config {
            dir: dir.to_str().unwrap().to_string(),
            ..raft_engine::Config::default()
        };
        Arc::new(raft_engine::Engine::open(config).unwrap())
    }

    /// `raft-engine` with writer threads, so that appends in flight are concurrent
    /// writes its write queue can group.
    /// One write for a worker: the entries, and the barrier to wait at once written.
    type Job = (Vec<(u64, Vec<u8>)>, Arc<Barrier>);

    pub struct RaftEngine {
        workers: Vec<std::sync::mpsc::Sender<Job>>,
    }

    impl RaftEngine {
        pub fn new(engine: &Arc<raft_engine::Engine>, threads: usize) -> Self {
            let workers = (0..threads)
                .map(|_| {
                    let (tx, rx) = std::sync::mpsc::channel::<Job>();
                    let engine = engine.clone();
                    std::thread::spawn(move || {
                        for (entries, done) in rx {
                            write(&engine, entries);
                            done.wait();
                        }
                    });
                    tx
                })
                .collect();
            Self { workers }
        }
    }

    pub fn write(engine: &raft_engine::Engine, entries: Vec<(u64, Vec<u8>)>) {
        let mut batch = raft_engine::LogBatch::default();
        for (index, value) in entries {
            batch.put(1, index.to_be_bytes().to_vec(), value).unwrap();
        }
        engine.write(&mut batch, true).unwrap();
    }

    impl Engine for RaftEngine {
        fn round(&mut self, next: &mut u64, in_flight: usize, batch: usize) {
            let done = Arc::new(Barrier::new(in_flight + 1));
            for worker in &self.workers[..in_flight] {
                let entries = (0..batch)
                    .map(|_| {
                        *next += 1;
                        (*next, record(*next))
                    })
                    .collect();
                worker.send((entries, done.clone())).unwrap();
            }
            done.wait();
        }
    }
}

fn measure(c: &mut Criterion, name: &str, engine: &mut dyn Engine) {
    let mut group = c.benchmark_group("wal_candidates");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    let mut next = 0u64;
    for (shape, in_flight, batch) in SHAPES {
        group.throughput(Throughput::Elements((in_flight * batch) as u64));
        group.bench_function(format!("{name}/{shape}"), |b| {
            b.iter_custom(|rounds| {
                let started = Instant::now();
                for _ in 0..rounds {
                    engine.round(&mut next, in_flight, batch);
                }
                started.elapsed()
            });
        });
    }
    group.finish();
}

/// Time how long `reopen` takes to open a log that `fill` wrote and closed.
fn recovery(name: &str, fill: impl FnOnce(), reopen: impl FnOnce() -> usize) {
    fill();
    let started = Instant::now();
    let entries = reopen();
    println!(
        "recovery: {name}: {entries} entries reopened in {:.1} ms",
        started.elapsed().as_secs_f64() * 1_000.0
    );
}

/// `RECOVERY_ENTRIES` entries, in appends of 64.
fn fill(engine: &mut dyn Engine) {
    let mut next = 0;
    while next < RECOVERY_ENTRIES {
        engine.round(&mut next, 1, 64);
    }
}

fn candidates(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let storage = store::open(&dir.path().join("sled"), &StoreOptions::default()).unwrap();
        let mut sled = Sled {
            rt,
            log: storage.log.clone(),
            _storage: storage,
        };
        measure(c, "sled", &mut sled);
    }
    {
        let (mut wal, _) = open_wal(&dir.path().join("wal"));
        measure(c, "affinity-wal", &mut wal);
    }
    #[cfg(feature = "log-candidates")]
    {
        let mut log = candidates::open_raft_log(&dir.path().join("raft-log"), false);
        measure(c, "raft-log", &mut log);
        drop(log);
        let mut log = candidates::open_raft_log(&dir.path().join("raft-log-no-wait"), true);
        measure(c, "raft-log-no-wait", &mut log);
        drop(log);
        let engine = candidates::open_raft_engine(&dir.path().join("raft-engine"));
        let mut pool = candidates::RaftEngine::new(&engine, 16);
        measure(c, "raft-engine", &mut pool);
    }

    // Recovery of 200,000 entries.
    let at = dir.path().join("wal-recovery");
    recovery(
        "affinity-wal",
        || {
            let (mut wal, _) = open_wal(&at);
            fill(&mut wal);
        },
        || open_wal(&at).1.entries,
    );
    #[cfg(feature = "log-candidates")]
    {
        let at = dir.path().join("raft-log-recovery");
        recovery(
            "raft-log",
            || fill(&mut candidates::open_raft_log(&at, true)),
            || {
                let log = candidates::open_raft_log(&at, true);
                log.read(0, u64::MAX).count()
            },
        );
        let at = dir.path().join("raft-engine-recovery");
        recovery(
            "raft-engine",
            || {
                let engine = candidates::open_raft_engine(&at);
                let mut next = 0;
                while next < RECOVERY_ENTRIES {
                    let entries = (0..64)
                        .map(|_| {
                            next += 1;
                            (next, record(next))
                        })
                        .collect();
                    candidates::write(&engine, entries);
                }
            },
            || {
                let engine = candidates::open_raft_engine(&at);
                let mut n = 0;
                engine
                    .scan_raw_messages(1, None, None, false, |_, _| {
                        n += 1;
                        true
                    })
                    .unwrap();
                n
            },
        );
    }
}

criterion_group!(benches, candidates);
criterion_main!(benches);
