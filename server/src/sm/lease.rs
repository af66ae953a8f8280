//! A lease as the state machine holds it, and its wire and snapshot forms.

use std::sync::Arc;

use affinity_proto::{ClientKey, ValidationError, pb};

/// One sticky decision: clients in `key` of `scope` go to `endpoint` until the lease ends.
///
/// Scope and endpoint strings are shared (`Arc<str>`) between every lease that names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Persistence domain.
    pub scope: Arc<str>,
    /// Masked client key.
    pub key: ClientKey,
    /// Backend endpoint.
    pub endpoint: Arc<str>,
    /// Creation time (state-machine clock, Unix ms).
    pub created_at_ms: i64,
    /// Absolute end (exclusive): `created_at_ms + absolute timeout`. Never moves.
    pub expires_at_ms: i64,
    /// Idle timeout, if the lease has one.
    pub idle_timeout_ms: Option<u64>,
    /// Last use (creation, or a Resolve or Touch of the live lease).
    pub last_used_ms: i64,
    /// Log index of the command that created or replaced the lease.
    pub revision: u64,
}

impl Lease {
    /// When the lease ends: its absolute expiry, or earlier when idle for too long.
    pub fn end_ms(&self) -> i64 {
        match self.idle_timeout_ms {
            Some(idle) => self
                .expires_at_ms
                .min(self.last_used_ms.saturating_add(clamp_ms(idle))),
            None => self.expires_at_ms,
        }
    }

    /// Whether the lease is still in force at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        now_ms < self.end_ms()
    }

    /// The client-facing form.
    pub fn to_pb(&self) -> pb::Lease {
        pb::Lease {
            scope: self.scope.to_string(),
            prefix: self.key.to_string(),
            endpoint: self.endpoint.to_string(),
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            revision: self.revision,
            idle_timeout_ms: self.idle_timeout_ms,
            last_used_ms: self.last_used_ms,
        }
    }

    /// The snapshot form.
    pub fn to_stored(&self) -> pb::StoredLease {
        pb::StoredLease {
            scope: self.scope.to_string(),
            prefix: Some(prefix_to_pb(&self.key)),
            endpoint: self.endpoint.to_string(),
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            revision: self.revision,
            idle_timeout_ms: self.idle_timeout_ms,
            last_used_ms: self.last_used_ms,
        }
    }
}

/// Milliseconds as a signed offset, saturating (timeouts are far below `i64::MAX` once
/// validated; this only guards arithmetic on decoded data).
pub(crate) fn clamp_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A key in its stored form.
pub fn prefix_to_pb(key: &ClientKey) -> pb::Prefix {
    pb::Prefix {
        addr: key.addr_bytes().to_vec(),
        len: u32::from(key.prefix_len()),
    }
}

/// A key from its stored form, checked (length, range, host bits).
pub fn prefix_from_pb(prefix: Option<&pb::Prefix>) -> Result<ClientKey, ValidationError> {
    let prefix = prefix.ok_or_else(|| ValidationError::new("prefix", "is missing"))?;
    ClientKey::from_parts(&prefix.addr, prefix.len)
}
