//! Generated histories: clients call a simulated store whose every operation takes effect at
//! one instant inside its call (so the history is linearizable by construction, in that
//! order); some calls fail with their outcome unknown, applied or not. The checker must pass
//! them all, and check 10k operations in seconds.
//!
//! Two stores are simulated. The simple one does everything at that instant, with that
//! instant as its clock. The design's one (DESIGN.md, "Time") stamps a write when it is
//! proposed, somewhere between the call's start and that instant, and applies it at the
//! instant with the state machine's clock, `max(previous, stamp)`; reads (Lookups, and
//! Resolves that find a lease to keep) judge expiry at the reader's clock, the instant
//! itself. So a read may answer a lease that a write applied after it replaced, from a stamp
//! earlier than the read: linearizable, and the checker must say so.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use affinity_proto::pb;

use crate::checker::{CheckOptions, Listing, check};
use crate::workload::history::{Answer, Call, History, Outcome, Request, Seen, Via};
use crate::workload::{WorkloadOptions, key, prefix};

/// What to generate.
struct Shape {
    seed: u64,
    ops: usize,
    keys: usize,
    clients: usize,
    /// Chance that a call's outcome is unknown.
    unknown: f64,
    /// The design's store: writes stamped when proposed, before they are applied.
    stamped_early: bool,
}

fn options(keys: usize) -> WorkloadOptions {
    WorkloadOptions {
        keys,
        long_lease: Duration::from_secs(3600),
        short_lease: Duration::from_secs(3),
        ..WorkloadOptions::default()
    }
}

/// One planned call, before the store has answered it.
struct Planned {
    client: usize,
    key: usize,
    request: Request,
    invoke: i64,
    effect: i64,
    /// The write's stamp (the simple store: `effect`).
    stamp: i64,
    response: i64,
    /// Whether it reaches the store (false: lost before it was applied).
    applied: bool,
    /// Whether the caller learns the outcome.
    known: bool,
}

fn plan(shape: &Shape, rng: &mut fastrand::Rng) -> Vec<Planned> {
    let mut clock: Vec<i64> = vec![1_000_000; shape.clients];
    // Endpoints proposed so far for each key, newest last.
    let mut proposed: Vec<Vec<String>> = vec![Vec::new(); shape.keys];
    let mut planned = Vec::with_capacity(shape.ops);
    for n in 0..shape.ops {
        let client = rng.usize(..shape.clients);
        let k = rng.usize(..shape.keys);
        let fresh = format!("g{n}:80");
        let recent = |rng: &mut fastrand::Rng, p: &[String]| -> Option<String> {
            if p.is_empty() {
                None
            } else if rng.f64() < 0.7 {
                p.last().cloned()
            } else {
                Some(p[rng.usize(..p.len())].clone())
            }
        };
        let request = match (rng.u32(..100), recent(rng, &proposed[k])) {
            (0..12, Some(expected)) => Request::Reassign {
                expected,
                endpoint: fresh.clone(),
            },
            (12..22, Some(endpoint)) => Request::Drain { endpoint },
            (22..30, _) => Request::Release,
            (30..45, _) => Request::Lookup,
            (45..55, Some(current)) => Request::Resolve {
                proposed: fresh.clone(),
                eligible: vec![fresh.clone(), current],
            },
            (55..62, _) => Request::Resolve {
                proposed: fresh.clone(),
                eligible: vec![fresh.clone()],
            },
            _ => Request::Resolve {
                proposed: fresh.clone(),
                eligible: Vec::new(),
            },
        };
        if request.proposal().is_some() {
            proposed[k].push(fresh);
        }
        let invoke = clock[client] + rng.i64(0..4);
        let duration = rng.i64(1..30);
        let effect = invoke + rng.i64(0..=duration);
        let response = invoke + duration;
        let stamp = if shape.stamped_early {
            invoke + rng.i64(0..=effect - invoke)
        } else {
            effect
        };
        clock[client] = response;
        let known = rng.f64() >= shape.unknown;
        let applied = known || rng.bool();
        planned.push(Planned {
            client,
            key: k,
            request,
            invoke,
            effect,
            stamp,
            response,
            applied,
            known,
        });
    }
    planned
}

/// The simulated store's lease of one key.
#[derive(Clone)]
struct Held {
    endpoint: String,
    created: i64,
    expires: i64,
}

impl Held {
    fn seen(&self, with_created: bool) -> Seen {
        Seen {
            endpoint: self.endpoint.clone(),
            created_at_ms: with_created.then_some(self.created),
            expires_at_ms: self.expires,
        }
    }
}

