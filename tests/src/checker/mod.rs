//! The checker: is a workload's history linearizable, key by key, under the lease model?
//!
//! For every key (scope, prefix), the answers must be explained by one sequential order of
//! its operations that respects real time (an operation that responded before another was
//! invoked comes first), under the store's clock design (DESIGN.md, "Time"): a write takes
//! effect at the state machine's clock, `max(previous, its stamp)`, its stamp inside its
//! window (invoke and response widened by the clock tolerance), and a lease it creates is
//! stamped with that clock; a read judges expiry at a reader's time inside its window, never
//! before the state machine's clock, and moves nothing (see `model`). Keys are independent:
//! every proposed endpoint is unique to its call, so an endpoint belongs to one key and a
//! `DrainEndpoint` to that key's history.
//!
//! - [`prepare`](self::prepare) cuts the history by key: attempts under one request id
//!   become one logical call; answers name leases; unknown outcomes become writes the search
//!   may place anywhere after their invocation (applied, if some answer shows their
//!   proposal, else possibly a phantom, or not at all); unknown reads and refusals drop out;
//!   the final `List` becomes the last read of every key ("nothing acknowledged lost").
//! - `model` is the sequential lease model and its transition function; `search` the
//!   Wing-Gong / Lowe search with memoization of (operations placed, model state).
//! - `rules` checks what needs no search: leases stamped outside their creator's window,
//!   leases answered live a lifetime after their creator responded, two leases of one key
//!   with one set of stamps, and cached answers (not linearizable by design: they must only
//!   name a lease that existed and had not ended).
//! - `explain` turns a failed search into a report a person can act on; `summary` counts.
//!
//! Liveness (writes resume within a bound after a fault heals) is measured by the scenarios.

mod explain;
mod model;
mod prepare;
mod rules;
mod search;
mod summary;

#[cfg(test)]
mod tests;

use std::time::Instant;

pub use explain::{Rule, Violation};
pub use prepare::Listing;
pub use summary::Summary;

use crate::workload::WorkloadOptions;
use crate::workload::history::History;
use explain::Ctx;
use model::{Act, Op, Origin, ReassignResult, ResolveResult};
use search::Verdict;

/// How to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// How far a store time may be from the host clock's readings around a call, in ms
    /// (the containers share the host's clock: a few ms of rounding by default; a scenario
    /// that skews node clocks passes more).
    pub clock_tolerance_ms: i64,
    /// Most points the search of one key may visit before it gives up (which fails the
    /// check as undecided, never passes it).
    pub search_budget: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            clock_tolerance_ms: 5,
            search_budget: 2_000_000,
        }
    }
}

/// What the check found.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The figures.
    pub summary: Summary,
    /// Every violation, worst first (by rule).
    pub violations: Vec<Violation>,
}

impl Checked {
    /// Whether the history passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Check `history` (and, when given, the `List` read after healing) against the lease
/// model.
pub fn check(
    history: &History,
    workload: &WorkloadOptions,
    listing: Option<&Listing>,
    options: &CheckOptions,
) -> Checked {
    let started = Instant::now();
    let mut summary = Summary::default();
    summary::count_calls(history, &mut summary);
    let prepared = prepare::prepare(history, workload, listing, options.clock_tolerance_ms);
    let mut violations = prepared.violations.clone();
    let ctx = Ctx {
        calls: &prepared.calls,
        names: &prepared.names,
        workload,
        base_ms: history.started_ms,
        tolerance_ms: options.clock_tolerance_ms,
    };
    for h in &prepared.keys {
        rules::check_key(&ctx, h, &mut violations);
        for op in &h.ops {
            count_op(&mut summary, op);
        }
        match search::search(h, options.search_budget) {
            Verdict::Linearizable(points) => summary.search_points += points,
            Verdict::Violation(frontier) => {
                violations.push(explain::search_failure(&ctx, h, &frontier, None));
            }
            Verdict::GaveUp(points, frontier) => {
                summary.search_points += points;
                violations.push(explain::search_failure(&ctx, h, &frontier, Some(points)));
            }
        }
    }
    rules::check_cached(&ctx, &prepared.keys, &prepared.cached, &mut violations);
    summary.keys = prepared.keys.len();
    summary.cached = prepared.cached.len();
    summary.dropped_reads = prepared.dropped_reads;
    summary.refused = prepared.refused;
    summary.retried = prepared
        .calls
        .iter()
        .filter(|c| c.attempts.len() > 1)
        .count();
    summary.listed = listing.map_or(0, |l| l.leases.len());
    violations.sort_by_key(|v| v.rule);
    summary.checker_ms = started.elapsed().as_millis();
    Checked {
        summary,
        violations,
    }
}

fn count_op(summary: &mut Summary, op: &Op) {
    if op.unknown() {
        summary.unknown_writes += 1;
        let applied = matches!(
            op.act,
            Act::Resolve {
                result: ResolveResult::Applied(_),
                ..
            } | Act::Reassign {
                result: ReassignResult::Applied(_),
                ..
            }
        );
        summary.unknown_applied += usize::from(applied);
        return;
    }
    let kind = match (&op.act, op.origin) {
        (_, Origin::FinalList) => "List",
        (Act::Resolve { .. }, _) => "Resolve",
        (Act::Reassign { .. }, _) => "Reassign",
        (Act::Release(_), _) => "Release",
        (Act::Drain { .. }, _) => "DrainEndpoint",
        (Act::Read(_), _) => "Lookup",
    };
    *summary.checked.entry(kind).or_default() += 1;
}
