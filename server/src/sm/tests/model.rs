//! A model-based property test: the indexed table against a plain model of the same rules,
//! determinism across replicas, and snapshot + log tail against direct apply.

use std::collections::{BTreeMap, HashMap};

use affinity_proto::{ClientKey, pb};
use proptest::prelude::*;

use super::Replica;
use crate::sm::once::RETENTION_MS;
use crate::sm::snapshot;
use crate::sm::{Command, Lease, Op, Outcome, RequestId};

fn key(text: &str) -> ClientKey {
    text.parse().unwrap()
}

/// The rules again, written as plainly as possible, to check the indexed table against.
#[derive(Default)]
struct Model {
    clock: i64,
    leases: BTreeMap<(String, ClientKey), Lease>,
    /// Named writes: when each was first applied, and what it returned.
    remembered: HashMap<String, (i64, Outcome)>,
}

impl Model {
    fn live(&self, scope: &str, key: ClientKey) -> Option<&Lease> {
        self.leases
            .get(&(scope.to_string(), key))
            .filter(|l| l.is_live(self.clock))
    }

    fn new_lease(
        &self,
        scope: &str,
        key: ClientKey,
        endpoint: &str,
        rev: u64,
        abs: u64,
        idle: Option<u64>,
    ) -> Lease {
        Lease {
            scope: scope.into(),
            key,
            endpoint: endpoint.into(),
            created_at_ms: self.clock,
            expires_at_ms: self.clock + i64::try_from(abs).unwrap(),
            idle_timeout_ms: idle,
            last_used_ms: self.clock,
            revision: rev,
        }
    }

    fn apply(&mut self, rev: u64, cmd: &Command) -> Outcome {
        self.clock = self.clock.max(cmd.stamp_ms);
        self.apply_op(rev, &cmd.op)
    }

