//! `affinityctl status`: every node of the cluster, as each one sees itself.

use affinity_proto::pb;
use serde_json::json;

use crate::ctl::{Ctl, Output};
use crate::output::status_json;

/// Status of every member (found through the first node that answers), and of every
/// endpoint given that is not a member.
pub(crate) async fn run(ctl: &Ctl) -> Output {
    let first = ctl
        .cluster(|mut c| {
            let r = ctl.request(pb::StatusRequest {});
            async move { c.status(r).await }
        })
        .await?;
    let mut addresses: Vec<(Option<u64>, String, Option<bool>)> = first
        .members
        .iter()
        .map(|m| (Some(m.id), m.address.clone(), Some(m.voter)))
        .collect();
    for endpoint in &ctl.endpoints {
        if !addresses.iter().any(|(_, a, _)| a == endpoint) {
            addresses.push((None, endpoint.clone(), None));
        }
    }
    let mut nodes = Vec::new();
    for (id, address, voter) in addresses {
        let one = Ctl {
            endpoints: vec![address.clone()],
            deadline: ctl.deadline,
            tls: ctl.tls.clone(),
            authorization: ctl.authorization.clone(),
        };
        let answer = one
            .cluster(|mut c| {
                let r = one.request(pb::StatusRequest {});
                async move { c.status(r).await }
            })
            .await;
        nodes.push(match answer {
            Ok(s) => {
                let mut v = status_json(&s);
                v["voter"] = json!(voter);
                v
            }
            Err(e) => json!({ "node_id": id, "address": address, "voter": voter, "role": "unreachable", "error": e.message() }),
        });
    }
    Ok(json!({ "nodes": nodes, "leader_id": first.leader_id }))
}
