//! Small histories, each showing the checker rejecting one violation or accepting a
//! legitimate history that looks like one.

use super::{Builder, LONG, SHORT, created, kept, lease, replaced, resolve};
use crate::checker::Rule;
use crate::workload::history::{Answer, Outcome, Request, Seen};

// ---- rejected ----

#[test]
fn a_lookup_after_an_acknowledged_release_is_a_stale_read() {
    let mut h = Builder::default();
    let a = lease(LONG, "a", 1_001);
    h.resolve(LONG, "a", (1_000, 1_003), created(a.clone()));
    h.release(LONG, (2_000, 2_003));
    h.lookup(LONG, (3_000, 3_002), Some(a));
    let report = h.fails_with(Rule::StaleRead);
    // The report names the key and shows the operations around the conflict.
    assert!(report.contains("chaos/long/0 10.64.0.0/32"), "{report}");
    assert!(
        report.contains("Lookup") && report.contains("Release"),
        "{report}"
    );
}

#[test]
fn a_resolve_keeping_a_released_lease_is_a_stale_read() {
    let mut h = Builder::default();
    let a = lease(LONG, "a", 1_001);
    h.resolve(LONG, "a", (1_000, 1_003), created(a.clone()));
    h.release(LONG, (2_000, 2_003));
    h.resolve(LONG, "b", (3_000, 3_002), kept(a));
    h.fails_with(Rule::StaleRead);
}

/// Lease `a` of key SHORT created at 1 001, then a Resolve whose eligible list leaves it
/// out, over `replace_at`, replacing it by `b`, stamped 2 050 (when it was proposed).
fn replaced_at(h: &mut Builder, replace_at: (i64, i64)) -> (Seen, Seen) {
    let a = lease(SHORT, "a", 1_001);
    h.resolve(SHORT, "a", (1_000, 1_003), created(a.clone()));
    let b = lease(SHORT, "b", 2_050);
    h.call(
        1,
        SHORT,
        resolve("b", &["b"]),
        replace_at,
        Outcome::Ok(replaced(b.clone())),
    );
    (a, b)
}

#[test]
fn a_read_started_after_the_replacement_responded_answering_the_old_lease_is_stale() {
    // Real time puts the replacement first: the read must see it.
    let mut h = Builder::default();
    let (a, _) = replaced_at(&mut h, (2_000, 2_130));
    h.resolve(SHORT, "c", (2_131, 2_133), kept(a.clone()));
    let report = h.fails_with(Rule::StaleRead);
    assert!(report.contains("but the key had live lease b"), "{report}");
    assert!(report.contains("real time forbids it"), "{report}");
    // A Lookup likewise.
    let mut h = Builder::default();
    let (a, _) = replaced_at(&mut h, (2_000, 2_130));
    h.lookup(SHORT, (2_140, 2_142), Some(a));
    h.fails_with(Rule::StaleRead);
}

#[test]
fn once_a_read_saw_the_replacement_a_later_read_of_the_old_lease_is_stale() {
    // Both reads overlap the replacement, but the first saw it, and the second started
    // after the first responded.
    let mut h = Builder::default();
    let (a, b) = replaced_at(&mut h, (2_000, 2_130));
    h.lookup(SHORT, (2_060, 2_062), Some(b));
    h.resolve(SHORT, "c", (2_070, 2_072), kept(a));
    h.fails_with(Rule::StaleRead);
}

#[test]
fn a_replacement_stamped_before_the_lease_it_replaced_is_rejected() {
    // The replacement is applied after the creation (it found its lease live), so the
    // state machine's clock, which stamps its lease, was at the creation's stamp or later.
    let mut h = Builder::default();
    let a = lease(LONG, "a", 1_005);
    h.resolve(LONG, "a", (1_000, 1_010), created(a));
    h.call(
        1,
        LONG,
        resolve("b", &["b"]),
        (1_001, 1_011),
        Outcome::Ok(replaced(lease(LONG, "b", 1_003))),
    );
    let report = h.fails_with(Rule::NotLinearizable);
    assert!(report.contains("before the write clock"), "{report}");
}

