//! The checker's own tests: it rejects each kind of violation and accepts the legitimate
//! histories that look like them (`cases`); generated linearizable histories pass, and a
//! 10k-operation one is checked in seconds (`generate`); saved chaos histories are checked
//! again (`replay`).

mod cases;
mod generate;
mod replay;

use std::time::Duration;

use super::{CheckOptions, Checked, Listing, Rule, check};
use crate::workload::history::{Answer, Call, History, Outcome, Request, Seen, Via};
use crate::workload::{WorkloadOptions, key, prefix};
use affinity_proto::pb;

/// Key 0 has leases of 100 s, key 1 of 10 s.
pub(super) const LONG: usize = 0;
pub(super) const SHORT: usize = 1;
pub(super) const LONG_MS: i64 = 100_000;
pub(super) const SHORT_MS: i64 = 10_000;

pub(super) fn workload() -> WorkloadOptions {
    WorkloadOptions {
        keys: 2,
        long_lease: Duration::from_secs(100),
        short_lease: Duration::from_secs(10),
        ..WorkloadOptions::default()
    }
}

fn lifetime(k: usize) -> i64 {
    if k == LONG { LONG_MS } else { SHORT_MS }
}

/// A lease on `endpoint` of key `k`, created at `created`.
pub(super) fn lease(k: usize, endpoint: &str, created: i64) -> Seen {
    Seen {
        endpoint: endpoint.into(),
        created_at_ms: Some(created),
        expires_at_ms: created + lifetime(k),
    }
}

/// A history under construction.
#[derive(Default)]
pub(super) struct Builder {
    calls: Vec<Call>,
    listing: Option<Listing>,
}

impl Builder {
    pub(super) fn call(
        &mut self,
        worker: usize,
        k: usize,
        request: Request,
        (invoke_ms, response_ms): (i64, i64),
        outcome: Outcome,
    ) -> &mut Call {
        self.calls.push(Call {
            worker,
            via: Via::Raw { node: worker % 3 },
            key: k,
            request,
            request_id: None,
            invoke_ms,
            response_ms,
            outcome,
        });
        self.calls.last_mut().expect("just pushed")
    }

    pub(super) fn resolve(
        &mut self,
        k: usize,
        proposed: &str,
        at: (i64, i64),
        answer: Answer,
    ) -> &mut Call {
        self.call(0, k, resolve(proposed, &[]), at, Outcome::Ok(answer))
    }

    /// An acknowledged Release by worker 0 that found a live lease.
    pub(super) fn release(&mut self, k: usize, at: (i64, i64)) -> &mut Call {
        self.call(
            0,
            k,
            Request::Release,
            at,
            Outcome::Ok(Answer::Released(true)),
        )
    }

    pub(super) fn lookup(&mut self, k: usize, at: (i64, i64), seen: Option<Seen>) -> &mut Call {
        self.call(1, k, Request::Lookup, at, Outcome::Ok(Answer::Looked(seen)))
    }

    pub(super) fn failed(
        &mut self,
        k: usize,
        request: Request,
        at: (i64, i64),
        code: &str,
    ) -> &mut Call {
        self.call(
            2,
            k,
            request,
            at,
            Outcome::Err {
                code: code.into(),
                message: String::new(),
            },
        )
    }

    /// The final List, read over `at`, with these leases.
    pub(super) fn listed(&mut self, at: (i64, i64), leases: &[(usize, Seen)]) {
        let w = workload();
        self.listing = Some(Listing {
            leases: leases
                .iter()
                .map(|(k, s)| pb::Lease {
                    scope: key(*k, &w).0.to_string(),
                    prefix: prefix(*k, &w),
                    endpoint: s.endpoint.clone(),
                    created_at_ms: s.created_at_ms.expect("a listed lease has its stamps"),
                    expires_at_ms: s.expires_at_ms,
                    ..Default::default()
                })
                .collect(),
            invoke_ms: at.0,
            response_ms: at.1,
        });
    }

    pub(super) fn check(&self) -> Checked {
        let mut calls = self.calls.clone();
        calls.sort_by_key(|c| c.invoke_ms);
        let history = History {
            calls,
            started_ms: 0,
            ended_ms: 1_000_000,
        };
        check(
            &history,
            &workload(),
            self.listing.as_ref(),
            &CheckOptions::default(),
        )
    }

    /// Check, and insist it passes.
    pub(super) fn passes(&self) -> Checked {
        let checked = self.check();
        assert!(
            checked.passed(),
            "expected a pass, got:\n{}",
            checked
                .violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        checked
    }

    /// Check, and insist it fails with (at least) `rule`; returns the report text.
    pub(super) fn fails_with(&self, rule: Rule) -> String {
        let checked = self.check();
        let text = checked
            .violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            checked.violations.iter().any(|v| v.rule == rule),
            "expected a {rule} violation, got:\n{text}"
        );
        eprintln!("{text}");
        text
    }
}

pub(super) fn resolve(proposed: &str, eligible: &[&str]) -> Request {
    Request::Resolve {
        proposed: proposed.into(),
        eligible: eligible.iter().map(|e| (*e).to_string()).collect(),
    }
}

pub(super) fn created(seen: Seen) -> Answer {
    Answer::Resolved {
        lease: seen,
        created: true,
        replaced: false,
        cached: false,
    }
}

pub(super) fn kept(seen: Seen) -> Answer {
    Answer::Resolved {
        lease: seen,
        created: false,
        replaced: false,
        cached: false,
    }
}

pub(super) fn replaced(seen: Seen) -> Answer {
    Answer::Resolved {
        lease: seen,
        created: false,
        replaced: true,
        cached: false,
    }
}
