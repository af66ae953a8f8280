//! `affinityctl release`: delete a client's lease.

use affinity_proto::pb;
use serde_json::json;

use crate::ctl::{Ctl, Masks, Output, policy};

// The arguments (the subcommand's help is on its `Cmd` variant).
#[derive(clap::Args)]
pub(crate) struct Args {
    scope: String,
    ip: String,
    #[command(flatten)]
    masks: Masks,
}

pub(crate) async fn run(ctl: &Ctl, args: Args) -> Output {
    let req = pb::ReleaseRequest {
        scope: args.scope,
        client_ip: args.ip,
        policy: Some(policy(&args.masks, None)),
        request_id: affinity_proto::request::new_request_id(),
    };
    let resp = ctl
        .affinity(|mut c| {
            let r = ctl.request(req.clone());
            async move { c.release(r).await }
        })
        .await?;
    Ok(json!({ "released": resp.released }))
}
