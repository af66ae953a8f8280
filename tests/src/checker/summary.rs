//! The figures of a checked history: what was checked, by kind; what failed, by code; the
//! longest stretch without a successful write; what the check cost.

use std::collections::BTreeMap;
use std::fmt;

use crate::workload::history::{Answer, History, Outcome, Via};

/// Figures of a checked history.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Attempts recorded.
    pub calls: usize,
    /// Attempts answered.
    pub ok: usize,
    /// Failed attempts by code.
    pub errors: BTreeMap<String, usize>,
    /// Of those, the calls of client-crate workers, which pick nodes and retry within their
    /// deadline as a gateway would (a raw worker's call to a node that is down fails
    /// whatever the store does).
    pub client_errors: BTreeMap<String, usize>,
    /// Answered operations checked for linearizability, by kind (the final List's reads
    /// under `List`).
    pub checked: BTreeMap<&'static str, usize>,
    /// Writes of unknown outcome the search placed or left out as the answers required.
    pub unknown_writes: usize,
    /// Of those, the ones some answer shows were applied.
    pub unknown_applied: usize,
    /// Logical calls made of two attempts (a raw worker's retry under one request id).
    pub retried: usize,
    /// Reads of unknown outcome (dropped).
    pub dropped_reads: usize,
    /// Calls refused for good (no effect; dropped).
    pub refused: usize,
    /// Answers from a client cache, checked only for having existed and not having ended.
    pub cached: usize,
    /// Keys checked.
    pub keys: usize,
    /// Leases in the final List.
    pub listed: usize,
    /// The longest stretch in which no write succeeded, in ms.
    pub longest_write_unavailable_ms: i64,
    /// Points the searches visited.
    pub search_points: usize,
    /// Time the check took, in ms.
    pub checker_ms: u128,
}

impl Summary {
    /// Operations checked for linearizability, all kinds.
    pub fn checked_total(&self) -> usize {
        self.checked.values().sum()
    }

    /// "Resolve 1200, Lookup 300, ..." (most first).
    pub fn checked_by_kind(&self) -> String {
        let mut kinds: Vec<_> = self.checked.iter().collect();
        kinds.sort_by_key(|(k, n)| (std::cmp::Reverse(**n), **k));
        kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// "UNAVAILABLE 12, TIMEOUT 3", or "none".
    pub fn errors_by_code(&self) -> String {
        by_code(&self.errors)
    }

    /// The same for the client crate's calls alone.
    pub fn client_errors_by_code(&self) -> String {
        by_code(&self.client_errors)
    }
}

fn by_code(errors: &BTreeMap<String, usize>) -> String {
    if errors.is_empty() {
        return "none".to_string();
    }
    errors
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} attempts, {} answered, failed: {} (client crate: {}); {} operations checked on {} keys ({}), {} writes of unknown outcome ({} seen applied), {} retried under one id, {} unknown reads dropped, {} refused, {} cached answers checked apart, {} leases in the final List; longest write unavailability {} ms; checker {} ms ({} search points)",
            self.calls,
            self.ok,
            self.errors_by_code(),
            self.client_errors_by_code(),
            self.checked_total(),
            self.keys,
            self.checked_by_kind(),
            self.unknown_writes,
            self.unknown_applied,
            self.retried,
            self.dropped_reads,
            self.refused,
            self.cached,
            self.listed,
            self.longest_write_unavailable_ms,
            self.checker_ms,
            self.search_points
        )
    }
}

/// Attempts, errors by code, and the longest stretch with no successful write (a store
/// answer to a Resolve, Reassign, Release or DrainEndpoint).
pub(crate) fn count_calls(history: &History, summary: &mut Summary) {
    summary.calls = history.calls.len();
    let mut writes: Vec<i64> = Vec::new();
    for call in &history.calls {
        match &call.outcome {
            Outcome::Ok(answer) => {
                summary.ok += 1;
                let cached = matches!(answer, Answer::Resolved { cached: true, .. });
                if call.request.is_write() && !cached {
                    writes.push(call.response_ms);
                }
            }
            Outcome::Err { code, .. } => {
                *summary.errors.entry(code.clone()).or_default() += 1;
                if matches!(call.via, Via::Client { .. }) {
                    *summary.client_errors.entry(code.clone()).or_default() += 1;
                }
            }
        }
    }
    writes.sort_unstable();
    let mut last = history.started_ms;
    let mut longest = 0;
    for t in writes.into_iter().chain([history.ended_ms]) {
        longest = longest.max(t - last);
        last = last.max(t);
    }
    summary.longest_write_unavailable_ms = longest;
}
