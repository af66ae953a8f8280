//! The gRPC services of a node, on top of [`crate::node`]:
//!
//! - `affinity.v1.Affinity` ([`affinity`]): leases, for gateways;
//! - `affinity.v1.Cluster` ([`cluster`]): status and membership, for operators;
//! - `affinity.v1.Raft` ([`peer`]): Raft traffic from the other nodes;
//! - `grpc.health.v1.Health` and server reflection (assembled in [`crate::server`]).
//!
//! Any node accepts any request. Writes and linearizable reads that need the leader are sent
//! on to it once (one hop, within the caller's deadline, marked with
//! `affinity-forwarded-by`), also by a leader that steps down while the call waits; a
//! forwarded request that reaches a node that is no longer the leader is answered
//! UNAVAILABLE with the leader hint instead of hopping again. Writes are named (a request
//! id, given by the caller or by the node that first received them) before they are
//! proposed or forwarded, so a forward after an unknown outcome applies them at most once.
//! Errors are mapped to statuses in one place ([`status`]).

pub mod affinity;
pub mod call;
pub mod cluster;
pub mod peer;
pub mod status;
mod watch;

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use self::call::Call;
use self::status::FORWARDED_METADATA;
use crate::error::ServiceError;
use crate::metrics::{Metrics, Rpc};
use crate::network::Peers;
use crate::node::{Budget, Node};
use crate::sm::{Op, Outcome};

/// Largest request a client or operator may send.
pub const CLIENT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// What every service needs.
pub struct Ctx {
    /// The node.
    pub node: Arc<Node>,
    /// Channels to other nodes (forwarding).
    pub peers: Peers,
    /// Service metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the node starts stopping (ends Watch streams).
    pub shutdown: CancellationToken,
}

impl Ctx {
    /// A copy of `wire` to forward with should the call need the leader and this node not
    /// be it, now or by the time it is served: a leader that steps down while the call
    /// waits sends it on to the new leader. A call another node forwarded here is not
    /// forwarded again, so it needs no copy.
    pub fn spare<Req: Clone>(&self, call: &Call, wire: &Req) -> Option<Req> {
        (!call.forwarded()).then(|| wire.clone())
    }

    /// Propose `op` here if this node leads; otherwise send `wire` to the leader.
    pub async fn propose_or_forward<Req, Resp, Fwd, Fut>(
        &self,
        call: &Call,
        op: Op,
        wire: impl FnOnce() -> Option<Req>,
        answer: impl FnOnce(Outcome) -> Result<Resp, ServiceError>,
        forward: Fwd,
    ) -> Result<Resp, Status>
    where
        Fwd: FnOnce(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let budget = call.budget(self.node.proposal_timeout());
        let work = async { answer(self.node.propose(op, budget).await?) };
        self.here_or_leader(call, budget, wire, work, forward).await
    }

    /// Read linearizably here if this node leads; otherwise send `wire` to the leader.
    pub async fn read_or_forward<Req, Resp, Fwd, Fut>(
        &self,
        call: &Call,
        wire: impl FnOnce() -> Option<Req>,
        read: impl FnOnce() -> Result<Resp, ServiceError>,
        forward: Fwd,
    ) -> Result<Resp, Status>
    where
        Fwd: FnOnce(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let budget = call.budget(self.node.proposal_timeout());
        let work = async {
            self.node.linearize(budget).await?;
            read()
        };
        self.here_or_leader(call, budget, wire, work, forward).await
    }

