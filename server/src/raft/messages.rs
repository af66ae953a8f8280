//! Conversions between openraft's RPC messages and the `affinity.v1.Raft` protobuf messages.
//!
//! Used by both sides of peer traffic: the network client ([`crate::network`]) and the peer
//! service ([`crate::grpc`]). Decoding never panics; a malformed message is a [`CodecError`].

use affinity_proto::pb;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult,
    TransferLeaderRequest, VoteRequest, VoteResponse,
};
use openraft::raft::{TransferLeaderError, TransferLeaderResponse};

use super::codec::{
    CodecError, entry_from_pb, entry_to_pb, log_id_from_pb, log_id_to_pb, opt_log_id_from_pb,
    vote_from_pb, vote_to_pb,
};
use super::{TypeConfig, Vote};

fn required_vote(vote: Option<&pb::Vote>, what: &'static str) -> Result<Vote, CodecError> {
    vote.map(vote_from_pb)
        .ok_or_else(|| CodecError::missing(what, "vote"))
}

/// An append request, for the wire.
pub fn append_request_to_pb(
    req: &AppendEntriesRequest<TypeConfig>,
    leader_store_ms: i64,
) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&req.vote)),
        prev_log_id: req.prev_log_id.as_ref().map(log_id_to_pb),
        entries: req.entries.iter().map(entry_to_pb).collect(),
        leader_commit: req.leader_commit.as_ref().map(log_id_to_pb),
        leader_store_ms,
    }
}

/// An append request, from the wire.
pub fn append_request_from_pb(
    req: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, CodecError> {
    Ok(AppendEntriesRequest {
        vote: required_vote(req.vote.as_ref(), "append request")?,
        prev_log_id: opt_log_id_from_pb(req.prev_log_id.as_ref()),
        entries: req
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<_, _>>()?,
        leader_commit: opt_log_id_from_pb(req.leader_commit.as_ref()),
    })
}

/// An append response, for the wire.
pub fn append_response_to_pb(
    resp: &AppendEntriesResponse<TypeConfig>,
) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Result as R;
    let (result, partial_none) = match resp {
        AppendEntriesResponse::Success => (R::Success(pb::Blank {}), false),
        AppendEntriesResponse::PartialSuccess(Some(id)) => {
            (R::PartialSuccess(log_id_to_pb(id)), false)
        }
        AppendEntriesResponse::PartialSuccess(None) => {
            (R::PartialSuccess(pb::LogId::default()), true)
        }
        AppendEntriesResponse::Conflict => (R::Conflict(pb::Blank {}), false),
        AppendEntriesResponse::HigherVote(v) => (R::HigherVote(vote_to_pb(v)), false),
    };
    pb::AppendEntriesResponse {
        result: Some(result),
        partial_none,
    }
}

