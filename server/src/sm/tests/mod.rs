//! Rules of the state machine, one by one, and the snapshot format; [`model`] checks the
//! whole table against a plain model of the same rules.

use std::collections::BTreeMap;

use affinity_proto::{ClientKey, pb};

use super::once::RETENTION_MS;
use super::*;

fn key(text: &str) -> ClientKey {
    text.parse().unwrap()
}

fn cmd(stamp_ms: i64, op: Op) -> Command {
    Command { stamp_ms, op }
}

fn resolve_op(scope: &str, prefix: &str, endpoint: &str, eligible: &[&str], abs: u64) -> Op {
    Op::Resolve {
        scope: scope.into(),
        key: key(prefix),
        endpoint: endpoint.into(),
        eligible: eligible.iter().map(ToString::to_string).collect(),
        absolute_timeout_ms: abs,
        idle_timeout_ms: None,
    }
}

/// A table with a log index counter, applying commands as a log would.
#[derive(Default)]
struct Replica {
    table: LeaseTable,
    index: u64,
    events: Vec<Event>,
}

impl Replica {
    fn apply(&mut self, cmd: &Command) -> Outcome {
        self.index += 1;
        let outcome = self.table.apply(self.index, cmd, &mut self.events);
        self.table.check_invariants().unwrap();
        outcome
    }