    /// Do `work` here; if it needs the leader and this node is not it (or stopped being it
    /// while the call waited), send `wire` there instead, within the call's budget: to the
    /// leader the error names, else to the one this node learns of before the budget ends.
    /// `wire` makes the request to send, only when one is sent. A call that was itself
    /// forwarded, or has no `wire` to send, gets the error.
    pub async fn here_or_leader<Req, Resp, Fwd, Fut>(
        &self,
        call: &Call,
        budget: Budget,
        wire: impl FnOnce() -> Option<Req>,
        work: impl Future<Output = Result<Resp, ServiceError>>,
        forward: Fwd,
    ) -> Result<Resp, Status>
    where
        Fwd: FnOnce(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let (leader_id, leader_address) = match work.await {
            Ok(resp) => return Ok(resp),
            Err(ServiceError::NotLeader {
                leader_id,
                leader_address,
            }) => (leader_id, leader_address),
            Err(e) => return Err(e.into()),
        };
        let not_leader = |leader_id, leader_address| {
            Status::from(ServiceError::NotLeader {
                leader_id,
                leader_address,
            })
        };
        let Some(wire) = (!call.forwarded()).then(wire).flatten() else {
            return Err(not_leader(leader_id, leader_address));
        };
        let (leader_id, address) = match leader_address {
            Some(address) => (leader_id, address),
            // Just deposed, or in an election: wait for the next leader.
            None => match self.node.await_leader(budget).await {
                Some((id, address)) => (Some(id), address),
                None => return Err(not_leader(None, None)),
            },
        };
        // Peers reach the leader at its peer address, which may differ from the client
        // address named in hints.
        let peer_address = leader_id
            .and_then(|id| self.node.member(id))
            .and_then(|n| n.peer_addr)
            .unwrap_or_else(|| address.clone());
        let leader = Leader {
            id: leader_id,
            address: &address,
            peer_address: &peer_address,
        };
        // Boxed: the forwarding future is large and rarely needed, and kept inline it
        // would be copied around with every call's future.
        Box::pin(self.forward(call, budget, leader, wire, forward)).await
    }

    /// Send a request to the leader, once, with what is left of the budget.
    async fn forward<Req, Resp, Fwd, Fut>(
        &self,
        call: &Call,
        budget: Budget,
        leader: Leader<'_>,
        wire: Req,
        forward: Fwd,
    ) -> Result<Resp, Status>
    where
        Fwd: FnOnce(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let unreachable = |detail: &str| -> Status {
            ServiceError::NotLeader {
                leader_id: leader.id,
                leader_address: Some(leader.address.to_string()),
            }
            .into_unreachable(detail)
        };
        let channel = self
            .peers
            .channel(leader.peer_address)
            .map_err(|e| unreachable(&e.to_string()))?;
        let mut request = tonic::Request::new(wire);
        request.set_timeout(call.remaining(budget));
        request
            .metadata_mut()
            .insert(FORWARDED_METADATA, MetadataValue::from(self.node.id()));
        self.metrics
            .forwarded
            .get_or_create(&Rpc { rpc: call.rpc() })
            .inc();
        match tokio::time::timeout_at(budget.until, forward(channel, request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // The leader's own answer (including its errors) goes back as it is.
            Ok(Err(status))
                if status.code() != tonic::Code::Unavailable
                    || status.metadata().get(status::LEADER_METADATA).is_some() =>
            {
                Err(status)
            }
            Ok(Err(status)) => Err(unreachable(status.message())),
            Err(_) if budget.caller_limited => Err(ServiceError::DeadlineExceeded(format!(
                "the caller's deadline passed while waiting for the leader at {}",
                leader.peer_address
            ))
            .into()),
            Err(_) => Err(unreachable("no answer in time")),
        }
    }
}

/// The leader a call is forwarded to: clients know it at `address`, peers at
/// `peer_address` (the same unless it serves peers on a port of their own).
struct Leader<'a> {
    id: Option<crate::raft::NodeId>,
    address: &'a str,
    peer_address: &'a str,
}

impl ServiceError {
    /// A NotLeader error whose leader could not be reached, with the reason.
    fn into_unreachable(self, detail: &str) -> Status {
        let mut status = Status::from(self);
        let message = format!("{}; forwarding there failed: {detail}", status.message());
        let metadata = std::mem::take(status.metadata_mut());
        Status::with_metadata(tonic::Code::Unavailable, message, metadata)
    }
}
