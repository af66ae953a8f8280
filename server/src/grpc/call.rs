//! Per-call bookkeeping shared by every handler: the caller's deadline, whether the call was
//! forwarded, a tracing span, and the metrics recorded when it ends.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tracing::Span;
use tracing::field::Empty;

use super::status::FORWARDED_METADATA;
use crate::metrics::{InFlightGuard, Metrics};
use crate::node::Budget;

/// Time kept back from the caller's deadline so that this node answers DEADLINE_EXCEEDED
/// itself before the transport cancels the call.
fn margin(deadline: Duration) -> Duration {
    (deadline / 10).min(Duration::from_millis(50))
}

/// Parse a `grpc-timeout` value (`<1..8 digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// One call being served.
pub struct Call {
    rpc: &'static str,
    started: Instant,
    deadline: Option<Duration>,
    forwarded: bool,
    metrics: Arc<Metrics>,
    span: Span,
    _in_flight: InFlightGuard,
}

impl Call {
    /// Start serving `rpc`.
    pub fn start(rpc: &'static str, metadata: &MetadataMap, metrics: &Arc<Metrics>) -> Self {
        let deadline = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let forwarded = metadata.get(FORWARDED_METADATA).is_some();
        let span = tracing::info_span!(
            "rpc",
            rpc,
            forwarded,
            scope = Empty,
            prefix = Empty,
            code = Empty,
            latency_us = Empty
        );
        Self {
            rpc,
            started: Instant::now(),
            deadline,
            forwarded,
            metrics: Arc::clone(metrics),
            span,
            _in_flight: metrics.in_flight.enter(),
        }
    }

    /// The RPC's name.
    pub fn rpc(&self) -> &'static str {
        self.rpc
    }

    /// Whether another node forwarded this call (it must not be forwarded again).
    pub fn forwarded(&self) -> bool {
        self.forwarded
    }

    /// The call's span.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Note the lease key the call is about.
    pub fn record_key(&self, scope: &str, prefix: &impl std::fmt::Display) {
        self.span.record("scope", scope);
        self.span.record("prefix", tracing::field::display(prefix));
    }

    /// How long the node may work on this call: its own proposal timeout, or less when the
    /// caller's deadline is nearer.
    pub fn budget(&self, own: Duration) -> Budget {
        match self.deadline {
            Some(deadline) => {
                let usable = deadline.saturating_sub(margin(deadline));
                if usable < own {
                    Budget {
                        until: self.started + usable,
                        caller_limited: true,
                    }
                } else {
                    Budget {
                        until: self.started + own,
                        caller_limited: false,
                    }
                }
            }
            None => Budget {
                until: self.started + own,
                caller_limited: false,
            },
        }
    }

    /// Time left for a forwarded call, within `budget`.
    pub fn remaining(&self, budget: Budget) -> Duration {
        budget.until.saturating_duration_since(Instant::now())
    }

    /// Record the result (metrics, span, a log line for server-side failures) and pass it on.
    pub fn finish<T>(self, result: Result<T, Status>) -> Result<T, Status> {
        let elapsed = self.started.elapsed();
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics.observe(self.rpc, code, elapsed);
        let name = affinity_proto::code_name(code);
        self.span.record("code", name);
        self.span.record(
            "latency_us",
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        );
        let _entered = self.span.enter();
        match &result {
            Err(status) if matches!(code, tonic::Code::Internal | tonic::Code::Unknown) => {
                tracing::error!(message = status.message(), "request failed");
            }
            Err(status) if code == tonic::Code::Unavailable => {
                tracing::info!(message = status.message(), "request not served");
            }
            Err(status) => tracing::debug!(message = status.message(), "request refused"),
            Ok(_) => tracing::debug!("request served"),
        }
        result
    }
}

/// Serve one unary call: start its bookkeeping, run `body` inside the call's span, and
/// record how it ended. A successful answer names the leader this node knows of in
/// `affinity-leader`, so that clients can go there directly next time.
pub async fn serve<Req, Resp>(
    rpc: &'static str,
    ctx: &super::Ctx,
    request: tonic::Request<Req>,
    body: impl AsyncFnOnce(&Call, Req) -> Result<Resp, Status>,
) -> Result<tonic::Response<Resp>, Status> {
    use tracing::Instrument;
    let call = Call::start(rpc, request.metadata(), &ctx.metrics);
    let span = call.span().clone();
    let result = body(&call, request.into_inner()).instrument(span).await;
    call.finish(result).map(|answer| {
        let mut response = tonic::Response::new(answer);
        if let Some((_, Some(address))) = ctx.node.leader()
            && let Ok(value) = tonic::metadata::MetadataValue::try_from(address.as_str())
        {
            response
                .metadata_mut()
                .insert(super::status::LEADER_METADATA, value);
        }
        response
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
        for bad in ["", "S", "5", "5s", "123456789S", "-5S", "5 S", "5é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
