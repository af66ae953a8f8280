//! Persistence policy: masks that turn a client IP into a key, and how long a lease lives.
//!
//! A [`Policy`] is always valid once built: masks in range for their family, an absolute
//! timeout of 1 ms ..= 30 days, and an idle timeout, when set, of 1 ms ..= the absolute
//! timeout. The wire form is [`pb::Policy`]; unset masks mean 32 (IPv4) and 128 (IPv6).

use std::net::IpAddr;
use std::time::Duration;

use crate::error::ValidationError;
use crate::key::{ClientKey, Masks};
use crate::pb;

/// Longest absolute timeout a lease may have: 30 days.
pub const MAX_ABSOLUTE_TIMEOUT_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// How client IPs are keyed and how long a decision lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    masks: Masks,
    absolute_timeout_ms: u64,
    idle_timeout_ms: Option<u64>,
}

impl Policy {
    /// A policy with one address per key (/32, /128) and the given absolute timeout.
    pub fn new(absolute_timeout: Duration) -> Result<Self, ValidationError> {
        let ms = u64::try_from(absolute_timeout.as_millis()).unwrap_or(u64::MAX);
        Self::from_millis(Masks::default(), ms, None)
    }

    /// A policy from its parts, checked.
    pub fn from_millis(
        masks: Masks,
        absolute_timeout_ms: u64,
        idle_timeout_ms: Option<u64>,
    ) -> Result<Self, ValidationError> {
        check_timeouts(absolute_timeout_ms, idle_timeout_ms)?;
        Ok(Self {
            masks,
            absolute_timeout_ms,
            idle_timeout_ms,
        })
    }

    /// The same policy with other masks.
    #[must_use]
    pub fn with_masks(self, masks: Masks) -> Self {
        Self { masks, ..self }
    }

    /// The same policy with an idle timeout (at most the absolute timeout).
    pub fn with_idle_timeout(self, idle: Duration) -> Result<Self, ValidationError> {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        Self::from_millis(self.masks, self.absolute_timeout_ms, Some(ms))
    }

    /// Prefix lengths per family.
    pub const fn masks(&self) -> Masks {
        self.masks
    }

    /// Absolute lifetime of a lease, in ms.
    pub const fn absolute_timeout_ms(&self) -> u64 {
        self.absolute_timeout_ms
    }

    /// Idle timeout, in ms, if any.
    pub const fn idle_timeout_ms(&self) -> Option<u64> {
        self.idle_timeout_ms
    }

    /// The key of a client address under this policy.
    pub fn key(&self, ip: IpAddr) -> ClientKey {
        ClientKey::new(ip, self.masks)
    }

    /// Check a wire policy. Errors name the field relative to the policy (`ipv4_mask`,
    /// `absolute_timeout_ms`, ...); use [`ValidationError::within`] to prefix it.
    pub fn from_pb(wire: &pb::Policy) -> Result<Self, ValidationError> {
        let masks = masks_from_pb(wire)?;
        Self::from_millis(masks, wire.absolute_timeout_ms, wire.idle_timeout_ms)
    }

    /// The wire form, with every field set explicitly.
    pub fn to_pb(&self) -> pb::Policy {
        pb::Policy {
            ipv4_mask: Some(u32::from(self.masks.ipv4())),
            ipv6_mask: Some(u32::from(self.masks.ipv6())),
            absolute_timeout_ms: self.absolute_timeout_ms,
            idle_timeout_ms: self.idle_timeout_ms,
        }
    }
}

/// Only the masks of a wire policy (for calls that do not create leases: Lookup, Release).
pub fn masks_from_pb(wire: &pb::Policy) -> Result<Masks, ValidationError> {
    Masks::new(wire.ipv4_mask.unwrap_or(32), wire.ipv6_mask.unwrap_or(128))
}

fn check_timeouts(absolute_ms: u64, idle_ms: Option<u64>) -> Result<(), ValidationError> {
    if !(1..=MAX_ABSOLUTE_TIMEOUT_MS).contains(&absolute_ms) {
        return Err(ValidationError::new(
            "absolute_timeout_ms",
            format!("must be 1 ms ..= 30 days ({MAX_ABSOLUTE_TIMEOUT_MS} ms) (got {absolute_ms})"),
        ));
    }
    if let Some(idle) = idle_ms
        && !(1..=absolute_ms).contains(&idle)
    {
        return Err(ValidationError::new(
            "idle_timeout_ms",
            format!(
                "must be 1 ms ..= absolute_timeout_ms ({absolute_ms} ms) when set (got {idle})"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(v4: Option<u32>, v6: Option<u32>, abs: u64, idle: Option<u64>) -> pb::Policy {
        pb::Policy {
            ipv4_mask: v4,
            ipv6_mask: v6,
            absolute_timeout_ms: abs,
            idle_timeout_ms: idle,
        }
    }

    #[test]
    fn unset_masks_mean_one_address() {
        let p = Policy::from_pb(&wire(None, None, 1000, None)).unwrap();
        assert_eq!(p.masks(), Masks::new(32, 128).unwrap());
        assert_eq!(p.to_pb(), wire(Some(32), Some(128), 1000, None));
    }

    #[test]
    fn every_rule_names_its_field() {
        let cases = [
            (wire(Some(33), None, 1000, None), "ipv4_mask"),
            (wire(None, Some(200), 1000, None), "ipv6_mask"),
            (wire(None, None, 0, None), "absolute_timeout_ms"),
            (
                wire(None, None, MAX_ABSOLUTE_TIMEOUT_MS + 1, None),
                "absolute_timeout_ms",
            ),
            (wire(None, None, 1000, Some(0)), "idle_timeout_ms"),
            (wire(None, None, 1000, Some(1001)), "idle_timeout_ms"),
        ];
        for (w, field) in cases {
            let err = Policy::from_pb(&w).unwrap_err();
            assert_eq!(err.field, field, "{w:?}");
            assert_eq!(
                err.clone().within("policy").to_string(),
                format!("invalid policy.{field}: {}", err.rule)
            );
        }
    }

    #[test]
    fn limits_are_inclusive() {
        assert!(Policy::from_pb(&wire(Some(0), Some(0), 1, Some(1))).is_ok());
        assert!(Policy::from_pb(&wire(Some(32), Some(128), MAX_ABSOLUTE_TIMEOUT_MS, None)).is_ok());
        assert!(
            Policy::new(Duration::from_secs(60))
                .unwrap()
                .with_idle_timeout(Duration::from_secs(60))
                .is_ok()
        );
        assert!(Policy::new(Duration::from_secs(31 * 24 * 3600)).is_err());
        assert!(Policy::new(Duration::from_micros(10)).is_err());
    }
}
