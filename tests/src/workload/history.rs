//! What the workload records: one [`Call`] per attempt, with its request, the node or client
//! that carried it, its invoke and response times on the test process's clock, and what came
//! back. The checker reads nothing else.

use std::fmt;

use affinity_proto::pb;

/// One operation as sent, with its arguments (the key is on the [`Call`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Get-or-create, proposing an endpoint no other call proposes.
    Resolve {
        /// The endpoint proposed for a new lease.
        proposed: String,
        /// Endpoints that may serve (empty: any).
        eligible: Vec<String>,
    },
    /// Compare-and-set from `expected` to `endpoint` (unique to this call).
    Reassign {
        /// The endpoint the live lease must name.
        expected: String,
        /// The endpoint of the new lease.
        endpoint: String,
    },
    /// Delete the key's lease.
    Release,
    /// Delete every lease on `endpoint` in the key's scope.
    Drain {
        /// The endpoint drained (one this worker saw for the call's key).
        endpoint: String,
    },
    /// A linearizable read of the key's lease.
    Lookup,
}

impl Request {
    /// The operation's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Resolve { .. } => "Resolve",
            Request::Reassign { .. } => "Reassign",
            Request::Release => "Release",
            Request::Drain { .. } => "DrainEndpoint",
            Request::Lookup => "Lookup",
        }
    }

    /// Whether the operation may change the store.
    pub fn is_write(&self) -> bool {
        !matches!(self, Request::Lookup)
    }

    /// The endpoint this call proposes for a new lease, if it may create one.
    pub fn proposal(&self) -> Option<&str> {
        match self {
            Request::Resolve { proposed, .. } => Some(proposed),
            Request::Reassign { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Resolve { proposed, eligible } if eligible.is_empty() => {
                write!(f, "Resolve(propose {proposed})")
            }
            Request::Resolve { proposed, eligible } => write!(
                f,
                "Resolve(propose {proposed}, eligible [{}])",
                eligible.join(", ")
            ),
            Request::Reassign { expected, endpoint } => {
                write!(f, "Reassign({expected} -> {endpoint})")
            }
            Request::Release => f.write_str("Release"),
            Request::Drain { endpoint } => write!(f, "DrainEndpoint({endpoint})"),
            Request::Lookup => f.write_str("Lookup"),
        }
    }
}

/// A lease as an answer named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Seen {
    /// Its endpoint.
    pub endpoint: String,
    /// Its creation stamp; `None` where the client crate does not say (its `resolve`
    /// answers carry only the end).
    pub created_at_ms: Option<i64>,
    /// Its absolute end.
    pub expires_at_ms: i64,
}

impl Seen {
    /// A lease from the wire.
    pub fn from_pb(lease: &pb::Lease) -> Seen {
        Seen {
            endpoint: lease.endpoint.clone(),
            created_at_ms: Some(lease.created_at_ms),
            expires_at_ms: lease.expires_at_ms,
        }
    }
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.created_at_ms {
            Some(c) => write!(f, "{} [{c}, {})", self.endpoint, self.expires_at_ms),
            None => write!(f, "{} [?, {})", self.endpoint, self.expires_at_ms),
        }
    }
}

/// What a successful call returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A Resolve's decision.
    Resolved {
        /// The lease after the call.
        lease: Seen,
        /// This call created it.
        created: bool,
        /// This call replaced an ineligible live lease with it.
        replaced: bool,
        /// It came from the client's cache, not the store.
        cached: bool,
    },
    /// A Reassign's result: the lease after the call, and whether it swapped.
    Reassigned {
        /// The live lease after the call, if any.
        lease: Option<Seen>,
        /// The swap happened.
        swapped: bool,
    },
    /// A Release's result: a live lease was deleted.
    Released(bool),
    /// A DrainEndpoint's result: how many leases were deleted.
    Drained(u64),
    /// A Lookup's result.
    Looked(Option<Seen>),
}