    fn resolve(&mut self, stamp: i64, prefix: &str, endpoint: &str) -> (Lease, bool, bool) {
        match self.apply(&cmd(stamp, resolve_op("s", prefix, endpoint, &[], 1000))) {
            Outcome::Resolved {
                lease,
                created,
                replaced,
            } => (lease, created, replaced),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn kinds(&self) -> Vec<EventKind> {
        self.events.iter().map(|e| e.kind).collect()
    }
}

#[test]
fn first_writer_wins_among_interleaved_resolves() {
    let mut r = Replica::default();
    // Ten gateways race for two keys with different proposals, interleaved.
    let mut winners = BTreeMap::new();
    for i in 0..10 {
        for prefix in ["10.0.0.0/24", "10.0.1.0/24"] {
            let (lease, created, replaced) = r.resolve(100 + i, prefix, &format!("backend-{i}"));
            assert!(!replaced);
            assert_eq!(created, i == 0, "only the first call creates");
            let first = winners
                .entry(prefix)
                .or_insert_with(|| lease.endpoint.to_string());
            assert_eq!(*first, *lease.endpoint, "every caller gets the winner");
        }
    }
    assert_eq!(winners["10.0.0.0/24"], "backend-0");
    assert_eq!(r.kinds(), [EventKind::Created, EventKind::Created]);
}

#[test]
fn expiry_is_absolute_and_uses_the_stamp_only() {
    let mut r = Replica::default();
    let (lease, ..) = r.resolve(1_000, "10.0.0.0/24", "a");
    assert_eq!((lease.created_at_ms, lease.expires_at_ms), (1_000, 2_000));
    // Resolving the live lease again, even at its last millisecond, never extends it.
    for t in [1_001, 1_500, 1_999] {
        let (again, created, _) = r.resolve(t, "10.0.0.0/24", "b");
        assert!(!created);
        assert_eq!(again.expires_at_ms, 2_000);
        assert_eq!(*again.endpoint, *"a");
        // Nor does reading it.
        let read = r.table.get("s", key("10.0.0.0/24"), t).unwrap();
        assert_eq!(read.expires_at_ms, 2_000);
    }
    // At expires_at it is dead for readers even though no sweep ran.
    assert!(r.table.get("s", key("10.0.0.0/24"), 2_000).is_none());
    assert_eq!(r.table.len(), 1);
    // And a Resolve then creates a new lease; the old one is reported expired.
    let (fresh, created, _) = r.resolve(2_000, "10.0.0.0/24", "b");
    assert!(created);
    assert_eq!((&*fresh.endpoint, fresh.expires_at_ms), ("b", 3_000));
    assert_eq!(
        r.kinds(),
        [EventKind::Created, EventKind::Expired, EventKind::Created]
    );
}

#[test]
fn the_clock_never_goes_back() {
    let mut r = Replica::default();
    r.resolve(5_000, "10.0.0.0/24", "a");
    // A later entry with an older stamp (a leader with a slow clock) applies at 5_000.
    let (lease, created, _) = r.resolve(4_000, "10.0.1.0/24", "b");
    assert!(created);
    assert_eq!(lease.created_at_ms, 5_000);
    assert_eq!(r.table.clock_ms(), 5_000);
    // Readers with a slow clock still see leases that ended for the log as dead.
    r.apply(&cmd(7_000, Op::Sweep { up_to_ms: 0 }));
    assert!(r.table.get("s", key("10.0.0.0/24"), 0).is_none());
}

#[test]
fn idle_timeout_ends_a_lease_early_but_never_extends_it() {
    let mut r = Replica::default();
    let op = |endpoint: &str| Op::Resolve {
        scope: "s".into(),
        key: key("10.0.0.1/32"),
        endpoint: endpoint.into(),
        eligible: vec![],
        absolute_timeout_ms: 1_000,
        idle_timeout_ms: Some(300),
    };
    r.apply(&cmd(0, op("a")));
    // Used at 200 and 450: still live at 700 (450 + 300 > 700).
    r.apply(&cmd(200, op("b")));
    r.apply(&cmd(
        450,
        Op::Touch {
            keys: vec![("s".into(), key("10.0.0.1/32"))],
        },
    ));
    assert!(r.table.get("s", key("10.0.0.1/32"), 700).is_some());
    // Touching keeps it alive only up to the absolute expiry.
    for t in [700, 950] {
        r.apply(&cmd(
            t,
            Op::Touch {
                keys: vec![("s".into(), key("10.0.0.1/32"))],
            },
        ));
    }
    let lease = r.table.get("s", key("10.0.0.1/32"), 999).unwrap();
    assert_eq!((lease.expires_at_ms, lease.end_ms()), (1_000, 1_000));
    assert!(r.table.get("s", key("10.0.0.1/32"), 1_000).is_none());
    // Idle: untouched from 1_000 on, a new lease ends 300 ms after its last use.
    r.apply(&cmd(1_000, op("c")));
    assert!(r.table.get("s", key("10.0.0.1/32"), 1_299).is_some());
    assert!(r.table.get("s", key("10.0.0.1/32"), 1_300).is_none());
    // The sweep removes it by its idle end.
    assert_eq!(
        r.apply(&cmd(1_300, Op::Sweep { up_to_ms: 1_300 })),
        Outcome::Swept(1)
    );
}

#[test]
fn ineligible_endpoint_is_replaced_atomically() {
    let mut r = Replica::default();
    r.resolve(0, "10.0.0.0/24", "a");
    let outcome = r.apply(&cmd(
        10,
        resolve_op("s", "10.0.0.0/24", "b", &["b", "c"], 1000),
    ));
    let Outcome::Resolved {
        lease,
        created,
        replaced,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(replaced && !created);
    assert_eq!(
        (&*lease.endpoint, lease.created_at_ms, lease.expires_at_ms),
        ("b", 10, 1010)
    );
    assert_eq!(lease.revision, 2);
    // Eligible and live: kept as is.
    let outcome = r.apply(&cmd(
        20,
        resolve_op("s", "10.0.0.0/24", "c", &["b", "c"], 1000),
    ));
    assert!(
        matches!(outcome, Outcome::Resolved { created: false, replaced: false, ref lease } if *lease.endpoint == *"b")
    );
    assert_eq!(r.kinds(), [EventKind::Created, EventKind::Replaced]);
}

#[test]
fn reassign_is_compare_and_set() {
    let mut r = Replica::default();
    r.resolve(0, "10.0.0.0/24", "a");
    let reassign = |expected: &str, endpoint: &str| Op::Reassign {
        scope: "s".into(),
        key: key("10.0.0.0/24"),
        expected_endpoint: expected.into(),
        endpoint: endpoint.into(),
        absolute_timeout_ms: 500,
        idle_timeout_ms: None,
    };
    // Wrong expectation: nothing changes, the current lease comes back.
    let out = r.apply(&cmd(10, reassign("x", "b")));
    assert!(
        matches!(&out, Outcome::Reassigned { swapped: false, lease: Some(l) } if *l.endpoint == *"a")
    );
    // Right expectation: a new session with a new expiry.
    let out = r.apply(&cmd(20, reassign("a", "b")));
    let Outcome::Reassigned {
        swapped: true,
        lease: Some(l),
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (&*l.endpoint, l.created_at_ms, l.expires_at_ms),
        ("b", 20, 520)
    );
    // No live lease: nothing to swap.
    let out = r.apply(&cmd(600, reassign("b", "c")));
    assert_eq!(
        out,
        Outcome::Reassigned {
            lease: None,
            swapped: false
        }
    );
    let out = r.apply(&cmd(
        700,
        Op::Reassign {
            scope: "other".into(),
            key: key("10.0.0.0/24"),
            expected_endpoint: "a".into(),
            endpoint: "b".into(),
            absolute_timeout_ms: 500,
            idle_timeout_ms: None,
        },
    ));
    assert_eq!(
        out,
        Outcome::Reassigned {
            lease: None,
            swapped: false
        }
    );
    assert_eq!(
        r.kinds(),
        [EventKind::Created, EventKind::Replaced, EventKind::Expired]
    );
}

#[test]
fn release_deletes_one_live_lease() {
    let mut r = Replica::default();
    r.resolve(0, "10.0.0.0/24", "a");
    r.resolve(0, "10.0.1.0/24", "a");
    let release = |prefix: &str| Op::Release {
        scope: "s".into(),
        key: key(prefix),
    };
    assert_eq!(
        r.apply(&cmd(1, release("10.0.0.0/24"))),
        Outcome::Released(true)
    );
    assert_eq!(
        r.apply(&cmd(2, release("10.0.0.0/24"))),
        Outcome::Released(false)
    );
    assert!(r.table.get("s", key("10.0.1.0/24"), 2).is_some());
    // An ended lease is not "released"; it is removed as expired.
    assert_eq!(
        r.apply(&cmd(5_000, release("10.0.1.0/24"))),
        Outcome::Released(false)
    );
    assert!(r.table.is_empty());
    assert_eq!(
        r.kinds(),
        [
            EventKind::Created,
            EventKind::Created,
            EventKind::Released,
            EventKind::Expired
        ]
    );
}

#[test]
fn drain_removes_exactly_the_leases_of_that_endpoint() {
    let mut r = Replica::default();
    let layout = [
        ("s1", "10.0.0.0/24", "a"),
        ("s1", "10.0.1.0/24", "b"),
        ("s1", "10.0.2.0/24", "a"),
        ("s2", "10.0.0.0/24", "a"),
        ("s2", "10.0.1.0/24", "ab"),
        ("s3", "2001:db8::/64", "a"),
    ];
    for (scope, prefix, endpoint) in layout {
        r.apply(&cmd(0, resolve_op(scope, prefix, endpoint, &[], 1000)));
    }
    let drain = |scope: Option<&str>, endpoint: &str| Op::DrainEndpoint {
        scope: scope.map(Into::into),
        endpoint: endpoint.into(),
    };
    // One scope only.
    assert_eq!(
        r.apply(&cmd(1, drain(Some("s1"), "a"))),
        Outcome::Drained(2)
    );
    let left: Vec<(String, String)> = r
        .table
        .iter()
        .map(|l| (l.scope.to_string(), l.key.to_string()))
        .collect();
    assert_eq!(
        left,
        [
            ("s1".to_string(), "10.0.1.0/24".to_string()),
            ("s2".into(), "10.0.0.0/24".into()),
            ("s2".into(), "10.0.1.0/24".into()),
            ("s3".into(), "2001:db8::/64".into()),
        ]
    );
    // All scopes; "ab" and "b" are other endpoints and stay.
    assert_eq!(r.apply(&cmd(2, drain(None, "a"))), Outcome::Drained(2));
    let endpoints: Vec<String> = r.table.iter().map(|l| l.endpoint.to_string()).collect();
    assert_eq!(endpoints, ["b", "ab"]);
    // Unknown endpoint: nothing.
    assert_eq!(r.apply(&cmd(3, drain(None, "zzz"))), Outcome::Drained(0));
    let drained = r
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Drained)
        .count();
    assert_eq!(drained, 4);
}

#[test]
fn sweep_removes_what_ended_up_to_its_bound_and_reports_it() {
    let mut r = Replica::default();
    for (i, abs) in [100u64, 200, 300].into_iter().enumerate() {
        r.apply(&cmd(
            0,
            resolve_op("s", &format!("10.0.{i}.0/24"), "a", &[], abs),
        ));
    }
    // The bound is capped at the command's own time: a sweep stamped 150 cannot remove the
    // lease ending at 200, whatever bound it carries.
    assert_eq!(
        r.apply(&cmd(150, Op::Sweep { up_to_ms: 10_000 })),
        Outcome::Swept(1)
    );
    assert_eq!(
        r.apply(&cmd(1_000, Op::Sweep { up_to_ms: 200 })),
        Outcome::Swept(1)
    );
    assert_eq!(r.table.len(), 1);
    assert_eq!(
        r.apply(&cmd(1_000, Op::Sweep { up_to_ms: 1_000 })),
        Outcome::Swept(1)
    );
    let expired: Vec<i64> = r
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Expired)
        .map(|e| e.lease.expires_at_ms)
        .collect();
    assert_eq!(expired, [100, 200, 300]);
    assert!(r.events.iter().all(|e| e.revision > 0));
}

#[test]
fn list_pages_in_key_order_and_skips_dead_leases() {
    let mut r = Replica::default();
    for (scope, prefix, abs) in [
        ("b", "10.0.0.0/24", 1000),
        ("a", "10.0.1.0/24", 1000),
        ("a", "10.0.0.0/24", 10),
        ("a", "::/0", 1000),
        ("c", "10.0.0.0/8", 1000),
    ] {
        r.apply(&cmd(0, resolve_op(scope, prefix, "e", &[], abs)));
    }
    let page = |scope: Option<&str>, after: Option<(&str, &str)>, limit| {
        let (leases, more) = r
            .table
            .list(scope, after.map(|(s, k)| (s, key(k))), limit, 100);
        let keys: Vec<String> = leases
            .iter()
            .map(|l| format!("{} {}", l.scope, l.key))
            .collect();
        (keys, more)
    };
    assert_eq!(
        page(None, None, 2),
        (vec!["a 10.0.1.0/24".to_string(), "a ::/0".into()], true)
    );
    assert_eq!(
        page(None, Some(("a", "::/0")), 2),
        (
            vec!["b 10.0.0.0/24".to_string(), "c 10.0.0.0/8".into()],
            false
        ),
        "no empty last page: `more` is false when nothing follows"
    );
    assert_eq!(page(None, Some(("c", "10.0.0.0/8")), 2), (vec![], false));
    assert_eq!(
        page(Some("a"), None, 10),
        (vec!["a 10.0.1.0/24".to_string(), "a ::/0".into()], false)
    );
    assert_eq!(
        page(Some("a"), Some(("a", "10.0.1.0/24")), 10),
        (vec!["a ::/0".to_string()], false)
    );
}

#[test]
fn snapshot_round_trip_keeps_everything() {
    let mut r = Replica::default();
    r.apply(&cmd(
        7,
        Op::Resolve {
            scope: "ns/route/0".into(),
            key: key("2001:db8:1::/48"),
            endpoint: "[2001:db8::10]:443".into(),
            eligible: vec![],
            absolute_timeout_ms: 60_000,
            idle_timeout_ms: Some(5_000),
        },
    ));
    r.resolve(9, "10.0.0.0/24", "a");
    let meta = pb::SnapshotMeta {
        last_log_id: Some(pb::LogId { term: 3, index: 2 }),
        last_membership: None,
    };
    let mut bytes = Vec::new();
    let stats = snapshot::write(&r.table, meta.clone(), &mut bytes).unwrap();
    assert_eq!((stats.lease_count, stats.bytes), (2, bytes.len() as u64));
    let decoded = snapshot::read(bytes.as_slice()).unwrap();
    assert_eq!(decoded.meta, meta);
    assert_eq!(decoded.stats, stats);
    assert_eq!(decoded.table, r.table);
    assert_eq!(decoded.table.clock_ms(), 9);
    decoded.table.check_invariants().unwrap();
}

#[test]
fn a_large_snapshot_with_many_scopes_and_endpoints_reads_back_whole() {
    // Larger than the reader's buffer, so records straddle its refills; scopes written in
    // an order other than their names', endpoints shared across scopes and a few unique.
    let mut table = LeaseTable::new();
    let mut events = Vec::new();
    let mut index = 0;
    for n in 0u32..12_000 {
        let scope = ["z/r/0", "a/r/0", "m/r/1"][n as usize % 3];
        let endpoint = if n % 1_000 == 7 {
            format!("10.9.{}.{}:8080", n / 256 % 256, n % 256)
        } else {
            format!("10.1.0.{}:8080", n % 37)
        };
        let prefix = format!("10.{}.{}.0/24", n / 256 % 256, n % 256);
        index += 1;
        table.apply(
            index,
            &cmd(10, resolve_op(scope, &prefix, &endpoint, &[], 60_000)),
            &mut events,
        );
    }
    table.check_invariants().unwrap();
    let mut bytes = Vec::new();
    snapshot::write(&table, pb::SnapshotMeta::default(), &mut bytes).unwrap();
    assert!(bytes.len() > 256 * 1024, "only {} bytes", bytes.len());
    let read = snapshot::read(bytes.as_slice()).unwrap().table;
    assert_eq!(read.len(), 12_000);
    assert_eq!(read, table);
    read.check_invariants().unwrap();
}

#[test]
fn damaged_snapshots_are_refused_with_a_reason() {
    let mut r = Replica::default();
    for i in 0..20 {
        r.resolve(i, &format!("10.0.{i}.0/24"), "a");
    }
    let mut good = Vec::new();
    snapshot::write(&r.table, pb::SnapshotMeta::default(), &mut good).unwrap();

    let reason = |bytes: &[u8]| match snapshot::read(bytes) {
        Ok(_) => panic!("damaged snapshot accepted"),
        Err(e) => e.to_string(),
    };
    assert!(reason(b"PNG\0\0\0\0\0\x01\0\0\0").contains("magic"));
    let mut newer = good.clone();
    newer[8] = 3;
    assert!(reason(&newer).contains("version 3"));
    // Every truncation is caught.
    for cut in [10, 13, good.len() / 2, good.len() - 1] {
        assert!(reason(&good[..cut]).contains("corrupt"), "cut at {cut}");
    }
    // A flipped bit in a lease record is caught (by the checksum or by the field rules).
    let mut flipped = good.clone();
    let middle = good.len() / 2;
    flipped[middle] ^= 0x20;
    assert!(reason(&flipped).contains("corrupt"));
    let mut longer = good.clone();
    longer.push(0);
    assert!(reason(&longer).contains("follow the trailer"));
    // A header that claims far more leases than follow is refused as truncated (the
    // restore reserves room by that count: it must neither abort nor be believed).
    let mut claims = snapshot::MAGIC.to_vec();
    claims.extend_from_slice(&snapshot::FORMAT_VERSION_1.to_le_bytes());
    let header = pb::SnapshotHeader {
        meta: Some(pb::SnapshotMeta::default()),
        clock_ms: 0,
        lease_count: u64::MAX / 2,
        remembered_count: 0,
    };
    claims.extend(prost::Message::encode_length_delimited_to_vec(&header));
    let why = reason(&claims);
    assert!(why.contains("truncated"), "{why}");
}

mod model;

fn named(id: &str, op: Op) -> Op {
    op.named(RequestId::parse("request_id", id).unwrap())
}

#[test]
fn a_retried_release_does_not_delete_the_lease_created_since() {
    // Gateway A releases a lease; its answer is lost and it retries. Meanwhile gateway B
    // has created a new lease for the key. The retry must answer as the first try did and
    // leave B's lease alone.
    let mut r = Replica::default();
    r.resolve(1, "10.0.0.0/24", "a");
    let release = named(
        "release-1",
        Op::Release {
            scope: "s".into(),
            key: key("10.0.0.0/24"),
        },
    );
    assert_eq!(r.apply(&cmd(2, release.clone())), Outcome::Released(true));
    let (b, created, _) = r.resolve(3, "10.0.0.0/24", "b");
    assert!(created);
    assert_eq!(r.apply(&cmd(4, release.clone())), Outcome::Released(true));
    assert_eq!(r.table.get("s", key("10.0.0.0/24"), 4), Some(b.clone()));
    assert_eq!(r.table.remembered_len(), 1);
    // Past the retention the name is forgotten, and the same request applies again.
    let later = 2 + RETENTION_MS;
    assert_eq!(r.apply(&cmd(later, release)), Outcome::Released(false));
}

#[test]
fn a_retried_reassign_reports_its_own_swap() {
    let mut r = Replica::default();
    r.resolve(1, "10.0.0.0/24", "a");
    let reassign = named(
        "move-1",
        Op::Reassign {
            scope: "s".into(),
            key: key("10.0.0.0/24"),
            expected_endpoint: "a".into(),
            endpoint: "b".into(),
            absolute_timeout_ms: 1_000,
            idle_timeout_ms: None,
        },
    );
    let first = r.apply(&cmd(2, reassign.clone()));
    assert!(
        matches!(first, Outcome::Reassigned { swapped: true, .. }),
        "{first:?}"
    );
    assert_eq!(r.apply(&cmd(3, reassign)), first);
    // A named resolve retried answers "created" again, with the same lease.
    let resolve = named("resolve-1", resolve_op("s", "10.0.9.0/24", "c", &[], 1_000));
    let created = r.apply(&cmd(4, resolve.clone()));
    assert!(matches!(created, Outcome::Resolved { created: true, .. }));
    assert_eq!(
        r.apply(&cmd(5, Op::Batch(vec![resolve]))),
        Outcome::Batch(vec![created])
    );
}

#[test]
fn remembered_writes_survive_a_snapshot_and_an_empty_memory_writes_version_1() {
    let mut r = Replica::default();
    r.resolve(1, "10.0.0.0/24", "a");
    let mut bytes = Vec::new();
    snapshot::write(&r.table, pb::SnapshotMeta::default(), &mut bytes).unwrap();
    assert_eq!(bytes[8], 1, "nothing remembered: format version 1");
    r.apply(&cmd(
        2,
        named(
            "drain-1",
            Op::DrainEndpoint {
                scope: None,
                endpoint: "a".into(),
            },
        ),
    ));
    r.apply(&cmd(
        3,
        named("resolve-2", resolve_op("s", "10.0.1.0/24", "b", &[], 1_000)),
    ));
    bytes.clear();
    snapshot::write(&r.table, pb::SnapshotMeta::default(), &mut bytes).unwrap();
    assert_eq!(bytes[8], 2);
    let read = snapshot::read(bytes.as_slice()).unwrap().table;
    assert_eq!(read, r.table);
    assert_eq!(read.remembered_len(), 2);
    // Damage in a remembered record is caught too.
    let mut flipped = bytes.clone();
    let at = bytes.len() - 20;
    flipped[at] ^= 0x40;
    assert!(snapshot::read(flipped.as_slice()).is_err());
}

#[test]
fn a_table_read_from_a_snapshot_sweeps_and_drains_in_the_same_order() {
    // Scopes get numbers in the order they first appear: "z" before "a" here, "a" before
    // "z" in the table read back from a snapshot. Events must not depend on that.
    let mut applied = Replica::default();
    for (scope, prefix, endpoint) in [
        ("z", "10.0.1.0/24", "e1"),
        ("a", "10.0.2.0/24", "e1"),
        ("z", "10.0.3.0/24", "e2"),
        ("a", "10.0.4.0/24", "e2"),
        ("m", "10.0.5.0/24", "e1"),
    ] {
        applied.apply(&cmd(10, resolve_op(scope, prefix, endpoint, &[], 1_000)));
    }
    let mut bytes = Vec::new();
    snapshot::write(&applied.table, pb::SnapshotMeta::default(), &mut bytes).unwrap();
    let mut read = Replica {
        table: snapshot::read(bytes.as_slice()).unwrap().table,
        index: applied.index,
        events: Vec::new(),
    };
    assert_eq!(read.table, applied.table);
    for replica in [&mut applied, &mut read] {
        replica.events.clear();
        replica.apply(&cmd(
            20,
            Op::DrainEndpoint {
                scope: None,
                endpoint: "e1".into(),
            },
        ));
        replica.apply(&cmd(2_000, Op::Sweep { up_to_ms: 2_000 }));
    }
    let order = |r: &Replica| -> Vec<(EventKind, String, String)> {
        r.events
            .iter()
            .map(|e| (e.kind, e.lease.scope.to_string(), e.lease.key.to_string()))
            .collect()
    };
    assert_eq!(order(&applied), order(&read));
    assert_eq!(
        order(&applied),
        vec![
            (EventKind::Drained, "a".into(), "10.0.2.0/24".into()),
            (EventKind::Drained, "m".into(), "10.0.5.0/24".into()),
            (EventKind::Drained, "z".into(), "10.0.1.0/24".into()),
            (EventKind::Expired, "a".into(), "10.0.4.0/24".into()),
            (EventKind::Expired, "z".into(), "10.0.3.0/24".into()),
        ]
    );
    assert!(applied.table.is_empty() && read.table.is_empty());
    // Numbers and strings freed with their last lease are reused without mixing names up.
    applied.apply(&cmd(
        3_000,
        resolve_op("b", "10.0.6.0/24", "e3", &[], 1_000),
    ));
    applied.apply(&cmd(
        3_000,
        resolve_op("c", "10.0.7.0/24", "e1", &[], 1_000),
    ));
    let leases: Vec<(String, String)> = applied
        .table
        .iter()
        .map(|l| (l.scope.to_string(), l.endpoint.to_string()))
        .collect();
    assert_eq!(
        leases,
        vec![("b".into(), "e3".into()), ("c".into(), "e1".into())]
    );
}
