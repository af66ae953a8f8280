//! From a recorded history to one sub-history per key, ready for the search.
//!
//! - Attempts that share a request id are one logical call: it spans them all, and its
//!   outcome is the answer one of them got, else unknown if any attempt's outcome is
//!   unknown, else a refusal (which had no effect).
//! - Every lease any answer (or the final `List`) named becomes a [`LeaseInfo`], tied to
//!   the one call that proposed its endpoint (every proposal is unique to its call).
//! - A write of unknown outcome whose proposal some answer shows was applied, with that
//!   lease's stamps; one whose proposal nobody saw may have created a phantom, or nothing.
//! - A `DrainEndpoint` belongs to the key its endpoint was proposed for; reads of unknown
//!   outcome and refused calls drop out; answers from a client cache are set aside for
//!   their own, weaker check.

use std::collections::HashMap;

use affinity_proto::pb;

use super::model::{
    Act, KeyHistory, LeaseInfo, Op, Origin, ReassignResult, ResolveResult, UNNAMED,
};
use super::{Rule, Violation};
use crate::workload::history::{Answer, Call, History, Outcome, Request, Seen, outcome_unknown};
use crate::workload::{WorkloadOptions, key, key_of};

/// How a logical call ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fate<'h> {
    /// It got this answer, at this response time.
    Answered(&'h Answer, i64),
    /// No attempt got an answer and at least one may have been applied.
    Unknown,
    /// Refused for good (the code of the last attempt).
    Refused(&'h str),
}

/// One logical call: its attempts (one, or a raw worker's try and retry under one id).
#[derive(Debug, Clone)]
pub(crate) struct Logical<'h> {
    /// Its attempts, in order.
    pub attempts: Vec<&'h Call>,
    /// How it ended.
    pub fate: Fate<'h>,
}

impl Logical<'_> {
    /// The first attempt.
    pub fn first(&self) -> &Call {
        self.attempts[0]
    }
}

/// Endpoints by number.
#[derive(Debug, Default)]
pub(crate) struct Names {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Names {
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 endpoints");
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }
    pub fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// The final `List`: what it returned and when it ran (all its pages).
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Every lease listed, in the workload's scopes.
    pub leases: Vec<pb::Lease>,
    /// When the first page was asked for (Unix ms).
    pub invoke_ms: i64,
    /// When the last page came back.
    pub response_ms: i64,
}

/// A cached answer set aside: the logical call, its key and the lease it named.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cached {
    pub call: usize,
    pub key: usize,
    pub lease: u32,
}

/// The history, cut by key.
pub(crate) struct Prepared<'h> {
    pub calls: Vec<Logical<'h>>,
    pub names: Names,
    /// Sub-histories of keys that have operations, by key.
    pub keys: Vec<KeyHistory>,
    pub cached: Vec<Cached>,
    pub violations: Vec<Violation>,
    /// Reads whose outcome is unknown (dropped).
    pub dropped_reads: usize,
    /// Calls refused for good (dropped).
    pub refused: usize,
}

/// The lifetime of key `k`'s leases, in ms.
pub(crate) fn lifetime_ms(k: usize, workload: &WorkloadOptions) -> i64 {
    i64::try_from(key(k, workload).2.as_millis()).unwrap_or(i64::MAX)
}

/// Group attempts into logical calls.
fn logical_calls(history: &History) -> Vec<Logical<'_>> {
    let mut calls: Vec<Logical<'_>> = Vec::new();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for call in &history.calls {
        match call.request_id.as_deref() {
            Some(id) if by_id.contains_key(id) => calls[by_id[id]].attempts.push(call),
            id => {
                if let Some(id) = id {
                    by_id.insert(id, calls.len());
                }
                calls.push(Logical {
                    attempts: vec![call],
                    fate: Fate::Unknown,
                });
            }
        }
    }
    for logical in &mut calls {
        logical.attempts.sort_by_key(|c| c.invoke_ms);
        let answered = logical.attempts.iter().find_map(|c| match &c.outcome {
            Outcome::Ok(a) => Some((a, c.response_ms)),
            Outcome::Err { .. } => None,
        });
        logical.fate = match answered {
            Some((a, at)) => Fate::Answered(a, at),
            None if logical
                .attempts
                .iter()
                .any(|c| c.error_code().is_some_and(outcome_unknown)) =>
            {
                Fate::Unknown
            }
            None => Fate::Refused(
                logical.attempts[logical.attempts.len() - 1]
                    .error_code()
                    .unwrap_or("?"),
            ),
        };
    }
    calls
}

