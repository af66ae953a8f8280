//! The one error type of the client.

use affinity_proto::ValidationError;

/// Why a call did not return a decision. New kinds may be added: match with a wildcard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request breaks a rule (checked locally before sending, or by the store); retrying
    /// it unchanged cannot help.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// No node could answer before the deadline (no quorum, no leader, network down). With
    /// `FailMode::Open`, `resolve` answers with a fallback decision instead.
    #[error("the affinity store is unavailable: {message}")]
    Unavailable {
        /// The last reason seen.
        message: String,
    },
    /// The store answered with an error the client does not retry.
    #[error("the affinity store refused the request ({}): {message}", affinity_proto::code_name(*.code))]
    Refused {
        /// The store's gRPC status code (its name: `affinity_proto::code_name`).
        code: tonic::Code,
        /// The store's message.
        message: String,
    },
    /// The client was configured wrongly.
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// Whether a fallback decision may stand in for this failure (the store could not be
    /// reached, as opposed to refusing the request).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClientError::Unavailable { .. })
    }
}