    fn apply_op(&mut self, rev: u64, op: &Op) -> Outcome {
        let now = self.clock;
        match op {
            // A batch is its operations one after another, at one stamp and one revision.
            Op::Batch(ops) => Outcome::Batch(ops.iter().map(|op| self.apply_op(rev, op)).collect()),
            // A named write seen less than the retention ago answers as it did then.
            Op::Once { id, op } => {
                if let Some((at, first)) = self.remembered.get(id.as_str())
                    && now - at < RETENTION_MS
                {
                    return first.clone();
                }
                let outcome = self.apply_op(rev, op);
                self.remembered
                    .insert(id.as_str().to_string(), (now, outcome.clone()));
                outcome
            }
            Op::Resolve {
                scope,
                key,
                endpoint,
                eligible,
                absolute_timeout_ms,
                idle_timeout_ms,
            } => {
                if let Some(l) = self.live(scope, *key).cloned() {
                    if eligible.is_empty() || eligible.iter().any(|e| **e == *l.endpoint) {
                        let mut l = l;
                        if l.idle_timeout_ms.is_some() {
                            l.last_used_ms = now;
                            self.leases.insert((scope.clone(), *key), l.clone());
                        }
                        return Outcome::Resolved {
                            lease: l,
                            created: false,
                            replaced: false,
                        };
                    }
                    let l = self.new_lease(
                        scope,
                        *key,
                        endpoint,
                        rev,
                        *absolute_timeout_ms,
                        *idle_timeout_ms,
                    );
                    self.leases.insert((scope.clone(), *key), l.clone());
                    return Outcome::Resolved {
                        lease: l,
                        created: false,
                        replaced: true,
                    };
                }
                let l = self.new_lease(
                    scope,
                    *key,
                    endpoint,
                    rev,
                    *absolute_timeout_ms,
                    *idle_timeout_ms,
                );
                self.leases.insert((scope.clone(), *key), l.clone());
                Outcome::Resolved {
                    lease: l,
                    created: true,
                    replaced: false,
                }
            }
            Op::Reassign {
                scope,
                key,
                expected_endpoint,
                endpoint,
                absolute_timeout_ms,
                idle_timeout_ms,
            } => match self.live(scope, *key).cloned() {
                None => {
                    self.leases.remove(&(scope.clone(), *key));
                    Outcome::Reassigned {
                        lease: None,
                        swapped: false,
                    }
                }
                Some(l) if *l.endpoint != **expected_endpoint => Outcome::Reassigned {
                    lease: Some(l),
                    swapped: false,
                },
                Some(_) => {
                    let l = self.new_lease(
                        scope,
                        *key,
                        endpoint,
                        rev,
                        *absolute_timeout_ms,
                        *idle_timeout_ms,
                    );
                    self.leases.insert((scope.clone(), *key), l.clone());
                    Outcome::Reassigned {
                        lease: Some(l),
                        swapped: true,
                    }
                }
            },
            Op::Release { scope, key } => {
                let was_live = self.live(scope, *key).is_some();
                self.leases.remove(&(scope.clone(), *key));
                Outcome::Released(was_live)
            }
            Op::DrainEndpoint { scope, endpoint } => {
                let before = self.leases.len();
                let live_hits = self
                    .leases
                    .values()
                    .filter(|l| {
                        *l.endpoint == **endpoint
                            && scope.as_deref().is_none_or(|s| *l.scope == *s)
                            && l.is_live(now)
                    })
                    .count();
                self.leases.retain(|_, l| {
                    !(*l.endpoint == **endpoint && scope.as_deref().is_none_or(|s| *l.scope == *s))
                });
                assert!(before - self.leases.len() >= live_hits);
                Outcome::Drained(live_hits as u64)
            }
            Op::Touch { keys } => {
                let mut n = 0;
                for (scope, key) in keys {
                    if let Some(l) = self.leases.get_mut(&(scope.clone(), *key))
                        && l.is_live(now)
                        && l.idle_timeout_ms.is_some()
                        && l.last_used_ms < now
                    {
                        l.last_used_ms = now;
                        n += 1;
                    }
                }
                Outcome::Touched(n)
            }
            Op::Sweep { up_to_ms } => {
                let bound = (*up_to_ms).min(now);
                let before = self.leases.len();
                self.leases.retain(|_, l| l.end_ms() > bound);
                Outcome::Swept((before - self.leases.len()) as u64)
            }
            Op::Import { leases } => {
                let (mut imported, mut expired, mut present) = (0, 0, 0);
                for lease in leases {
                    if !lease.is_live(now) {
                        expired += 1;
                    } else if self.live(&lease.scope, lease.key).is_some() {
                        present += 1;
                    } else {
                        let mut lease = lease.clone();
                        lease.revision = rev;
                        self.leases
                            .insert((lease.scope.to_string(), lease.key), lease);
                        imported += 1;
                    }
                }
                Outcome::Imported {
                    imported,
                    expired,
                    present,
                }
            }
        }
    }
}