/// An append response, from the wire.
pub fn append_response_from_pb(
    resp: pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<TypeConfig>, CodecError> {
    use pb::append_entries_response::Result as R;
    Ok(match resp.result {
        Some(R::Success(_)) => AppendEntriesResponse::Success,
        Some(R::PartialSuccess(_)) if resp.partial_none => {
            AppendEntriesResponse::PartialSuccess(None)
        }
        Some(R::PartialSuccess(id)) => {
            AppendEntriesResponse::PartialSuccess(Some(log_id_from_pb(&id)))
        }
        Some(R::Conflict(_)) => AppendEntriesResponse::Conflict,
        Some(R::HigherVote(v)) => AppendEntriesResponse::HigherVote(vote_from_pb(&v)),
        None => return Err(CodecError::missing("append response", "result")),
    })
}

/// One result of a streamed append, for the wire.
pub fn stream_result_to_pb(result: &StreamAppendResult<TypeConfig>) -> pb::StreamAppendResponse {
    use pb::stream_append_response::Result as R;
    let result = match result {
        Ok(id) => R::Success(pb::LogIdOrNone {
            log_id: id.as_ref().map(log_id_to_pb),
        }),
        Err(StreamAppendError::Conflict(id)) => R::Conflict(log_id_to_pb(id)),
        Err(StreamAppendError::HigherVote(v)) => R::HigherVote(vote_to_pb(v)),
    };
    pb::StreamAppendResponse {
        result: Some(result),
    }
}

/// One result of a streamed append, from the wire.
pub fn stream_result_from_pb(
    resp: pb::StreamAppendResponse,
) -> Result<StreamAppendResult<TypeConfig>, CodecError> {
    use pb::stream_append_response::Result as R;
    Ok(match resp.result {
        Some(R::Success(s)) => Ok(opt_log_id_from_pb(s.log_id.as_ref())),
        Some(R::Conflict(id)) => Err(StreamAppendError::Conflict(log_id_from_pb(&id))),
        Some(R::HigherVote(v)) => Err(StreamAppendError::HigherVote(vote_from_pb(&v))),
        None => return Err(CodecError::missing("stream append response", "result")),
    })
}

/// A vote (or pre-vote) request, for the wire.
pub fn vote_request_to_pb(req: &VoteRequest<TypeConfig>, pre_vote: bool) -> pb::RaftVoteRequest {
    pb::RaftVoteRequest {
        vote: Some(vote_to_pb(&req.vote)),
        last_log_id: req.last_log_id.as_ref().map(log_id_to_pb),
        leadership_transfer: req.leadership_transfer,
        pre_vote,
    }
}

/// A vote request from the wire, and whether it is a pre-vote.
pub fn vote_request_from_pb(
    req: &pb::RaftVoteRequest,
) -> Result<(VoteRequest<TypeConfig>, bool), CodecError> {
    Ok((
        VoteRequest {
            vote: required_vote(req.vote.as_ref(), "vote request")?,
            last_log_id: opt_log_id_from_pb(req.last_log_id.as_ref()),
            leadership_transfer: req.leadership_transfer,
        },
        req.pre_vote,
    ))
}

/// A vote response, for the wire.
pub fn vote_response_to_pb(resp: &VoteResponse<TypeConfig>) -> pb::RaftVoteResponse {
    pb::RaftVoteResponse {
        vote: Some(vote_to_pb(&resp.vote)),
        vote_granted: resp.vote_granted,
        last_log_id: resp.last_log_id.as_ref().map(log_id_to_pb),
    }
}

/// A vote response, from the wire.
pub fn vote_response_from_pb(
    resp: &pb::RaftVoteResponse,
) -> Result<VoteResponse<TypeConfig>, CodecError> {
    Ok(VoteResponse::new(
        required_vote(resp.vote.as_ref(), "vote response")?,
        opt_log_id_from_pb(resp.last_log_id.as_ref()),
        resp.vote_granted,
    ))
}

/// A leadership handoff request, for the wire.
pub fn handoff_request_to_pb(req: &TransferLeaderRequest<TypeConfig>) -> pb::HandoffRequest {
    pb::HandoffRequest {
        from_leader: Some(vote_to_pb(req.from_leader())),
        to_node_id: *req.to_node_id(),
        last_log_id: req.last_log_id().map(log_id_to_pb),
    }
}

/// A leadership handoff request, from the wire.
pub fn handoff_request_from_pb(
    req: &pb::HandoffRequest,
) -> Result<TransferLeaderRequest<TypeConfig>, CodecError> {
    Ok(TransferLeaderRequest::new(
        required_vote(req.from_leader.as_ref(), "handoff request")?,
        req.to_node_id,
        opt_log_id_from_pb(req.last_log_id.as_ref()),
    ))
}

/// A leadership handoff answer, for the wire.
pub fn handoff_response_to_pb(resp: &TransferLeaderResponse<TypeConfig>) -> pb::HandoffResponse {
    use pb::handoff_response::Result as R;
    let result = match resp {
        Ok(()) => R::Ok(pb::Blank {}),
        Err(TransferLeaderError::VoteChanged { expected, actual }) => {
            R::VoteChanged(pb::VoteMismatch {
                expected: Some(vote_to_pb(expected)),
                actual: Some(vote_to_pb(actual)),
            })
        }
        Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
            R::LogNotFlushed(pb::LogMismatch {
                expected: expected.as_ref().map(log_id_to_pb),
                actual: actual.as_ref().map(log_id_to_pb),
            })
        }
    };
    pb::HandoffResponse {
        result: Some(result),
    }
}

