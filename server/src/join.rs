//! How a node becomes a member of its cluster.
//!
//! Two ways, chosen by configuration:
//!
//! - **Static peers** (`--peers`): on empty storage the node with the lowest listed id
//!   initializes the cluster with every listed member ([`bootstrap`]); the others wait to be
//!   contacted. With no peers at all the node forms a single-node cluster of itself.
//! - **Join** (`--join`, the StatefulSet way): node 1 (pod ordinal 0) forms a single-node
//!   cluster once every join target has answered and none belongs to a cluster; every
//!   other node asks the cluster to add it as a learner, waits until it has caught up, and
//!   asks to become a voter ([`run`]). The change is applied to the leader's current
//!   membership (`add_voters`), so pods joining at the same time do not undo each other.
//!   The same loop runs at every start, so a node that crashed half-way through joining, or
//!   that was removed while it was down, finishes joining; a node that is already a voter
//!   is left alone.
//!
//! A node never re-initializes once it has state, and a node with empty storage never forms
//! a new cluster while a peer already belongs to one: a wiped disk is re-added, not turned
//! into a second cluster that would lose acknowledged writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use affinity_proto::pb;
use tokio_util::sync::CancellationToken;
use tonic::Request;

use crate::config::Config;
use crate::network::Peers;
use crate::node::{Node, StartError};
use crate::raft::{Node as RaftNode, NodeId};

/// How long one question to a join target may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between two attempts to join.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// On empty storage with static peers (or none): form the cluster if this node should.
/// Nodes that join (`--join`) do nothing here; [`run`] handles them once serving.
pub(crate) async fn bootstrap(
    node: &Node,
    config: &Config,
    peers: &Peers,
) -> Result<(), StartError> {
    if initialized(node).await? {
        tracing::info!("existing cluster state found; rejoining");
        return Ok(());
    }
    if !config.join.is_empty() {
        tracing::info!(
            targets = ?config.join,
            "empty storage; joining through the join targets once serving"
        );
        return Ok(());
    }
    let members: BTreeMap<NodeId, RaftNode> = if config.peers.is_empty() {
        BTreeMap::from([(node.id(), node.record().clone())])
    } else {
        if config.peers.keys().next() != Some(&node.id()) {
            tracing::info!(
                "empty storage; waiting for the node with the lowest id to form the cluster"
            );
            return Ok(());
        }
        let others: Vec<String> = config
            .peers
            .iter()
            .filter(|(id, _)| **id != node.id())
            .map(|(_, n)| n.peer().to_string())
            .collect();
        if let Some(found) = survey(peers, others.iter()).await.cluster() {
            tracing::warn!(
                peer = found.node_id,
                leader = found.leader_id,
                "empty storage, but a peer already belongs to a cluster; not forming a new one (add this node back with `affinityctl members add`)"
            );
            return Ok(());
        }
        config.peers.clone()
    };
    form(node, members).await
}

async fn initialized(node: &Node) -> Result<bool, StartError> {
    node.raft()
        .is_initialized()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))
}

async fn form(node: &Node, members: BTreeMap<NodeId, RaftNode>) -> Result<(), StartError> {
    tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "forming a new cluster");
    node.raft()
        .initialize(members)
        .await
        .map_err(|e| StartError::Raft(format!("initialize: {e}")))
}

/// What the join targets said.
#[derive(Default)]
struct Survey {
    answers: Vec<pb::StatusResponse>,
    silent: Vec<String>,
}

impl Survey {
    /// A target that belongs to a cluster, preferring one that knows its leader.
    fn cluster(&self) -> Option<&pb::StatusResponse> {
        let members = self.answers.iter().filter(|s| !s.members.is_empty());
        members
            .clone()
            .find(|s| s.leader_id != 0 && !s.leader_address.is_empty())
            .or_else(|| members.into_iter().next())
    }
}

/// Ask each target for its status.
async fn survey(peers: &Peers, targets: impl Iterator<Item = &String>) -> Survey {
    let mut survey = Survey::default();
    for target in targets {
        match status(peers, target).await {
            Ok(answer) => survey.answers.push(answer),
            Err(e) => {
                tracing::debug!(target = %target, error = %e, "join target did not answer");
                survey.silent.push(target.clone());
            }
        }
    }
    survey
}

fn cluster_client(
    peers: &Peers,
    address: &str,
) -> Result<pb::cluster_client::ClusterClient<tonic::transport::Channel>, String> {
    peers
        .channel(address)
        .map(pb::cluster_client::ClusterClient::new)
        .map_err(|e| format!("{address}: {e}"))
}

fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(ASK_TIMEOUT);
    request
}

async fn status(peers: &Peers, address: &str) -> Result<pb::StatusResponse, String> {
    let mut client = cluster_client(peers, address)?;
    let answer = tokio::time::timeout(ASK_TIMEOUT, client.status(request(pb::StatusRequest {})))
        .await
        .map_err(|_| format!("{address}: no answer within {ASK_TIMEOUT:?}"))?;
    answer
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{address}: {}", s.message()))
}

/// Where joining stands after one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// This node is a voter: nothing more to do.
    Voter,
    /// Not yet; the reason, for the log.
    Waiting(String),
}

