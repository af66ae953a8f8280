//! `affinityctl drain`: delete every lease on an endpoint.

use affinity_proto::pb;
use serde_json::json;

use crate::ctl::{Ctl, Output};

// The arguments (the subcommand's help is on its `Cmd` variant).
#[derive(clap::Args)]
pub(crate) struct Args {
    endpoint: String,
    /// Only this scope (default: all scopes).
    #[arg(long)]
    scope: Option<String>,
}

pub(crate) async fn run(ctl: &Ctl, args: Args) -> Output {
    let req = pb::DrainEndpointRequest {
        scope: args.scope.unwrap_or_default(),
        endpoint: args.endpoint,
        request_id: affinity_proto::request::new_request_id(),
    };
    let resp = ctl
        .affinity(|mut c| {
            let r = ctl.request(req.clone());
            async move { c.drain_endpoint(r).await }
        })
        .await?;
    Ok(json!({ "removed": resp.removed }))
}
