//! The checker: what must hold of a workload's history, whatever the faults did.
//!
//! - **One winner**: for each key, the successful answers that name one lease (the same
//!   expiry) name the same endpoint, and two different leases of a key never overlap in
//!   time: a lease is only created once the previous one has ended. With absolute expiry
//!   and no releases in the workload, anything else means two replicas were told different
//!   endpoints at the same time.
//! - **Nothing acknowledged lost**: after the faults heal, the last lease of each key that a
//!   client saw succeed and that is still live is in the store, with the same endpoint and
//!   expiry.
//! - **Expiry never extended**: every lease answered or listed lives exactly its policy's
//!   absolute timeout from its creation; no answer names a lease created after the call
//!   ended, or one that had already ended before the call started.
//!
//! Liveness (writes resume within a bound after a fault heals) is measured by the scenarios.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use affinity_proto::pb;

use crate::workload::{Call, History, Outcome, WorkloadOptions, key};

/// Clock slack between the test's readings and the leader's stamps, in ms (the containers
/// share the host's clock; this covers rounding to whole milliseconds).
const SLACK_MS: i64 = 5;

/// Figures of a history.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Calls made.
    pub calls: usize,
    /// Calls that got a decision.
    pub ok: usize,
    /// Failed calls by kind.
    pub errors: BTreeMap<String, usize>,
    /// Leases created by the workload (answers with `created`).
    pub created: usize,
    /// The longest stretch with no successful call, in ms.
    pub longest_unavailable_ms: i64,
    /// Leases checked to have survived.
    pub survivors_checked: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        write!(
            f,
            "{} calls, {} ok, errors [{}], {} leases created, longest write unavailability {} ms, {} live leases checked after healing",
            self.calls,
            self.ok,
            errors.join(", "),
            self.created,
            self.longest_unavailable_ms,
            self.survivors_checked
        )
    }
}

/// Check `history` against the leases listed after healing (`listed`, read at
/// `listed_at_ms`). The figures, or every violation found.
pub fn check(
    history: &History,
    options: &WorkloadOptions,
    listed: &[pb::Lease],
    listed_at_ms: i64,
) -> Result<Summary, Vec<String>> {
    let mut violations = Vec::new();
    let summary = summarize(history);

    let mut by_key: HashMap<usize, Vec<&Call>> = HashMap::new();
    for call in history.calls.iter().filter(|c| c.ok()) {
        by_key.entry(call.key).or_default().push(call);
    }
    let mut survivors = 0;
    for (&k, calls) in &by_key {
        let (scope, ip, lifetime) = key(k, options);
        let lifetime_ms = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
        one_winner(k, calls, lifetime_ms, &mut violations);
        never_extended(k, calls, lifetime_ms, &mut violations);
        // The newest lease a client saw for this key, if it is still live.
        let newest = calls.iter().filter_map(|c| ok_parts(c)).max_by_key(|p| p.1);
        if let Some((endpoint, expires)) = newest
            && expires > listed_at_ms + 1000
        {
            survivors += 1;
            let prefix = format!("{ip}/32");
            match listed
                .iter()
                .find(|l| l.scope == scope && l.prefix == prefix)
            {
                Some(l) if l.endpoint == endpoint && l.expires_at_ms == expires => {}
                Some(l) => violations.push(format!(
                    "lost: key {k} ({scope} {prefix}) was acknowledged as {endpoint} until {expires}, the store now has {} until {}",
                    l.endpoint, l.expires_at_ms
                )),
                None => violations.push(format!(
                    "lost: key {k} ({scope} {prefix}) was acknowledged as {endpoint} until {expires}, the store has no lease"
                )),
            }
        }
    }
    for lease in listed {
        let lifetime = if lease.scope.starts_with("chaos/short") {
            options.short_lease
        } else {
            options.long_lease
        };
        let lifetime_ms = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
        if lease.scope.starts_with("chaos/")
            && lease.expires_at_ms - lease.created_at_ms != lifetime_ms
        {
            violations.push(format!(
                "extended: listed lease {} {} lives {} ms, its policy says {lifetime_ms}",
                lease.scope,
                lease.prefix,
                lease.expires_at_ms - lease.created_at_ms
            ));
        }
    }
    if violations.is_empty() {
        Ok(Summary {
            survivors_checked: survivors,
            ..summary
        })
    } else {
        Err(violations)
    }
}