struct Catalog {
    /// Per key: leases, and lease id by endpoint.
    leases: HashMap<usize, (Vec<LeaseInfo>, HashMap<u32, u32>)>,
    /// Endpoint -> (the logical call that proposed it, its key).
    proposers: HashMap<u32, (usize, usize)>,
}

impl Catalog {
    fn lease(&self, k: usize, endpoint: u32) -> Option<u32> {
        self.leases
            .get(&k)
            .and_then(|(_, ids)| ids.get(&endpoint).copied())
    }
}

/// Cut `history` (and the final `listing`) by key.
pub(crate) fn prepare<'h>(
    history: &'h History,
    workload: &WorkloadOptions,
    listing: Option<&Listing>,
    tolerance_ms: i64,
) -> Prepared<'h> {
    let calls = logical_calls(history);
    let mut names = Names::default();
    let mut violations = Vec::new();
    let mut catalog = Catalog {
        leases: HashMap::new(),
        proposers: HashMap::new(),
    };
    for (i, logical) in calls.iter().enumerate() {
        let first = logical.first();
        if logical
            .attempts
            .iter()
            .any(|c| c.key != first.key || c.request != first.request)
        {
            violations.push(Violation::workload(format!(
                "call #{i}: attempts under one request id differ in key or request"
            )));
        }
        if let Some(p) = first.request.proposal() {
            let e = names.intern(p);
            if catalog.proposers.insert(e, (i, first.key)).is_some() {
                violations.push(Violation::workload(format!(
                    "endpoint {p} is proposed by more than one call"
                )));
            }
        }
    }

    // Every lease named: answers that carry the creation stamp first, then those that
    // carry only the end (the client crate's resolve and its cache).
    let mut named: Vec<(usize, &Seen, String)> = Vec::new();
    for (i, logical) in calls.iter().enumerate() {
        if let Fate::Answered(answer, _) = logical.fate
            && let Some(lease) = answer.lease()
        {
            named.push((logical.first().key, lease, format!("call #{i}")));
        }
    }
    let listed: Vec<(usize, Seen)> = listing
        .map(|l| l.leases.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| {
            let k = key_of(&l.scope, &l.prefix, workload);
            if k.is_none() {
                violations.push(Violation::new(
                    Rule::Unexplained,
                    Some(format!("{} {}", l.scope, l.prefix)),
                    format!(
                        "the final List has a lease on {} for a key the workload never used",
                        l.endpoint
                    ),
                ));
            }
            k.map(|k| (k, Seen::from_pb(l)))
        })
        .collect();
    named.extend(
        listed
            .iter()
            .map(|(k, s)| (*k, s, "the final List".to_string())),
    );
    named.sort_by_key(|(_, s, _)| s.created_at_ms.is_none());
    for (k, seen, by) in named {
        catalogue(
            &mut catalog,
            &mut names,
            &mut violations,
            workload,
            k,
            seen,
            &by,
        );
    }

    let mut ops: HashMap<usize, Vec<Op>> = HashMap::new();
    let mut cached = Vec::new();
    let (mut dropped_reads, mut refused) = (0, 0);
    for (i, logical) in calls.iter().enumerate() {
        let first = logical.first();
        let k = first.key;
        let invoke = first.invoke_ms;
        let proposed = first.request.proposal().and_then(|p| names.get(p));
        let applied = proposed.and_then(|e| catalog.lease(k, e));
        let (response, act) = match logical.fate {
            Fate::Refused(code) => {
                refused += 1;
                if applied.is_some() {
                    violations.push(Violation::new(
                        Rule::UnexpectedWrite,
                        Some(key_name(k, workload)),
                        format!(
                            "call #{i} ({}) was refused ({code}), yet a lease on its proposal exists",
                            first.request
                        ),
                    ));
                }
                continue;
            }
            Fate::Unknown => match (&first.request, proposed) {
                (Request::Lookup, _) => {
                    dropped_reads += 1;
                    continue;
                }
                (Request::Resolve { eligible, .. }, Some(p)) => (
                    i64::MAX,
                    Act::Resolve {
                        proposed: p,
                        eligible: eligible.iter().map(|e| names.intern(e)).collect(),
                        result: applied.map_or(ResolveResult::Maybe, ResolveResult::Applied),
                    },
                ),
                (Request::Reassign { expected, .. }, Some(p)) => (
                    i64::MAX,
                    Act::Reassign {
                        expected: names.intern(expected),
                        new: p,
                        result: applied.map_or(ReassignResult::Maybe, ReassignResult::Applied),
                    },
                ),
                (Request::Release, _) => (i64::MAX, Act::Release(None)),
                (Request::Drain { endpoint }, _) => (
                    i64::MAX,
                    Act::Drain {
                        endpoint: names.intern(endpoint),
                        removed: None,
                    },
                ),
                _ => unreachable!("a Resolve or Reassign always proposes"),
            },
            Fate::Answered(answer, at) => {
                let lease_id = |s: &Seen| {
                    let e = names.get(&s.endpoint).expect("catalogued endpoint");
                    catalog.lease(k, e).expect("catalogued lease")
                };
                let act = match (&first.request, answer) {
                    (
                        Request::Resolve { eligible, .. },
                        Answer::Resolved {
                            lease,
                            created,
                            replaced,
                            cached: from_cache,
                        },
                    ) => {
                        let l = lease_id(lease);
                        if *from_cache {
                            cached.push(Cached {
                                call: i,
                                key: k,
                                lease: l,
                            });
                            continue;
                        }
                        let result = match (created, replaced) {
                            (true, _) => ResolveResult::Created(l),
                            (false, true) => ResolveResult::Replaced(l),
                            (false, false) => ResolveResult::Kept(l),
                        };
                        if applied
                            .is_some_and(|a| a != l || matches!(result, ResolveResult::Kept(_)))
                        {
                            violations.push(unexpected(i, k, workload, &first.request, answer));
                        }
                        Act::Resolve {
                            proposed: proposed.expect("a Resolve proposes"),
                            eligible: eligible.iter().map(|e| names.intern(e)).collect(),
                            result,
                        }
                    }
                    (Request::Reassign { expected, .. }, Answer::Reassigned { lease, swapped }) => {
                        let l = lease.as_ref().map(lease_id);
                        let result = match (swapped, l) {
                            (true, Some(l)) => ReassignResult::Swapped(l),
                            (true, None) => {
                                violations.push(Violation::new(
                                    Rule::NotLinearizable,
                                    Some(key_name(k, workload)),
                                    format!("call #{i}: Reassign swapped but named no lease"),
                                ));
                                continue;
                            }
                            (false, l) => ReassignResult::Kept(l),
                        };
                        if applied.is_some_and(|a| result != ReassignResult::Swapped(a)) {
                            violations.push(unexpected(i, k, workload, &first.request, answer));
                        }
                        Act::Reassign {
                            expected: names.intern(expected),
                            new: proposed.expect("a Reassign proposes"),
                            result,
                        }
                    }
                    (Request::Release, Answer::Released(r)) => Act::Release(Some(*r)),
                    (Request::Drain { endpoint }, Answer::Drained(n)) => Act::Drain {
                        endpoint: names.intern(endpoint),
                        removed: Some(*n),
                    },
                    (Request::Lookup, Answer::Looked(l)) => Act::Read(l.as_ref().map(lease_id)),
                    _ => {
                        violations.push(Violation::workload(format!(
                            "call #{i}: a {} answered as {answer}",
                            first.request.kind()
                        )));
                        continue;
                    }
                };
                (at, act)
            }
        };
        // A drain belongs to the key its endpoint was proposed for.
        let k = match &act {
            Act::Drain { endpoint, .. } => catalog.proposers.get(endpoint).map_or(k, |p| p.1),
            _ => k,
        };
        ops.entry(k).or_default().push(Op {
            origin: Origin::Call(i),
            invoke,
            response,
            lo: invoke.saturating_sub(tolerance_ms),
            hi: response.saturating_add(tolerance_ms),
            act,
            phantom: UNNAMED,
        });
    }

    if let Some(listing) = listing {
        let mut keys: Vec<usize> = ops
            .keys()
            .copied()
            .chain(listed.iter().map(|(k, _)| *k))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            let lease = listed
                .iter()
                .find(|(lk, _)| *lk == k)
                .and_then(|(_, s)| names.get(&s.endpoint).and_then(|e| catalog.lease(k, e)));
            ops.entry(k).or_default().push(Op {
                origin: Origin::FinalList,
                invoke: listing.invoke_ms,
                response: listing.response_ms,
                lo: listing.invoke_ms.saturating_sub(tolerance_ms),
                hi: listing.response_ms.saturating_add(tolerance_ms),
                act: Act::Read(lease),
                phantom: UNNAMED,
            });
        }
    }

    let mut keys: Vec<KeyHistory> = ops
        .into_iter()
        .map(|(k, mut ops)| {
            ops.sort_by_key(|o| (o.invoke, o.response));
            let leases = catalog
                .leases
                .remove(&k)
                .map(|(l, _)| l)
                .unwrap_or_default();
            let mut named: Vec<u32> = ops
                .iter()
                .flat_map(|o| match &o.act {
                    Act::Resolve { eligible, .. } => eligible.clone(),
                    Act::Reassign { expected, .. } => vec![*expected],
                    Act::Drain { endpoint, .. } => vec![*endpoint],
                    Act::Release(_) | Act::Read(_) => Vec::new(),
                })
                .collect();
            named.sort_unstable();
            named.dedup();
            for op in &mut ops {
                if let Some(p) = match &op.act {
                    Act::Resolve { proposed, .. } => Some(*proposed),
                    Act::Reassign { new, .. } => Some(*new),
                    _ => None,
                } && named.binary_search(&p).is_ok()
                {
                    op.phantom = p;
                }
            }
            KeyHistory {
                key: k,
                lifetime_ms: lifetime_ms(k, workload),
                leases,
                ops,
                named,
            }
        })
        .collect();
    keys.sort_by_key(|h| h.key);
    Prepared {
        calls,
        names,
        keys,
        cached,
        violations,
        dropped_reads,
        refused,
    }
}

