//! One peer as openraft sees it: its RPCs as `affinity.v1.Raft` calls.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use affinity_proto::pb;
use affinity_proto::pb::raft_client::RaftClient;
use futures::{StreamExt, TryStreamExt};
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tokio_util::io::ReaderStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{Handoff, LeaderTime, PEER_MAX_MESSAGE_BYTES, Peers};
use crate::raft::codec::{CodecError, snapshot_meta_to_pb, vote_from_pb, vote_to_pb};
use crate::raft::messages::{
    append_request_to_pb, append_response_from_pb, handoff_request_to_pb, handoff_response_from_pb,
    stream_result_from_pb, vote_request_to_pb, vote_response_from_pb,
};
use crate::raft::{NodeId, Snapshot, TypeConfig, Vote};
use crate::store::SnapshotData;

/// Snapshot bytes per streamed message.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// openraft's handle on one peer.
pub struct PeerConnection {
    id: NodeId,
    target: NodeId,
    address: String,
    peers: Peers,
    /// Where handoffs this node starts are recorded.
    handoff: Handoff,
    /// The store time its appends carry.
    time: Arc<dyn LeaderTime>,
    /// The client, and the generation of [`Peers`] channels it was made from.
    client: Option<(RaftClient<Channel>, u64)>,
}

type Result<T, E = RPCError<TypeConfig>> = std::result::Result<T, E>;

impl PeerConnection {
    pub(super) fn new(
        id: NodeId,
        target: NodeId,
        address: String,
        peers: Peers,
        handoff: Handoff,
        time: Arc<dyn LeaderTime>,
    ) -> Self {
        Self {
            id,
            target,
            address,
            peers,
            handoff,
            time,
            client: None,
        }
    }

    fn client(&mut self) -> Result<RaftClient<Channel>> {
        let generation = self.peers.generation();
        if let Some((client, made)) = &self.client
            && *made == generation
        {
            return Ok(client.clone());
        }
        let channel = self
            .peers
            .channel(&self.address)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let client = RaftClient::new(channel)
            .max_decoding_message_size(PEER_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(PEER_MAX_MESSAGE_BYTES);
        self.client = Some((client.clone(), generation));
        Ok(client)
    }

    fn timeout(&self, action: RPCTypes, timeout: Duration) -> RPCError<TypeConfig> {
        RPCError::Timeout(Timeout {
            action,
            id: self.id,
            target: self.target,
            timeout,
        })
    }

    /// Run one unary call with openraft's deadline.
    async fn unary<T>(
        &self,
        action: RPCTypes,
        option: &RPCOption,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(option.hard_ttl(), call).await {
            Err(_) => Err(self.timeout(action, option.hard_ttl())),
            Ok(Err(status)) => Err(status_error(&status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }
}

/// Turns each streamed append into its wire form, stamped with the leader's store time.
fn stamped(
    time: Arc<dyn LeaderTime>,
) -> impl FnMut(AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest + Send + 'static {
    move |req| {
        let now = time.store_ms(req.vote.leader_id.term);
        append_request_to_pb(&req, now)
    }
}

fn request<T>(message: T, option: &RPCOption) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(option.hard_ttl());
    request
}

/// A failed call: transport trouble makes the peer "unreachable" (openraft backs off),
/// anything else is a network error.
fn status_error(status: &Status) -> RPCError<TypeConfig> {
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(status))
        }
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

fn decode_error(e: &CodecError) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(e))
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>> {
        let mut client = self.client()?;
        let now = self.time.store_ms(rpc.vote.leader_id.term);
        let req = request(append_request_to_pb(&rpc, now), &option);
        let resp = self
            .unary(RPCTypes::AppendEntries, &option, client.append_entries(req))
            .await?;
        append_response_from_pb(resp).map_err(|e| decode_error(&e))
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> openraft::base::BoxFuture<
        's,
        Result<openraft::base::BoxStream<'s, Result<StreamAppendResult<TypeConfig>>>>,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let mut client = self.client()?;
            let outbound = input.map(stamped(Arc::clone(&self.time)));
            let inbound = client
                .stream_append(tonic::Request::new(outbound))
                .await
                .map_err(|s| status_error(&s))?
                .into_inner();
            let results = inbound
                .map_err(|s| status_error(&s))
                .and_then(|resp| async move {
                    stream_result_from_pb(resp).map_err(|e| decode_error(&e))
                });
            let boxed: openraft::base::BoxStream<'s, _> = Box::pin(results);
            Ok(boxed)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>> {
        let mut client = self.client()?;
        let req = request(vote_request_to_pb(&rpc, false), &option);
        let resp = self
            .unary(RPCTypes::Vote, &option, client.vote(req))
            .await?;
        vote_response_from_pb(&resp).map_err(|e| decode_error(&e))
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>> {
        let mut client = self.client()?;
        let req = request(vote_request_to_pb(&rpc, true), &option);
        let resp = self
            .unary(RPCTypes::Vote, &option, client.vote(req))
            .await?;
        vote_response_from_pb(&resp).map_err(|e| decode_error(&e))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let size_bytes = snapshot.snapshot.len();
        let offer = pb::SnapshotChunk {
            part: Some(pb::snapshot_chunk::Part::Offer(pb::SnapshotOffer {
                vote: Some(vote_to_pb(&vote)),
                meta: Some(snapshot_meta_to_pb(&snapshot.meta)),
                size_bytes,
            })),
        };
        let file = snapshot
            .snapshot
            .reader()
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let data =
            ReaderStream::with_capacity(tokio::fs::File::from_std(file), SNAPSHOT_CHUNK_BYTES)
                // A read error ends the stream early; the receiver then refuses the short snapshot.
                .take_while(|chunk| futures::future::ready(chunk.is_ok()))
                .filter_map(|chunk| async move {
                    chunk.ok().map(|bytes| pb::SnapshotChunk {
                        part: Some(pb::snapshot_chunk::Part::Data(bytes.to_vec())),
                    })
                });
        let outbound = futures::stream::once(async move { offer }).chain(data);
        tracing::info!(target = self.target, bytes = size_bytes, "sending snapshot");
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            resp = client.install_snapshot(tonic::Request::new(outbound)) => {
                let resp = resp.map_err(|s| StreamingError::from(status_error(&s)))?.into_inner();
                let vote = resp.vote.as_ref().map(vote_from_pb).ok_or_else(|| {
                    StreamingError::Network(NetworkError::new(&CodecError::missing("snapshot response", "vote")))
                })?;
                Ok(SnapshotResponse::new(vote))
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>> {
        // Before anything leaves: the target may be leader as soon as it has this message.
        self.handoff.begin(req.from_leader().leader_id.term);
        let mut client = self.client()?;
        let wire = request(handoff_request_to_pb(&req), &option);
        let resp = self
            .unary(
                RPCTypes::TransferLeader,
                &option,
                client.handoff_leadership(wire),
            )
            .await?;
        handoff_response_from_pb(&resp).map_err(|e| decode_error(&e))
    }
}