impl Answer {
    /// The lease the answer names, if any.
    pub fn lease(&self) -> Option<&Seen> {
        match self {
            Answer::Resolved { lease, .. } => Some(lease),
            Answer::Reassigned { lease, .. } | Answer::Looked(lease) => lease.as_ref(),
            Answer::Released(_) | Answer::Drained(_) => None,
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Resolved {
                lease,
                created,
                replaced,
                cached,
            } => {
                let how = match (created, replaced, cached) {
                    (_, _, true) => "from the cache",
                    (true, _, _) => "created",
                    (_, true, _) => "replaced",
                    _ => "kept",
                };
                write!(f, "{how} {lease}")
            }
            Answer::Reassigned {
                lease: Some(l),
                swapped,
            } => write!(
                f,
                "{} {l}",
                if *swapped { "swapped" } else { "not swapped" }
            ),
            Answer::Reassigned { lease: None, .. } => f.write_str("not swapped, no lease"),
            Answer::Released(r) => write!(f, "released {r}"),
            Answer::Drained(n) => write!(f, "removed {n}"),
            Answer::Looked(Some(l)) => write!(f, "{l}"),
            Answer::Looked(None) => f.write_str("no lease"),
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An answer.
    Ok(Answer),
    /// An error: a gRPC code name (`UNAVAILABLE`, `INVALID_ARGUMENT`...), `TIMEOUT` (the
    /// test's own deadline passed first) or `SKIPPED` (the client crate did not try a store
    /// that failed just before).
    Err {
        /// The code.
        code: String,
        /// What was said.
        message: String,
    },
}

/// Whether an error with this code leaves the call's effect unknown: it may have been
/// applied, possibly after the caller gave up. Every other code is a definite refusal.
/// (`MALFORMED`: an answer the store should never give; what it did is unknown too.)
pub fn outcome_unknown(code: &str) -> bool {
    matches!(
        code,
        "UNAVAILABLE"
            | "DEADLINE_EXCEEDED"
            | "CANCELLED"
            | "UNKNOWN"
            | "INTERNAL"
            | "TIMEOUT"
            | "MALFORMED"
    )
}

/// Who carried a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A raw gRPC stub, to node `node` (which may have forwarded it).
    Raw {
        /// The node's index.
        node: usize,
    },
    /// The client crate (which picks nodes and retries itself).
    Client {
        /// With its cache on.
        cache: bool,
    },
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Raw { node } => write!(f, "raw@node{node}"),
            Via::Client { cache: false } => f.write_str("crate"),
            Via::Client { cache: true } => f.write_str("crate+cache"),
        }
    }
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which worker made it.
    pub worker: usize,
    /// How it reached the store.
    pub via: Via,
    /// Which key, see [`super::key`].
    pub key: usize,
    /// What was asked.
    pub request: Request,
    /// The write's request id when the worker set it itself (raw workers); attempts with
    /// one id are one logical call.
    pub request_id: Option<String>,
    /// Unix ms when the call was sent (the host clock, which the containers share).
    pub invoke_ms: i64,
    /// Unix ms when it returned.
    pub response_ms: i64,
    /// What it returned.
    pub outcome: Outcome,
}

impl Call {
    /// Whether the call got an answer.
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }

    /// The answer, if any.
    pub fn answer(&self) -> Option<&Answer> {
        match &self.outcome {
            Outcome::Ok(a) => Some(a),
            Outcome::Err { .. } => None,
        }
    }

    /// The error code, if it failed.
    pub fn error_code(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Ok(_) => None,
            Outcome::Err { code, .. } => Some(code),
        }
    }
}

impl fmt::Display for Call {
    /// One line: times, worker, carrier, key, request (and id), outcome.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} w{} {} key {} {}",
            self.invoke_ms, self.response_ms, self.worker, self.via, self.key, self.request
        )?;
        if let Some(id) = &self.request_id {
            write!(f, " id {id}")?;
        }
        match &self.outcome {
            Outcome::Ok(a) => write!(f, " -> {a}"),
            Outcome::Err { code, message } => write!(f, " -> {code}: {message}"),
        }
    }
}

/// Everything the workload did.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every attempt, by invoke time.
    pub calls: Vec<Call>,
    /// Unix ms when the workload started.
    pub started_ms: i64,
    /// Unix ms when it stopped.
    pub ended_ms: i64,
}
