//! # affinity-client
//!
//! What a gateway data plane links in to share sticky client-IP decisions with its peers.
//!
//! Today this crate re-exports the pieces a gateway needs to talk to the store with one
//! implementation of the rules shared with the server: [`Policy`] (including
//! [`Policy::from_session_persistence`] for a Gateway API `sessionPersistence` block),
//! [`ClientKey`] masking, request validation, and the generated gRPC client
//! [`pb::affinity_client::AffinityClient`]. The caching client with leader tracking,
//! request coalescing and fail-open fallback is built on these.

pub use affinity_proto::{
    ClientKey, Family, GatewayDuration, Masks, Policy, SessionPersistence, ValidationError, pb,
    request,
};
