//! Checks made outside the search, each on its own, with a message that names the rule:
//!
//! - **bad stamp**: a lease's creation stamp lies outside the window of the call that
//!   created it;
//! - **extended lease**: a lease answered live to a call that started more than its
//!   lifetime (plus the tolerance) after the creating call responded;
//! - **two winners**: two leases of one key with the same stamps and different endpoints,
//!   when no operation of the key could have ended the first at that moment;
//! - **cached answers**: a lease from a client's cache must have been created by some call
//!   and not have ended (by store time) when the call started;
//! - **cache past its bound**: nor may a cache answer a lease longer than the client's
//!   `max_staleness` (plus `STALENESS_SLACK_MS`) after an acknowledged call showed that the
//!   store no longer held it (a newer lease of the key answered, or a Release, a Drain of
//!   its endpoint, a swapping Reassign from it, or a read finding nothing, each begun
//!   after the lease was created).
//!
//! (Applied twice, unexplained and unexpected writes are found while cataloguing, see
//! `prepare`.)

use std::collections::HashMap;
use std::fmt::Write as _;

use super::explain::Ctx;
use super::model::{Act, KeyHistory, Op, Origin, ReassignResult, ResolveResult};
use super::prepare::{Cached, Fate, key_name};
use super::{Rule, Violation};

/// What the bound on a cache's staleness allows beyond `max_staleness`: a node reports
/// itself in touch with the leader for up to one minimum election timeout (0.4 s by
/// default) after it last heard it, and the change and the progress take their time
/// through a loaded machine.
pub(crate) const STALENESS_SLACK_MS: i64 = 2_000;

/// Every check of this module on `h`.
pub(crate) fn check_key(ctx: &Ctx<'_>, h: &KeyHistory, out: &mut Vec<Violation>) {
    bad_stamps(ctx, h, out);
    extended(ctx, h, out);
    two_winners(ctx, h, out);
}

fn bad_stamps(ctx: &Ctx<'_>, h: &KeyHistory, out: &mut Vec<Violation>) {
    for op in &h.ops {
        let (l, definite) = match &op.act {
            Act::Resolve {
                result: ResolveResult::Created(l) | ResolveResult::Replaced(l),
                ..
            }
            | Act::Reassign {
                result: ReassignResult::Swapped(l),
                ..
            } => (*l, true),
            Act::Resolve {
                result: ResolveResult::Applied(l),
                ..
            }
            | Act::Reassign {
                result: ReassignResult::Applied(l),
                ..
            } => (*l, false),
            _ => continue,
        };
        let created = h.leases[l as usize].created;
        if created < op.lo || (definite && created > op.hi) {
            out.push(Violation::new(
                Rule::BadStamp,
                Some(key_name(h.key, ctx.workload)),
                format!(
                    "{}\n  created a lease stamped {}, outside the call's window [{}, {}] (tolerance {} ms)",
                    ctx.op_line(h, op),
                    ctx.time(created),
                    ctx.time(op.invoke),
                    ctx.time(op.response),
                    ctx.tolerance_ms
                ),
            ));
        }
    }
}

/// The response time of the call that created lease `l`, if it is known.
fn created_by_response(ctx: &Ctx<'_>, h: &KeyHistory, l: u32) -> Option<(usize, i64)> {
    let c = h.leases[l as usize].creator?;
    match ctx.calls[c].fate {
        Fate::Answered(_, at) => Some((c, at)),
        _ => None,
    }
}

fn extended(ctx: &Ctx<'_>, h: &KeyHistory, out: &mut Vec<Violation>) {
    for op in &h.ops {
        let l = match &op.act {
            Act::Resolve {
                result: ResolveResult::Kept(l),
                ..
            }
            | Act::Reassign {
                result: ReassignResult::Kept(Some(l)),
                ..
            }
            | Act::Read(Some(l)) => *l,
            _ => continue,
        };
        if let Some((c, at)) = created_by_response(ctx, h, l)
            && op.invoke > at + h.lifetime_ms + ctx.tolerance_ms
        {
            out.push(Violation::new(
                Rule::ExtendedLease,
                Some(key_name(h.key, ctx.workload)),
                format!(
                    "{}\n  was answered live more than its lifetime ({} ms) after its creator responded:\n{}",
                    ctx.op_line(h, op),
                    h.lifetime_ms,
                    ctx.call_line(c)
                ),
            ));
        }
    }
}

/// Whether `op` could end a live lease (and so let another be created at once).
fn may_end_a_lease(op: &Op) -> bool {
    matches!(
        op.act,
        Act::Resolve {
            result: ResolveResult::Replaced(_) | ResolveResult::Applied(_) | ResolveResult::Maybe,
            ..
        } | Act::Reassign {
            result: ReassignResult::Swapped(_) | ReassignResult::Applied(_) | ReassignResult::Maybe,
            ..
        } | Act::Release(Some(true) | None)
            | Act::Drain {
                removed: Some(1) | None,
                ..
            }
    )
}

