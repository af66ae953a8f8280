//! The errors a node's services return. Each variant maps to exactly one gRPC code, in one
//! place (`grpc::status`), so that every RPC reports the same failure the same way.

use affinity_proto::ValidationError;

use crate::raft::NodeId;

/// Why a request was not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The request breaks a rule; nothing was changed. (INVALID_ARGUMENT)
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// This node is not the leader and the request could not be sent there. (UNAVAILABLE,
    /// with the leader's address in `affinity-leader` when known)
    #[error("{}", not_leader_message(*leader_id, leader_address.as_deref()))]
    NotLeader {
        /// The leader this node knows of.
        leader_id: Option<NodeId>,
        /// Its address.
        leader_address: Option<String>,
    },
    /// No quorum answered in time, the node is stopping, or a peer cannot be reached.
    /// (UNAVAILABLE)
    #[error("{0}")]
    Unavailable(String),
    /// The caller's deadline passed first. (DEADLINE_EXCEEDED)
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The request names something that does not exist (a node id). (NOT_FOUND)
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the cluster's state does not allow it now, for example a
    /// membership change while another is under way. (FAILED_PRECONDITION)
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request is larger than this node accepts. (RESOURCE_EXHAUSTED)
    #[error("{0}")]
    TooLarge(String),
    /// A configured limit would be passed (leases in total or per scope, watch streams);
    /// nothing was changed. (RESOURCE_EXHAUSTED)
    #[error("{0}")]
    LimitReached(String),
    /// The leader has more writes pending than it accepts; nothing was changed and the
    /// call may be retried after `retry_after_ms`. (UNAVAILABLE, with
    /// `grpc-retry-pushback-ms`)
    #[error("{message}")]
    Overloaded {
        /// What is full.
        message: String,
        /// When to try again.
        retry_after_ms: u64,
    },
    /// The request asks for history this node no longer has. (OUT_OF_RANGE)
    #[error("{0}")]
    OutOfRange(String),
    /// A stream could not keep up and was ended; the caller must start over. (ABORTED)
    #[error("{0}")]
    Aborted(String),
    /// A bug or a broken invariant; the message says what. (INTERNAL)
    #[error("{0}")]
    Internal(String),
}

fn not_leader_message(leader_id: Option<NodeId>, address: Option<&str>) -> String {
    match (leader_id, address) {
        (Some(id), Some(addr)) => format!("this node is not the leader; node {id} at {addr} is"),
        (Some(id), None) => format!("this node is not the leader; node {id} is, address unknown"),
        _ => "no leader is known right now (election in progress or no quorum); retry".into(),
    }
}
