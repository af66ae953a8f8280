//! `affinityctl resolve`: get a client's lease, creating it if there is none.

use affinity_proto::pb;
use serde_json::json;

use crate::ctl::{Ctl, Lifetime, Masks, Output, policy};
use crate::output::lease_json;

// The arguments (the subcommand's help is on its `Cmd` variant).
#[derive(clap::Args)]
pub(crate) struct Args {
    scope: String,
    ip: String,
    endpoint: String,
    #[command(flatten)]
    masks: Masks,
    #[command(flatten)]
    lifetime: Lifetime,
    /// Endpoints that may serve (comma-separated); a lease on another is replaced.
    #[arg(long, value_delimiter = ',')]
    eligible: Vec<String>,
}

pub(crate) async fn run(ctl: &Ctl, args: Args) -> Output {
    let req = pb::ResolveRequest {
        scope: args.scope,
        client_ip: args.ip,
        policy: Some(policy(&args.masks, Some(&args.lifetime))),
        endpoint: args.endpoint,
        eligible_endpoints: args.eligible,
        request_id: affinity_proto::request::new_request_id(),
    };
    let resp = ctl
        .affinity(|mut c| {
            let r = ctl.request(req.clone());
            async move { c.resolve(r).await }
        })
        .await?;
    Ok(json!({
        "lease": resp.lease.as_ref().map(lease_json),
        "created": resp.created,
        "replaced": resp.replaced,
    }))
}
