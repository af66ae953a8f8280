//! `affinityctl snapshot`: build a snapshot on the node asked; with `--out`, also take a
//! backup (see `backup`).

use std::path::PathBuf;

use affinity_proto::pb;
use serde_json::{Value, json};
use tonic::Status;

use crate::ctl::Ctl;

// The arguments (the subcommand's help is on its `Cmd` variant).
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Write the backup here (`-` for standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The summary to print, or `None` when a backup went to standard output.
pub(crate) async fn run(ctl: &Ctl, args: Args) -> Result<Option<Value>, Status> {
    if let Some(out) = &args.out {
        return crate::backup::backup(ctl, out).await;
    }
    let resp = ctl
        .cluster(|mut c| {
            let r = ctl.request(pb::SnapshotRequest {});
            async move { c.snapshot(r).await }
        })
        .await?;
    Ok(Some(json!({
        "last_log_index": resp.last_log_index,
        "last_log_term": resp.last_log_term,
        "lease_count": resp.lease_count,
        "size_bytes": resp.size_bytes,
    })))
}
