//! Commands the log carries, what applying one returns, and the change events it emits.
//!
//! A [`Command`] is stamped with the proposing leader's clock; [`Op`] says what to do. The
//! log stores commands as `pb::Command` ([`Command::to_pb`], [`Command::from_pb`]); decoding
//! re-checks every field so that a damaged record is reported, never applied.

use std::fmt;

use affinity_proto::request::{check_endpoint, check_scope};
use affinity_proto::{ClientKey, Policy, ValidationError, pb, request};

use super::lease::{Lease, prefix_from_pb, prefix_to_pb};
use super::once::RequestId;
use super::snapshot::leases_from_stored;

/// A state-machine command: an operation and the leader's clock when it was proposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Leader's wall clock at proposal, Unix ms. Apply uses `max(previous, stamp_ms)`.
    pub stamp_ms: i64,
    /// What to do.
    pub op: Op,
}

/// The operations of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Get-or-create, replacing a live lease whose endpoint is not eligible.
    Resolve {
        /// Persistence domain.
        scope: String,
        /// Masked client key.
        key: ClientKey,
        /// Endpoint for a new lease.
        endpoint: String,
        /// Endpoints that may serve; empty means any.
        eligible: Vec<String>,
        /// Lifetime of a new lease.
        absolute_timeout_ms: u64,
        /// Idle timeout of a new lease.
        idle_timeout_ms: Option<u64>,
    },
    /// Compare-and-set of a live lease's endpoint; the new lease is a new session.
    Reassign {
        /// Persistence domain.
        scope: String,
        /// Masked client key.
        key: ClientKey,
        /// Endpoint the live lease must name.
        expected_endpoint: String,
        /// Endpoint of the new lease.
        endpoint: String,
        /// Lifetime of the new lease.
        absolute_timeout_ms: u64,
        /// Idle timeout of the new lease.
        idle_timeout_ms: Option<u64>,
    },
    /// Delete one lease.
    Release {
        /// Persistence domain.
        scope: String,
        /// Masked client key.
        key: ClientKey,
    },
    /// Delete every lease on an endpoint, in one scope or all.
    DrainEndpoint {
        /// One scope, or every scope.
        scope: Option<String>,
        /// The endpoint.
        endpoint: String,
    },
    /// Record a use of live leases (idle-timeout refresh).
    Touch {
        /// (scope, key) of each lease.
        keys: Vec<(String, ClientKey)>,
    },
    /// Remove every lease that ended at or before `up_to_ms`.
    Sweep {
        /// Upper bound of the sweep (capped at the command's own time).
        up_to_ms: i64,
    },
    /// Put back leases from a backup: each one still live whose key holds no live lease is
    /// created with its own times; the others are skipped.
    Import {
        /// The leases, as read from the backup.
        leases: Vec<Lease>,
    },
    /// Client operations proposed together, applied in order at the batch's stamp and log
    /// index; only [`Op::batchable`] ones, never empty.
    Batch(Vec<Op>),
    /// A named client write (see [`super::once`]): applied only if `id` is not remembered;
    /// otherwise its first outcome is returned and nothing changes. Never nested.
    Once {
        /// The caller's name for the write.
        id: RequestId,
        /// The write: a resolve, reassign, release or drain.
        op: Box<Op>,
    },
}

impl Op {
    /// A Resolve from a checked request (named when the request is).
    pub fn resolve(req: request::Resolve) -> Self {
        Op::Resolve {
            scope: req.scope,
            key: req.key,
            endpoint: req.endpoint,
            eligible: req.eligible,
            absolute_timeout_ms: req.policy.absolute_timeout_ms(),
            idle_timeout_ms: req.policy.idle_timeout_ms(),
        }
        .named(RequestId::checked(req.request_id))
    }

    /// A Reassign from a checked request (named when the request is).
    pub fn reassign(req: request::Reassign) -> Self {
        Op::Reassign {
            scope: req.scope,
            key: req.key,
            expected_endpoint: req.expected_endpoint,
            endpoint: req.endpoint,
            absolute_timeout_ms: req.policy.absolute_timeout_ms(),
            idle_timeout_ms: req.policy.idle_timeout_ms(),
        }
        .named(RequestId::checked(req.request_id))
    }

