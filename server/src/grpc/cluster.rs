//! `affinity.v1.Cluster`: status and membership, for operators.
//!
//! `Status` and `Snapshot` answer for the node asked; membership changes and leadership
//! transfers run on the leader (forwarded there when asked elsewhere).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use affinity_proto::ValidationError;
use affinity_proto::pb;
use affinity_proto::pb::cluster_client::ClusterClient;
use affinity_proto::pb::cluster_server::Cluster;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::call::serve;
use super::{CLIENT_MAX_MESSAGE_BYTES, Ctx};
use crate::error::ServiceError;
use crate::node::VoterChange;

/// The operator service.
pub struct ClusterService {
    ctx: Arc<Ctx>,
}

impl ClusterService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }

    fn members(&self) -> Vec<pb::Member> {
        self.ctx.node.status().to_pb().members
    }
}

fn client(channel: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(channel)
        .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        serve("Status", &self.ctx, request, async |_, _| {
            Ok(self.ctx.node.status().to_pb())
        })
        .await
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AddLearnerResponse>, Status> {
        serve("AddLearner", &self.ctx, request, async |call, wire| {
            let budget = call.budget(self.ctx.node.proposal_timeout());
            let work = async {
                let node = &self.ctx.node;
                let index = node
                    .add_learner(wire.node_id, wire.address.clone(), wire.blocking, budget)
                    .await?;
                Ok(pb::AddLearnerResponse {
                    log_index: index,
                    members: self.members(),
                })
            };
            self.ctx
                .here_or_leader(
                    call,
                    budget,
                    Some(wire.clone()),
                    work,
                    |channel, req| async move { client(channel).add_learner(req).await },
                )
                .await
        })
        .await
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::ChangeMembershipResponse>, Status> {
        serve(
            "ChangeMembership",
            &self.ctx,
            request,
            async |call, wire| {
                let budget = call.budget(self.ctx.node.proposal_timeout());
                let work = async {
                    let voters = voter_change(&wire)?;
                    let learners: BTreeSet<u64> = wire.remove_learners.iter().copied().collect();
                    let index = self
                        .ctx
                        .node
                        .change_membership(voters, wire.retain, learners, budget)
                        .await?;
                    Ok(pb::ChangeMembershipResponse {
                        log_index: index,
                        members: self.members(),
                    })
                };
                self.ctx
                    .here_or_leader(
                        call,
                        budget,
                        Some(wire.clone()),
                        work,
                        |channel, req| async move { client(channel).change_membership(req).await },
                    )
                    .await
            },
        )
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        serve("TransferLeader", &self.ctx, request, async |call, wire| {
            let budget = call.budget(self.ctx.node.proposal_timeout());
            let work = async {
                let leader_id = self
                    .ctx
                    .node
                    .transfer_leader(wire.to_node_id, budget)
                    .await?;
                Ok(pb::TransferLeaderResponse { leader_id })
            };
            self.ctx
                .here_or_leader(call, budget, Some(wire), work, |channel, req| async move {
                    client(channel).transfer_leader(req).await
                })
                .await
        })
        .await
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        serve("Snapshot", &self.ctx, request, async |call, _| {
            // Building a large snapshot may take longer than a write.
            let budget = call.budget(
                self.ctx
                    .node
                    .proposal_timeout()
                    .max(Duration::from_secs(60)),
            );
            let info = self.ctx.node.snapshot(budget).await.map_err(Status::from)?;
            let (term, index) = info
                .last_log_id
                .map_or((0, 0), |id| (id.committed_leader_id().term, id.index()));
            Ok(pb::SnapshotResponse {
                last_log_index: index,
                last_log_term: term,
                lease_count: info.lease_count,
                size_bytes: info.size_bytes,
            })
        })
        .await
    }
}

/// Which of `voters`, `add_voters` and `remove_voters` a request uses (at most one).
fn voter_change(wire: &pb::ChangeMembershipRequest) -> Result<VoterChange, ServiceError> {
    let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
    let given = [
        !wire.voters.is_empty(),
        !wire.add_voters.is_empty(),
        !wire.remove_voters.is_empty(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ValidationError::new(
            "voters",
            "give only one of voters, add_voters and remove_voters",
        )
        .into());
    }
    Ok(if !wire.voters.is_empty() {
        VoterChange::Replace(set(&wire.voters))
    } else if !wire.add_voters.is_empty() {
        VoterChange::Add(set(&wire.add_voters))
    } else if !wire.remove_voters.is_empty() {
        VoterChange::Remove(set(&wire.remove_voters))
    } else {
        VoterChange::Keep
    })
}
