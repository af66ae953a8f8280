//! `affinityctl snapshot --out` and `affinityctl restore`: backups as snapshot files.
//!
//! A backup is the byte stream of a snapshot a node builds on request (after catching up
//! with what the leader has committed). It is checked (format, checksum, every lease)
//! before it is written under its final name, so a file named as a backup is a whole one.
//! A restore reads and checks the file first, then sends its leases in batches; each batch
//! is one Raft write, and a key that already holds a live lease keeps it, so running a
//! restore twice changes nothing the second time.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use affinity_proto::pb;
use affinity_server::sm::snapshot as format;
use affinity_server::store::export::write_atomically;
use serde_json::{Value, json};
use tonic::Status;

use crate::ctl::Ctl;

/// A backup may take longer than one request's deadline: a large snapshot to build and send.
const BACKUP_DEADLINE: Duration = Duration::from_secs(600);

/// Fetch a backup into `out` (`-`: standard output, the summary then goes to stderr).
pub(super) async fn backup(ctl: &Ctl, out: &Path) -> Result<Option<Value>, Status> {
    let deadline = ctl.deadline.max(BACKUP_DEADLINE);
    let mut stream = ctl
        .cluster(|mut c| {
            let mut r = tonic::Request::new(pb::BackupRequest {});
            r.set_timeout(deadline);
            async move { c.backup(r).await }
        })
        .await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(&chunk.data);
    }
    let decoded = format::read(bytes.as_slice())
        .map_err(|e| Status::data_loss(format!("the backup received is not valid: {e}")))?;
    let summary = json!({
        "file": out,
        "last_log_index": decoded.meta.last_log_id.as_ref().map_or(0, |id| id.index),
        "lease_count": decoded.stats.lease_count,
        "bytes": bytes.len(),
        "crc32": format!("{:08x}", decoded.stats.crc32),
    });
    if out == Path::new("-") {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&bytes)
            .and_then(|()| stdout.flush())
            .map_err(|e| Status::internal(format!("writing to standard output: {e}")))?;
        eprintln!("{summary}");
        return Ok(None);
    }
    write_atomically(out, &bytes)
        .map_err(|e| Status::internal(format!("writing {}: {e}", out.display())))?;
    Ok(Some(summary))
}

/// Put the leases of the backup `file` (`-`: standard input) into the cluster.
pub(super) async fn restore(ctl: &Ctl, file: &Path, batch: usize) -> Result<Value, Status> {
    if !(1..=10_000).contains(&batch) {
        return Err(Status::invalid_argument(format!(
            "--batch must be 1..=10000 (got {batch})"
        )));
    }
    let bytes = if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
            .map_err(|e| Status::invalid_argument(format!("reading standard input: {e}")))?;
        bytes
    } else {
        std::fs::read(file)
            .map_err(|e| Status::invalid_argument(format!("reading {}: {e}", file.display())))?
    };
    let decoded = format::read(bytes.as_slice()).map_err(|e| {
        Status::invalid_argument(format!("{} is not a usable backup: {e}", file.display()))
    })?;
    let leases: Vec<pb::StoredLease> = decoded.table.iter().map(|l| l.to_stored()).collect();
    let (mut imported, mut expired, mut present) = (0, 0, 0);
    for part in leases.chunks(batch) {
        let request = pb::RestoreRequest {
            leases: part.to_vec(),
        };
        let answer = ctl
            .cluster(|mut c| {
                let r = ctl.request(request.clone());
                async move { c.restore(r).await }
            })
            .await?;
        imported += answer.imported;
        expired += answer.expired;
        present += answer.present;
    }
    Ok(json!({
        "file": file,
        "leases_in_backup": leases.len(),
        "imported": imported,
        "expired": expired,
        "present": present,
    }))
}
