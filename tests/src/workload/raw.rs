//! Raw workers: generated tonic stubs, each call to a node picked at random (so followers
//! forward, and every node's answers are checked), with a deadline and no retry of their
//! own, except that a write whose outcome is unknown is sometimes sent once more with the
//! same request id (the checker takes the two attempts as one logical call).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use affinity_proto::pb::affinity_client::AffinityClient as RawClient;
use affinity_proto::{code_name, pb, request::new_request_id};
use tonic::transport::Channel;

use super::history::{Answer, Call, Outcome, Request, Seen, Via, outcome_unknown};
use super::mix::Memory;
use super::{WorkloadOptions, key, now_ms, policy};

/// Chance that a write whose outcome is unknown is tried once more under the same id.
const RETRY_CHANCE: f64 = 0.5;
/// How much longer than the gRPC deadline the worker itself waits (a frozen node never
/// answers, whatever the deadline it was given).
const LOCAL_GRACE: Duration = Duration::from_millis(250);

/// Run one raw worker until `stop`; every attempt it made.
pub(super) async fn work(
    worker: usize,
    nodes: Vec<Channel>,
    options: WorkloadOptions,
    stop: &AtomicBool,
    progress: &AtomicUsize,
) -> Vec<Call> {
    let mut stubs: Vec<RawClient<Channel>> = nodes.into_iter().map(RawClient::new).collect();
    let mut memory = Memory::new(worker, options.keys);
    let mut calls = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (k, request) = memory.next();
        let request_id = request.is_write().then(new_request_id);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let node = fastrand::usize(..stubs.len());
            let invoke_ms = now_ms();
            let outcome = send(
                &mut stubs[node],
                &options,
                k,
                &request,
                request_id.as_deref(),
            )
            .await;
            let response_ms = now_ms();
            if let Outcome::Ok(answer) = &outcome {
                progress.fetch_add(1, Ordering::Relaxed);
                memory.learn(k, answer);
            }
            let again = attempts == 1
                && request.is_write()
                && matches!(&outcome, Outcome::Err { code, .. } if outcome_unknown(code))
                && fastrand::f64() < RETRY_CHANCE
                && !stop.load(Ordering::Relaxed);
            calls.push(Call {
                worker,
                via: Via::Raw { node },
                key: k,
                request: request.clone(),
                request_id: request_id.clone(),
                invoke_ms,
                response_ms,
                outcome,
            });
            if !again {
                break;
            }
        }
    }
    calls
}

/// One attempt of `request` on key `k` through `stub`.
async fn send(
    stub: &mut RawClient<Channel>,
    options: &WorkloadOptions,
    k: usize,
    request: &Request,
    request_id: Option<&str>,
) -> Outcome {
    let (scope, ip, lifetime) = key(k, options);
    let scope = scope.to_string();
    let client_ip = ip.to_string();
    let policy = Some(policy(lifetime).to_pb());
    let request_id = request_id.unwrap_or_default().to_string();
    let deadline = options.request_timeout;
    let answer = match request {
        Request::Resolve { proposed, eligible } => {
            let wire = pb::ResolveRequest {
                scope,
                client_ip,
                policy,
                endpoint: proposed.clone(),
                eligible_endpoints: eligible.clone(),
                request_id,
            };
            timed(deadline, stub.resolve(with_deadline(wire, deadline)))
                .await
                .and_then(|r| {
                    let lease = r.lease.as_ref().ok_or_else(no_lease)?;
                    Ok(Answer::Resolved {
                        lease: Seen::from_pb(lease),
                        created: r.created,
                        replaced: r.replaced,
                        cached: false,
                    })
                })
        }
        Request::Reassign { expected, endpoint } => {
            let wire = pb::ReassignRequest {
                scope,
                client_ip,
                policy,
                expected_endpoint: expected.clone(),
                endpoint: endpoint.clone(),
                request_id,
            };
            timed(deadline, stub.reassign(with_deadline(wire, deadline)))
                .await
                .map(|r| Answer::Reassigned {
                    lease: r.lease.as_ref().map(Seen::from_pb),
                    swapped: r.swapped,
                })
        }
        Request::Release => {
            let wire = pb::ReleaseRequest {
                scope,
                client_ip,
                policy,
                request_id,
            };
            timed(deadline, stub.release(with_deadline(wire, deadline)))
                .await
                .map(|r| Answer::Released(r.released))
        }
        Request::Drain { endpoint } => {
            let wire = pb::DrainEndpointRequest {
                scope,
                endpoint: endpoint.clone(),
                request_id,
            };
            timed(deadline, stub.drain_endpoint(with_deadline(wire, deadline)))
                .await
                .map(|r| Answer::Drained(r.removed))
        }
        Request::Lookup => {
            let wire = pb::LookupRequest {
                scope,
                client_ip,
                policy,
                allow_stale: false,
            };
            timed(deadline, stub.lookup(with_deadline(wire, deadline)))
                .await
                .map(|r| Answer::Looked(r.lease.as_ref().map(Seen::from_pb)))
        }
    };
    match answer {
        Ok(a) => Outcome::Ok(a),
        Err((code, message)) => Outcome::Err { code, message },
    }
}

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

fn no_lease() -> (String, String) {
    (
        "MALFORMED".to_string(),
        "the store answered Resolve without a lease".to_string(),
    )
}

/// The response, or the error as (code name, message); `TIMEOUT` when the store did not
/// answer within the deadline and a grace.
async fn timed<T>(
    deadline: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, (String, String)> {
    match tokio::time::timeout(deadline + LOCAL_GRACE, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err((
            code_name(status.code()).to_string(),
            status.message().to_string(),
        )),
        Err(_) => Err((
            "TIMEOUT".to_string(),
            format!(
                "no answer within {} ms",
                (deadline + LOCAL_GRACE).as_millis()
            ),
        )),
    }
}
