//! Wall-clock time in Unix milliseconds.
//!
//! Only the leader reads the clock to stamp proposals, and readers use it to judge expiry;
//! applying the log never does (see [`crate::sm`]).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds (0 if the system clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
