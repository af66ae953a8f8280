//! The state machine: every lease, in memory, and the deterministic rules that change them.
//!
//! [`LeaseTable`] knows only domain types. It applies [`Command`]s in log order; each command
//! carries the leader's clock, and the table's own clock is `max(previous, stamp)`, so every
//! replica computes the same expiries from the same log, whatever its local clock says.
//!
//! Layout ([`layout`]): leases by scope then key (ordered, for `List` and snapshots), an
//! index by end time (for `Sweep`) and an index by endpoint (for `DrainEndpoint`), both
//! naming scopes and endpoints by number; the strings are shared between leases.
//!
//! Rules:
//! - a lease is live while `now < min(expires_at, last_used + idle)`; a lease that has ended
//!   is dead at once, even before a `Sweep` removes it;
//! - `Resolve`: the first writer wins; a live lease is returned unchanged (its `expires_at`
//!   never moves; with an idle timeout, `last_used` is refreshed); if `eligible` is given and
//!   the live lease's endpoint is not in it, the lease is replaced;
//! - every change emits an [`Event`] stamped with the command's log index.

pub mod command;
mod import;
mod layout;
pub mod lease;
pub mod once;
pub mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use affinity_proto::ClientKey;

pub use command::{Command, Event, EventKind, Op, Outcome};
pub use lease::Lease;
pub use once::RequestId;

pub(crate) use layout::Restorer;
use layout::{Names, Record, Scope, idle};
use lease::clamp_ms;

/// One scope and its leases, as the lease map yields them.
type ScopeEntry<'a> = (&'a Arc<str>, &'a Scope);

/// Every lease of one replica, and the rules that change them.
#[derive(Debug, Default, Clone)]
pub struct LeaseTable {
    clock_ms: i64,
    leases: BTreeMap<Arc<str>, Scope>,
    count: usize,
    /// (end, scope number, key) of every lease.
    by_end: BTreeSet<(i64, u32, ClientKey)>,
    /// (endpoint number, scope number, key) of every lease.
    by_endpoint: BTreeSet<(u32, u32, ClientKey)>,
    scopes: Names,
    endpoints: Names,
    /// First outcomes of recent named writes (see [`once`]).
    outcomes: once::Outcomes,
}

impl PartialEq for LeaseTable {
    /// Same clock, same leases and same remembered writes (indexes, scope numbers and
    /// string sharing are derived).
    fn eq(&self, other: &Self) -> bool {
        self.clock_ms == other.clock_ms
            && self.count == other.count
            && self.outcomes == other.outcomes
            && self.iter().eq(other.iter())
    }
}

impl Eq for LeaseTable {}

impl LeaseTable {
    /// An empty table with its clock at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The table's clock: the newest command stamp applied.
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// Leases held, live or not yet swept.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Leases held in `scope`, live or not yet swept.
    pub fn scope_len(&self, scope: &str) -> usize {
        self.leases.get(scope).map_or(0, |s| s.keys.len())
    }

    /// No lease at all.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The earliest end of any lease held (what the next sweep could remove).
    pub fn next_end_ms(&self) -> Option<i64> {
        self.by_end.first().map(|(end, _, _)| *end)
    }

    /// Apply one command at log index `revision`. Changes are appended to `events`.
    pub fn apply(&mut self, revision: u64, cmd: &Command, events: &mut Vec<Event>) -> Outcome {
        self.clock_ms = self.clock_ms.max(cmd.stamp_ms);
        self.apply_op(revision, self.clock_ms, &cmd.op, events)
    }

