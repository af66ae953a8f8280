//! `affinity.v1.Affinity`: the leases, for gateways.
//!
//! Every request is checked first (bad input is refused here, never forwarded and never
//! proposed). Writes are proposed on the leader, except a `Resolve` that would keep a live
//! lease unchanged, which the leader answers after a read-index barrier; `Lookup` and `List` read after a read-index
//! barrier on the leader unless `allow_stale`; `Watch` streams this node's applied changes.

use std::sync::Arc;

use affinity_proto::pb::affinity_client::AffinityClient;
use affinity_proto::pb::affinity_server::Affinity;
use affinity_proto::{ClientKey, ValidationError, pb, request};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use tonic::{Request, Response, Status};

use super::call::serve;
use super::status::{REVISION_METADATA, invalid};
use super::{CLIENT_MAX_MESSAGE_BYTES, Ctx, watch};
use crate::error::ServiceError;
use crate::node::Budget;
use crate::sm::lease::{prefix_from_pb, prefix_to_pb};
use crate::sm::{Op, Outcome, RequestId};

/// The client-facing service.
pub struct AffinityService {
    ctx: Arc<Ctx>,
}

impl AffinityService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

fn client(channel: tonic::transport::Channel) -> AffinityClient<tonic::transport::Channel> {
    AffinityClient::new(channel)
        .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
}

/// An outcome of another kind than the write asked for: the answer remembered for a
/// request id that an earlier write of another kind used.
fn unexpected(outcome: &Outcome, request_id: &str) -> ServiceError {
    if request_id.is_empty() {
        ServiceError::Internal(format!(
            "the state machine answered {outcome:?} to the wrong command"
        ))
    } else {
        ServiceError::FailedPrecondition(format!(
            "request_id {request_id:?} names an earlier write of another kind; give every call its own request_id"
        ))
    }
}

/// A write arriving without a request id is named here, before it is proposed or forwarded,
/// so that a forward after this node lost the lead (when the write may already be in the
/// log) cannot apply it twice. Calls forwarded by another node carry that node's name.
fn name_write(call: &super::call::Call, request_id: &mut String) {
    if request_id.is_empty() && !call.forwarded() {
        *request_id = request::new_request_id();
    }
}

/// A List continuation token: the last (scope, key) returned, opaque to callers.
fn encode_token(scope: &str, key: &ClientKey) -> String {
    let key = pb::LeaseKey {
        scope: scope.to_string(),
        prefix: Some(prefix_to_pb(key)),
    };
    URL_SAFE_NO_PAD.encode(key.encode_to_vec())
}

