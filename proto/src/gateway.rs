//! The Gateway API `sessionPersistence` block of an HTTPRoute or GRPCRoute rule, and how it
//! becomes a [`Policy`].
//!
//! Supported: `type: ClientIP` (GEP-3798) with `absoluteTimeout` (required here: a lease must
//! end), optional `idleTimeout`, optional `ipMask` (0..=128, applied to both families and
//! capped at 32 for IPv4), and the per-family extensions `ipv4Mask` (0..=32) and `ipv6Mask`
//! (0..=128), which win over `ipMask` for their family. Durations follow GEP-2257.
//!
//! `Cookie` and `Header` persistence (GEP-1619) are refused with a clear error: this store
//! keys sessions by client address only. Unknown keys are refused too, so that a typo such as
//! `ipMsak` is reported instead of silently ignored.

use serde::{Deserialize, Serialize};

use crate::duration::GatewayDuration;
use crate::error::ValidationError;
use crate::key::Masks;
use crate::policy::Policy;

/// The `sessionPersistence` block of a route rule, as written in YAML or JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionPersistence {
    /// `type`: must be `ClientIP` here. Gateway API's default, when unset, is `Cookie`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `sessionName`: accepted for compatibility; client-IP persistence has no session name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    /// `absoluteTimeout`: GEP-2257 duration; the lease ends this long after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout: Option<String>,
    /// `idleTimeout`: GEP-2257 duration; the lease also ends this long after its last use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// `cookieConfig`: only meaningful for `type: Cookie`, so refused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_config: Option<CookieConfig>,
    /// `ipMask` (GEP-3798): prefix length for both families, IPv4 capped at 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_mask: Option<u32>,
    /// `ipv4Mask`: IPv4 prefix length, 0..=32; wins over `ipMask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_mask: Option<u32>,
    /// `ipv6Mask`: IPv6 prefix length, 0..=128; wins over `ipMask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_mask: Option<u32>,
}

/// `cookieConfig` of GEP-1619, parsed only to give a precise error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CookieConfig {
    /// `lifetimeType`: `Permanent` or `Session`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_type: Option<String>,
}

const BLOCK: &str = "sessionPersistence";

fn field_error(field: &str, rule: impl Into<String>) -> ValidationError {
    ValidationError::new(format!("{BLOCK}.{field}"), rule.into())
}

fn duration(field: &str, text: &str) -> Result<u64, ValidationError> {
    text.parse::<GatewayDuration>()
        .map(GatewayDuration::as_millis)
        .map_err(|e| field_error(field, e.to_string()))
}