    fn apply_op(&mut self, revision: u64, now: i64, op: &Op, events: &mut Vec<Event>) -> Outcome {
        match op {
            Op::Resolve {
                scope,
                key,
                endpoint,
                eligible,
                absolute_timeout_ms,
                idle_timeout_ms,
            } => {
                let terms = Terms {
                    revision,
                    now,
                    absolute_timeout_ms: *absolute_timeout_ms,
                    idle_timeout_ms: *idle_timeout_ms,
                };
                self.resolve(scope, *key, endpoint, eligible, terms, events)
            }
            Op::Reassign {
                scope,
                key,
                expected_endpoint,
                endpoint,
                absolute_timeout_ms,
                idle_timeout_ms,
            } => {
                let terms = Terms {
                    revision,
                    now,
                    absolute_timeout_ms: *absolute_timeout_ms,
                    idle_timeout_ms: *idle_timeout_ms,
                };
                self.reassign(scope, *key, expected_endpoint, endpoint, terms, events)
            }
            Op::Release { scope, key } => self.release(revision, now, scope, *key, events),
            Op::DrainEndpoint { scope, endpoint } => {
                self.drain(revision, now, scope.as_deref(), endpoint, events)
            }
            Op::Touch { keys } => {
                let mut touched = 0;
                for (scope, key) in keys {
                    if self.touch(scope, *key, now) {
                        touched += 1;
                    }
                }
                Outcome::Touched(touched)
            }
            Op::Sweep { up_to_ms } => self.sweep(revision, (*up_to_ms).min(now), events),
            Op::Import { leases } => self.import(revision, now, leases, events),
            Op::Batch(ops) => Outcome::Batch(
                ops.iter()
                    .map(|op| self.apply_op(revision, now, op, events))
                    .collect(),
            ),
            Op::Once { id, op } => {
                self.outcomes.expire(now);
                if let Some(first) = self.outcomes.get(id, now) {
                    return first.clone();
                }
                let outcome = self.apply_op(revision, now, op, events);
                self.outcomes.remember(id.clone(), now, outcome.clone());
                outcome
            }
        }
    }

    /// The first outcome of the named write `id`, if it is remembered at `now_ms` (or at
    /// the table's clock, if that is later).
    pub fn outcome_of(&self, id: &RequestId, now_ms: i64) -> Option<&Outcome> {
        self.outcomes.get(id, now_ms.max(self.clock_ms))
    }

