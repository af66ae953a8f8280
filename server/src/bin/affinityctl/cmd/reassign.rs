//! `affinityctl reassign`: move a client's live lease from one endpoint to another
//! (compare-and-set).

use affinity_proto::pb;
use serde_json::json;

use crate::ctl::{Ctl, Lifetime, Masks, Output, policy};
use crate::output::lease_json;

// The arguments (the subcommand's help is on its `Cmd` variant).
#[derive(clap::Args)]
pub(crate) struct Args {
    scope: String,
    ip: String,
    expected: String,
    endpoint: String,
    #[command(flatten)]
    masks: Masks,
    #[command(flatten)]
    lifetime: Lifetime,
}

pub(crate) async fn run(ctl: &Ctl, args: Args) -> Output {
    let req = pb::ReassignRequest {
        scope: args.scope,
        client_ip: args.ip,
        policy: Some(policy(&args.masks, Some(&args.lifetime))),
        expected_endpoint: args.expected,
        endpoint: args.endpoint,
        request_id: affinity_proto::request::new_request_id(),
    };
    let resp = ctl
        .affinity(|mut c| {
            let r = ctl.request(req.clone());
            async move { c.reassign(r).await }
        })
        .await?;
    Ok(json!({ "lease": resp.lease.as_ref().map(lease_json), "swapped": resp.swapped }))
}
