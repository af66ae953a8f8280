//! The sequential model of one key, and its transition function.
//!
//! State: the key's lease (none, a lease some answer named, or a phantom: a lease a write of
//! unknown outcome may have created that nobody ever saw) and the store time reached so
//! far. [`step`] applies one operation at the smallest store time its answer allows, or says
//! why it cannot come next. Store time never decreases along a linearization, and every
//! operation's store time lies in its window (its invoke and response times widened by the
//! clock tolerance); taking the smallest feasible time at each step is optimal, as what
//! comes later only bounds time from below.

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
    /// A known lease (live or ended: `State::clock` against its end says which).
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
    /// The smallest store time consistent with the operations so far.
    pub clock: i64,
}

impl State {
    /// Before any operation.
    pub const START: State = State {
        current: Current::None,
        clock: i64::MIN,
    };
}

/// Why an operation cannot come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its lease's creation stamp lies outside its window.
    StampOutsideWindow(i64),
    /// Its lease's creation stamp is before store time already reached.
    StampBeforeClock(i64),
    /// Store time has already passed its window.
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
    /// It answered lease `0` live, but that lease had ended by the earliest store time.
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

/// Ended leases read as no lease; a phantom taken as ended is gone.
fn dead(current: Current) -> Current {
    match current {
        Current::Phantom { .. } => Current::None,
        other => other,
    }
}

fn eligible_ok(eligible: &[u32], endpoint: u32) -> bool {
    eligible.is_empty() || eligible.contains(&endpoint)
}

/// The store time of an operation whose answer fixes it (it created lease `l`).
fn fixed(h: &KeyHistory, st: State, op: &Op, l: u32) -> Result<i64, Refusal> {
    let s = h.leases[l as usize].created;
    if s < op.lo || s > op.hi {
        return Err(Refusal::StampOutsideWindow(s));
    }
    if s < st.clock {
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

/// Apply `op` to `st`: the next state, at the smallest store time its answer allows.
pub(crate) fn step(h: &KeyHistory, st: State, op: &Op) -> Result<State, Refusal> {
    let s0 = st.clock.max(op.lo);
    let at = |current: Current, clock: i64| Ok(State { current, clock });
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
                ResolveResult::Kept(l) => {
                    let s = within(op, s0)?;
                    if cur != Current::Known(l) {
                        return Err(Refusal::NotCurrent(l));
                    }
                    if live(h, cur, s) != Some(true) {
                        return Err(Refusal::Ended(l));
                    }
                    if !eligible_ok(eligible, h.leases[l as usize].endpoint) {
                        return Err(Refusal::KeptIneligible);
                    }
                    at(cur, s)
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
            let s = within(op, s0)?;
            if cur != Current::Known(*l) {
                return Err(Refusal::NotCurrent(*l));
            }
            if live(h, cur, s) != Some(true) {
                return Err(Refusal::Ended(*l));
            }
            at(cur, s)
        }
        Act::Read(None) => {
            let s = within(op, earliest_dead(h, cur, s0)).map_err(|_| Refusal::MissedLive)?;
            at(dead(cur), s)
        }
    }
}
