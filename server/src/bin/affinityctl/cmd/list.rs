//! `affinityctl list`: live leases in key order, page by page.

use affinity_proto::pb;
use serde_json::json;

use crate::ctl::{Ctl, Output};
use crate::output::lease_json;

// The arguments (the subcommand's help is on its `Cmd` variant).
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Only this scope (default: all scopes).
    #[arg(long)]
    scope: Option<String>,
    /// Leases per request.
    #[arg(long, default_value_t = 500)]
    page_size: u32,
    /// Stop after this many leases.
    #[arg(long)]
    limit: Option<usize>,
}

pub(crate) async fn run(ctl: &Ctl, args: Args) -> Output {
    let mut leases = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::ListRequest {
            scope: args.scope.clone().unwrap_or_default(),
            page_size: args.page_size,
            page_token: token.clone(),
        };
        let page = ctl
            .affinity(|mut c| {
                let r = ctl.request(req.clone());
                async move { c.list(r).await }
            })
            .await?;
        leases.extend(page.leases.iter().map(lease_json));
        if args.limit.is_some_and(|l| leases.len() >= l) {
            leases.truncate(args.limit.unwrap_or(usize::MAX));
            break;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok(json!({ "leases": leases }))
}
