//! Client-crate workers: each an `AffinityClient` of its own (one gateway replica) in
//! `FailMode::Closed`, so a call the store could not answer is an error, never a fallback.
//! The crate picks nodes, follows the leader and retries inside its deadline, naming every
//! write with one request id across its retries. With the cache on, a `resolve` may be
//! answered from the cache; the answer says so.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use affinity_client::{AffinityClient, ClientError, Decision, FailMode, Resolve, Source};

use super::history::{Answer, Call, Outcome, Request, Seen, Via};
use super::mix::Memory;
use super::{WorkloadOptions, key, now_ms, policy};

/// With the cache on, most `resolve`s never leave the process: the worker paces itself so
/// that its share of the history stays comparable with the others'.
const CACHED_PACE: Duration = Duration::from_millis(10);

/// A client-crate worker's client.
pub(super) fn client(
    endpoints: &[String],
    options: &WorkloadOptions,
    cache: bool,
) -> AffinityClient {
    let builder = AffinityClient::builder()
        .endpoints(endpoints.iter().cloned())
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(options.request_timeout)
        .fail_mode(FailMode::Closed);
    let builder = if cache {
        builder
            .watch(true)
            .max_staleness(options.cache_max_staleness)
    } else {
        builder.cache_capacity(0).watch(false)
    };
    builder.build().expect("a workload client")
}

/// Run one client-crate worker until `stop`; every call it made.
pub(super) async fn work(
    worker: usize,
    client: AffinityClient,
    cache: bool,
    options: WorkloadOptions,
    stop: &AtomicBool,
    progress: &AtomicUsize,
) -> Vec<Call> {
    let mut memory = Memory::new(worker, options.keys);
    let mut calls = Vec::new();
    let mut pace = cache.then(|| {
        let mut interval = tokio::time::interval(CACHED_PACE);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    while !stop.load(Ordering::Relaxed) {
        if let Some(interval) = pace.as_mut() {
            interval.tick().await;
        }
        let (k, request) = memory.next();
        let invoke_ms = now_ms();
        let outcome = send(&client, &options, k, &request).await;
        let response_ms = now_ms();
        if let Outcome::Ok(answer) = &outcome {
            progress.fetch_add(1, Ordering::Relaxed);
            memory.learn(k, answer);
        }
        calls.push(Call {
            worker,
            via: Via::Client { cache },
            key: k,
            request,
            request_id: None,
            invoke_ms,
            response_ms,
            outcome,
        });
    }
    calls
}

async fn send(
    client: &AffinityClient,
    options: &WorkloadOptions,
    k: usize,
    request: &Request,
) -> Outcome {
    let (scope, ip, lifetime) = key(k, options);
    let policy = policy(lifetime);
    let answer = match request {
        Request::Resolve { proposed, eligible } => client
            .resolve(
                Resolve::new(scope, ip, &policy)
                    .proposed(proposed)
                    .eligible(eligible),
            )
            .await
            .and_then(|d| decided(&d)),
        Request::Reassign { expected, endpoint } => client
            .reassign(scope, ip, &policy, expected, endpoint)
            .await
            .map(|(lease, swapped)| Answer::Reassigned {
                lease: lease.as_ref().map(Seen::from_pb),
                swapped,
            }),
        Request::Release => client
            .release(scope, ip, &policy)
            .await
            .map(Answer::Released),
        Request::Drain { endpoint } => client
            .drain_endpoint(Some(scope), endpoint)
            .await
            .map(Answer::Drained),
        Request::Lookup => lookup(client, scope, ip, &policy).await,
    };
    match answer {
        Ok(a) => Outcome::Ok(a),
        Err(e) => {
            let code = match &e {
                ClientError::Unavailable { message } if message.contains("failed recently") => {
                    "SKIPPED".to_string()
                }
                ClientError::Unavailable { .. } => "UNAVAILABLE".to_string(),
                ClientError::Refused { code, .. } => affinity_proto::code_name(*code).to_string(),
                ClientError::Invalid(_) => "INVALID_ARGUMENT".to_string(),
                ClientError::Config(_) => "CONFIG".to_string(),
                other => format!("OTHER: {other}"),
            };
            Outcome::Err {
                code,
                message: e.to_string(),
            }
        }
    }
}

async fn lookup(
    client: &AffinityClient,
    scope: &str,
    ip: IpAddr,
    policy: &affinity_client::Policy,
) -> Result<Answer, ClientError> {
    let lease = client.lookup(scope, ip, policy).await?;
    Ok(Answer::Looked(lease.as_ref().map(Seen::from_pb)))
}

/// A `resolve` decision as an answer. The crate gives the lease's end but not its creation.
fn decided(d: &Decision) -> Result<Answer, ClientError> {
    let expires_at_ms = d
        .expires_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
    let lease = Seen {
        endpoint: d.endpoint.to_string(),
        created_at_ms: None,
        expires_at_ms,
    };
    match d.source {
        Source::Cache => Ok(Answer::Resolved {
            lease,
            created: false,
            replaced: false,
            cached: true,
        }),
        Source::Store { created, replaced } => Ok(Answer::Resolved {
            lease,
            created,
            replaced,
            cached: false,
        }),
        // Not in FailMode::Closed; were it to happen, the store did not answer.
        _ => Err(ClientError::Unavailable {
            message: "the client fell back to rendezvous hashing".to_string(),
        }),
    }
}
