//! The sequential model of one key, and its transition function.
//!
//! It follows the store's design (DESIGN.md, "Time"). The leader stamps each write with its
//! clock when it proposes it; the state machine applies writes in log order, its clock
//! becoming `max(previous, stamp)`, and a write takes effect (judges expiry, stamps the lease
//! it creates) at that clock. Reads judge expiry at the reader's clock, which is never below
//! the state machine's, and move nothing.
//!
//! State: the key's lease (none, a lease some answer named, or a phantom: a lease a write of
//! unknown outcome may have created that nobody ever saw) and the **write clock**, the state
//! machine's clock after the writes placed so far (the largest effective time among them).
//! [`step`] places one operation, or says why it cannot come next:
//!
//! - a **write** (a Resolve that created or replaced, Reassign, Release, DrainEndpoint)
//!   takes effect at `s = max(write clock, stamp)`, its stamp inside its window (invoke and
//!   response widened by the clock tolerance), and the write clock becomes `s`. `s` is
//!   within the window too: the state machine's clock when it applies a write is some
//!   earlier stamp at most, taken before the write was applied, so before it responded.
//!   When the answer shows `s` (the `created_at` of the lease it created, replaced or swapped
//!   in), that is it: at or after the write clock, inside the window. Otherwise `s` is the
//!   smallest its answer allows: `max(write clock, invoke - tolerance)`, or the current
//!   lease's end if the answer says no live lease was there and that is later;
//! - a **read** (Lookup, the final List, and a Resolve answered "kept", which the leader may
//!   serve from its table) reads at some `r` in `[max(write clock, invoke - tolerance),
//!   response + tolerance]` and changes nothing: "live" needs the smallest such `r` before
//!   the lease's end, "none" the largest at or after it. So a write placed after a read may
//!   take effect at a time before the read's: it was proposed, and stamped, before the read,
//!   and applied after it. Real-time order still holds: a write that responded before a read
//!   was invoked comes before it.
//!
//! Why the greedy choices lose no linearization:
//!
//! - *The smallest `s` for a write.* What any operation asks of the write clock bounds it
//!   from above (a lease's stamp at or after it, a window's end at or after it, the earliest
//!   time of a read or write before a lease's end), and every step's resulting write clock is
//!   non-decreasing in the one it starts from. So from the same lease and a smaller write
//!   clock, every continuation allowed from a larger one is allowed. The same makes the
//!   search's memo sound: a (set, lease) reached again with a write clock no smaller is not
//!   explored again.
//! - *A read's `r`.* Any `r` in its range that explains the answer will do: it moves nothing,
//!   so no later operation depends on it, and a read that fits is placed at once (`search`):
//!   placing it later is never better. A Resolve answered "kept" that went through the log
//!   took effect at some `s` in the same range and moved the write clock to it; as a read it
//!   leaves the write clock lower, which is never worse.
//! - *Phantoms.* A read that found no lease where a phantom may be leaves it: it may never
//!   have been created, or ended by `r`, and a write stamped before `r` and placed after the
//!   read may still find it live. A write that found no lease there removes it: the write
//!   clock has passed its end, so nothing later can see it live.
//!
//! What the write clock cannot do: a lease stamped before it (a write applied after another
//! is stamped with the state machine's clock, at or after the other's stamp) and an
//! operation whose window ends before it (the writes placed before it took effect later than
//! it can have) are refused, and since the write clock never decreases they are refused for
//! good.

/// A lease as the checker knows it: one per distinct lease any answer named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseInfo {
    /// Its endpoint (interned).
    pub endpoint: u32,
    /// Its creation stamp (store time).
    pub created: i64,
    /// Its end (exclusive).
    pub expires: i64,
    /// The logical call that proposed its endpoint, if any did.
    pub creator: Option<usize>,
}

/// What a Resolve answered, in terms of known leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResolveResult {
    /// It created lease `0`.
    Created(u32),
    /// It replaced an ineligible live lease with lease `0`.
    Replaced(u32),
    /// Lease `0` was live and stays.
    Kept(u32),
    /// Outcome unknown, but lease `0` carries its proposal: it was applied, creating it.
    Applied(u32),
    /// Outcome unknown and nobody saw its proposal: at most a phantom.
    Maybe,
}

/// What a Reassign answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReassignResult {
    /// It swapped the live lease for lease `0`.
    Swapped(u32),
    /// Not swapped; the live lease, if any.
    Kept(Option<u32>),
    /// Outcome unknown, but lease `0` carries its proposal: it swapped.
    Applied(u32),
    /// Outcome unknown and nobody saw its proposal.
    Maybe,
}