/// A leadership handoff answer, from the wire.
pub fn handoff_response_from_pb(
    resp: &pb::HandoffResponse,
) -> Result<TransferLeaderResponse<TypeConfig>, CodecError> {
    use pb::handoff_response::Result as R;
    match &resp.result {
        Some(R::Ok(_)) => Ok(Ok(())),
        Some(R::VoteChanged(m)) => Ok(Err(TransferLeaderError::VoteChanged {
            expected: required_vote(m.expected.as_ref(), "handoff response")?,
            actual: required_vote(m.actual.as_ref(), "handoff response")?,
        })),
        Some(R::LogNotFlushed(m)) => Ok(Err(TransferLeaderError::LogNotFlushed {
            expected: opt_log_id_from_pb(m.expected.as_ref()),
            actual: opt_log_id_from_pb(m.actual.as_ref()),
        })),
        None => Err(CodecError::missing("handoff response", "result")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::LogId;

    #[test]
    fn append_responses_round_trip() {
        for resp in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::PartialSuccess(Some(LogId::new_term_index(2, 9))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new_committed(5, 3)),
        ] {
            assert_eq!(
                append_response_from_pb(append_response_to_pb(&resp)).unwrap(),
                resp
            );
        }
    }

    #[test]
    fn stream_results_round_trip() {
        let cases: [StreamAppendResult<TypeConfig>; 4] = [
            Ok(None),
            Ok(Some(LogId::new_term_index(1, 4))),
            Err(StreamAppendError::Conflict(LogId::new_term_index(1, 2))),
            Err(StreamAppendError::HigherVote(Vote::new(7, 1))),
        ];
        for result in cases {
            assert_eq!(
                stream_result_from_pb(stream_result_to_pb(&result)).unwrap(),
                result
            );
        }
    }

    #[test]
    fn votes_and_handoffs_round_trip() {
        let req = VoteRequest::<TypeConfig> {
            vote: Vote::new(4, 2),
            last_log_id: Some(LogId::new_term_index(3, 17)),
            leadership_transfer: true,
        };
        let (back, pre) = vote_request_from_pb(&vote_request_to_pb(&req, true)).unwrap();
        assert_eq!((back, pre), (req, true));
        let resp = VoteResponse::<TypeConfig>::new(Vote::new_committed(4, 2), None, false);
        assert_eq!(
            vote_response_from_pb(&vote_response_to_pb(&resp)).unwrap(),
            resp
        );

        let handoff = TransferLeaderRequest::<TypeConfig>::new(Vote::new_committed(4, 2), 3, None);
        assert_eq!(
            handoff_request_from_pb(&handoff_request_to_pb(&handoff)).unwrap(),
            handoff
        );
        let refused: TransferLeaderResponse<TypeConfig> = Err(TransferLeaderError::LogNotFlushed {
            expected: Some(LogId::new_term_index(4, 10)),
            actual: None,
        });
        assert_eq!(
            handoff_response_from_pb(&handoff_response_to_pb(&refused)).unwrap(),
            refused
        );
    }

    #[test]
    fn missing_parts_are_errors() {
        assert!(append_request_from_pb(pb::AppendEntriesRequest::default()).is_err());
        assert!(append_response_from_pb(pb::AppendEntriesResponse::default()).is_err());
        assert!(vote_request_from_pb(&pb::RaftVoteRequest::default()).is_err());
        assert!(handoff_response_from_pb(&pb::HandoffResponse::default()).is_err());
    }
}