    /// A Release from a checked request (named when the request is).
    pub fn release(req: request::Release) -> Self {
        Op::Release {
            scope: req.scope,
            key: req.key,
        }
        .named(RequestId::checked(req.request_id))
    }

    /// A DrainEndpoint from a checked request (named when the request is).
    pub fn drain(req: request::DrainEndpoint) -> Self {
        Op::DrainEndpoint {
            scope: req.scope,
            endpoint: req.endpoint,
        }
        .named(RequestId::checked(req.request_id))
    }

    /// `self`, named `id` when there is one.
    #[must_use]
    pub fn named(self, id: Option<RequestId>) -> Self {
        match id {
            Some(id) => Op::Once {
                id,
                op: Box::new(self),
            },
            None => self,
        }
    }

    /// Whether the leader may propose this operation together with others in one entry:
    /// the small per-client writes (resolve, reassign, release), named or not.
    pub fn batchable(&self) -> bool {
        match self {
            Op::Resolve { .. } | Op::Reassign { .. } | Op::Release { .. } => true,
            Op::Once { op, .. } => op.batchable(),
            _ => false,
        }
    }

    /// Whether a caller may name this operation: the client writes.
    fn nameable(&self) -> bool {
        matches!(
            self,
            Op::Resolve { .. }
                | Op::Reassign { .. }
                | Op::Release { .. }
                | Op::DrainEndpoint { .. }
        )
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Resolve { .. } => "resolve",
            Op::Reassign { .. } => "reassign",
            Op::Release { .. } => "release",
            Op::DrainEndpoint { .. } => "drain_endpoint",
            Op::Touch { .. } => "touch",
            Op::Sweep { .. } => "sweep",
            Op::Import { .. } => "import",
            Op::Batch(_) => "batch",
            Op::Once { op, .. } => op.name(),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.op.name(), self.stamp_ms)?;
        describe(&self.op, f)
    }
}

/// What an operation is about, for logs.
fn describe(op: &Op, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match op {
        Op::Resolve { scope, key, .. }
        | Op::Reassign { scope, key, .. }
        | Op::Release { scope, key } => write!(f, "({scope} {key})"),
        Op::DrainEndpoint { scope, endpoint } => {
            write!(f, "({} {endpoint})", scope.as_deref().unwrap_or("*"))
        }
        Op::Touch { keys } => write!(f, "({} keys)", keys.len()),
        Op::Sweep { up_to_ms } => write!(f, "(<= {up_to_ms})"),
        Op::Import { leases } => write!(f, "({} leases)", leases.len()),
        Op::Batch(ops) => write!(f, "({} ops)", ops.len()),
        Op::Once { id, op } => {
            describe(op, f)?;
            write!(f, "[{id}]")
        }
    }
}

/// What applying a command returned to its proposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Result of a Resolve.
    Resolved {
        /// The live lease after the call.
        lease: Lease,
        /// No live lease existed; this one was created.
        created: bool,
        /// A live lease on an ineligible endpoint was replaced.
        replaced: bool,
    },
    /// Result of a Reassign.
    Reassigned {
        /// The live lease after the call, if any.
        lease: Option<Lease>,
        /// The swap happened.
        swapped: bool,
    },
    /// Result of a Release: a live lease was deleted.
    Released(bool),
    /// Result of a DrainEndpoint: live leases deleted.
    Drained(u64),
    /// Result of a Touch: live leases touched.
    Touched(u64),
    /// Result of a Sweep: leases removed.
    Swept(u64),
    /// Result of a Batch: each operation's outcome, in order.
    Batch(Vec<Outcome>),
    /// Result of an Import.
    Imported {
        /// Leases created.
        imported: u64,
        /// Skipped: already ended.
        expired: u64,
        /// Skipped: the key holds a live lease.
        present: u64,
    },
    /// Entries that carry no command (blank, membership).
    Nothing,
}

/// Kinds of change, as the `Watch` stream reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A lease was created.
    Created,
    /// A live lease was replaced by a new one.
    Replaced,
    /// A lease was released.
    Released,
    /// A lease was removed by DrainEndpoint.
    Drained,
    /// A lease that had ended was removed.
    Expired,
}