#[test]
fn a_lease_answered_live_past_its_end_by_more_than_the_tolerance_is_extended() {
    // Lease a ends at 11 001; the tolerance is 5 ms. (Too soon after its creator returned
    // for the lifetime rule outside the search: this is the model's verdict.)
    let a = lease(SHORT, "a", 1_001);
    for late in [Request::Lookup, resolve("c", &[])] {
        let mut h = Builder::default();
        h.resolve(SHORT, "a", (1_000, 1_003), created(a.clone()));
        let answer = match late {
            Request::Lookup => Answer::Looked(Some(a.clone())),
            _ => kept(a.clone()),
        };
        h.call(1, SHORT, late, (11_007, 11_009), Outcome::Ok(answer));
        let report = h.fails_with(Rule::ExtendedLease);
        assert!(report.contains("had ended"), "{report}");
    }
    // Within the tolerance of its end, it may still have been live at the reader's clock.
    let mut h = Builder::default();
    h.resolve(SHORT, "a", (1_000, 1_003), created(a.clone()));
    h.lookup(SHORT, (11_005, 11_006), Some(a));
    h.passes();
}

#[test]
fn a_lookup_missing_an_acknowledged_lease_is_a_stale_read() {
    let mut h = Builder::default();
    h.resolve(LONG, "a", (1_000, 1_003), created(lease(LONG, "a", 1_001)));
    h.lookup(LONG, (2_000, 2_002), None);
    h.fails_with(Rule::StaleRead);
}

#[test]
fn an_acknowledged_lease_missing_after_healing_is_a_lost_write() {
    let mut h = Builder::default();
    h.resolve(LONG, "a", (1_000, 1_003), created(lease(LONG, "a", 1_001)));
    h.listed((50_000, 50_010), &[]);
    h.fails_with(Rule::LostWrite);
    // Replaced by a lease nobody asked for: lost too, and unexplained.
    h.listed((50_000, 50_010), &[(LONG, lease(LONG, "z", 1_001))]);
    h.fails_with(Rule::Unexplained);
}

#[test]
fn two_concurrent_creators_both_told_created_are_two_winners() {
    let mut h = Builder::default();
    h.resolve(LONG, "a", (1_000, 1_010), created(lease(LONG, "a", 1_002)));
    h.resolve(LONG, "b", (1_001, 1_011), created(lease(LONG, "b", 1_004)));
    h.fails_with(Rule::TwoWinners);
}

#[test]
fn two_endpoints_with_one_set_of_stamps_are_two_winners() {
    let mut h = Builder::default();
    h.resolve(LONG, "a", (1_000, 1_010), created(lease(LONG, "a", 1_005)));
    h.resolve(LONG, "b", (1_001, 1_011), created(lease(LONG, "b", 1_005)));
    let report = h.fails_with(Rule::TwoWinners);
    assert!(report.contains("share the stamps"), "{report}");
}

#[test]
fn a_lease_answered_a_lifetime_after_its_creation_is_extended() {
    let mut h = Builder::default();
    let a = lease(SHORT, "a", 1_001);
    h.resolve(SHORT, "a", (1_000, 1_003), created(a.clone()));
    h.lookup(SHORT, (20_000, 20_002), Some(a));
    h.fails_with(Rule::ExtendedLease);
}

#[test]
fn a_lease_living_longer_than_its_policy_is_extended() {
    let mut h = Builder::default();
    let mut a = lease(SHORT, "a", 1_001);
    a.expires_at_ms += 5_000;
    h.resolve(SHORT, "a", (1_000, 1_003), created(a));
    h.fails_with(Rule::ExtendedLease);
}

#[test]
fn one_endpoint_in_two_leases_is_applied_twice() {
    let mut h = Builder::default();
    h.resolve(LONG, "a", (1_000, 1_003), created(lease(LONG, "a", 1_001)));
    h.lookup(LONG, (9_000, 9_002), Some(lease(LONG, "a", 5_000)));
    h.fails_with(Rule::AppliedTwice);
}

#[test]
fn a_drain_removing_two_leases_of_a_unique_endpoint_is_applied_twice() {
    let mut h = Builder::default();
    h.resolve(LONG, "a", (1_000, 1_003), created(lease(LONG, "a", 1_001)));
    h.call(
        0,
        LONG,
        Request::Drain {
            endpoint: "a".into(),
        },
        (2_000, 2_003),
        Outcome::Ok(Answer::Drained(2)),
    );
    h.fails_with(Rule::AppliedTwice);
}

