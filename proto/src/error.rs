//! The one error type of the domain rules: a field broke a rule.
//!
//! Every check in this crate reports which field it looked at and which rule the value broke,
//! in words a person can act on. The server maps it to `INVALID_ARGUMENT`; the client returns
//! it before anything is sent.

use std::borrow::Cow;

/// A value that breaks a rule. `field` is the request field's path (for example
/// `policy.ipv4_mask` or `eligible_endpoints[2]`), `rule` says what was expected and what
/// was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {rule}")]
pub struct ValidationError {
    /// Path of the offending field.
    pub field: Cow<'static, str>,
    /// The rule, with the value seen when that helps.
    pub rule: Cow<'static, str>,
}

impl ValidationError {
    /// A rule broken by the field at `field`.
    pub fn new(field: impl Into<Cow<'static, str>>, rule: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The same error reported under a parent field, e.g. `policy` + `ipv4_mask`.
    #[must_use]
    pub fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field).into(),
            rule: self.rule,
        }
    }
}
