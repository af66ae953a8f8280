//! Bounded waits on conditions. A test never sleeps to synchronize: it says what it waits
//! for, and fails with that sentence (and the last thing it saw) when the bound passes.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(25);

/// Wait until `check` returns `Ok(value)`; `Err(seen)` means "not yet" and is reported if
/// the wait times out.
pub async fn until<T, E: Debug, Fut>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}; last seen: {last:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Wait until the wall clock (Unix ms) passes `unix_ms`: for conditions that are about time
/// itself, such as a lease's expiry.
pub async fn until_wall_clock(unix_ms: i64) {
    let now = affinity_server::clock::now_ms();
    if unix_ms >= now {
        let wait = u64::try_from(unix_ms - now + 1).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}
