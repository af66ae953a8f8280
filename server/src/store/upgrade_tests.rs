//! Data version 2 against the directories users already have: the committed version 1
//! fixture converts in place and keeps every lease, an interrupted conversion finishes, and
//! a damaged log is refused naming the file and the offset.

use std::path::{Path, PathBuf};

use super::*;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A copy of the version 1 fixture in a fresh temporary folder.
fn v1_copy() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture().join("data-v1"), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn data_version(dir: &Path) -> u32 {
    let db = raw_sled(&dir.join("raft"));
    let bytes = db
        .open_tree("meta")
        .unwrap()
        .get(keys::STORE_INFO)
        .unwrap()
        .unwrap();
    pb::StoreInfo::decode(bytes.as_ref()).unwrap().data_version
}

async fn export_bytes(dir: &Path) -> (export::Exported, Vec<u8>) {
    let mut out = Vec::new();
    let exported = export::export_to(dir, &StoreOptions::default(), &mut out)
        .await
        .unwrap();
    (exported, out)
}

#[tokio::test]
async fn a_version_1_directory_converts_in_place_and_keeps_every_lease() {
    let dir = v1_copy();
    assert_eq!(data_version(dir.path()), 1);
    let mut storage = open_after_raw(dir.path()).unwrap();
    let state = storage.log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|id| id.index()), Some(42));
    assert!(
        storage.log.read_vote().await.unwrap().is_some(),
        "the vote came along"
    );
    assert_eq!(storage.log.durable_index(), 42);
    storage.close();

    assert_eq!(data_version(dir.path()), DATA_VERSION);
    assert!(dir.path().join(WAL_DIR).is_dir());
    assert!(!dir.path().join(upgrade::UPGRADING_DIR).exists());
    {
        let db = raw_sled(&dir.path().join("raft"));
        assert!(
            !db.tree_names().iter().any(|n| n.as_ref() == b"log"),
            "sled's old log is dropped"
        );
    }
    // What the node holds is what the old build exported from the same directory (once
    // the hand-opened sled above has let go of its lock).
    open_after_raw(dir.path()).unwrap().close();
    let (exported, bytes) = export_bytes(dir.path()).await;
    assert_eq!((exported.last_log_index, exported.lease_count), (42, 39));
    let before = std::fs::read(fixture().join("data-v1.export.snap")).unwrap();
    assert!(
        bytes == before,
        "the export after the upgrade differs from the one before"
    );
}

#[tokio::test]
async fn an_interrupted_upgrade_is_done_again_at_the_next_start() {
    // Stopped while copying: a partial new log is thrown away and the copy made again.
    let dir = v1_copy();
    let partial = dir.path().join(upgrade::UPGRADING_DIR);
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join(crate::wal::segment_name(1)), b"half a frame").unwrap();
    open(dir.path(), &StoreOptions::default()).unwrap().close();
    let (exported, _) = export_bytes(dir.path()).await;
    assert_eq!((exported.last_log_index, exported.lease_count), (42, 39));

    // Stopped after the new log was in place but before the version record: the record
    // still says version 1, so sled's log is the log (a version 1 build may have written
    // to it since) and the copy is made again. Here the stale `wal/` is an empty log.
    let empty = tempfile::tempdir().unwrap();
    open(empty.path(), &StoreOptions::default())
        .unwrap()
        .close();
    let again = v1_copy();
    copy_dir(&empty.path().join(WAL_DIR), &again.path().join(WAL_DIR));
    assert_eq!(data_version(again.path()), 1);
    open(again.path(), &StoreOptions::default())
        .unwrap()
        .close();
    assert_eq!(data_version(again.path()), DATA_VERSION);
    let (exported, _) = export_bytes(again.path()).await;
    assert_eq!((exported.last_log_index, exported.lease_count), (42, 39));
}

/// Data version 2 written in the record an old build checks, so that build refuses the
/// directory ("has data version 2; this build reads version 1 only") instead of reading
/// an empty log in sled.
#[tokio::test]
async fn a_new_directory_says_it_is_version_2() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), &StoreOptions::default()).unwrap().close();
    assert_eq!(data_version(dir.path()), 2);
}

/// The first segment of `dir`'s log.
fn first_segment(dir: &Path) -> PathBuf {
    dir.join(WAL_DIR).join(crate::wal::segment_name(1))
}

/// A data directory whose log holds entries `1..=n`, each appended (so framed) alone.
async fn log_of_single_appends(n: u64) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = open(dir.path(), &StoreOptions::default()).unwrap();
    for i in 1..=n {
        append_and_wait(
            &mut storage.log,
            vec![resolve_entry(1, i, &format!("10.0.{i}.0/24"), "a:1")],
        )
        .await;
    }
    storage.close();
    dir
}

#[tokio::test]
async fn a_damaged_log_is_refused_at_open_and_by_check_naming_file_and_offset() {
    let dir = log_of_single_appends(20).await;
    let healthy = check_log(dir.path()).unwrap();
    assert_eq!((healthy.entries, healthy.torn), (20, None));

    // Flip one byte inside an early frame (frames after it are intact).
    let segment = first_segment(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[40] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();

    let err = check_log(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("damaged"), "{message}");
    assert!(
        message.contains(&segment.display().to_string()),
        "{message}"
    );
    assert!(message.contains("at byte 0"), "{message}");
    let err = open(dir.path(), &StoreOptions::default()).err().unwrap();
    assert!(matches!(err, StoreError::Log { .. }), "{err}");
    assert_eq!(err.to_string(), message, "check says what a start says");
}

#[tokio::test]
async fn a_torn_tail_is_reported_by_check_and_cut_at_open() {
    let dir = log_of_single_appends(5).await;
    // Half of a last frame, as a crash in the middle of a write leaves it.
    let segment = first_segment(dir.path());
    let bytes = std::fs::read(&segment).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    let mut last_start = 0;
    let mut at = 0;
    while let Ok(Some((_, frame_end))) = crate::wal::recover::frame_at(&bytes, at) {
        last_start = at;
        at = frame_end;
    }
    assert_eq!(at, end, "the file holds whole frames only");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    let torn = vec![0u8; end - last_start - (end - last_start) / 2];
    std::os::unix::fs::FileExt::write_all_at(
        &file,
        &torn,
        (last_start + (end - last_start) / 2) as u64,
    )
    .unwrap();
    drop(file);

    let found = check_log(dir.path()).unwrap();
    assert_eq!(
        found.torn.map(|(_, offset)| offset),
        Some(last_start as u64)
    );
    assert_eq!(
        found.entries, 4,
        "check changes nothing and counts what a start keeps"
    );
    let mut storage = open(dir.path(), &StoreOptions::default()).unwrap();
    let state = storage.log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|id| id.index()), Some(4));
    storage.close();
    assert_eq!(check_log(dir.path()).unwrap().torn, None, "cut off at open");
}

#[tokio::test]
async fn a_log_shorter_than_the_applied_mark_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = open(dir.path(), &StoreOptions::default()).unwrap();
        let entries = (1..=3)
            .map(|i| resolve_entry(1, i, &format!("10.0.{i}.0/24"), "a:1"))
            .collect();
        append_and_wait(&mut storage.log, entries).await;
        storage.close();
    }
    write_applied_mark(dir.path(), 10).unwrap();
    let err = open(dir.path(), &StoreOptions::default()).err().unwrap();
    assert!(
        matches!(
            err,
            StoreError::LogBehind {
                last: 3,
                marked: 10,
                ..
            }
        ),
        "{err}"
    );
}