impl EventKind {
    /// The wire enum.
    pub fn to_pb(self) -> pb::watch_event::Kind {
        match self {
            EventKind::Created => pb::watch_event::Kind::Created,
            EventKind::Replaced => pb::watch_event::Kind::Replaced,
            EventKind::Released => pb::watch_event::Kind::Released,
            EventKind::Drained => pb::watch_event::Kind::Drained,
            EventKind::Expired => pb::watch_event::Kind::Expired,
        }
    }
}

/// One change to one lease. For Created and Replaced, `lease` is the new lease; otherwise
/// it is the lease that was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The lease concerned.
    pub lease: Lease,
    /// Log index of the change.
    pub revision: u64,
}

impl Event {
    /// The wire form.
    pub fn to_pb(&self) -> pb::WatchEvent {
        pb::WatchEvent {
            kind: self.kind.to_pb().into(),
            lease: Some(self.lease.to_pb()),
            revision: self.revision,
            in_touch_with_leader: false,
        }
    }
}

fn key_to_pb(scope: &str, key: &ClientKey) -> pb::LeaseKey {
    pb::LeaseKey {
        scope: scope.to_owned(),
        prefix: Some(prefix_to_pb(key)),
    }
}

fn key_from_pb(key: Option<&pb::LeaseKey>) -> Result<(String, ClientKey), ValidationError> {
    let key = key.ok_or_else(|| ValidationError::new("key", "is missing"))?;
    check_scope("key.scope", &key.scope)?;
    let prefix = prefix_from_pb(key.prefix.as_ref()).map_err(|e| e.within("key"))?;
    Ok((key.scope.clone(), prefix))
}

fn timeouts(absolute: u64, idle: Option<u64>) -> Result<(), ValidationError> {
    // The same rules as a request's policy; the masks are not stored in commands.
    Policy::from_millis(affinity_proto::Masks::default(), absolute, idle).map(|_| ())
}

impl Command {
    /// The log record form.
    pub fn to_pb(&self) -> pb::Command {
        command_to_pb(self.stamp_ms, &self.op)
    }

    /// Decode and re-check a log record.
    pub fn from_pb(wire: pb::Command) -> Result<Self, ValidationError> {
        Ok(Command {
            stamp_ms: wire.stamp_ms,
            op: named_op_from_pb(&wire.request_id, wire.op)?,
        })
    }
}

/// A command record: a named write carries its name beside the operation.
fn command_to_pb(stamp_ms: i64, op: &Op) -> pb::Command {
    let (request_id, op) = match op {
        Op::Once { id, op } => (id.as_str().to_owned(), &**op),
        op => (String::new(), op),
    };
    pb::Command {
        stamp_ms,
        request_id,
        op: Some(op_to_pb(op)),
    }
}

/// The operation of a command record, named when the record carries a request id.
fn named_op_from_pb(
    request_id: &str,
    wire: Option<pb::command::Op>,
) -> Result<Op, ValidationError> {
    let id = RequestId::parse("command.request_id", request_id)?;
    let op = op_from_pb(wire)?;
    if id.is_some() && !op.nameable() {
        return Err(ValidationError::new(
            "command.request_id",
            format!(
                "names a {} (only resolve, reassign, release and drain_endpoint are named)",
                op.name()
            ),
        ));
    }
    Ok(op.named(id))
}