fn decode_token(token: &str) -> Result<(String, ClientKey), ValidationError> {
    let bad = || {
        ValidationError::new(
            "page_token",
            "is not a token this service issued; pass next_page_token unchanged",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let key = pb::LeaseKey::decode(bytes.as_slice()).map_err(|_| bad())?;
    request::check_scope("page_token", &key.scope).map_err(|_| bad())?;
    let prefix = prefix_from_pb(key.prefix.as_ref()).map_err(|_| bad())?;
    Ok((key.scope, prefix))
}

impl AffinityService {
    /// On the leader, a `Resolve` that finds a live lease it would keep as it is (its
    /// endpoint eligible, no idle timeout to refresh) changes nothing: applied, it would
    /// only return that lease. Answer it with a linearizable read (by the leader's lease, or
    /// a read-index round to a quorum when the lease has lapsed; no log append, no disk
    /// sync) instead of a log write. The answer is the same one the write would give, at a
    /// point between the call's start and its end.
    async fn kept_lease(
        &self,
        checked: &request::Resolve,
        budget: Budget,
    ) -> Result<Option<pb::ResolveResponse>, ServiceError> {
        let node = &self.ctx.node;
        if !node.is_leader() {
            return Ok(None);
        }
        // A retry of a write this store already applied gets that write's answer.
        if let Some(id) = RequestId::checked(checked.request_id.clone())
            && node.state().outcome_of(&id, node.stamp_now()).is_some()
        {
            node.linearize_by_lease(budget).await?;
            return match node.state().outcome_of(&id, node.stamp_now()) {
                Some(Outcome::Resolved {
                    lease,
                    created,
                    replaced,
                }) => Ok(Some(pb::ResolveResponse {
                    lease: Some(lease.to_pb()),
                    created,
                    replaced,
                })),
                Some(other) => Err(unexpected(&other, &checked.request_id)),
                // Forgotten meanwhile: the write path decides.
                None => Ok(None),
            };
        }
        let kept = || {
            node.state()
                .lookup(&checked.scope, checked.key, node.stamp_now())
                .filter(|lease| {
                    lease.idle_timeout_ms.is_none()
                        && (checked.eligible.is_empty()
                            || checked.eligible.iter().any(|e| **e == *lease.endpoint))
                })
        };
        // Most calls for a new key skip the read-index round altogether.
        if kept().is_none() {
            return Ok(None);
        }
        node.linearize_by_lease(budget).await?;
        Ok(kept().map(|lease| pb::ResolveResponse {
            lease: Some(lease.to_pb()),
            created: false,
            replaced: false,
        }))
    }
}

#[tonic::async_trait]
impl Affinity for AffinityService {
    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        serve("Resolve", &self.ctx, request, async |call, mut wire| {
            name_write(call, &mut wire.request_id);
            let checked = request::Resolve::try_from(wire).map_err(invalid)?;
            // Made again from the checked request only if it is sent on: a hit copies nothing.
            let spare = || Some(pb::ResolveRequest::from(&checked));
            call.record_key(&checked.scope, &checked.key);
            let request_id = checked.request_id.clone();
            let answer = |outcome| match outcome {
                Outcome::Resolved {
                    lease,
                    created,
                    replaced,
                } => Ok(pb::ResolveResponse {
                    lease: Some(lease.to_pb()),
                    created,
                    replaced,
                }),
                other => Err(unexpected(&other, &request_id)),
            };
            let budget = call.budget(self.ctx.node.proposal_timeout());
            let work = async {
                if let Some(kept) = self.kept_lease(&checked, budget).await? {
                    return Ok(kept);
                }
                if self.ctx.node.is_leader() {
                    self.ctx.node.admit_create(&checked.scope, checked.key)?;
                }
                // Boxed, so that a read served from a kept lease does not carry the (much
                // larger) write future with it.
                let op = Op::resolve(checked.clone());
                answer(Box::pin(self.ctx.node.propose(op, budget)).await?)
            };
            self.ctx
                .here_or_leader(call, budget, spare, work, |channel, req| async move {
                    client(channel).resolve(req).await
                })
                .await
        })
        .await
    }

    async fn lookup(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        serve("Lookup", &self.ctx, request, async |call, wire| {
            let spare = self.ctx.spare(call, &wire);
            let checked = request::Lookup::try_from(wire).map_err(invalid)?;
            call.record_key(&checked.scope, &checked.key);
            let read = || {
                let state = self.ctx.node.state();
                let lease = state.lookup(&checked.scope, checked.key, self.ctx.node.stamp_now());
                Ok(pb::LookupResponse {
                    lease: lease.as_ref().map(crate::sm::Lease::to_pb),
                })
            };
            if checked.allow_stale {
                return read().map_err(|e: ServiceError| Status::from(e));
            }
            self.ctx
                .read_or_forward(
                    call,
                    || spare,
                    read,
                    |channel, req| async move { client(channel).lookup(req).await },
                )
                .await
        })
        .await
    }

    async fn reassign(
        &self,
        request: Request<pb::ReassignRequest>,
    ) -> Result<Response<pb::ReassignResponse>, Status> {
        serve("Reassign", &self.ctx, request, async |call, mut wire| {
            name_write(call, &mut wire.request_id);
            let spare = self.ctx.spare(call, &wire);
            let checked = request::Reassign::try_from(wire).map_err(invalid)?;
            call.record_key(&checked.scope, &checked.key);
            let request_id = checked.request_id.clone();
            let answer = |outcome| match outcome {
                Outcome::Reassigned { lease, swapped } => Ok(pb::ReassignResponse {
                    lease: lease.as_ref().map(crate::sm::Lease::to_pb),
                    swapped,
                }),
                other => Err(unexpected(&other, &request_id)),
            };
            self.ctx
                .propose_or_forward(
                    call,
                    Op::reassign(checked),
                    || spare,
                    answer,
                    |channel, req| async move { client(channel).reassign(req).await },
                )
                .await
        })
        .await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        serve("Release", &self.ctx, request, async |call, mut wire| {
            name_write(call, &mut wire.request_id);
            let spare = self.ctx.spare(call, &wire);
            let checked = request::Release::try_from(wire).map_err(invalid)?;
            call.record_key(&checked.scope, &checked.key);
            let request_id = checked.request_id.clone();
            let op = Op::release(checked);
            let answer = |outcome| match outcome {
                Outcome::Released(released) => Ok(pb::ReleaseResponse { released }),
                other => Err(unexpected(&other, &request_id)),
            };
            self.ctx
                .propose_or_forward(
                    call,
                    op,
                    || spare,
                    answer,
                    |channel, req| async move { client(channel).release(req).await },
                )
                .await
        })
        .await
    }

    async fn drain_endpoint(
        &self,
        request: Request<pb::DrainEndpointRequest>,
    ) -> Result<Response<pb::DrainEndpointResponse>, Status> {
        serve(
            "DrainEndpoint",
            &self.ctx,
            request,
            async |call, mut wire| {
                name_write(call, &mut wire.request_id);
                let spare = self.ctx.spare(call, &wire);
                let checked = request::DrainEndpoint::try_from(wire).map_err(invalid)?;
                call.span()
                    .record("scope", checked.scope.as_deref().unwrap_or("*"));
                let request_id = checked.request_id.clone();
                let op = Op::drain(checked);
                let answer = |outcome| match outcome {
                    Outcome::Drained(removed) => Ok(pb::DrainEndpointResponse { removed }),
                    other => Err(unexpected(&other, &request_id)),
                };
                self.ctx
                    .propose_or_forward(
                        call,
                        op,
                        || spare,
                        answer,
                        |channel, req| async move { client(channel).drain_endpoint(req).await },
                    )
                    .await
            },
        )
        .await
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        serve("List", &self.ctx, request, async |call, wire| {
            let spare = self.ctx.spare(call, &wire);
            let checked = request::List::try_from(wire).map_err(invalid)?;
            let after = if checked.page_token.is_empty() {
                None
            } else {
                let (scope, key) = decode_token(&checked.page_token).map_err(invalid)?;
                if checked.scope.as_deref().is_some_and(|s| s != scope) {
                    return Err(invalid(ValidationError::new(
                        "page_token",
                        "belongs to a listing of another scope",
                    )));
                }
                Some((scope, key))
            };
            let read = || {
                let (leases, more) = self.ctx.node.state().list(
                    checked.scope.as_deref(),
                    after.as_ref().map(|(s, k)| (s.as_str(), *k)),
                    checked.page_size as usize,
                    self.ctx.node.stamp_now(),
                );
                let next_page_token = match (more, leases.last()) {
                    (true, Some(last)) => encode_token(&last.scope, &last.key),
                    _ => String::new(),
                };
                Ok(pb::ListResponse {
                    leases: leases.iter().map(crate::sm::Lease::to_pb).collect(),
                    next_page_token,
                })
            };
            self.ctx
                .read_or_forward(
                    call,
                    || spare,
                    read,
                    |channel, req| async move { client(channel).list(req).await },
                )
                .await
        })
        .await
    }

    type WatchStream = watch::WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let answer = serve("Watch", &self.ctx, request, async |call, wire| {
            let checked = request::Watch::try_from(wire).map_err(invalid)?;
            call.span().record("scope", checked.scope.as_deref().unwrap_or("*"));
            let start = checked.start_revision;
            let slot = self.ctx.node.admit_watcher()?;
            let subscription = self.ctx.node.state().subscribe(start).map_err(|floor| {
                Status::from(ServiceError::OutOfRange(format!(
                    "start_revision {start} is older than this node's change history, which begins at revision {floor}; re-read with List and watch from now"
                )))
            })?;
            let since = subscription.since;
            let node = self.ctx.node.clone();
            let progress = watch::Progress {
                every: watch::PROGRESS_EVERY,
                probe: Arc::new(move || (node.state().applied_revision(), node.in_touch_with_leader())),
            };
            Ok((
                watch::stream(subscription, checked.scope, self.ctx.shutdown.clone(), slot, progress),
                since,
            ))
        })
        .await?;
        let (metadata, (stream, since), extensions) = answer.into_parts();
        let mut response = Response::from_parts(metadata, stream, extensions);
        response.metadata_mut().insert(
            REVISION_METADATA,
            tonic::metadata::MetadataValue::from(since),
        );
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let key: ClientKey = "10.1.2.0/24".parse().unwrap();
        let token = encode_token("ns/route/0", &key);
        assert_eq!(
            decode_token(&token).unwrap(),
            ("ns/route/0".to_string(), key)
        );
        for bad in ["", "!!!", "AAAA", &URL_SAFE_NO_PAD.encode(b"\xff\xff\xff")] {
            assert_eq!(
                decode_token(bad).unwrap_err().field,
                "page_token",
                "{bad:?}"
            );
        }
    }
}