/// One operation of a key's sub-history, with its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Act {
    /// Get-or-create.
    Resolve {
        /// The proposal (interned).
        proposed: u32,
        /// Eligible endpoints (interned; empty: any).
        eligible: Vec<u32>,
        /// The answer.
        result: ResolveResult,
    },
    /// Compare-and-set.
    Reassign {
        /// The endpoint expected.
        expected: u32,
        /// The new endpoint.
        new: u32,
        /// The answer.
        result: ReassignResult,
    },
    /// Delete; `None`: outcome unknown.
    Release(Option<bool>),
    /// Delete the lease if it is on `endpoint`; `None`: outcome unknown.
    Drain {
        /// The endpoint drained.
        endpoint: u32,
        /// How many it removed.
        removed: Option<u64>,
    },
    /// A linearizable read (Lookup, or the final List): the live lease, if any.
    Read(Option<u32>),
}

/// Where an operation of a sub-history comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A logical call of the history (its index).
    Call(usize),
    /// The `List` read after healing.
    FinalList,
}

/// One operation, ready for the search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Op {
    /// Where it comes from.
    pub origin: Origin,
    /// Invoke time (host clock).
    pub invoke: i64,
    /// Response time; `i64::MAX` when the outcome is unknown.
    pub response: i64,
    /// Earliest store time it may take effect at.
    pub lo: i64,
    /// Latest store time it may take effect at.
    pub hi: i64,
    /// What it did.
    pub act: Act,
    /// The endpoint of the phantom it would create (its proposal if some operation of the
    /// key names it, else [`UNNAMED`]); set with the key's history.
    pub phantom: u32,
}

impl Op {
    /// Whether the search may leave it out (an unknown outcome whose effect nobody saw).
    pub fn optional(&self) -> bool {
        matches!(
            self.act,
            Act::Resolve {
                result: ResolveResult::Maybe,
                ..
            } | Act::Reassign {
                result: ReassignResult::Maybe,
                ..
            } | Act::Release(None)
                | Act::Drain { removed: None, .. }
        )
    }

    /// Whether its outcome is unknown (applied or not).
    pub fn unknown(&self) -> bool {
        self.response == i64::MAX
    }
}

/// One key's sub-history.
#[derive(Debug, Clone)]
pub(crate) struct KeyHistory {
    /// The key.
    pub key: usize,
    /// Its policy's lifetime, in ms.
    pub lifetime_ms: i64,
    /// The leases answers named, by id.
    pub leases: Vec<LeaseInfo>,
    /// Its operations, by invoke time.
    pub ops: Vec<Op>,
    /// Endpoints its operations name (expected, drained, listed as eligible), sorted.
    pub named: Vec<u32>,
}

/// The endpoint of phantoms no operation can tell apart.
pub(crate) const UNNAMED: u32 = u32::MAX;

/// The key's lease in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Current {
    /// None.
    None,
    /// A known lease (live or ended: the time of the operation at hand against its end
    /// says which).
    Known(u32),
    /// A lease nobody saw, that cannot have ended before `end_lo`, on `endpoint` when some
    /// operation of the key names that endpoint (expects, drains or lists it), else on
    /// [`UNNAMED`]: phantoms no operation can tell apart are one state.
    Phantom {
        /// Its endpoint (interned), or [`UNNAMED`].
        endpoint: u32,
        /// Its earliest possible end.
        end_lo: i64,
    },
}

/// The model's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct State {
    /// The key's lease.
    pub current: Current,
    /// The write clock: the state machine's clock after the writes placed so far (the
    /// smallest consistent with them). Reads do not move it.
    pub write_clock: i64,
}

impl State {
    /// Before any operation.
    pub const START: State = State {
        current: Current::None,
        write_clock: i64::MIN,
    };
}

/// An operation placed: the state after it, and the time it took effect at (a write) or
/// read at (a read: the earliest time that explains its answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placed {
    /// The state after it.
    pub state: State,
    /// Its store time.
    pub at: i64,
}

/// Why an operation cannot come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its lease's creation stamp lies outside its window.
    StampOutsideWindow(i64),
    /// Its lease's creation stamp is before the write clock.
    StampBeforeClock(i64),
    /// The write clock has already passed its window.
    Late,
    /// It created a lease while another was live.
    CreatedOverLive,
    /// It created or swapped in a lease on an endpoint other than its proposal.
    WrongEndpoint,
    /// It replaced a lease it should have kept (eligible, or no list given).
    ReplacedEligible,
    /// It kept a live lease whose endpoint was not eligible.
    KeptIneligible,
    /// It replaced, released, drained or swapped, but no live lease (of that endpoint) was
    /// there to act on.
    NoLive,
    /// It answered lease `0`, which is not the key's lease at that point.
    NotCurrent(u32),
    /// It answered lease `0` live, but that lease had ended by the earliest time it can have
    /// taken effect or read at.
    Ended(u32),
    /// It answered "no live lease" (or did nothing) while a lease was live.
    MissedLive,
    /// A swap happened although the live lease was on another endpoint.
    SwappedMismatch,
    /// No swap, although the live lease was on the endpoint expected.
    NotSwappedMatch,
    /// It drained more than one lease of an endpoint only one key ever held.
    DrainedMany(u64),
    /// An unknown outcome that would change nothing here (left out instead).
    NoEffect,
}

