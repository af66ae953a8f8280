//! The one mapping from the node's errors to gRPC statuses, and the metadata keys the
//! services use.

use affinity_proto::ValidationError;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::error::ServiceError;

/// Metadata key: the address of the leader, on UNAVAILABLE answers when it is known.
pub const LEADER_METADATA: &str = "affinity-leader";
/// Metadata key: the node id of that leader.
pub const LEADER_ID_METADATA: &str = "affinity-leader-id";
/// Metadata key: on a `Watch` answer, the newest revision published before the stream's live
/// part; a client that resumes from it (`start_revision`) misses no change.
pub const REVISION_METADATA: &str = "affinity-revision";
/// Metadata key: on an UNAVAILABLE answer to shed load, how many milliseconds to wait before
/// retrying (the key gRPC's own retry policy reads).
pub const RETRY_PUSHBACK_METADATA: &str = "grpc-retry-pushback-ms";
/// Metadata key: set by a node that forwards a request to the leader (one hop only).
pub const FORWARDED_METADATA: &str = "affinity-forwarded-by";

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::Invalid(_) => Status::invalid_argument(message),
            ServiceError::NotLeader {
                leader_id,
                leader_address,
            } => {
                let mut status = Status::unavailable(message);
                if let Some(address) = leader_address
                    && let Ok(value) = MetadataValue::try_from(address.as_str())
                {
                    status.metadata_mut().insert(LEADER_METADATA, value);
                }
                if let Some(id) = leader_id {
                    status
                        .metadata_mut()
                        .insert(LEADER_ID_METADATA, MetadataValue::from(id));
                }
                status
            }
            ServiceError::Unavailable(_) => Status::unavailable(message),
            ServiceError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            ServiceError::NotFound(_) => Status::not_found(message),
            ServiceError::FailedPrecondition(_) => Status::failed_precondition(message),
            ServiceError::TooLarge(_) | ServiceError::LimitReached(_) => {
                Status::resource_exhausted(message)
            }
            ServiceError::Overloaded { retry_after_ms, .. } => {
                let mut status = Status::unavailable(message);
                status
                    .metadata_mut()
                    .insert(RETRY_PUSHBACK_METADATA, MetadataValue::from(retry_after_ms));
                status
            }
            ServiceError::OutOfRange(_) => Status::out_of_range(message),
            ServiceError::Aborted(_) => Status::aborted(message),
            ServiceError::Internal(_) => Status::internal(message),
        }
    }
}

/// Bad input, straight to INVALID_ARGUMENT.
pub fn invalid(e: ValidationError) -> Status {
    ServiceError::Invalid(e).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_error_has_its_code() {
        let cases = [
            (
                ServiceError::Invalid(ValidationError::new(
                    "scope",
                    "must be 1..=256 bytes (got 0)",
                )),
                Code::InvalidArgument,
            ),
            (
                ServiceError::NotLeader {
                    leader_id: None,
                    leader_address: None,
                },
                Code::Unavailable,
            ),
            (ServiceError::Unavailable("x".into()), Code::Unavailable),
            (
                ServiceError::DeadlineExceeded("x".into()),
                Code::DeadlineExceeded,
            ),
            (ServiceError::NotFound("x".into()), Code::NotFound),
            (
                ServiceError::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (ServiceError::TooLarge("x".into()), Code::ResourceExhausted),
            (
                ServiceError::LimitReached("x".into()),
                Code::ResourceExhausted,
            ),
            (
                ServiceError::Overloaded {
                    message: "x".into(),
                    retry_after_ms: 5,
                },
                Code::Unavailable,
            ),
            (ServiceError::OutOfRange("x".into()), Code::OutOfRange),
            (ServiceError::Aborted("x".into()), Code::Aborted),
            (ServiceError::Internal("x".into()), Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn shed_load_carries_a_retry_hint() {
        let status = Status::from(ServiceError::Overloaded {
            message: "too many writes pending".into(),
            retry_after_ms: 50,
        });
        assert_eq!(
            status.metadata().get(RETRY_PUSHBACK_METADATA).unwrap(),
            "50"
        );
    }

    #[test]
    fn not_leader_carries_the_leader() {
        let status = Status::from(ServiceError::NotLeader {
            leader_id: Some(2),
            leader_address: Some("10.0.0.2:7400".into()),
        });
        assert_eq!(
            status.metadata().get(LEADER_METADATA).unwrap(),
            "10.0.0.2:7400"
        );
        assert_eq!(status.metadata().get(LEADER_ID_METADATA).unwrap(), "2");
        assert!(
            status.message().contains("node 2 at 10.0.0.2:7400"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn invalid_names_field_and_rule() {
        let status = invalid(ValidationError::new(
            "policy.ipv4_mask",
            "must be 0..=32 (got 40)",
        ));
        assert_eq!(
            status.message(),
            "invalid policy.ipv4_mask: must be 0..=32 (got 40)"
        );
    }
}