fn ok_parts(call: &Call) -> Option<(&str, i64)> {
    match &call.outcome {
        Outcome::Ok {
            endpoint,
            expires_at_ms,
            ..
        } => Some((endpoint.as_str(), *expires_at_ms)),
        Outcome::Err { .. } => None,
    }
}

fn one_winner(k: usize, calls: &[&Call], lifetime_ms: i64, violations: &mut Vec<String>) {
    // Leases of this key by expiry: the endpoint, and how many answers said "created".
    let mut leases: BTreeMap<i64, (&str, usize, &Call)> = BTreeMap::new();
    for call in calls {
        let Outcome::Ok {
            endpoint,
            expires_at_ms,
            created,
        } = &call.outcome
        else {
            continue;
        };
        let entry = leases
            .entry(*expires_at_ms)
            .or_insert((endpoint.as_str(), 0, call));
        if entry.0 != endpoint {
            violations.push(format!(
                "two winners: key {k}, lease ending {expires_at_ms}: replica {} was told {} (call at {}), replica {} was told {endpoint} (call at {})",
                entry.2.client, entry.0, entry.2.start_ms, call.client, call.start_ms
            ));
        }
        if *created {
            entry.1 += 1;
            if entry.1 > 1 {
                violations.push(format!(
                    "two creators: key {k}, lease ending {expires_at_ms} was reported created twice"
                ));
            }
        }
    }
    let ends: Vec<i64> = leases.keys().copied().collect();
    for pair in ends.windows(2) {
        if pair[1] - pair[0] < lifetime_ms {
            violations.push(format!(
                "overlapping leases: key {k} had a lease ending {} and another ending {}, less than a lifetime ({lifetime_ms} ms) apart",
                pair[0], pair[1]
            ));
        }
    }
}

fn never_extended(k: usize, calls: &[&Call], lifetime_ms: i64, violations: &mut Vec<String>) {
    for call in calls {
        let Outcome::Ok {
            expires_at_ms,
            created,
            endpoint,
        } = &call.outcome
        else {
            continue;
        };
        let created_at = expires_at_ms - lifetime_ms;
        if created_at > call.end_ms + SLACK_MS {
            violations.push(format!(
                "extended: key {k}: a call that ended at {} was told {endpoint} until {expires_at_ms}, more than a lifetime after it",
                call.end_ms
            ));
        }
        if *expires_at_ms + SLACK_MS < call.start_ms {
            violations.push(format!(
                "served after expiry: key {k}: a call at {} was told {endpoint}, whose lease ended at {expires_at_ms}",
                call.start_ms
            ));
        }
        if *created && created_at + SLACK_MS < call.start_ms {
            violations.push(format!(
                "created before asked: key {k}: a call at {} created a lease stamped {created_at}",
                call.start_ms
            ));
        }
    }
}