#[test]
fn a_refused_write_that_took_effect_is_unexpected() {
    let mut h = Builder::default();
    h.failed(
        LONG,
        resolve("a", &[]),
        (1_000, 1_003),
        "RESOURCE_EXHAUSTED",
    );
    h.lookup(LONG, (2_000, 2_002), Some(lease(LONG, "a", 1_001)));
    h.fails_with(Rule::UnexpectedWrite);
}

#[test]
fn a_lease_stamped_after_its_creator_returned_is_a_bad_stamp() {
    let mut h = Builder::default();
    h.resolve(LONG, "a", (1_000, 1_003), created(lease(LONG, "a", 1_500)));
    h.fails_with(Rule::BadStamp);
}

#[test]
fn a_swap_that_did_not_expect_the_live_endpoint_is_rejected() {
    let mut h = Builder::default();
    h.resolve(LONG, "a", (1_000, 1_003), created(lease(LONG, "a", 1_001)));
    h.call(
        0,
        LONG,
        Request::Reassign {
            expected: "x".into(),
            endpoint: "b".into(),
        },
        (2_000, 2_003),
        Outcome::Ok(Answer::Reassigned {
            lease: Some(lease(LONG, "b", 2_001)),
            swapped: true,
        }),
    );
    h.fails_with(Rule::NotLinearizable);
}

#[test]
fn a_cached_answer_after_the_lease_ended_is_stale() {
    let mut h = Builder::default();
    let a = lease(SHORT, "a", 1_001);
    h.resolve(SHORT, "a", (1_000, 1_003), created(a.clone()));
    from_cache(&mut h, SHORT, a, 12_000);
    h.fails_with(Rule::StaleCache);
}

/// A cached answer of `lease` (its creation stamp unknown, as the client crate gives it)
/// by worker 5 at `at`.
fn from_cache(h: &mut Builder, k: usize, mut lease: Seen, at: i64) {
    lease.created_at_ms = None;
    h.call(
        5,
        k,
        resolve("c", &[]),
        (at, at),
        Outcome::Ok(Answer::Resolved {
            lease,
            created: false,
            replaced: false,
            cached: true,
        }),
    );
}

/// The workload's `max_staleness` (5 s) and the checker's slack (2 s).
const BOUND: i64 = 7_000;

#[test]
fn a_cached_answer_long_after_an_acknowledged_release_is_too_stale() {
    let mut h = Builder::default();
    let a = lease(LONG, "a", 1_001);
    h.resolve(LONG, "a", (1_000, 1_003), created(a.clone()));
    h.release(LONG, (2_000, 2_003));
    from_cache(&mut h, LONG, a, 2_003 + BOUND + 100);
    let report = h.fails_with(Rule::CacheTooStale);
    assert!(
        report.contains("showed the store no longer held it"),
        "{report}"
    );
}

#[test]
fn a_cached_answer_long_after_a_newer_lease_was_answered_is_too_stale() {
    let mut h = Builder::default();
    let a = lease(LONG, "a", 1_001);
    h.resolve(LONG, "a", (1_000, 1_003), created(a.clone()));
    // Moved to b by a Reassign elsewhere; a reader sees b.
    let b = lease(LONG, "b", 2_001);
    h.call(
        1,
        LONG,
        Request::Reassign {
            expected: "a".into(),
            endpoint: "b".into(),
        },
        (2_000, 2_004),
        Outcome::Ok(Answer::Reassigned {
            lease: Some(b.clone()),
            swapped: true,
        }),
    );
    h.lookup(LONG, (2_500, 2_502), Some(b));
    from_cache(&mut h, LONG, a, 2_004 + BOUND + 100);
    h.fails_with(Rule::CacheTooStale);
}

#[test]
fn a_drain_of_another_endpoint_says_nothing_about_the_cached_lease() {
    let mut h = Builder::default();
    let a = lease(LONG, "a", 1_001);
    h.resolve(LONG, "a", (1_000, 1_003), created(a.clone()));
    h.call(
        0,
        LONG,
        Request::Drain {
            endpoint: "z".into(),
        },
        (2_000, 2_003),
        Outcome::Ok(Answer::Drained(0)),
    );
    from_cache(&mut h, LONG, a, 2_003 + BOUND + 100);
    h.passes();
}

