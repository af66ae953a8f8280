//! The storage against openraft's own test suite, and its own promises: versioning,
//! durability across reopen, snapshots that survive restarts and damage that is detected.

use std::io::{Read, Seek, SeekFrom, Write};

use openraft::storage::{
    IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, StorageError};
use tempfile::TempDir;

use super::*;
use crate::raft::{Entry, LogId, TypeConfig, Vote};
use crate::sm::{Command, Op};

struct WalStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for WalStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let storage = open(dir.path(), &StoreOptions::default())
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, storage.log, storage.state))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_the_wal() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(WalStoreBuilder).await
}

fn resolve_entry(term: u64, index: u64, prefix: &str, endpoint: &str) -> Entry {
    Entry {
        log_id: LogId::new_term_index(term, index),
        payload: EntryPayload::Normal(Command {
            stamp_ms: 1_000 + i64::try_from(index).unwrap(),
            op: Op::Resolve {
                scope: "ns/route/0".into(),
                key: prefix.parse().unwrap(),
                endpoint: endpoint.into(),
                eligible: vec![],
                absolute_timeout_ms: 3_600_000,
                idle_timeout_ms: None,
            },
        }),
    }
}

async fn append_and_wait(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
}

#[tokio::test]
async fn acknowledged_entries_and_vote_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = open(dir.path(), &StoreOptions::default()).unwrap();
        storage
            .log
            .save_vote(&Vote::new_committed(3, 2))
            .await
            .unwrap();
        // Many appends in flight at once, acknowledged through the group-commit thread.
        let mut waiters = Vec::new();
        for i in 1..=100u64 {
            let (tx, rx) = TypeConfig::oneshot();
            let entry = resolve_entry(3, i, &format!("10.0.{}.0/24", i % 250), "10.4.0.1:80");
            storage
                .log
                .append([entry], IOFlushed::signal(tx))
                .await
                .unwrap();
            waiters.push(rx);
        }
        for rx in waiters {
            rx.await.unwrap().unwrap();
        }
        let stats = storage.log.wal().stats();
        assert_eq!(
            stats.requests.load(std::sync::atomic::Ordering::Relaxed),
            101
        );
        storage.close();
    }
    let mut storage = open(dir.path(), &StoreOptions::default()).unwrap();
    assert_eq!(
        storage.log.read_vote().await.unwrap(),
        Some(Vote::new_committed(3, 2))
    );
    let state = storage.log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(LogId::new_term_index(3, 100)));
    let entries = storage.log.try_get_log_entries(1..=100).await.unwrap();
    assert_eq!(entries.len(), 100);
    assert_eq!(
        entries[41],
        resolve_entry(3, 42, "10.0.42.0/24", "10.4.0.1:80")
    );
}

/// A sled database opened by hand, without sled's background flusher.
fn raw_sled(path: &Path) -> sled::Db {
    sled::Config::new()
        .path(path)
        .flush_every_ms(None)
        .open()
        .unwrap()
}

/// [`open`] right after a hand-opened sled handle was dropped: sled's worker threads let go
/// of the directory's lock a moment after the drop, so while `open` says `Locked`, ask
/// again (for at most 10 s); any other answer is returned.
fn open_after_raw(dir: &Path) -> Result<Storage, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open(dir, &StoreOptions::default()) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

#[tokio::test]
async fn data_version_is_written_once_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), &StoreOptions::default()).unwrap().close();
    // Reopening the same version works.
    open(dir.path(), &StoreOptions::default()).unwrap().close();

    // A future version is refused, naming both versions.
    {
        let db = raw_sled(&dir.path().join("raft"));
        let meta = db.open_tree("meta").unwrap();
        let info = pb::StoreInfo {
            data_version: 99,
            ..Default::default()
        };
        meta.insert(keys::STORE_INFO, info.encode_to_vec()).unwrap();
        db.flush().unwrap();
    }
    let err = open_after_raw(dir.path()).err().unwrap();
    assert!(
        matches!(err, StoreError::UnsupportedVersion { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("version 99"), "{err}");

    // A sled database affinity did not write is refused.
    let foreign = tempfile::tempdir().unwrap();
    {
        let db = raw_sled(&foreign.path().join("raft"));
        db.open_tree("meta")
            .unwrap()
            .insert(b"other", b"x")
            .unwrap();
        db.flush().unwrap();
    }
    let err = open_after_raw(foreign.path()).err().unwrap();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
}

#[tokio::test]
async fn a_directory_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path(), &StoreOptions::default()).unwrap();
    let err = open(dir.path(), &StoreOptions::default()).err().unwrap();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}

#[tokio::test]
async fn records_that_do_not_decode_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = open(dir.path(), &StoreOptions::default()).unwrap();
    append_and_wait(
        &mut storage.log,
        vec![resolve_entry(1, 1, "10.0.0.0/24", "a:1")],
    )
    .await;
    let (tx, rx) = std::sync::mpsc::channel();
    storage.log.wal().append(
        vec![
            (2, std::sync::Arc::from(vec![1u8, 0xff, 0xff])),
            (3, std::sync::Arc::from(vec![7u8, 0])),
        ],
        Box::new(move |r| tx.send(r).unwrap()),
    );
    rx.recv().unwrap().unwrap();
    let err = storage.log.try_get_log_entries(2..3).await.unwrap_err();
    assert!(err.to_string().contains("log entry 2"), "{err}");
    let err = storage.log.try_get_log_entries(3..4).await.unwrap_err();
    assert!(err.to_string().contains("record version 7"), "{err}");
    storage.close();
}