fn two_winners(ctx: &Ctx<'_>, h: &KeyHistory, out: &mut Vec<Violation>) {
    let mut by_stamps: HashMap<(i64, i64), Vec<u32>> = HashMap::new();
    for (l, lease) in h.leases.iter().enumerate() {
        by_stamps
            .entry((lease.created, lease.expires))
            .or_default()
            .push(u32::try_from(l).expect("fewer than 2^32 leases"));
    }
    let mut groups: Vec<_> = by_stamps
        .into_iter()
        .filter(|(_, ls)| ls.len() > 1)
        .collect();
    groups.sort_unstable();
    for ((created, _), leases) in groups {
        let explained = h
            .ops
            .iter()
            .any(|op| may_end_a_lease(op) && op.lo <= created && created <= op.hi);
        if explained {
            continue;
        }
        let mut detail = format!(
            "{} leases share the stamps [{}, ...) and no operation of the key could have ended one of them then:",
            leases.len(),
            ctx.time(created)
        );
        for l in leases {
            let _ = write!(detail, "\n  {}", ctx.lease(h, l));
            if let Some(c) = h.leases[l as usize].creator {
                let _ = write!(detail, "\n{}", ctx.call_line(c));
            }
        }
        out.push(Violation::new(
            Rule::TwoWinners,
            Some(key_name(h.key, ctx.workload)),
            detail,
        ));
    }
}

/// Check the answers that came from a client cache.
pub(crate) fn check_cached(
    ctx: &Ctx<'_>,
    keys: &[KeyHistory],
    cached: &[Cached],
    out: &mut Vec<Violation>,
) {
    let by_key: HashMap<usize, &KeyHistory> = keys.iter().map(|h| (h.key, h)).collect();
    for c in cached {
        let Some(h) = by_key.get(&c.key) else {
            continue;
        };
        let lease = &h.leases[c.lease as usize];
        let first = ctx.calls[c.call].first();
        let why = if lease.creator.is_none() {
            Some("no call of the history created it")
        } else if lease.expires <= first.invoke_ms - ctx.tolerance_ms {
            Some("it had ended before the call started")
        } else if lease.created > first.response_ms + ctx.tolerance_ms {
            Some("it was created after the call returned")
        } else if created_by_response(ctx, h, c.lease)
            .is_some_and(|(_, at)| first.invoke_ms > at + h.lifetime_ms + ctx.tolerance_ms)
        {
            Some("the call started more than a lifetime after the lease's creator responded")
        } else {
            None
        };
        if why.is_none()
            && let Some((op, at)) = gone_since(h, c.lease)
        {
            let max_staleness =
                i64::try_from(ctx.workload.cache_max_staleness.as_millis()).unwrap_or(i64::MAX);
            let bound = max_staleness
                .saturating_add(STALENESS_SLACK_MS)
                .saturating_add(ctx.tolerance_ms);
            let late = first.invoke_ms - at;
            if late > bound {
                out.push(Violation::new(
                    Rule::CacheTooStale,
                    Some(key_name(c.key, ctx.workload)),
                    format!(
                        "{}\n  answered from the cache with {}, {late} ms after {} showed the \
                         store no longer held it (bound {bound} ms: max_staleness and slack)",
                        ctx.call_line(c.call),
                        ctx.lease(h, c.lease),
                        describe(ctx, &h.ops[op]),
                    ),
                ));
            }
        }
        if let Some(why) = why {
            out.push(Violation::new(
                Rule::StaleCache,
                Some(key_name(c.key, ctx.workload)),
                format!(
                    "{}\n  answered from the cache with {}: {why}",
                    ctx.call_line(c.call),
                    ctx.lease(h, c.lease)
                ),
            ));
        }
    }
}

/// The first acknowledged operation of `h` that shows lease `l` gone from the store, and
/// when it responded (host clock): one that began after `l` was created and removed
/// whatever lease was live (Release, a read finding none), `l` in particular (a Drain of
/// its endpoint, a Reassign from it that swapped), or that answered a lease of the key
/// created after `l`.
fn gone_since(h: &KeyHistory, l: u32) -> Option<(usize, i64)> {
    let lease = &h.leases[l as usize];
    let newer = |other: u32| other != l && h.leases[other as usize].created > lease.created;
    h.ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.response != i64::MAX)
        .filter(|(_, op)| {
            let after = op.lo > lease.created;
            match &op.act {
                Act::Resolve {
                    result:
                        ResolveResult::Created(other)
                        | ResolveResult::Replaced(other)
                        | ResolveResult::Kept(other),
                    ..
                }
                | Act::Reassign {
                    result: ReassignResult::Kept(Some(other)),
                    ..
                }
                | Act::Read(Some(other)) => newer(*other),
                Act::Reassign {
                    expected,
                    result: ReassignResult::Swapped(other),
                    ..
                } => newer(*other) || (after && *expected == lease.endpoint),
                Act::Release(Some(_)) | Act::Read(None) => after,
                Act::Drain {
                    endpoint,
                    removed: Some(_),
                } => after && *endpoint == lease.endpoint,
                _ => false,
            }
        })
        .map(|(i, op)| (i, op.response))
        .min_by_key(|(_, at)| *at)
}

/// One operation, for a report.
fn describe(ctx: &Ctx<'_>, op: &Op) -> String {
    match op.origin {
        Origin::Call(c) => ctx.call_line(c),
        Origin::FinalList => "the final List".to_string(),
    }
}
