//! [`Endpoint`]: a backend endpoint as the client hands it out.

use std::fmt;
use std::ops::Deref;

use smol_str::SmolStr;

/// A backend endpoint (`10.4.0.17:8080`). Short endpoints (up to 23 bytes) are stored
/// inline, so cloning one from the cache allocates nothing and touches no shared counter;
/// longer ones share one heap copy.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint(SmolStr);

impl Endpoint {
    /// An endpoint from text.
    pub fn new(text: &str) -> Self {
        Self(SmolStr::new(text))
    }

    /// The endpoint as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Endpoint {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Endpoint {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({:?})", self.as_str())
    }
}

impl From<&str> for Endpoint {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl PartialEq<str> for Endpoint {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Endpoint {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