    /// The named writes remembered, oldest first.
    pub fn remembered(&self) -> impl Iterator<Item = once::Remembered> + '_ {
        self.outcomes.iter()
    }

    /// How many named writes are remembered.
    pub fn remembered_len(&self) -> usize {
        self.outcomes.len()
    }

    /// The live lease of (scope, key) as seen at `now_ms` (or at the table's clock, if that
    /// is later: a lease dead for the log is dead for every reader).
    pub fn get(&self, scope: &str, key: ClientKey, now_ms: i64) -> Option<Lease> {
        let now = now_ms.max(self.clock_ms);
        let (scope_arc, leases) = self.leases.get_key_value(scope)?;
        let record = leases.keys.get(&key)?;
        record
            .is_live(now)
            .then(|| record.lease(scope_arc, key, &self.endpoints))
    }

    /// Live leases in key order (scope, then key), starting after `after` when given, in one
    /// scope or all, at most `limit` of them. Also returns whether more may follow.
    pub fn list(
        &self,
        scope: Option<&str>,
        after: Option<(&str, ClientKey)>,
        limit: usize,
        now_ms: i64,
    ) -> (Vec<Lease>, bool) {
        let now = now_ms.max(self.clock_ms);
        let mut out = Vec::new();
        let scopes: Box<dyn Iterator<Item = ScopeEntry<'_>>> = match (scope, after) {
            (Some(s), _) => Box::new(self.leases.get_key_value(s).into_iter()),
            (None, Some((from, _))) => Box::new(
                self.leases
                    .range::<str, _>((Bound::Included(from), Bound::Unbounded)),
            ),
            (None, None) => Box::new(self.leases.iter()),
        };
        for (scope_arc, leases) in scopes {
            let keys = &leases.keys;
            let range: Box<dyn Iterator<Item = (&ClientKey, &Record)>> = match after {
                Some((from_scope, from_key)) if **scope_arc == *from_scope => {
                    Box::new(keys.range((Bound::Excluded(from_key), Bound::Unbounded)))
                }
                Some((from_scope, _)) if **scope_arc < *from_scope => continue,
                _ => Box::new(keys.iter()),
            };
            for (key, record) in range {
                if !record.is_live(now) {
                    continue;
                }
                if out.len() == limit {
                    return (out, true);
                }
                out.push(record.lease(scope_arc, *key, &self.endpoints));
            }
        }
        (out, false)
    }

    /// Every lease held, live or not, in key order.
    pub fn iter(&self) -> impl Iterator<Item = Lease> + '_ {
        let endpoints = &self.endpoints;
        self.leases.iter().flat_map(move |(scope, leases)| {
            leases
                .keys
                .iter()
                .map(move |(key, record)| record.lease(scope, *key, endpoints))
        })
    }

    fn resolve(
        &mut self,
        scope: &str,
        key: ClientKey,
        endpoint: &str,
        eligible: &[String],
        terms: Terms,
        events: &mut Vec<Event>,
    ) -> Outcome {
        if let Some(mut lease) = self.present(scope, key) {
            if lease.is_live(terms.now) {
                let stays = eligible.is_empty() || eligible.iter().any(|e| **e == *lease.endpoint);
                if stays {
                    if self.touch(scope, key, terms.now) {
                        lease.last_used_ms = terms.now;
                    }
                    return Outcome::Resolved {
                        lease,
                        created: false,
                        replaced: false,
                    };
                }
                self.remove(scope, key);
                let lease = self.create(scope, key, endpoint, terms);
                events.push(event(EventKind::Replaced, &lease, terms.revision));
                return Outcome::Resolved {
                    lease,
                    created: false,
                    replaced: true,
                };
            }
            self.remove_ended(scope, key, terms.revision, events);
        }
        let lease = self.create(scope, key, endpoint, terms);
        events.push(event(EventKind::Created, &lease, terms.revision));
        Outcome::Resolved {
            lease,
            created: true,
            replaced: false,
        }
    }

    fn reassign(
        &mut self,
        scope: &str,
        key: ClientKey,
        expected: &str,
        endpoint: &str,
        terms: Terms,
        events: &mut Vec<Event>,
    ) -> Outcome {
        let Some(current) = self.present(scope, key) else {
            return Outcome::Reassigned {
                lease: None,
                swapped: false,
            };
        };
        if !current.is_live(terms.now) {
            self.remove_ended(scope, key, terms.revision, events);
            return Outcome::Reassigned {
                lease: None,
                swapped: false,
            };
        }
        if *current.endpoint != *expected {
            return Outcome::Reassigned {
                lease: Some(current),
                swapped: false,
            };
        }
        self.remove(scope, key);
        let lease = self.create(scope, key, endpoint, terms);
        events.push(event(EventKind::Replaced, &lease, terms.revision));
        Outcome::Reassigned {
            lease: Some(lease),
            swapped: true,
        }
    }

    fn release(
        &mut self,
        revision: u64,
        now: i64,
        scope: &str,
        key: ClientKey,
        events: &mut Vec<Event>,
    ) -> Outcome {
        let Some(record) = self.record(scope, key) else {
            return Outcome::Released(false);
        };
        if !record.is_live(now) {
            self.remove_ended(scope, key, revision, events);
            return Outcome::Released(false);
        }
        if let Some(lease) = self.remove(scope, key) {
            events.push(event(EventKind::Released, &lease, revision));
        }
        Outcome::Released(true)
    }

    fn drain(
        &mut self,
        revision: u64,
        now: i64,
        scope: Option<&str>,
        endpoint: &str,
        events: &mut Vec<Event>,
    ) -> Outcome {
        let Some(endpoint_id) = self.endpoints.id(endpoint) else {
            return Outcome::Drained(0);
        };
        let scope_id = match scope {
            Some(s) => match self.leases.get(s) {
                Some(leases) => Some(leases.id),
                None => return Outcome::Drained(0),
            },
            None => None,
        };
        // In (scope name, key) order, the same on every replica whatever numbers its
        // scopes got.
        let mut victims: Vec<(Arc<str>, ClientKey)> = self
            .by_endpoint
            .range((
                Bound::Included((endpoint_id, scope_id.unwrap_or(0), ClientKey::MIN)),
                Bound::Unbounded,
            ))
            .take_while(|(e, s, _)| *e == endpoint_id && scope_id.is_none_or(|want| *s == want))
            .map(|(_, s, k)| (Arc::clone(self.scopes.name(*s)), *k))
            .collect();
        victims.sort_unstable();
        let mut removed = 0;
        for (scope, key) in victims {
            if let Some(lease) = self.remove(&scope, key) {
                if lease.is_live(now) {
                    removed += 1;
                    events.push(event(EventKind::Drained, &lease, revision));
                } else {
                    events.push(event(EventKind::Expired, &lease, revision));
                }
            }
        }
        Outcome::Drained(removed)
    }

    fn sweep(&mut self, revision: u64, up_to_ms: i64, events: &mut Vec<Event>) -> Outcome {
        // In (end, scope name, key) order, the same on every replica whatever numbers its
        // scopes got.
        let mut ended: Vec<(i64, Arc<str>, ClientKey)> = self
            .by_end
            .iter()
            .take_while(|(end, _, _)| *end <= up_to_ms)
            .map(|(end, id, key)| (*end, Arc::clone(self.scopes.name(*id)), *key))
            .collect();
        ended.sort_unstable();
        let mut removed = 0;
        for (_, scope, key) in ended {
            if let Some(lease) = self.remove(&scope, key) {
                removed += 1;
                events.push(event(EventKind::Expired, &lease, revision));
            }
        }
        Outcome::Swept(removed)
    }

    /// Record a use of a live lease with an idle timeout. Returns whether it was touched.
    fn touch(&mut self, scope: &str, key: ClientKey, now: i64) -> bool {
        let Some(leases) = self.leases.get_mut(scope) else {
            return false;
        };
        let id = leases.id;
        let Some(record) = leases.keys.get_mut(&key) else {
            return false;
        };
        if !record.is_live(now) || record.idle_timeout_ms.is_none() || record.last_used_ms >= now {
            return false;
        }
        let old_end = record.end_ms();
        record.last_used_ms = now;
        let new_end = record.end_ms();
        self.by_end.remove(&(old_end, id, key));
        self.by_end.insert((new_end, id, key));
        true
    }

    fn record(&self, scope: &str, key: ClientKey) -> Option<&Record> {
        self.leases.get(scope)?.keys.get(&key)
    }

    /// The lease held for (scope, key), live or not.
    fn present(&self, scope: &str, key: ClientKey) -> Option<Lease> {
        let (scope_arc, leases) = self.leases.get_key_value(scope)?;
        leases
            .keys
            .get(&key)
            .map(|record| record.lease(scope_arc, key, &self.endpoints))
    }

    fn create(&mut self, scope: &str, key: ClientKey, endpoint: &str, terms: Terms) -> Lease {
        let record = Record {
            endpoint: self.endpoints.acquire(endpoint).0,
            created_at_ms: terms.now,
            expires_at_ms: terms
                .now
                .saturating_add(clamp_ms(terms.absolute_timeout_ms)),
            idle_timeout_ms: idle(terms.idle_timeout_ms),
            last_used_ms: terms.now,
            revision: terms.revision,
        };
        let scope = self.insert(scope, key, record);
        record.lease(&scope, key, &self.endpoints)
    }

    /// Remove a lease that has ended (before re-creating its key), reporting EXPIRED.
    fn remove_ended(
        &mut self,
        scope: &str,
        key: ClientKey,
        revision: u64,
        events: &mut Vec<Event>,
    ) {
        if let Some(lease) = self.remove(scope, key) {
            events.push(event(EventKind::Expired, &lease, revision));
        }
    }
}

/// Time and lifetime terms of a lease being created.
#[derive(Debug, Clone, Copy)]
struct Terms {
    revision: u64,
    now: i64,
    absolute_timeout_ms: u64,
    idle_timeout_ms: Option<u64>,
}

fn event(kind: EventKind, lease: &Lease, revision: u64) -> Event {
    Event {
        kind,
        lease: lease.clone(),
        revision,
    }
}

#[cfg(test)]
mod tests;