impl Policy {
    /// The policy a `sessionPersistence` block asks for. Errors name the block's field
    /// (`sessionPersistence.absoluteTimeout`, ...) and the rule.
    pub fn from_session_persistence(block: &SessionPersistence) -> Result<Policy, ValidationError> {
        match block.kind.as_deref() {
            Some("ClientIP") => {}
            None => {
                return Err(field_error(
                    "type",
                    "unset means Cookie, which is not supported here; set type: ClientIP",
                ));
            }
            Some(kind @ ("Cookie" | "Header")) => {
                return Err(field_error(
                    "type",
                    format!("{kind} persistence is not supported here; only ClientIP is"),
                ));
            }
            Some(other) => {
                return Err(field_error(
                    "type",
                    format!("must be ClientIP (got {other:?})"),
                ));
            }
        }
        if block.cookie_config.is_some() {
            return Err(field_error(
                "cookieConfig",
                "applies only to type Cookie; remove it for type ClientIP",
            ));
        }

        let absolute_ms = match block.absolute_timeout.as_deref() {
            Some(text) => duration("absoluteTimeout", text)?,
            None => {
                return Err(field_error(
                    "absoluteTimeout",
                    "is required for type ClientIP (a sticky decision must end), e.g. 10m",
                ));
            }
        };
        let idle_ms = block
            .idle_timeout
            .as_deref()
            .map(|text| duration("idleTimeout", text))
            .transpose()?;

        let shared = match block.ip_mask {
            Some(mask) if mask > 128 => {
                return Err(field_error(
                    "ipMask",
                    format!("must be 0..=128 (got {mask})"),
                ));
            }
            other => other,
        };
        let v4 = block.ipv4_mask.or(shared.map(|m| m.min(32))).unwrap_or(32);
        let v6 = block.ipv6_mask.or(shared).unwrap_or(128);
        let masks = Masks::new(v4, v6).map_err(|e| {
            let field = if e.field == "ipv4_mask" {
                "ipv4Mask"
            } else {
                "ipv6Mask"
            };
            field_error(field, e.rule)
        })?;

        Policy::from_millis(masks, absolute_ms, idle_ms).map_err(|e| {
            let field = if e.field == "idle_timeout_ms" {
                "idleTimeout"
            } else {
                "absoluteTimeout"
            };
            field_error(field, e.rule)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_yaml(text: &str) -> Result<Policy, ValidationError> {
        let block: SessionPersistence = serde_norway::from_str(text).expect("yaml parses");
        Policy::from_session_persistence(&block)
    }

    #[test]
    fn client_ip_block_from_yaml() {
        let p = from_yaml("type: ClientIP\nabsoluteTimeout: 1h30m\nidleTimeout: 10m\nipMask: 24\n")
            .unwrap();
        assert_eq!(p.absolute_timeout_ms(), 5_400_000);
        assert_eq!(p.idle_timeout_ms(), Some(600_000));
        assert_eq!((p.masks().ipv4(), p.masks().ipv6()), (24, 24));
    }

    #[test]
    fn ip_mask_is_capped_for_ipv4_and_per_family_masks_win() {
        let p = from_yaml("type: ClientIP\nabsoluteTimeout: 5m\nipMask: 64\n").unwrap();
        assert_eq!((p.masks().ipv4(), p.masks().ipv6()), (32, 64));
        let p =
            from_yaml("type: ClientIP\nabsoluteTimeout: 5m\nipMask: 64\nipv4Mask: 16\n").unwrap();
        assert_eq!((p.masks().ipv4(), p.masks().ipv6()), (16, 64));
        let p = from_yaml("type: ClientIP\nabsoluteTimeout: 5m\nipv6Mask: 48\n").unwrap();
        assert_eq!((p.masks().ipv4(), p.masks().ipv6()), (32, 48));
        let p = from_yaml("type: ClientIP\nabsoluteTimeout: 5m\n").unwrap();
        assert_eq!((p.masks().ipv4(), p.masks().ipv6()), (32, 128));
    }

    #[test]
    fn json_works_too() {
        let block: SessionPersistence = serde_json::from_str(
            r#"{"type":"ClientIP","absoluteTimeout":"10m","ipv4Mask":24,"sessionName":"x"}"#,
        )
        .unwrap();
        let p = Policy::from_session_persistence(&block).unwrap();
        assert_eq!(p.absolute_timeout_ms(), 600_000);
        assert_eq!(p.masks().ipv4(), 24);
    }

    #[test]
    fn errors_name_the_block_field() {
        let cases = [
            ("absoluteTimeout: 5m\n", "sessionPersistence.type"),
            (
                "type: Cookie\nabsoluteTimeout: 5m\n",
                "sessionPersistence.type",
            ),
            (
                "type: Header\nabsoluteTimeout: 5m\n",
                "sessionPersistence.type",
            ),
            (
                "type: Sticky\nabsoluteTimeout: 5m\n",
                "sessionPersistence.type",
            ),
            ("type: ClientIP\n", "sessionPersistence.absoluteTimeout"),
            (
                "type: ClientIP\nabsoluteTimeout: 1.5h\n",
                "sessionPersistence.absoluteTimeout",
            ),
            (
                "type: ClientIP\nabsoluteTimeout: \"0\"\n",
                "sessionPersistence.absoluteTimeout",
            ),
            (
                "type: ClientIP\nabsoluteTimeout: 0s\n",
                "sessionPersistence.absoluteTimeout",
            ),
            (
                "type: ClientIP\nabsoluteTimeout: 800h\n",
                "sessionPersistence.absoluteTimeout",
            ),
            (
                "type: ClientIP\nabsoluteTimeout: 5m\nidleTimeout: 6m\n",
                "sessionPersistence.idleTimeout",
            ),
            (
                "type: ClientIP\nabsoluteTimeout: 5m\nidleTimeout: 1d\n",
                "sessionPersistence.idleTimeout",
            ),
            (
                "type: ClientIP\nabsoluteTimeout: 5m\nipMask: 129\n",
                "sessionPersistence.ipMask",
            ),
            (
                "type: ClientIP\nabsoluteTimeout: 5m\nipv4Mask: 33\n",
                "sessionPersistence.ipv4Mask",
            ),
            (
                "type: ClientIP\nabsoluteTimeout: 5m\nipv6Mask: 129\n",
                "sessionPersistence.ipv6Mask",
            ),
            (
                "type: ClientIP\nabsoluteTimeout: 5m\ncookieConfig:\n  lifetimeType: Permanent\n",
                "sessionPersistence.cookieConfig",
            ),
        ];
        for (yaml, field) in cases {
            let err = from_yaml(yaml).unwrap_err();
            assert_eq!(err.field, field, "{yaml}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_norway::from_str::<SessionPersistence>("type: ClientIP\nipMsak: 24\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ipMsak"), "{err}");
    }
}
