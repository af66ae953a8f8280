//! Talking to the store: one lazily connected channel per node, the leader tracked from the
//! `affinity-leader` metadata of answers, and retries with backoff and jitter inside the
//! call's deadline.
//!
//! UNAVAILABLE and attempts that get no answer in time are retried (on the hinted leader,
//! else the next node, which later calls then start from); INVALID_ARGUMENT is never
//! retried; other errors end the call. An attempt may use half of what is left of the
//! deadline (all of it once that is under 200 ms) and carries that as its gRPC timeout.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use affinity_proto::pb::affinity_client::AffinityClient;
use affinity_proto::{ValidationError, code_name};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use crate::tls::ClientTls;
use tonic::{Code, Status};

use crate::error::ClientError;

/// Metadata key naming the leader's address, set by the store on its answers.
pub const LEADER_METADATA: &str = "affinity-leader";
/// Metadata key of a `Watch` answer: resuming from this revision misses no change.
pub const REVISION_METADATA: &str = "affinity-revision";

const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// A stub of one node's `Affinity` service, carrying the bearer token when one is set.
pub(crate) type Stub = AffinityClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call when a token is configured (nodes
/// that run with `--authz` take roles from it as well as from client certificates).
#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The header for `token`; a token that cannot be a header value is refused, naming
    /// the rule (printable ASCII, no spaces at either end).
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        let Some(token) = token else {
            return Ok(Self(None));
        };
        let usable = !token.is_empty()
            && token.trim() == token
            && token.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if !usable {
            return Err(ClientError::Config(
                "token must be printable ASCII, not empty, without spaces at either end".into(),
            ));
        }
        MetadataValue::try_from(format!("Bearer {token}"))
            .map(|v| Self(Some(v)))
            .map_err(|_| ClientError::Config("token cannot be sent as a header".into()))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

struct Node {
    address: String,
    client: Stub,
}

/// The store's nodes.
pub(crate) struct Nodes {
    nodes: Vec<Node>,
    /// Index of the node tried first: the last known leader.
    preferred: AtomicUsize,
}

impl Nodes {
    pub fn new(
        addresses: &[String],
        connect_timeout: Duration,
        tls: Option<&ClientTls>,
        bearer: &Bearer,
    ) -> Result<Self, ClientError> {
        if addresses.is_empty() {
            return Err(ClientError::Config("no store endpoints given".into()));
        }
        let nodes = addresses
            .iter()
            .map(|address| {
                let bad = |e: tonic::transport::Error| {
                    ClientError::Config(format!("endpoint {address:?}: {e}"))
                };
                let endpoint = match tls {
                    Some(tls) => TonicEndpoint::from_shared(format!("https://{address}"))
                        .map_err(bad)?
                        .tls_config(tls.for_address(address))
                        .map_err(bad)?,
                    None => TonicEndpoint::from_shared(format!("http://{address}")).map_err(bad)?,
                };
                let channel = endpoint
                    .connect_timeout(connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                Ok(Node {
                    address: address.clone(),
                    client: AffinityClient::with_interceptor(channel, bearer.clone()),
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Self {
            nodes,
            preferred: AtomicUsize::new(0),
        })
    }

    /// Prefer the node at `address`, if it is one of ours.
    fn follow(&self, address: &str) {
        if let Some(i) = self.nodes.iter().position(|n| n.address == address) {
            self.preferred.store(i, Ordering::Relaxed);
        }
    }

    fn leader_hint(&self, metadata: &tonic::metadata::MetadataMap) {
        if let Some(address) = metadata.get(LEADER_METADATA).and_then(|v| v.to_str().ok()) {
            self.follow(address);
        }
    }

    /// The node after `failed`, which becomes the preferred one unless another call has
    /// already moved on: later calls do not start on a node that just failed (a node cut
    /// off from its peers may keep accepting connections and never answer).
    fn move_on(&self, failed: usize) -> usize {
        let next = (failed + 1) % self.nodes.len();
        let _ = self
            .preferred
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
        next
    }

    /// A client of any node, for streams (the preferred one).
    pub fn any(&self) -> (usize, Stub) {
        let i = self.preferred.load(Ordering::Relaxed) % self.nodes.len();
        (i, self.nodes[i].client.clone())
    }

    /// A client of the node after `i`.
    pub fn next(&self, i: usize) -> (usize, Stub) {
        let j = (i + 1) % self.nodes.len();
        (j, self.nodes[j].client.clone())
    }

    /// Run one RPC until it succeeds, fails for good, or `deadline` passes.
    pub async fn call<T, F, Fut>(
        &self,
        rpc: &'static str,
        deadline: Instant,
        f: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Stub, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut index = self.preferred.load(Ordering::Relaxed) % self.nodes.len();
        let mut last = String::from("no attempt was made before the deadline");
        loop {
            let Some(remaining) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                return Err(ClientError::Unavailable { message: last });
            };
            let client = self.nodes[index].client.clone();
            let attempt = attempt_budget(remaining);
            let answer = tokio::time::timeout(attempt, f(client, attempt)).await;
            match answer {
                Ok(Ok(response)) => {
                    self.leader_hint(response.metadata());
                    metrics::histogram!("affinity_client_rpc_duration_seconds", "rpc" => rpc)
                        .record(started.elapsed().as_secs_f64());
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => {
                    metrics::counter!("affinity_client_rpc_errors_total", "rpc" => rpc, "code" => code_name(status.code()))
                        .increment(1);
                    match status.code() {
                        Code::InvalidArgument => return Err(invalid(&status)),
                        Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                        | Code::Unknown => {
                            last = format!("{}: {}", self.nodes[index].address, status.message());
                            let hinted = status
                                .metadata()
                                .get(LEADER_METADATA)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|a| self.nodes.iter().position(|n| n.address == a));
                            index = match hinted {
                                Some(leader) if leader != index => {
                                    self.preferred.store(leader, Ordering::Relaxed);
                                    leader
                                }
                                _ => self.move_on(index),
                            };
                        }
                        other => {
                            return Err(ClientError::Refused {
                                code: other,
                                message: status.message().to_string(),
                            });
                        }
                    }
                }
                Err(_) => {
                    metrics::counter!("affinity_client_rpc_errors_total", "rpc" => rpc, "code" => "DEADLINE_EXCEEDED")
                        .increment(1);
                    last = format!(
                        "{}: no answer before the deadline",
                        self.nodes[index].address
                    );
                    index = self.move_on(index);
                }
            }
            // Full jitter: a uniform pause up to the current backoff, never past the deadline.
            let pause = backoff.mul_f64(fastrand::f64());
            if Instant::now() + pause >= deadline {
                return Err(ClientError::Unavailable { message: last });
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The shortest attempt worth making.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// How long one attempt may take out of `remaining`: half of it while that leaves room for
/// another attempt, so a node that never answers costs half the deadline, not all of it.
fn attempt_budget(remaining: Duration) -> Duration {
    if remaining >= MIN_ATTEMPT * 2 {
        remaining / 2
    } else {
        remaining
    }
}

/// The store's INVALID_ARGUMENT, back as the field and the rule it named.
fn invalid(status: &Status) -> ClientError {
    let message = status.message();
    let parsed = message
        .strip_prefix("invalid ")
        .and_then(|rest| rest.split_once(": "))
        .map(|(field, rule)| ValidationError::new(field.to_string(), rule.to_string()));
    match parsed {
        Some(e) => ClientError::Invalid(e),
        None => ClientError::Refused {
            code: Code::InvalidArgument,
            message: message.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_leave_room_for_another_node() {
        assert_eq!(
            attempt_budget(Duration::from_millis(1500)),
            Duration::from_millis(750)
        );
        assert_eq!(
            attempt_budget(Duration::from_millis(200)),
            Duration::from_millis(100)
        );
        assert_eq!(
            attempt_budget(Duration::from_millis(150)),
            Duration::from_millis(150)
        );
    }

    #[test]
    fn the_stores_invalid_argument_names_field_and_rule() {
        let e = invalid(&Status::invalid_argument(
            "invalid policy.ipv4_mask: must be 0..=32 (got 40)",
        ));
        assert_eq!(
            e,
            ClientError::Invalid(ValidationError::new(
                "policy.ipv4_mask",
                "must be 0..=32 (got 40)"
            ))
        );
        assert!(matches!(
            invalid(&Status::invalid_argument("garbled")),
            ClientError::Refused {
                code: Code::InvalidArgument,
                ..
            }
        ));
        let refused = invalid(&Status::invalid_argument("garbled")).to_string();
        assert!(refused.contains("(INVALID_ARGUMENT): garbled"), "{refused}");
    }

    #[test]
    fn bearer_tokens_become_one_header() {
        let mut bearer = Bearer::new(Some("0123456789abcdef-gw")).unwrap();
        let request = bearer.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer 0123456789abcdef-gw"
        );
        let mut none = Bearer::new(None).unwrap();
        let request = none.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
        for bad in [
            "",
            " padded",
            "padded ",
            "line\nbreak",
            "tab\there",
            "caf\u{e9}",
        ] {
            let err = Bearer::new(Some(bad)).err().unwrap();
            assert!(err.to_string().contains("token"), "{bad:?}: {err}");
        }
    }
}
