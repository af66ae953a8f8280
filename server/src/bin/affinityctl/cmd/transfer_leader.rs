//! `affinityctl transfer-leader`: hand leadership to another voter.

use affinity_proto::pb;
use serde_json::json;

use crate::ctl::{Ctl, Output};

// The arguments (the subcommand's help is on its `Cmd` variant).
#[derive(clap::Args)]
pub(crate) struct Args {
    node_id: u64,
}

pub(crate) async fn run(ctl: &Ctl, args: Args) -> Output {
    let req = pb::TransferLeaderRequest {
        to_node_id: args.node_id,
    };
    let resp = ctl
        .cluster(|mut c| {
            let r = ctl.request(req);
            async move { c.transfer_leader(r).await }
        })
        .await?;
    Ok(json!({ "leader_id": resp.leader_id }))
}
