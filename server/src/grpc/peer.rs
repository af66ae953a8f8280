//! `affinity.v1.Raft`: Raft traffic from the other nodes, handed to openraft.
//!
//! A streamed snapshot is written to a temporary file in the snapshot folder as it arrives
//! (never held in memory), synced, checked against the size the sender announced, and then
//! given to openraft to install.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use affinity_proto::pb::raft_server::Raft as RaftRpc;
use affinity_proto::{ValidationError, pb};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::error::ServiceError;
use crate::node::Node;
use crate::raft::Snapshot;
use crate::raft::codec::{CodecError, snapshot_meta_from_pb, vote_from_pb, vote_to_pb};
use crate::raft::messages::{
    append_request_from_pb, append_response_to_pb, handoff_request_from_pb, handoff_response_to_pb,
    stream_result_to_pb, vote_request_from_pb, vote_response_to_pb,
};
use crate::store::SnapshotData;

/// Largest snapshot a node accepts from a peer.
const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// The peer service of one node.
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    /// The service of `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn bad_message(e: &CodecError) -> Status {
    invalid(&e.to_string())
}

fn invalid(rule: &str) -> Status {
    ServiceError::Invalid(ValidationError::new("message", rule.to_string())).into()
}

fn stopped(e: &impl std::fmt::Display) -> Status {
    ServiceError::Unavailable(format!("this node's raft has stopped: {e}")).into()
}

#[tonic::async_trait]
impl RaftRpc for PeerService {
    async fn vote(
        &self,
        request: Request<pb::RaftVoteRequest>,
    ) -> Result<Response<pb::RaftVoteResponse>, Status> {
        let (req, pre_vote) =
            vote_request_from_pb(request.get_ref()).map_err(|e| bad_message(&e))?;
        if let Err(wait) = self.node.may_vote(req.leadership_transfer) {
            return Err(Status::unavailable(format!(
                "this node restarted less than a leader lease ago and votes again in {} ms",
                wait.as_millis()
            )));
        }
        let raft = self.node.raft();
        let resp = if pre_vote {
            raft.pre_vote(req).await
        } else {
            raft.vote(req).await
        }
        .map_err(|e| stopped(&e))?;
        Ok(Response::new(vote_response_to_pb(&resp)))
    }

    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let heard = Instant::now();
        let wire = request.into_inner();
        let leader_store_ms = wire.leader_store_ms;
        let req = append_request_from_pb(wire).map_err(|e| bad_message(&e))?;
        self.node
            .hear_leader(&req.vote, leader_commit(&req), leader_store_ms, heard);
        let resp = self
            .node
            .raft()
            .append_entries(req)
            .await
            .map_err(|e| stopped(&e))?;
        Ok(Response::new(append_response_to_pb(&resp)))
    }

    type StreamAppendStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<pb::StreamAppendResponse, Status>> + Send>>;

    async fn stream_append(
        &self,
        request: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        // Requests that fail to arrive or decode end the input; openraft then ends the output.
        let node = Arc::clone(&self.node);
        let input = request
            .into_inner()
            .take_while(|item| futures::future::ready(item.is_ok()))
            .filter_map(move |item| {
                let heard = Instant::now();
                let decoded = item.ok().map(|wire| {
                    let leader_store_ms = wire.leader_store_ms;
                    append_request_from_pb(wire).map(|req| (req, leader_store_ms))
                });
                let req = match decoded {
                    Some(Ok((req, leader_store_ms))) => {
                        node.hear_leader(&req.vote, leader_commit(&req), leader_store_ms, heard);
                        Some(req)
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "dropping a malformed append request from a peer");
                        None
                    }
                    None => None,
                };
                futures::future::ready(req)
            });
        let output = self
            .node
            .raft()
            .stream_append(Box::pin(input))
            .map(|item| match item {
                Ok(result) => Ok(stream_result_to_pb(&result)),
                Err(fatal) => Err(stopped(&fatal)),
            });
        Ok(Response::new(Box::pin(output)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let mut chunks = request.into_inner();
        let Some(pb::SnapshotChunk {
            part: Some(pb::snapshot_chunk::Part::Offer(offer)),
        }) = chunks.message().await?
        else {
            return Err(invalid("a snapshot stream must start with its offer"));
        };
        let vote = offer
            .vote
            .as_ref()
            .map(vote_from_pb)
            .ok_or_else(|| invalid("snapshot offer has no vote"))?;
        let meta = offer
            .meta
            .as_ref()
            .map(snapshot_meta_from_pb)
            .transpose()
            .map_err(|e| bad_message(&e))?
            .ok_or_else(|| invalid("snapshot offer has no meta"))?;
        if offer.size_bytes > MAX_SNAPSHOT_BYTES {
            return Err(ServiceError::TooLarge(format!(
                "snapshot of {} bytes exceeds the limit of {MAX_SNAPSHOT_BYTES}",
                offer.size_bytes
            ))
            .into());
        }

        let path = self.node.state().snapshots().temp_path("incoming");
        let received = receive(&mut chunks, &path, offer.size_bytes).await;
        let data = match received {
            Ok(data) => data,
            Err(status) => {
                let _ = std::fs::remove_file(&path);
                return Err(status);
            }
        };
        tracing::info!(bytes = offer.size_bytes, last_log_id = ?meta.last_log_id, "snapshot received");
        let resp = self
            .node
            .raft()
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: data,
                },
            )
            .await
            .map_err(|e| stopped(&e))?;
        Ok(Response::new(pb::InstallSnapshotResponse {
            vote: Some(vote_to_pb(&resp.vote)),
        }))
    }

    async fn handoff_leadership(
        &self,
        request: Request<pb::HandoffRequest>,
    ) -> Result<Response<pb::HandoffResponse>, Status> {
        let req = handoff_request_from_pb(request.get_ref()).map_err(|e| bad_message(&e))?;
        let resp = self
            .node
            .raft()
            .handle_transfer_leader(req)
            .await
            .map_err(|e| stopped(&e))?;
        Ok(Response::new(handoff_response_to_pb(&resp)))
    }
}

/// Write the data chunks to `path`, sync it, and check the size.
async fn receive(
    chunks: &mut Streaming<pb::SnapshotChunk>,
    path: &std::path::Path,
    expected: u64,
) -> Result<SnapshotData, Status> {
    let io = |e: std::io::Error| -> Status {
        ServiceError::Internal(format!("writing the received snapshot: {e}")).into()
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut written: u64 = 0;
    while let Some(chunk) = chunks.message().await? {
        match chunk.part {
            Some(pb::snapshot_chunk::Part::Data(bytes)) => {
                written += bytes.len() as u64;
                if written > expected {
                    return Err(invalid(&format!(
                        "snapshot is longer than the {expected} bytes offered"
                    )));
                }
                // Local disk writes of at most one chunk; short enough to do inline.
                file.write_all(&bytes).map_err(io)?;
            }
            _ => {
                return Err(invalid("only data may follow a snapshot offer"));
            }
        }
    }
    if written != expected {
        return Err(invalid(&format!(
            "snapshot stream ended after {written} of {expected} bytes"
        )));
    }
    let file = file.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_data().map_err(io)?;
    SnapshotData::open(path).map_err(io)
}

/// The commit index an append carries.
fn leader_commit(
    req: &openraft::raft::AppendEntriesRequest<crate::raft::TypeConfig>,
) -> Option<u64> {
    req.leader_commit.as_ref().map(openraft::LogId::index)
}