/// Counts, errors by kind and the longest stretch without a successful call.
pub fn summarize(history: &History) -> Summary {
    let mut summary = Summary {
        calls: history.calls.len(),
        ..Summary::default()
    };
    let mut done: Vec<i64> = Vec::new();
    for call in &history.calls {
        match &call.outcome {
            Outcome::Ok { created, .. } => {
                summary.ok += 1;
                summary.created += usize::from(*created);
                done.push(call.end_ms);
            }
            Outcome::Err { kind, .. } => *summary.errors.entry(kind.clone()).or_default() += 1,
        }
    }
    done.sort_unstable();
    let mut last = history.started_ms;
    for t in done.iter().copied().chain([history.ended_ms]) {
        summary.longest_unavailable_ms = summary.longest_unavailable_ms.max(t - last);
        last = last.max(t);
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(
        key: usize,
        client: usize,
        at: i64,
        endpoint: &str,
        expires: i64,
        created: bool,
    ) -> Call {
        Call {
            client,
            key,
            start_ms: at,
            end_ms: at + 3,
            proposed: format!("p{client}"),
            outcome: Outcome::Ok {
                endpoint: endpoint.into(),
                expires_at_ms: expires,
                created,
            },
        }
    }

    fn options() -> WorkloadOptions {
        WorkloadOptions {
            keys: 2,
            long_lease: std::time::Duration::from_secs(100),
            short_lease: std::time::Duration::from_secs(10),
            ..WorkloadOptions::default()
        }
    }

    fn history(calls: Vec<Call>) -> History {
        History {
            calls,
            started_ms: 0,
            ended_ms: 200_000,
        }
    }

    fn listed(endpoint: &str, created: i64, expires: i64) -> pb::Lease {
        pb::Lease {
            scope: "chaos/long/0".into(),
            prefix: "10.64.0.0/32".into(),
            endpoint: endpoint.into(),
            created_at_ms: created,
            expires_at_ms: expires,
            ..Default::default()
        }
    }

    #[test]
    fn a_consistent_history_passes() {
        let h = history(vec![
            call(0, 0, 1_000, "a", 101_001, true),
            call(0, 1, 2_000, "a", 101_001, false),
        ]);
        let s = check(&h, &options(), &[listed("a", 1_001, 101_001)], 50_000).unwrap();
        assert_eq!((s.ok, s.created, s.survivors_checked), (2, 1, 1));
    }

    #[test]
    fn two_endpoints_for_one_lease_are_two_winners() {
        let h = history(vec![
            call(0, 0, 1_000, "a", 101_001, true),
            call(0, 1, 1_000, "b", 101_001, false),
        ]);
        let err = check(&h, &options(), &[listed("a", 1_001, 101_001)], 50_000).unwrap_err();
        assert!(err.iter().any(|v| v.starts_with("two winners")), "{err:?}");
    }

    #[test]
    fn overlapping_leases_are_caught() {
        let h = history(vec![
            call(0, 0, 1_000, "a", 101_001, true),
            call(0, 1, 5_000, "b", 105_001, true),
        ]);
        let err = check(&h, &options(), &[listed("b", 5_001, 105_001)], 50_000).unwrap_err();
        assert!(err.iter().any(|v| v.starts_with("overlapping")), "{err:?}");
    }

    #[test]
    fn a_lost_or_changed_lease_is_caught() {
        let h = history(vec![call(0, 0, 1_000, "a", 101_001, true)]);
        let err = check(&h, &options(), &[], 50_000).unwrap_err();
        assert!(err.iter().any(|v| v.starts_with("lost")), "{err:?}");
        let err = check(&h, &options(), &[listed("z", 1_001, 101_001)], 50_000).unwrap_err();
        assert!(err.iter().any(|v| v.starts_with("lost")), "{err:?}");
    }

    #[test]
    fn extension_and_stale_answers_are_caught() {
        // Told a lease that ends a lifetime after a moment later than the call.
        let h = history(vec![call(0, 0, 1_000, "a", 150_000, false)]);
        let err = check(&h, &options(), &[listed("a", 50_000, 150_000)], 50_000).unwrap_err();
        assert!(err.iter().any(|v| v.starts_with("extended")), "{err:?}");
        // Told a lease that ended before the call.
        let h = history(vec![call(1, 0, 30_000, "a", 20_000, false)]);
        let err = check(&h, &options(), &[], 50_000).unwrap_err();
        assert!(
            err.iter().any(|v| v.starts_with("served after expiry")),
            "{err:?}"
        );
        // A listed lease that lives longer than its policy.
        let h = history(vec![]);
        let err = check(&h, &options(), &[listed("a", 0, 200_000)], 50_000).unwrap_err();
        assert!(err.iter().any(|v| v.starts_with("extended")), "{err:?}");
    }

    #[test]
    fn the_longest_gap_without_success_is_measured() {
        let mut h = history(vec![
            call(0, 0, 1_000, "a", 101_001, true),
            call(0, 0, 9_000, "a", 101_001, false),
        ]);
        h.ended_ms = 10_000;
        h.calls.insert(
            1,
            Call {
                outcome: Outcome::Err {
                    kind: "UNAVAILABLE".into(),
                    message: String::new(),
                },
                ..call(0, 1, 2_000, "", 0, false)
            },
        );
        let s = summarize(&h);
        assert_eq!(s.longest_unavailable_ms, 9_003 - 1_003);
        assert_eq!(s.errors.get("UNAVAILABLE"), Some(&1));
    }
}