fn arb_command() -> impl Strategy<Value = Command> {
    let scope = prop_oneof![Just("s1".to_string()), Just("s2".to_string())];
    let key = prop_oneof![
        Just(key("10.0.0.0/24")),
        Just(key("10.0.1.0/24")),
        Just(key("2001:db8::/64")),
    ];
    let endpoint = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string())
    ];
    let eligible = proptest::collection::vec(endpoint.clone(), 0..3);
    let abs = 1u64..400;
    let idle = proptest::option::of(1u64..200);
    let client = prop_oneof![
        4 => (scope.clone(), key.clone(), endpoint.clone(), eligible, abs.clone(), idle.clone()).prop_map(
            |(scope, key, endpoint, mut eligible, absolute_timeout_ms, idle)| {
                if !eligible.is_empty() {
                    eligible.push(endpoint.clone());
                }
                Op::Resolve {
                    scope,
                    key,
                    endpoint,
                    eligible,
                    absolute_timeout_ms,
                    idle_timeout_ms: idle.map(|i| i.min(absolute_timeout_ms)),
                }
            }
        ),
        1 => (scope.clone(), key.clone(), endpoint.clone(), endpoint.clone(), abs).prop_map(
            |(scope, key, expected_endpoint, endpoint, absolute_timeout_ms)| Op::Reassign {
                scope, key, expected_endpoint, endpoint, absolute_timeout_ms, idle_timeout_ms: None,
            }
        ),
        1 => (scope.clone(), key.clone()).prop_map(|(scope, key)| Op::Release { scope, key }),
    ];
    // Some writes are named, from a few names, so that retries of one call happen.
    let name = proptest::option::weighted(
        0.4,
        (0u8..4).prop_map(|n| {
            RequestId::parse("request_id", &format!("r{n}"))
                .unwrap()
                .unwrap()
        }),
    );
    let client = (client, name.clone()).prop_map(|(op, id)| op.named(id));
    let drain = (proptest::option::of(scope.clone()), endpoint.clone(), name)
        .prop_map(|(scope, endpoint, id)| Op::DrainEndpoint { scope, endpoint }.named(id));
    let op = prop_oneof![
        6 => client.clone(),
        2 => proptest::collection::vec(client, 1..5).prop_map(Op::Batch),
        1 => drain,
        1 => proptest::collection::vec((scope.clone(), key.clone(), endpoint, 0i64..1_000, 1i64..400), 0..4).prop_map(
            |leases| Op::Import {
                leases: leases
                    .into_iter()
                    .map(|(scope, key, endpoint, created, lifetime)| Lease {
                        scope: scope.into(),
                        key,
                        endpoint: endpoint.into(),
                        created_at_ms: created,
                        expires_at_ms: created + lifetime,
                        idle_timeout_ms: None,
                        last_used_ms: created,
                        revision: 1,
                    })
                    .collect(),
            }
        ),
        1 => proptest::collection::vec((scope, key), 0..3).prop_map(|keys| Op::Touch { keys }),
        1 => (0i64..1_000).prop_map(|up_to_ms| Op::Sweep { up_to_ms }),
    ];
    // Stamps mostly move forward, sometimes back (a new leader with a slower clock), and
    // now and then past the time named writes are remembered.
    let stamp = prop_oneof![9 => 0i64..1_000, 1 => RETENTION_MS..RETENTION_MS + 1_000];
    (stamp, op).prop_map(|(stamp_ms, op)| Command { stamp_ms, op })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The indexed table gives the same outcomes and the same leases as the plain model, and
    /// two fresh replicas given the same log end identical, with identical events.
    #[test]
    fn table_matches_the_model_and_is_deterministic(log in proptest::collection::vec(arb_command(), 1..80)) {
        let mut model = Model::default();
        let mut a = Replica::default();
        let mut b = Replica::default();
        for (i, cmd) in log.iter().enumerate() {
            let rev = i as u64 + 1;
            let expected = model.apply(rev, cmd);
            let got = a.apply(cmd);
            prop_assert_eq!(&got, &expected, "command #{} {}", i, cmd);
            prop_assert_eq!(b.apply(cmd), got);
            let leases: Vec<Lease> = a.table.iter().collect();
            let modelled: Vec<Lease> = model.leases.values().cloned().collect();
            // The model keeps ended leases until a sweep or a write removes them, like the table.
            prop_assert_eq!(leases, modelled, "after command #{} {}", i, cmd);
        }
        prop_assert_eq!(&a.table, &b.table);
        prop_assert_eq!(&a.events, &b.events);
        // Expiry is never extended: every lease ends no later than created + its timeout.
        for e in &a.events {
            prop_assert!(e.lease.end_ms() <= e.lease.expires_at_ms);
        }
    }

    /// Snapshot at any point, restore, replay the log tail: the same state as applying the
    /// whole log directly.
    #[test]
    fn snapshot_then_tail_equals_direct_apply(
        log in proptest::collection::vec(arb_command(), 1..60),
        cut in any::<proptest::sample::Index>(),
    ) {
        let cut = cut.index(log.len() + 1);
        let mut direct = Replica::default();
        for cmd in &log {
            direct.apply(cmd);
        }
        let mut head = Replica::default();
        for cmd in &log[..cut] {
            head.apply(cmd);
        }
        let mut bytes = Vec::new();
        snapshot::write(&head.table, pb::SnapshotMeta::default(), &mut bytes).unwrap();
        let restored = snapshot::read(bytes.as_slice()).unwrap().table;
        let mut resumed = Replica { table: restored, index: head.index, events: head.events };
        for cmd in &log[cut..] {
            resumed.apply(cmd);
        }
        prop_assert_eq!(&resumed.table, &direct.table);
        prop_assert_eq!(&resumed.events, &direct.events);
    }
}
