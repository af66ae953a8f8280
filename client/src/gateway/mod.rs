//! Gateway API configuration: the `sessionPersistence` block of a route rule, from the YAML
//! or JSON a gateway reads, to a [`Policy`]; and [`routes`], the route file (`HTTPRoute`
//! documents and the endpoints behind their Services) that the example gateway and any
//! other data plane built on this crate read.
//!
//! The rules (type `ClientIP`, GEP-2257 durations, `ipMask` and the per-family masks) live in
//! `affinity-proto`, shared with the store; this module only parses text.

use affinity_proto::{Policy, SessionPersistence, ValidationError};

pub mod routes;
#[cfg(test)]
mod routes_tests;

/// The policy of a `sessionPersistence` block written in YAML.
pub fn policy_from_yaml(text: &str) -> Result<Policy, ValidationError> {
    let block: SessionPersistence = serde_norway::from_str(text).map_err(|e| {
        ValidationError::new(
            "sessionPersistence",
            format!("is not valid YAML for this block: {e}"),
        )
    })?;
    Policy::from_session_persistence(&block)
}

/// The policy of a `sessionPersistence` block written in JSON.
pub fn policy_from_json(text: &str) -> Result<Policy, ValidationError> {
    let block: SessionPersistence = serde_json::from_str(text).map_err(|e| {
        ValidationError::new(
            "sessionPersistence",
            format!("is not valid JSON for this block: {e}"),
        )
    })?;
    Policy::from_session_persistence(&block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_give_the_same_policy() {
        let yaml = "type: ClientIP\nabsoluteTimeout: 10m\nidleTimeout: 2m\nipMask: 24\n";
        let json = r#"{"type":"ClientIP","absoluteTimeout":"10m","idleTimeout":"2m","ipMask":24}"#;
        assert_eq!(
            policy_from_yaml(yaml).unwrap(),
            policy_from_json(json).unwrap()
        );
    }

    #[test]
    fn errors_name_the_block() {
        assert_eq!(
            policy_from_yaml("type: [").unwrap_err().field,
            "sessionPersistence"
        );
        assert_eq!(
            policy_from_json("{\"typo\": 1}").unwrap_err().field,
            "sessionPersistence"
        );
        assert_eq!(
            policy_from_yaml("type: ClientIP\nabsoluteTimeout: 1.5h\n")
                .unwrap_err()
                .field,
            "sessionPersistence.absoluteTimeout"
        );
    }
}