fn op_to_pb(op: &Op) -> pb::command::Op {
    use pb::command::Op as W;
    match op {
        // Named writes are encoded by `command_to_pb`; a name never nests.
        Op::Once { op, .. } => op_to_pb(op),
        Op::Resolve {
            scope,
            key,
            endpoint,
            eligible,
            absolute_timeout_ms,
            idle_timeout_ms,
        } => W::Resolve(pb::ResolveOp {
            key: Some(key_to_pb(scope, key)),
            endpoint: endpoint.clone(),
            eligible_endpoints: eligible.clone(),
            absolute_timeout_ms: *absolute_timeout_ms,
            idle_timeout_ms: *idle_timeout_ms,
        }),
        Op::Reassign {
            scope,
            key,
            expected_endpoint,
            endpoint,
            absolute_timeout_ms,
            idle_timeout_ms,
        } => W::Reassign(pb::ReassignOp {
            key: Some(key_to_pb(scope, key)),
            expected_endpoint: expected_endpoint.clone(),
            endpoint: endpoint.clone(),
            absolute_timeout_ms: *absolute_timeout_ms,
            idle_timeout_ms: *idle_timeout_ms,
        }),
        Op::Release { scope, key } => W::Release(pb::ReleaseOp {
            key: Some(key_to_pb(scope, key)),
        }),
        Op::DrainEndpoint { scope, endpoint } => W::DrainEndpoint(pb::DrainEndpointOp {
            scope: scope.clone().unwrap_or_default(),
            endpoint: endpoint.clone(),
        }),
        Op::Touch { keys } => W::Touch(pb::TouchOp {
            keys: keys.iter().map(|(s, k)| key_to_pb(s, k)).collect(),
        }),
        Op::Sweep { up_to_ms } => W::Sweep(pb::SweepOp {
            up_to_ms: *up_to_ms,
        }),
        Op::Import { leases } => W::Import(pb::ImportOp {
            leases: leases.iter().map(Lease::to_stored).collect(),
        }),
        Op::Batch(ops) => W::Batch(pb::BatchOp {
            ops: ops.iter().map(|op| command_to_pb(0, op)).collect(),
        }),
    }
}

fn op_from_pb(wire: Option<pb::command::Op>) -> Result<Op, ValidationError> {
    use pb::command::Op as W;
    let op = match wire {
        None => return Err(ValidationError::new("command.op", "is missing")),
        Some(W::Resolve(r)) => {
            let (scope, key) = key_from_pb(r.key.as_ref())?;
            check_endpoint("endpoint", &r.endpoint)?;
            for (i, e) in r.eligible_endpoints.iter().enumerate() {
                check_endpoint(format!("eligible_endpoints[{i}]"), e)?;
            }
            timeouts(r.absolute_timeout_ms, r.idle_timeout_ms)?;
            Op::Resolve {
                scope,
                key,
                endpoint: r.endpoint,
                eligible: r.eligible_endpoints,
                absolute_timeout_ms: r.absolute_timeout_ms,
                idle_timeout_ms: r.idle_timeout_ms,
            }
        }
        Some(W::Reassign(r)) => {
            let (scope, key) = key_from_pb(r.key.as_ref())?;
            check_endpoint("expected_endpoint", &r.expected_endpoint)?;
            check_endpoint("endpoint", &r.endpoint)?;
            timeouts(r.absolute_timeout_ms, r.idle_timeout_ms)?;
            Op::Reassign {
                scope,
                key,
                expected_endpoint: r.expected_endpoint,
                endpoint: r.endpoint,
                absolute_timeout_ms: r.absolute_timeout_ms,
                idle_timeout_ms: r.idle_timeout_ms,
            }
        }
        Some(W::Release(r)) => {
            let (scope, key) = key_from_pb(r.key.as_ref())?;
            Op::Release { scope, key }
        }
        Some(W::DrainEndpoint(d)) => {
            let scope = if d.scope.is_empty() {
                None
            } else {
                check_scope("scope", &d.scope)?;
                Some(d.scope)
            };
            check_endpoint("endpoint", &d.endpoint)?;
            Op::DrainEndpoint {
                scope,
                endpoint: d.endpoint,
            }
        }
        Some(W::Touch(t)) => Op::Touch {
            keys: t
                .keys
                .iter()
                .map(|k| key_from_pb(Some(k)))
                .collect::<Result<_, _>>()?,
        },
        Some(W::Sweep(s)) => Op::Sweep {
            up_to_ms: s.up_to_ms,
        },
        Some(W::Import(i)) => Op::Import {
            leases: leases_from_stored(i.leases)?,
        },
        Some(W::Batch(b)) => {
            if b.ops.is_empty() {
                return Err(ValidationError::new(
                    "command.batch.ops",
                    "must not be empty",
                ));
            }
            let mut ops = Vec::with_capacity(b.ops.len());
            for (i, inner) in b.ops.into_iter().enumerate() {
                let op = named_op_from_pb(&inner.request_id, inner.op)?;
                if !op.batchable() {
                    return Err(ValidationError::new(
                        format!("command.batch.ops[{i}]"),
                        format!(
                            "{} cannot be batched (only resolve, reassign and release)",
                            op.name()
                        ),
                    ));
                }
                ops.push(op);
            }
            Op::Batch(ops)
        }
    };
    Ok(op)
}