/// Whether the current lease is live at store time `s`: `Some(true)`/`Some(false)`, or
/// `None` for a phantom that may be either (it may be taken as ended only from `end_lo`).
fn live(h: &KeyHistory, current: Current, s: i64) -> Option<bool> {
    match current {
        Current::None => Some(false),
        Current::Known(c) => Some(s < h.leases[c as usize].expires),
        Current::Phantom { end_lo, .. } => (s < end_lo).then_some(true),
    }
}

/// The smallest store time at or after `s0` at which the current lease is dead.
fn earliest_dead(h: &KeyHistory, current: Current, s0: i64) -> i64 {
    match current {
        Current::None => s0,
        Current::Known(c) => s0.max(h.leases[c as usize].expires),
        Current::Phantom { end_lo, .. } => s0.max(end_lo),
    }
}

/// The current lease's endpoint, if there is one (live or not).
fn endpoint_of(h: &KeyHistory, current: Current) -> Option<u32> {
    match current {
        Current::None => None,
        Current::Known(c) => Some(h.leases[c as usize].endpoint),
        Current::Phantom { endpoint, .. } => Some(endpoint),
    }
}

/// Ended leases read as no lease; a phantom a write took as ended is gone (the write clock
/// has passed its end: nothing later can see it live). Reads leave the state as it is.
fn dead(current: Current) -> Current {
    match current {
        Current::Phantom { .. } => Current::None,
        other => other,
    }
}

fn eligible_ok(eligible: &[u32], endpoint: u32) -> bool {
    eligible.is_empty() || eligible.contains(&endpoint)
}

/// The effective time of a write whose answer shows it (it created lease `l`, whose
/// `created_at` is the state machine's clock when it was applied).
fn fixed(h: &KeyHistory, st: State, op: &Op, l: u32) -> Result<i64, Refusal> {
    let s = h.leases[l as usize].created;
    if s < op.lo || s > op.hi {
        return Err(Refusal::StampOutsideWindow(s));
    }
    if s < st.write_clock {
        return Err(Refusal::StampBeforeClock(s));
    }
    Ok(s)
}

/// Within the window: `s` (already at or past the clock and `lo`) is not after `hi`.
fn within(op: &Op, s: i64) -> Result<i64, Refusal> {
    if s <= op.hi {
        Ok(s)
    } else {
        Err(Refusal::Late)
    }
}

