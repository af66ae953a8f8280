//! `affinityctl members`: add a learner, promote it, remove a node.

use affinity_proto::pb;
use clap::Subcommand;
use serde_json::json;
use tonic::Status;

use crate::ctl::{Ctl, Output};
use crate::output;

#[derive(Subcommand)]
pub(crate) enum MembersCmd {
    /// Add a node as a learner (it starts receiving the log); `promote` it afterwards.
    Add {
        node_id: u64,
        /// Where clients reach the node (HOST:PORT).
        address: String,
        /// Where peers reach it, when it serves peer traffic on its own port
        /// (affinityd --peer-listen). [default: the address]
        #[arg(long)]
        peer_address: Option<String>,
        /// Return at once instead of waiting until the learner has caught up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Make a learner a voter.
    Promote { node_id: u64 },
    /// Remove a node (voter or learner) from the cluster.
    Remove { node_id: u64 },
}

pub(crate) async fn run(ctl: &Ctl, action: MembersCmd) -> Output {
    let current = ctl
        .cluster(|mut c| {
            let r = ctl.request(pb::StatusRequest {});
            async move { c.status(r).await }
        })
        .await?;
    let voters: Vec<u64> = current
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    let is_member = |id: u64| current.members.iter().any(|m| m.id == id);
    let change = |req: pb::ChangeMembershipRequest| async move {
        let resp = ctl
            .cluster(|mut c| {
                let r = ctl.request(req.clone());
                async move { c.change_membership(r).await }
            })
            .await?;
        Ok::<_, Status>(
            json!({ "log_index": resp.log_index, "members": output::members_json(&resp.members) }),
        )
    };
    match action {
        MembersCmd::Add {
            node_id,
            address,
            peer_address,
            no_wait,
        } => {
            let req = pb::AddLearnerRequest {
                node_id,
                address,
                blocking: !no_wait,
                peer_address: peer_address.unwrap_or_default(),
            };
            let resp = ctl
                .cluster(|mut c| {
                    let r = ctl.request(req.clone());
                    async move { c.add_learner(r).await }
                })
                .await?;
            Ok(
                json!({ "log_index": resp.log_index, "members": output::members_json(&resp.members) }),
            )
        }
        MembersCmd::Promote { node_id } => {
            if !is_member(node_id) {
                return Err(Status::not_found(format!(
                    "node {node_id} is not a member; add it first"
                )));
            }
            change(pb::ChangeMembershipRequest {
                add_voters: vec![node_id],
                ..Default::default()
            })
            .await
        }
        MembersCmd::Remove { node_id } => {
            if !is_member(node_id) {
                return Err(Status::not_found(format!("node {node_id} is not a member")));
            }
            if voters.contains(&node_id) {
                change(pb::ChangeMembershipRequest {
                    remove_voters: vec![node_id],
                    ..Default::default()
                })
                .await
            } else {
                change(pb::ChangeMembershipRequest {
                    remove_learners: vec![node_id],
                    ..Default::default()
                })
                .await
            }
        }
    }
}
