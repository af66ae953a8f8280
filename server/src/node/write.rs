//! Proposing: a command stamped by the leader, through the batcher, into the log.

use openraft::errors::{ClientWriteError, RaftError};

use crate::error::ServiceError;
use crate::raft::TypeConfig;
use crate::sm::{Command, Op, Outcome};

use super::{Budget, Node, SHED_RETRY_AFTER_MS};

impl Node {
    /// Propose `op`, stamped with this node's clock, and wait for it to be applied. Client
    /// writes go through the batcher (and may share a log entry); the rest go alone.
    pub async fn propose(&self, op: Op, budget: Budget) -> Result<Outcome, ServiceError> {
        if op.batchable() {
            let written = tokio::time::timeout_at(budget.until, self.batcher.propose(op)).await;
            return match written {
                Err(_) => Err(budget.expired("the write")),
                Ok(Err(full)) => Err(ServiceError::Overloaded {
                    message: format!(
                        "the leader has {} client writes pending (max-pending-writes); nothing was written, retry shortly",
                        full.max_pending
                    ),
                    retry_after_ms: SHED_RETRY_AFTER_MS,
                }),
                Ok(Ok(None)) => Err(ServiceError::Unavailable(
                    "this node is shutting down".into(),
                )),
                Ok(Ok(Some(Ok(outcome)))) => Ok(outcome),
                Ok(Ok(Some(Err(e)))) => Err(self.write_error(e)),
            };
        }
        let command = Command {
            stamp_ms: self.stamps.now(),
            op,
        };
        let written = tokio::time::timeout_at(budget.until, self.raft.client_write(command)).await;
        match written {
            Err(_) => Err(budget.expired("the write")),
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(e)) => Err(self.write_error(e)),
        }
    }

    pub(super) fn write_error(
        &self,
        e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> ServiceError {
        match e {
            // Discarded: this node lost the lead with the write in its log, and another node
            // may yet commit it. Writes are named (a request id), so sending it on to the
            // leader applies it at most once.
            RaftError::APIError(
                ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f),
            ) => self.not_leader(f.leader_id, f.leader_node),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ServiceError::FailedPrecondition(e.to_string())
            }
            RaftError::APIError(ClientWriteError::PreconditionFailed(e)) => {
                ServiceError::FailedPrecondition(e.to_string())
            }
            RaftError::Fatal(f) => {
                ServiceError::Unavailable(format!("this node's raft has stopped: {f}"))
            }
        }
    }
}
