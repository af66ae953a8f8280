//! # affinity-proto
//!
//! The wire protocol of the affinity store and the domain rules that the server and the client
//! must apply identically. It depends on no other crate of this workspace.
//!
//! ## Layout
//!
//! - [`pb`]: generated prost messages and tonic stubs for package `affinity.v1`
//!   (`Affinity` for clients, `Cluster` for operators, `Raft` between nodes, and the on-disk
//!   records), plus [`pb::FILE_DESCRIPTOR_SET`] for gRPC reflection.
//! - [`key`]: client IP parsing, canonicalization (IPv4-mapped IPv6 is IPv4) and masking into
//!   a [`ClientKey`], the compact key every lease is stored under.
//! - [`policy`]: [`Policy`], masks and timeouts, always valid once built.
//! - [`duration`]: [`GatewayDuration`], Gateway API durations (GEP-2257).
//! - [`gateway`]: [`SessionPersistence`], the Gateway API `sessionPersistence` block, and
//!   [`Policy::from_session_persistence`].
//! - [`request`]: checked forms of every `Affinity` request.
//! - [`error`]: [`ValidationError`], the one error of this crate: the field and the rule.
//! - [`status`]: the canonical names of gRPC codes, for metrics and messages.
//!
//! ## Example
//!
//! ```
//! use affinity_proto::{ClientKey, Policy, SessionPersistence};
//!
//! let block: SessionPersistence = serde_json::from_str(
//!     r#"{"type": "ClientIP", "absoluteTimeout": "30m", "ipMask": 24}"#,
//! )?;
//! let policy = Policy::from_session_persistence(&block)?;
//! let key = ClientKey::parse_ip("::ffff:203.0.113.77", policy.masks())?;
//! assert_eq!(key.to_string(), "203.0.113.0/24");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod duration;
pub mod error;
pub mod gateway;
pub mod key;
pub mod policy;
pub mod request;
pub mod status;

pub use duration::{DurationError, GatewayDuration};
pub use error::ValidationError;
pub use gateway::SessionPersistence;
pub use key::{ClientKey, Family, Masks};
pub use policy::Policy;
pub use status::code_name;

/// Generated protobuf messages and gRPC stubs of package `affinity.v1`.
#[allow(
    missing_docs,
    clippy::pedantic,
    clippy::doc_markdown,
    clippy::derive_partial_eq_without_eq,
    clippy::large_enum_variant,
    unused_qualifications
)]
pub mod pb {
    tonic::include_proto!("affinity.v1");

    /// Encoded `FileDescriptorSet` of every affinity `.proto` file, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/affinity_descriptor.bin"));
}