/// "`scope` `prefix`" of key `k`.
pub(crate) fn key_name(k: usize, workload: &WorkloadOptions) -> String {
    let (scope, ip, _) = key(k, workload);
    format!("{scope} {ip}/32")
}

fn unexpected(
    i: usize,
    k: usize,
    workload: &WorkloadOptions,
    request: &Request,
    answer: &Answer,
) -> Violation {
    Violation::new(
        Rule::UnexpectedWrite,
        Some(key_name(k, workload)),
        format!(
            "call #{i} ({request}) answered \"{answer}\", yet a lease on its proposal exists: it was applied although its answer says it was not"
        ),
    )
}

/// Add one named lease to the catalogue, reporting what is wrong with it on its own.
fn catalogue(
    catalog: &mut Catalog,
    names: &mut Names,
    violations: &mut Vec<Violation>,
    workload: &WorkloadOptions,
    k: usize,
    seen: &Seen,
    by: &str,
) {
    let lifetime = lifetime_ms(k, workload);
    let e = names.intern(&seen.endpoint);
    let created = seen
        .created_at_ms
        .unwrap_or_else(|| seen.expires_at_ms.saturating_sub(lifetime));
    let proposer = catalog.proposers.get(&e).copied();
    let (leases, ids) = catalog.leases.entry(k).or_default();
    if let Some(&id) = ids.get(&e) {
        let known = &leases[id as usize];
        if (known.created, known.expires) != (created, seen.expires_at_ms) {
            violations.push(Violation::new(
                Rule::AppliedTwice,
                Some(key_name(k, workload)),
                format!(
                    "two leases on the unique endpoint {}: [{}, {}) and, in {by}, [{created}, {})",
                    seen.endpoint, known.created, known.expires, seen.expires_at_ms
                ),
            ));
        }
        return;
    }
    if seen.expires_at_ms.saturating_sub(created) != lifetime {
        violations.push(Violation::new(
            Rule::ExtendedLease,
            Some(key_name(k, workload)),
            format!(
                "{by} named the lease {seen}, which lives {} ms; its policy says {lifetime} ms",
                seen.expires_at_ms.saturating_sub(created)
            ),
        ));
    }
    let creator = match proposer {
        None => {
            violations.push(Violation::new(
                Rule::Unexplained,
                Some(key_name(k, workload)),
                format!("{by} named the lease {seen}, whose endpoint no call proposed"),
            ));
            None
        }
        Some((c, pk)) if pk != k => {
            violations.push(Violation::new(
                Rule::Unexplained,
                Some(key_name(k, workload)),
                format!(
                    "{by} named the lease {seen}, whose endpoint call #{c} proposed for another key ({})",
                    key_name(pk, workload)
                ),
            ));
            None
        }
        Some((c, _)) => Some(c),
    };
    let id = u32::try_from(leases.len()).expect("fewer than 2^32 leases");
    leases.push(LeaseInfo {
        endpoint: e,
        created,
        expires: seen.expires_at_ms,
        creator,
    });
    ids.insert(e, id);
}
