//! Short builders for the requests tests send.

use std::time::Duration;

use affinity_proto::pb;

/// A policy keeping `v4_mask` bits of IPv4 addresses, with an absolute timeout.
pub fn policy(v4_mask: u32, timeout: Duration) -> pb::Policy {
    pb::Policy {
        ipv4_mask: Some(v4_mask),
        ipv6_mask: Some(64),
        absolute_timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        idle_timeout_ms: None,
    }
}

/// A Resolve of `ip` in `scope` proposing `endpoint`, keyed by /24 (IPv4) or /64 (IPv6).
pub fn resolve(scope: &str, ip: &str, endpoint: &str, timeout: Duration) -> pb::ResolveRequest {
    pb::ResolveRequest {
        scope: scope.into(),
        client_ip: ip.into(),
        policy: Some(policy(24, timeout)),
        endpoint: endpoint.into(),
        eligible_endpoints: vec![],
        request_id: String::new(),
    }
}

/// A linearizable Lookup of `ip` in `scope`, keyed like [`resolve`].
pub fn lookup(scope: &str, ip: &str) -> pb::LookupRequest {
    pb::LookupRequest {
        scope: scope.into(),
        client_ip: ip.into(),
        policy: Some(policy(24, Duration::from_secs(1))),
        allow_stale: false,
    }
}

/// A request with a deadline.
pub fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// Call `f` until it returns something other than UNAVAILABLE (no leader or quorum right
/// now, as during an election), for at most `bound`; what a real client does. The last
/// answer is returned either way.
pub async fn retry_unavailable<T, Fut>(
    bound: Duration,
    mut f: impl FnMut() -> Fut,
) -> Result<T, tonic::Status>
where
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match f().await {
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}