/// Place `op` after `st`: a write at the smallest effective time its answer allows, which
/// the write clock moves to; a read at the earliest time that explains it, moving nothing.
pub(crate) fn step(h: &KeyHistory, st: State, op: &Op) -> Result<Placed, Refusal> {
    // The earliest a write can take effect, or a read read, after `st`.
    let s0 = st.write_clock.max(op.lo);
    let at = |current: Current, s: i64| {
        Ok(Placed {
            state: State {
                current,
                write_clock: s,
            },
            at: s,
        })
    };
    let read = |r: i64| Ok(Placed { state: st, at: r });
    let cur = st.current;
    match &op.act {
        Act::Resolve {
            proposed,
            eligible,
            result,
        } => {
            let new_lease = |l: u32| -> Result<i64, Refusal> {
                if h.leases[l as usize].endpoint == *proposed {
                    fixed(h, st, op, l)
                } else {
                    Err(Refusal::WrongEndpoint)
                }
            };
            // A live current lease may be replaced: a list was given and leaves it out.
            let replaceable = |current: Current| {
                endpoint_of(h, current).is_some_and(|e| !eligible_ok(eligible, e))
            };
            match *result {
                ResolveResult::Created(l) => {
                    let s = new_lease(l)?;
                    match live(h, cur, s) {
                        Some(true) => Err(Refusal::CreatedOverLive),
                        // Ended, or a phantom taken as ended.
                        Some(false) | None => at(Current::Known(l), s),
                    }
                }
                ResolveResult::Replaced(l) => {
                    let s = new_lease(l)?;
                    match live(h, cur, s) {
                        Some(false) => Err(Refusal::NoLive),
                        _ if !replaceable(cur) => Err(Refusal::ReplacedEligible),
                        _ => at(Current::Known(l), s),
                    }
                }
                ResolveResult::Applied(l) => {
                    let s = new_lease(l)?;
                    // Created (nothing live), or replaced (live, and left out of the list).
                    match live(h, cur, s) {
                        Some(true) if !replaceable(cur) => Err(Refusal::CreatedOverLive),
                        _ => at(Current::Known(l), s),
                    }
                }
                // A read: the leader answers a lease it keeps from its table.
                ResolveResult::Kept(l) => {
                    let r = within(op, s0)?;
                    if cur != Current::Known(l) {
                        return Err(Refusal::NotCurrent(l));
                    }
                    if live(h, cur, r) != Some(true) {
                        return Err(Refusal::Ended(l));
                    }
                    if !eligible_ok(eligible, h.leases[l as usize].endpoint) {
                        return Err(Refusal::KeptIneligible);
                    }
                    read(r)
                }
                ResolveResult::Maybe => {
                    // At once if nothing live is in the way (or it may be replaced); else
                    // once the live lease has ended.
                    let s = if live(h, cur, s0) != Some(true) || replaceable(cur) {
                        s0
                    } else {
                        earliest_dead(h, cur, s0)
                    };
                    let end_lo = s.saturating_add(h.lifetime_ms);
                    at(
                        Current::Phantom {
                            endpoint: op.phantom,
                            end_lo,
                        },
                        s,
                    )
                }
            }
        }
        Act::Reassign {
            expected,
            new,
            result,
        } => {
            let on_expected = endpoint_of(h, cur) == Some(*expected);
            match *result {
                ReassignResult::Swapped(l) | ReassignResult::Applied(l) => {
                    if h.leases[l as usize].endpoint != *new {
                        return Err(Refusal::WrongEndpoint);
                    }
                    let s = fixed(h, st, op, l)?;
                    if live(h, cur, s) == Some(false) {
                        return Err(Refusal::NoLive);
                    }
                    if !on_expected {
                        return Err(Refusal::SwappedMismatch);
                    }
                    at(Current::Known(l), s)
                }
                ReassignResult::Kept(Some(l)) => {
                    let s = within(op, s0)?;
                    if cur != Current::Known(l) {
                        return Err(Refusal::NotCurrent(l));
                    }
                    if live(h, cur, s) != Some(true) {
                        return Err(Refusal::Ended(l));
                    }
                    if on_expected {
                        return Err(Refusal::NotSwappedMatch);
                    }
                    at(cur, s)
                }
                ReassignResult::Kept(None) => {
                    let s =
                        within(op, earliest_dead(h, cur, s0)).map_err(|_| Refusal::MissedLive)?;
                    at(dead(cur), s)
                }
                ReassignResult::Maybe => {
                    if on_expected && live(h, cur, s0) != Some(false) {
                        let end_lo = s0.saturating_add(h.lifetime_ms);
                        at(
                            Current::Phantom {
                                endpoint: op.phantom,
                                end_lo,
                            },
                            s0,
                        )
                    } else {
                        Err(Refusal::NoEffect)
                    }
                }
            }
        }
        Act::Release(released) => match released {
            Some(true) => {
                let s = within(op, s0)?;
                if live(h, cur, s) == Some(false) {
                    return Err(Refusal::NoLive);
                }
                at(Current::None, s)
            }
            Some(false) => {
                let s = within(op, earliest_dead(h, cur, s0)).map_err(|_| Refusal::MissedLive)?;
                at(dead(cur), s)
            }
            None => {
                if live(h, cur, s0) == Some(false) {
                    Err(Refusal::NoEffect)
                } else {
                    at(Current::None, s0)
                }
            }
        },
        Act::Drain { endpoint, removed } => {
            let on_it = endpoint_of(h, cur) == Some(*endpoint);
            match removed {
                Some(1) => {
                    let s = within(op, s0)?;
                    if !on_it || live(h, cur, s) == Some(false) {
                        return Err(Refusal::NoLive);
                    }
                    at(Current::None, s)
                }
                Some(0) if on_it => {
                    let s =
                        within(op, earliest_dead(h, cur, s0)).map_err(|_| Refusal::MissedLive)?;
                    at(dead(cur), s)
                }
                Some(0) => at(cur, within(op, s0)?),
                Some(n) => Err(Refusal::DrainedMany(*n)),
                None => {
                    if on_it && live(h, cur, s0) != Some(false) {
                        at(Current::None, s0)
                    } else {
                        Err(Refusal::NoEffect)
                    }
                }
            }
        }
        Act::Read(Some(l)) => {
            let r = within(op, s0)?;
            if cur != Current::Known(*l) {
                return Err(Refusal::NotCurrent(*l));
            }
            if live(h, cur, r) != Some(true) {
                return Err(Refusal::Ended(*l));
            }
            read(r)
        }
        // A phantom stays: the read says it had ended by `r` (or never was), yet a write
        // stamped before `r` and placed after the read may still find it live.
        Act::Read(None) => {
            read(within(op, earliest_dead(h, cur, s0)).map_err(|_| Refusal::MissedLive)?)
        }
    }
}