/// Join the cluster through `targets` (the `--join` list), retrying with backoff until this
/// node is a voter or `stop` is cancelled. Node 1 forms the cluster when nobody has one.
pub async fn run(node: Arc<Node>, targets: Vec<String>, peers: Peers, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    let mut last_reason = String::new();
    loop {
        match attempt(&node, &targets, &peers).await {
            Ok(Step::Voter) => {
                tracing::info!("this node is a voter of the cluster");
                return;
            }
            Ok(Step::Waiting(reason)) => {
                if reason != last_reason {
                    tracing::info!(%reason, "joining the cluster");
                    last_reason = reason;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "joining the cluster failed; retrying");
                last_reason.clear();
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One attempt: find the cluster's leader, then take the next step toward being a voter.
async fn attempt(node: &Node, targets: &[String], peers: &Peers) -> Result<Step, String> {
    let me = node.id();
    let others = targets
        .iter()
        .filter(|t| t.as_str() != node.address() && t.as_str() != node.record().peer());
    let survey = survey(peers, others).await;
    let Some(found) = survey.cluster() else {
        if initialized(node).await.map_err(|e| e.to_string())? {
            // Known members but nobody to ask: a full-cluster restart in progress, or this
            // node formed the cluster and nobody else has joined yet.
            let own = node.status();
            let voter = own.members.get(&me).is_some_and(|(_, voter)| *voter);
            return Ok(if voter && own.leader.is_some() {
                Step::Voter
            } else {
                Step::Waiting("no join target knows a leader yet".into())
            });
        }
        if me != 1 {
            return Ok(Step::Waiting(
                "waiting for node 1 (ordinal 0) to form the cluster".into(),
            ));
        }
        if !survey.silent.is_empty() {
            return Ok(Step::Waiting(format!(
                "node 1 forms the cluster once every join target answers; silent: {}",
                survey.silent.join(", ")
            )));
        }
        let members = BTreeMap::from([(me, node.record().clone())]);
        form(node, members).await.map_err(|e| e.to_string())?;
        return Ok(Step::Waiting("formed a new cluster".into()));
    };
    if found.leader_address.is_empty() {
        return Ok(Step::Waiting(format!(
            "node {} belongs to a cluster that has no leader yet",
            found.node_id
        )));
    }
    // The leader's own view of the membership is the one that counts.
    let leader = if found.leader_id == me {
        node.status().to_pb()
    } else {
        status(peers, leader_peer_address(found)).await?
    };
    if leader.role != "leader" {
        return Ok(Step::Waiting(format!(
            "node {} is no longer the leader",
            leader.node_id
        )));
    }
    match leader.members.iter().find(|m| m.id == me) {
        Some(m) if m.voter => Ok(Step::Voter),
        Some(m)
            if RaftNode::with_peer(m.address.clone(), Some(m.peer_address.clone()))
                != *node.record() =>
        {
            Err(format!(
                "the cluster knows node {me} at {}, but this node advertises {}; remove node {me} (`affinityctl members remove {me}`) or fix --advertise and --peer-advertise",
                RaftNode::with_peer(m.address.clone(), Some(m.peer_address.clone())),
                node.record()
            ))
        }
        Some(_) => promote(node, peers, &leader).await,
        None => {
            let mut client = cluster_client(peers, own_peer_address(&leader))?;
            client
                .add_learner(request(pb::AddLearnerRequest {
                    node_id: me,
                    address: node.address().to_string(),
                    blocking: false,
                    peer_address: node.record().peer_addr.clone().unwrap_or_default(),
                }))
                .await
                .map_err(|s| format!("adding this node as a learner: {}", s.message()))?;
            Ok(Step::Waiting(
                "added as a learner; catching up with the log".into(),
            ))
        }
    }
}

/// A learner that has applied what the leader had committed when asked becomes a voter.
async fn promote(node: &Node, peers: &Peers, leader: &pb::StatusResponse) -> Result<Step, String> {
    let own = node.status();
    if own.applied_index < leader.commit_index {
        return Ok(Step::Waiting(format!(
            "catching up: applied {} of {}",
            own.applied_index, leader.commit_index
        )));
    }
    let mut client = cluster_client(peers, own_peer_address(leader))?;
    client
        .change_membership(request(pb::ChangeMembershipRequest {
            add_voters: vec![node.id()],
            retain: true,
            ..Default::default()
        }))
        .await
        .map_err(|s| format!("becoming a voter: {}", s.message()))?;
    Ok(Step::Voter)
}

/// Where peers reach the leader a status answer names.
fn leader_peer_address(status: &pb::StatusResponse) -> &str {
    if status.leader_peer_address.is_empty() {
        &status.leader_address
    } else {
        &status.leader_peer_address
    }
}

/// Where peers reach the node that gave a status answer.
fn own_peer_address(status: &pb::StatusResponse) -> &str {
    if status.peer_address.is_empty() {
        &status.address
    } else {
        &status.peer_address
    }
}

/// The node id a StatefulSet pod gets from its hostname: ordinal + 1 (`affinity-0` is 1).
pub fn node_id_from_hostname(hostname: &str) -> Result<NodeId, String> {
    let ordinal = hostname
        .rsplit_once('-')
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            format!("hostname {hostname:?} does not end in -ORDINAL (like affinity-0)")
        })?;
    let ordinal: NodeId = ordinal
        .parse()
        .map_err(|_| format!("ordinal {ordinal:?} of hostname {hostname:?} is too large"))?;
    ordinal
        .checked_add(1)
        .ok_or_else(|| format!("ordinal {ordinal} of hostname {hostname:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_become_ids() {
        assert_eq!(node_id_from_hostname("affinity-0"), Ok(1));
        assert_eq!(node_id_from_hostname("affinity-12"), Ok(13));
        assert_eq!(node_id_from_hostname("my-store-affinity-2"), Ok(3));
        for bad in [
            "affinity",
            "affinity-",
            "affinity-x",
            "affinity-1a",
            "",
            "affinity-99999999999999999999999",
            "affinity-18446744073709551615",
        ] {
            let err = node_id_from_hostname(bad).unwrap_err();
            assert!(err.contains("hostname"), "{bad}: {err}");
        }
    }
}
