//! `affinityctl watch`: print changes as they happen (one JSON line each with `--json`).

use affinity_proto::pb;
use serde_json::json;
use tonic::Status;

use crate::ctl::Ctl;
use crate::output::{format_time, lease_json};

// The arguments (the subcommand's help is on its `Cmd` variant).
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Only this scope (default: all scopes).
    #[arg(long)]
    scope: Option<String>,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<usize>,
    /// First replay the changes from this revision on (as far as the node remembers).
    #[arg(long, default_value_t = 0)]
    from_revision: u64,
}

pub(crate) async fn run(ctl: &Ctl, args: Args, as_json: bool) -> Result<(), Status> {
    let Args {
        scope,
        count,
        from_revision,
    } = args;
    let req = pb::WatchRequest {
        scope: scope.unwrap_or_default(),
        start_revision: from_revision,
    };
    let mut stream = ctl
        .affinity(|mut c| {
            let r = tonic::Request::new(req.clone());
            async move { c.watch(r).await }
        })
        .await?;
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        let Some(event) = stream.message().await? else {
            break;
        };
        // Progress says the stream is alive; it is not a change to print.
        if event.kind == i32::from(pb::watch_event::Kind::Progress) {
            continue;
        }
        seen += 1;
        let kind =
            pb::watch_event::Kind::try_from(event.kind).map_or("UNKNOWN", |k| k.as_str_name());
        let lease = event.lease.unwrap_or_default();
        if as_json {
            println!(
                "{}",
                json!({ "kind": kind, "revision": event.revision, "lease": lease_json(&lease) })
            );
        } else {
            println!(
                "{:<8} rev {:<8} {} {} -> {} (expires {})",
                kind,
                event.revision,
                lease.scope,
                lease.prefix,
                lease.endpoint,
                format_time(lease.expires_at_ms)
            );
        }
    }
    Ok(())
}