async fn applied_state_with_leases(state: &mut StateMachineStore, n: u64) {
    let entries: Vec<Entry> = (1..=n)
        .map(|i| {
            resolve_entry(
                1,
                i,
                &format!("10.{}.{}.0/24", i / 250, i % 250),
                "10.4.0.1:80",
            )
        })
        .collect();
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    state.apply(stream).await.unwrap();
}

#[tokio::test]
async fn snapshots_are_files_that_survive_restart_and_replace_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = open(dir.path(), &StoreOptions::default()).unwrap();
        applied_state_with_leases(&mut storage.state, 500).await;
        let first = storage.state.build_snapshot().await.unwrap();
        assert_eq!(first.meta.last_log_id, Some(LogId::new_term_index(1, 500)));
        applied_state_with_leases(&mut storage.state, 600).await;
        let second = storage.state.build_snapshot().await.unwrap();
        assert_eq!(second.meta.last_log_id, Some(LogId::new_term_index(1, 600)));
        drop((first, second));
        storage.close();
    }
    // Only the newest snapshot file remains.
    let files: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");

    let mut storage = open(dir.path(), &StoreOptions::default()).unwrap();
    let current = storage.state.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(
        current.meta.last_log_id,
        Some(LogId::new_term_index(1, 600))
    );
    // Installing it (what openraft does at start) rebuilds the table.
    let meta = current.meta.clone();
    storage
        .state
        .install_snapshot(&meta, current.snapshot)
        .await
        .unwrap();
    assert_eq!(storage.state.lease_count(), 600);
    assert_eq!(
        storage.state.applied_state().await.unwrap().0,
        Some(LogId::new_term_index(1, 600))
    );
    let lease = storage
        .state
        .lookup("ns/route/0", "10.0.7.0/24".parse().unwrap(), 2_000)
        .unwrap();
    assert_eq!(&*lease.endpoint, "10.4.0.1:80");
}

#[tokio::test]
async fn a_damaged_snapshot_is_detected_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = open(dir.path(), &StoreOptions::default()).unwrap();
        applied_state_with_leases(&mut storage.state, 50).await;
        storage.state.build_snapshot().await.unwrap();
        storage.close();
    }
    let path = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(200)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(200)).unwrap();
    file.write_all(&[byte[0] ^ 0x01]).unwrap();
    drop(file);

    let mut storage = open(dir.path(), &StoreOptions::default()).unwrap();
    let current = storage.state.get_current_snapshot().await.unwrap().unwrap();
    let meta = current.meta.clone();
    let err = storage
        .state
        .install_snapshot(&meta, current.snapshot)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_eq!(
        storage.state.lease_count(),
        0,
        "nothing of a damaged snapshot is loaded"
    );

    // A truncated file is caught by its recorded size before it is even read.
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let Err(err) = storage.state.get_current_snapshot().await else {
        panic!("a truncated snapshot was accepted");
    };
    assert!(err.to_string().contains("bytes, its record says"), "{err}");
}

#[tokio::test]
async fn a_snapshot_from_elsewhere_is_copied_in_and_becomes_current() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = open(leader_dir.path(), &StoreOptions::default()).unwrap();
    applied_state_with_leases(&mut leader.state, 300).await;
    let snap = leader.state.build_snapshot().await.unwrap();

    let mut follower = open(follower_dir.path(), &StoreOptions::default()).unwrap();
    follower
        .state
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(follower.state.table_copy(), leader.state.table_copy());
    let current = follower.state.current_snapshot().unwrap().unwrap();
    assert!(current.data.path().starts_with(follower_dir.path()));
    assert_eq!(current.lease_count, 300);
}

/// The durable index the applied-index mark is taken from must fall with a truncation: a
/// deposed leader's tail is cut, the new leader's entries at those indexes are applied
/// before this node has synced them, and a mark taken from the old, higher durable index
/// would make the next start refuse a healthy node ("log behind").
#[tokio::test]
async fn truncation_lowers_the_durable_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = open(dir.path(), &StoreOptions::default()).unwrap();
    let entries = (1..=10)
        .map(|i| resolve_entry(1, i, &format!("10.0.{i}.0/24"), "10.4.0.1:80"))
        .collect();
    append_and_wait(&mut storage.log, entries).await;
    let log = storage.log.clone();
    let durable = || log.durable_index();
    assert_eq!(durable(), 10);
    storage
        .log
        .truncate_after(Some(LogId::new_term_index(1, 5)))
        .await
        .unwrap();
    assert_eq!(durable(), 5, "entries 6..=10 are gone");
    let entries = (6..=8)
        .map(|i| resolve_entry(2, i, &format!("10.1.{i}.0/24"), "10.4.0.2:80"))
        .collect();
    append_and_wait(&mut storage.log, entries).await;
    assert_eq!(durable(), 8, "the new entries are durable once synced");
    storage.close();
}

#[path = "upgrade_tests.rs"]
mod upgrade_tests;