// ---- accepted ----

#[test]
fn concurrent_creators_where_one_wins_pass() {
    let mut h = Builder::default();
    let a = lease(LONG, "a", 1_004);
    h.resolve(LONG, "a", (1_000, 1_010), created(a.clone()));
    h.resolve(LONG, "b", (1_001, 1_012), kept(a.clone()));
    // The loser may even have returned first.
    h.resolve(LONG, "c", (1_002, 1_005), kept(a.clone()));
    h.lookup(LONG, (2_000, 2_002), Some(a.clone()));
    h.listed((50_000, 50_010), &[(LONG, a)]);
    let checked = h.passes();
    assert_eq!(checked.summary.checked.get("Resolve"), Some(&3));
    assert_eq!(checked.summary.checked.get("List"), Some(&1));
}

#[test]
fn a_read_overlapping_a_replacement_stamped_before_it_may_answer_the_old_lease() {
    // The pattern of leader_sigkill_x5 run 1: the replacement is stamped when the leader
    // proposes it (2 050), a read on the leader at 2 100..2 102 answers the old lease from
    // its table, and the replacement is applied and acknowledged at 2 130. The read comes
    // first, the replacement after it, taking effect at its stamp: the state machine's clock
    // had only reached 1 001.
    let mut h = Builder::default();
    let (a, b) = replaced_at(&mut h, (2_000, 2_130));
    h.resolve(SHORT, "c", (2_100, 2_102), kept(a.clone()));
    h.lookup(SHORT, (2_110, 2_112), Some(a));
    // After its response, the replacement is what every read sees.
    h.lookup(SHORT, (2_131, 2_133), Some(b.clone()));
    h.listed((5_000, 5_010), &[(SHORT, b)]);
    let checked = h.passes();
    assert_eq!(checked.summary.checked.get("Resolve"), Some(&3));
    assert_eq!(checked.summary.checked.get("Lookup"), Some(&2));
}

#[test]
fn a_read_overlapping_a_creation_stamped_before_it_may_answer_no_lease() {
    // The same with nothing to replace: "no lease" at 2 100, then the creation stamped
    // 2 050 and acknowledged at 2 130.
    let mut h = Builder::default();
    h.lookup(SHORT, (2_100, 2_102), None);
    let b = lease(SHORT, "b", 2_050);
    h.resolve(SHORT, "b", (2_000, 2_130), created(b.clone()));
    h.lookup(SHORT, (2_131, 2_133), Some(b));
    h.passes();
    // But not after the creation responded.
    h.lookup(SHORT, (2_140, 2_142), None);
    h.fails_with(Rule::StaleRead);
}

#[test]
fn an_unknown_write_that_applied_passes() {
    let mut h = Builder::default();
    h.failed(LONG, resolve("a", &[]), (1_000, 3_000), "DEADLINE_EXCEEDED");
    // Seen only later, applied after the caller gave up.
    let a = lease(LONG, "a", 3_500);
    h.lookup(LONG, (4_000, 4_002), Some(a.clone()));
    h.listed((50_000, 50_010), &[(LONG, a)]);
    let checked = h.passes();
    assert_eq!(checked.summary.unknown_applied, 1);
}

#[test]
fn an_unknown_write_that_did_not_apply_passes() {
    let mut h = Builder::default();
    h.failed(LONG, resolve("a", &[]), (1_000, 3_000), "UNAVAILABLE");
    h.lookup(LONG, (4_000, 4_002), None);
    let b = lease(LONG, "b", 5_001);
    h.resolve(LONG, "b", (5_000, 5_003), created(b.clone()));
    h.listed((50_000, 50_010), &[(LONG, b)]);
    h.passes();
}

#[test]
fn a_retry_under_one_request_id_is_one_call() {
    let mut h = Builder::default();
    // The first attempt timed out, but was applied; the retry got the first outcome.
    h.failed(LONG, resolve("a", &[]), (1_000, 3_000), "TIMEOUT")
        .request_id = Some("id-1".into());
    let a = lease(LONG, "a", 1_500);
    h.resolve(LONG, "a", (3_100, 3_105), created(a.clone()))
        .request_id = Some("id-1".into());
    h.listed((50_000, 50_010), &[(LONG, a)]);
    let checked = h.passes();
    assert_eq!(checked.summary.retried, 1);
}

