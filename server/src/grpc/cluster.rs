//! `affinity.v1.Cluster`: status and membership, for operators.
//!
//! `Status`, `Snapshot` and `Backup` answer for the node asked (a backup first catches up
//! with what the leader has committed); membership changes, leadership transfers and
//! `Restore` run on the leader (forwarded there when asked elsewhere).

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use affinity_proto::ValidationError;
use affinity_proto::pb;
use affinity_proto::pb::cluster_client::ClusterClient;
use affinity_proto::pb::cluster_server::Cluster;
use futures::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::call::serve;
use super::{CLIENT_MAX_MESSAGE_BYTES, Ctx};
use crate::error::ServiceError;
use crate::node::{Budget, VoterChange};
use crate::sm::snapshot::leases_from_stored;
use crate::sm::{Lease, Op, Outcome};

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
                    .add_learner(
                        wire.node_id,
                        crate::raft::Node::with_peer(
                            wire.address.clone(),
                            Some(wire.peer_address.clone()),
                        ),
                        wire.blocking,
                        budget,
                    )
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
                    || Some(wire.clone()),
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
                        || Some(wire.clone()),
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
                .here_or_leader(
                    call,
                    budget,
                    || Some(wire),
                    work,
                    |channel, req| async move { client(channel).transfer_leader(req).await },
                )
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

    type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        serve("Backup", &self.ctx, request, async |call, _| {
            let node = &self.ctx.node;
            // Building a large snapshot may take longer than a write.
            let budget = call.budget(node.proposal_timeout().max(Duration::from_secs(60)));
            self.catch_up_with_leader(budget).await?;
            node.snapshot(budget).await?;
            let current = node
                .state()
                .current_snapshot()
                .map_err(|e| ServiceError::Internal(format!("opening the snapshot: {e}")))?
                .ok_or_else(|| ServiceError::Internal("no snapshot after building one".into()))?;
            let reader = current
                .data
                .reader()
                .map_err(|e| ServiceError::Internal(format!("reading the snapshot: {e}")))?;
            Ok(stream_file(reader))
        })
        .await
    }

    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        serve("Restore", &self.ctx, request, async |call, wire| {
            let budget = call.budget(self.ctx.node.proposal_timeout());
            let work = async {
                let leases = restore_leases(&wire)?;
                if leases.is_empty() {
                    return Ok(pb::RestoreResponse::default());
                }
                match self.ctx.node.propose(Op::Import { leases }, budget).await? {
                    Outcome::Imported {
                        imported,
                        expired,
                        present,
                    } => Ok(pb::RestoreResponse {
                        imported,
                        expired,
                        present,
                    }),
                    other => Err(ServiceError::Internal(format!(
                        "an import answered {other:?}"
                    ))),
                }
            };
            self.ctx
                .here_or_leader(
                    call,
                    budget,
                    || Some(wire.clone()),
                    work,
                    |channel, req| async move { client(channel).restore(req).await },
                )
                .await
        })
        .await
    }
}

impl ClusterService {
    /// Wait until this node has applied everything the cluster had committed when asked:
    /// a read index on the leader; on a follower, the leader's commit index, then this
    /// node's log up to it.
    async fn catch_up_with_leader(&self, budget: Budget) -> Result<(), ServiceError> {
        let node = &self.ctx.node;
        if node.is_leader() {
            return node.linearize(budget).await;
        }
        let Some((leader, Some(address))) = node
            .leader()
            .map(|(id, _)| (id, node.member(id).map(|n| n.peer().to_string())))
        else {
            return Err(ServiceError::Unavailable(
                "no leader is known, so what is committed cannot be known".into(),
            ));
        };
        let channel =
            self.ctx.peers.channel(&address).map_err(|e| {
                ServiceError::Unavailable(format!("leader {leader} at {address}: {e}"))
            })?;
        let mut request = Request::new(pb::StatusRequest {});
        let left = budget
            .until
            .saturating_duration_since(tokio::time::Instant::now());
        request.set_timeout(left);
        let status = client(channel)
            .status(request)
            .await
            .map_err(|s| ServiceError::Unavailable(format!("leader {leader}: {}", s.message())))?
            .into_inner();
        node.wait_applied(status.commit_index, budget).await
    }
}

/// At most this many leases per Restore request.
const MAX_RESTORE_BATCH: usize = 10_000;

/// The leases of a Restore request, each checked.
fn restore_leases(wire: &pb::RestoreRequest) -> Result<Vec<Lease>, ServiceError> {
    if wire.leases.len() > MAX_RESTORE_BATCH {
        return Err(ValidationError::new(
            "leases",
            format!(
                "at most {MAX_RESTORE_BATCH} per request (got {}); send them in batches",
                wire.leases.len()
            ),
        )
        .into());
    }
    Ok(leases_from_stored(wire.leases.iter().cloned())?)
}

/// Bytes of a snapshot file per Backup message.
const BACKUP_CHUNK_BYTES: usize = 256 * 1024;

/// Stream a file's bytes, read on a blocking thread.
fn stream_file(
    mut reader: std::fs::File,
) -> Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        loop {
            let mut data = vec![0u8; BACKUP_CHUNK_BYTES];
            let chunk = match reader.read(&mut data) {
                Ok(0) => return,
                Ok(n) => {
                    data.truncate(n);
                    Ok(pb::BackupChunk { data })
                }
                Err(e) => Err(Status::internal(format!("reading the snapshot: {e}"))),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
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
