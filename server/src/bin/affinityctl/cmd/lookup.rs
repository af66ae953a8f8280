//! `affinityctl lookup`: show a client's live lease.

use affinity_proto::pb;
use serde_json::json;

use crate::ctl::{Ctl, Masks, Output, policy};
use crate::output::lease_json;

// The arguments (the subcommand's help is on its `Cmd` variant).
#[derive(clap::Args)]
pub(crate) struct Args {
    scope: String,
    ip: String,
    #[command(flatten)]
    masks: Masks,
    /// Read the node's replica without a leader round trip.
    #[arg(long)]
    stale: bool,
}

pub(crate) async fn run(ctl: &Ctl, args: Args) -> Output {
    let req = pb::LookupRequest {
        scope: args.scope,
        client_ip: args.ip,
        policy: Some(policy(&args.masks, None)),
        allow_stale: args.stale,
    };
    let resp = ctl
        .affinity(|mut c| {
            let r = ctl.request(req.clone());
            async move { c.lookup(r).await }
        })
        .await?;
    Ok(json!({ "lease": resp.lease.as_ref().map(lease_json) }))
}