#[test]
fn expiry_then_re_creation_passes() {
    let mut h = Builder::default();
    let a = lease(SHORT, "a", 1_001);
    h.resolve(SHORT, "a", (1_000, 1_003), created(a.clone()));
    h.lookup(SHORT, (5_000, 5_002), Some(a.clone()));
    h.resolve(SHORT, "x", (6_000, 6_002), kept(a));
    h.lookup(SHORT, (11_001, 11_003), None);
    let b = lease(SHORT, "b", 12_001);
    h.resolve(SHORT, "b", (12_000, 12_003), created(b.clone()));
    h.lookup(SHORT, (13_000, 13_002), Some(b.clone()));
    h.listed((14_000, 14_010), &[(SHORT, b)]);
    h.passes();
}

#[test]
fn a_phantom_explains_a_release_of_a_lease_nobody_saw() {
    let mut h = Builder::default();
    h.release(LONG, (5_000, 5_003));
    h.lookup(LONG, (6_000, 6_002), None);
    h.listed((50_000, 50_010), &[]);
    // Nothing could have been released...
    h.fails_with(Rule::StaleRead);
    // ...unless a write of unknown outcome created a lease that nobody ever saw.
    h.failed(LONG, resolve("p", &[]), (1_000, 3_000), "UNAVAILABLE");
    h.passes();
}

#[test]
fn replacements_swaps_and_drains_pass() {
    let mut h = Builder::default();
    let a = lease(LONG, "a", 1_001);
    h.resolve(LONG, "a", (1_000, 1_003), created(a.clone()));
    // Eligible leaves "a" out: replaced.
    let b = lease(LONG, "b", 2_001);
    h.call(
        1,
        LONG,
        resolve("b", &["b"]),
        (2_000, 2_003),
        Outcome::Ok(replaced(b.clone())),
    );
    // Eligible keeps "b": kept.
    h.call(
        2,
        LONG,
        resolve("c", &["c", "b"]),
        (3_000, 3_003),
        Outcome::Ok(kept(b.clone())),
    );
    let d = lease(LONG, "d", 4_001);
    h.call(
        0,
        LONG,
        Request::Reassign {
            expected: "b".into(),
            endpoint: "d".into(),
        },
        (4_000, 4_003),
        Outcome::Ok(Answer::Reassigned {
            lease: Some(d.clone()),
            swapped: true,
        }),
    );
    h.call(
        1,
        LONG,
        Request::Reassign {
            expected: "b".into(),
            endpoint: "e".into(),
        },
        (5_000, 5_003),
        Outcome::Ok(Answer::Reassigned {
            lease: Some(d),
            swapped: false,
        }),
    );
    h.call(
        2,
        LONG,
        Request::Drain {
            endpoint: "b".into(),
        },
        (6_000, 6_003),
        Outcome::Ok(Answer::Drained(0)),
    );
    h.call(
        2,
        LONG,
        Request::Drain {
            endpoint: "d".into(),
        },
        (7_000, 7_003),
        Outcome::Ok(Answer::Drained(1)),
    );
    h.lookup(LONG, (8_000, 8_002), None);
    h.call(
        0,
        LONG,
        Request::Release,
        (9_000, 9_003),
        Outcome::Ok(Answer::Released(false)),
    );
    h.listed((50_000, 50_010), &[]);
    let checked = h.passes();
    assert_eq!(checked.summary.checked.get("DrainEndpoint"), Some(&2));
}

#[test]
fn a_cached_answer_of_a_live_lease_passes_and_is_counted_apart() {
    let mut h = Builder::default();
    let a = lease(SHORT, "a", 1_001);
    h.resolve(SHORT, "a", (1_000, 1_003), created(a.clone()));
    // The cache still answers 1 s after a Release: within its max_staleness, not a
    // violation.
    h.release(SHORT, (2_000, 2_003));
    from_cache(&mut h, SHORT, a, 3_000);
    let checked = h.passes();
    assert_eq!(checked.summary.cached, 1);
    assert_eq!(checked.summary.checked.get("Resolve"), Some(&1));
}