/// Apply one call at store time `s`; the answer.
fn apply(
    table: &mut HashMap<usize, Held>,
    lifetime: i64,
    p: &Planned,
    s: i64,
    full: bool,
) -> Answer {
    let live = table.get(&p.key).filter(|h| s < h.expires).cloned();
    let new = |endpoint: &str| Held {
        endpoint: endpoint.to_string(),
        created: s,
        expires: s + lifetime,
    };
    match &p.request {
        Request::Resolve { proposed, eligible } => match live {
            Some(h) if eligible.is_empty() || eligible.contains(&h.endpoint) => Answer::Resolved {
                lease: h.seen(full),
                created: false,
                replaced: false,
                cached: false,
            },
            Some(_) => {
                let h = new(proposed);
                table.insert(p.key, h.clone());
                Answer::Resolved {
                    lease: h.seen(full),
                    created: false,
                    replaced: true,
                    cached: false,
                }
            }
            None => {
                let h = new(proposed);
                table.insert(p.key, h.clone());
                Answer::Resolved {
                    lease: h.seen(full),
                    created: true,
                    replaced: false,
                    cached: false,
                }
            }
        },
        Request::Reassign { expected, endpoint } => match live {
            Some(h) if h.endpoint == *expected => {
                let h = new(endpoint);
                table.insert(p.key, h.clone());
                Answer::Reassigned {
                    lease: Some(h.seen(true)),
                    swapped: true,
                }
            }
            other => Answer::Reassigned {
                lease: other.map(|h| h.seen(true)),
                swapped: false,
            },
        },
        Request::Release => {
            let released = live.is_some();
            table.remove(&p.key);
            Answer::Released(released)
        }
        Request::Drain { endpoint } => match live {
            Some(h) if h.endpoint == *endpoint => {
                table.remove(&p.key);
                Answer::Drained(1)
            }
            _ => Answer::Drained(0),
        },
        Request::Lookup => Answer::Looked(live.map(|h| h.seen(true))),
    }
}

/// A linearizable history of `shape`, and its final List.
fn generate(shape: &Shape) -> (History, Listing, WorkloadOptions) {
    let workload = options(shape.keys);
    let mut rng = fastrand::Rng::with_seed(shape.seed);
    let planned = plan(shape, &mut rng);
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|i| (planned[*i].effect, *i));
    let mut table: HashMap<usize, Held> = HashMap::new();
    // The state machine's clock: the latest stamp applied.
    let mut machine = i64::MIN;
    let mut calls: Vec<Option<Call>> = vec![None; planned.len()];
    for i in order {
        let p = &planned[i];
        let lifetime = i64::try_from(key(p.key, &workload).2.as_millis()).expect("ms");
        // Some answers carry only the end, as the client crate's resolve does.
        let full = rng.f64() < 0.7;
        let answer = p.applied.then(|| {
            // A read, at the reader's clock (the instant itself): a Lookup, or a Resolve
            // that finds a lease to keep.
            let read = match &p.request {
                Request::Lookup => true,
                Request::Resolve { eligible, .. } => table.get(&p.key).is_some_and(|h| {
                    p.effect < h.expires && (eligible.is_empty() || eligible.contains(&h.endpoint))
                }),
                _ => false,
            };
            if read || !shape.stamped_early {
                return apply(&mut table, lifetime, p, p.effect, full);
            }
            machine = machine.max(p.stamp);
            apply(&mut table, lifetime, p, machine, full)
        });
        let outcome = match (p.known, answer) {
            (true, Some(a)) => Outcome::Ok(a),
            _ => Outcome::Err {
                code: "UNAVAILABLE".into(),
                message: String::new(),
            },
        };
        calls[i] = Some(Call {
            worker: p.client,
            via: Via::Raw { node: p.client % 3 },
            key: p.key,
            request: p.request.clone(),
            request_id: None,
            invoke_ms: p.invoke,
            response_ms: p.response,
            outcome,
        });
    }
    let mut calls: Vec<Call> = calls
        .into_iter()
        .map(|c| c.expect("every call answered"))
        .collect();
    calls.sort_by_key(|c| (c.invoke_ms, c.worker));
    let end = calls.iter().map(|c| c.response_ms).max().unwrap_or(0) + 10;
    let leases = table
        .iter()
        .filter(|(_, h)| end < h.expires)
        .map(|(k, h)| pb::Lease {
            scope: key(*k, &workload).0.to_string(),
            prefix: prefix(*k, &workload),
            endpoint: h.endpoint.clone(),
            created_at_ms: h.created,
            expires_at_ms: h.expires,
            ..Default::default()
        })
        .collect();
    let history = History {
        started_ms: 1_000_000,
        ended_ms: end,
        calls,
    };
    let listing = Listing {
        leases,
        invoke_ms: end,
        response_ms: end + 2,
    };
    (history, listing, workload)
}

fn assert_passes(shape: &Shape) -> crate::checker::Checked {
    let (history, listing, workload) = generate(shape);
    let checked = check(
        &history,
        &workload,
        Some(&listing),
        &CheckOptions::default(),
    );
    assert!(
        checked.passed(),
        "seed {}: a linearizable history was rejected:\n{}",
        shape.seed,
        checked
            .violations
            .iter()
            .take(3)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    checked
}

#[test]
fn generated_linearizable_histories_pass() {
    for seed in 0..40 {
        assert_passes(&Shape {
            seed,
            ops: 600,
            keys: 4,
            clients: 6,
            unknown: 0.05,
            stamped_early: false,
        });
    }
}

#[test]
fn generated_histories_of_the_designs_store_pass() {
    for seed in 0..40 {
        assert_passes(&Shape {
            seed,
            ops: 600,
            keys: 4,
            clients: 6,
            unknown: 0.05,
            stamped_early: true,
        });
    }
}

#[test]
fn ten_thousand_operations_are_checked_in_seconds() {
    for (keys, clients) in [(300, 8), (10, 8), (1, 8)] {
        let shape = Shape {
            seed: 7,
            ops: 10_000,
            keys,
            clients,
            unknown: 0.02,
            stamped_early: true,
        };
        let started = Instant::now();
        let checked = assert_passes(&shape);
        let took = started.elapsed();
        // Past the test harness's capture: the figure belongs in every run's output.
        eprintln!(
            "checker: 10,000 operations on {keys} keys from {clients} clients checked in {} ms ({})",
            took.as_millis(),
            checked.summary
        );
        assert!(took < Duration::from_secs(60), "took {took:?}");
    }
}
