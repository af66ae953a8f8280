//! The search for a linearization of one key's sub-history (Wing and Gong's depth-first
//! search, with Lowe's memoization of (operations linearized, model state)).
//!
//! At each point the candidates are the operations not yet linearized that no other pending
//! operation must precede (none of them responded before the candidate was invoked). Each
//! candidate the model accepts leads one level down; a (set, lease) pair already explored
//! with the same or an earlier write clock is never explored again, and an operation that
//! changes nothing (a read that fits) is placed without branching. Operations of unknown
//! outcome never bound the others (they never responded) and those whose effect nobody saw
//! may be left out altogether; the search succeeds once every other operation is
//! linearized.
//!
//! On failure the search returns the deepest point it reached, with the candidates there and
//! why the model refused each: that is what a person reads to find the conflict.

use std::collections::HashMap;

use super::model::{Act, Current, KeyHistory, Op, Placed, Refusal, State, step};

/// Operations linearized, one bit each, with a 128-bit hash of the set kept as bits change
/// (each operation has a random 128-bit value; the set's hash is their XOR).
/// `low` is the first word with a bit clear for an operation that must be placed: the
/// words below it need no looking at.
#[derive(Debug, Clone)]
struct Bits {
    words: Vec<u64>,
    keys: Vec<u128>,
    hash: u128,
    low: usize,
}

impl Bits {
    fn new(n: usize) -> Bits {
        // Fixed seed: the same history is searched the same way every time.
        let mut rng = fastrand::Rng::with_seed(0x5eed_1a7e);
        Bits {
            words: vec![0; n.div_ceil(64)],
            keys: (0..n).map(|_| rng.u128(..)).collect(),
            hash: 0,
            low: 0,
        }
    }
    fn set(&mut self, i: usize, leave_out: &[u64]) {
        self.words[i / 64] |= 1 << (i % 64);
        self.hash ^= self.keys[i];
        while self.low < self.words.len() && self.words[self.low] | leave_out[self.low] == !0 {
            self.low += 1;
        }
    }
    fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
        self.hash ^= self.keys[i];
        self.low = self.low.min(i / 64);
    }
    fn is_set(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }
}

/// Hashing for the memo, whose keys are already random: a cheap multiply-fold, instead of
/// the default hasher's resistance to chosen keys (nothing here is chosen by anyone).
#[derive(Default, Clone, Copy)]
struct Mixed;

impl std::hash::BuildHasher for Mixed {
    type Hasher = Mix;
    fn build_hasher(&self) -> Mix {
        Mix(0)
    }
}

/// See [`Mixed`].
struct Mix(u64);

impl std::hash::Hasher for Mix {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(23) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u128(&mut self, x: u128) {
        let [low, high] =
            [x, x >> 64].map(|w| u64::try_from(w & u128::from(u64::MAX)).unwrap_or(0));
        self.write_u64(low);
        self.write_u64(high);
    }
    fn write_i64(&mut self, x: i64) {
        self.write_u64(x.cast_unsigned());
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }
}

/// The operations that may be left out: one bit each, and in groups of operations the model
/// cannot tell apart (same kind and arguments, up to a proposal no operation names), each
/// group by invoke time.
struct Optional {
    mask: Vec<u64>,
    groups: Vec<Vec<usize>>,
}

impl Optional {
    fn new(h: &KeyHistory) -> Optional {
        let mut mask = vec![0u64; h.ops.len().div_ceil(64)];
        let mut groups: HashMap<Signature, Vec<usize>> = HashMap::new();
        for (i, op) in h.ops.iter().enumerate() {
            if op.optional() {
                mask[i / 64] |= 1 << (i % 64);
                groups.entry(signature(h, op)).or_default().push(i);
            }
        }
        let mut groups: Vec<Vec<usize>> = groups.into_values().collect();
        groups.sort_unstable();
        Optional { mask, groups }
    }
}

/// What an operation that may be left out does, as far as the model can tell.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Signature {
    /// A Resolve: whether it lists eligible endpoints, those it lists besides its own
    /// proposal (sorted), and its proposal if some operation names it.
    Resolve(bool, Vec<u32>, Option<u32>),
    /// A Reassign: the endpoint expected, and its new one if some operation names it.
    Reassign(u32, Option<u32>),
    Release,
    Drain(u32),
    /// Never left out; for completeness.
    Read,
}

fn signature(h: &KeyHistory, op: &Op) -> Signature {
    let named = |e: u32| h.named.binary_search(&e).is_ok().then_some(e);
    match &op.act {
        Act::Resolve {
            proposed, eligible, ..
        } => {
            let mut others: Vec<u32> = eligible.iter().copied().filter(|e| e != proposed).collect();
            others.sort_unstable();
            others.dedup();
            Signature::Resolve(!eligible.is_empty(), others, named(*proposed))
        }
        Act::Reassign { expected, new, .. } => Signature::Reassign(*expected, named(*new)),
        Act::Release(_) => Signature::Release,
        Act::Drain { endpoint, .. } => Signature::Drain(*endpoint),
        Act::Read(_) => Signature::Read,
    }
}

/// The deepest point a failed search reached.
#[derive(Debug, Clone)]
pub(crate) struct Frontier {
    /// Operations linearized to get there (that the search could not leave out).
    pub depth: usize,
    /// The last operations linearized, in order, with the state after each and its time.
    pub tail: Vec<(usize, Placed)>,
    /// The model's state there.
    pub state: State,
    /// The candidates the model refused there, and why (left-out-able ones omitted when
    /// they would change nothing).
    pub refused: Vec<(usize, Refusal)>,
    /// The pending operation that responded first: nothing invoked after its response can
    /// come before it.
    pub first_to_respond: Option<usize>,
}

/// What the search found.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    /// A linearization exists; the search visited this many points.
    Linearizable(usize),
    /// None exists.
    Violation(Frontier),
    /// The budget of points ran out first.
    GaveUp(usize, Frontier),
}

/// How many operations of the frontier's path to keep.
const TAIL: usize = 10;

struct Frame {
    /// The operation linearized to reach this point.
    via: Option<usize>,
    /// Candidates accepted here, with the state after each, in the order to try them.
    options: Vec<(usize, Placed)>,
    next: usize,
}

/// Search for a linearization of `h`, visiting at most `budget` points.
pub(crate) fn search(h: &KeyHistory, budget: usize) -> Verdict {
    let n = h.ops.len();
    let must = h.ops.iter().filter(|o| !o.optional()).count();
    let mut left = must;
    let mut done = Bits::new(n);
    let groups = Optional::new(h);
    // The smallest write clock each (set, lease) was reached with: a larger one is never
    // better (every step allowed from it is allowed from the smaller one, see `model`).
    // Sets by hash.
    let mut seen: HashMap<(u128, Current), i64, Mixed> = HashMap::default();
    let mut refused = Vec::new();
    let mut best = Frontier {
        depth: 0,
        tail: Vec::new(),
        state: State::START,
        refused: Vec::new(),
        first_to_respond: None,
    };
    let mut path: Vec<(usize, Placed)> = Vec::new();
    let (options, first) = expand(h, &groups, &done, State::START, &mut refused);
    if options.is_empty() && left > 0 {
        best.refused.clone_from(&refused);
        best.first_to_respond = first;
    }
    let mut stack = vec![Frame {
        via: None,
        options,
        next: 0,
    }];
    let mut visited = 1usize;
    loop {
        if left == 0 {
            return Verdict::Linearizable(visited);
        }
        let Some(top) = stack.last_mut() else {
            return Verdict::Violation(best);
        };
        if top.next < top.options.len() {
            let (i, placed) = top.options[top.next];
            let state = placed.state;
            top.next += 1;
            done.set(i, &groups.mask);
            let best_clock = seen.entry((done.hash, state.current)).or_insert(i64::MAX);
            if *best_clock <= state.write_clock {
                done.clear(i);
                continue;
            }
            *best_clock = state.write_clock;
            let optional = h.ops[i].optional();
            if !optional {
                left -= 1;
            }
            path.push((i, placed));
            if left == 0 {
                return Verdict::Linearizable(visited);
            }
            visited += 1;
            let (options, first) = expand(h, &groups, &done, state, &mut refused);
            let depth = must - left;
            if depth > best.depth {
                best = Frontier {
                    depth,
                    tail: path[path.len().saturating_sub(TAIL)..].to_vec(),
                    state,
                    refused: refused.clone(),
                    first_to_respond: first,
                };
            }
            if visited > budget {
                return Verdict::GaveUp(visited, best);
            }
            stack.push(Frame {
                via: Some(i),
                options,
                next: 0,
            });
        } else {
            let frame = stack.pop();
            if let Some(i) = frame.and_then(|f| f.via) {
                done.clear(i);
                path.pop();
                if !h.ops[i].optional() {
                    left += 1;
                }
            }
        }
    }
}

/// The candidates at `state` with `done` linearized: those the model accepts, the
/// refusals in `refused`, and the pending operation that responded first.
///
/// Candidates are offered by the time they would take effect at (the store applies writes
/// about in that order, so the search mostly goes straight), those that may be left out last.
/// Such an operation is offered only where it lets a refused candidate come next, and of a
/// group the model cannot tell apart only the earliest pending. That loses no
/// linearization: any member of a group placed later could be swapped with the earliest,
/// which takes effect no later; and in any
/// linearization, it can be moved later, to just before the first operation that needs its
/// effect (it has no response to bound it), and in this model one such operation is all any
/// operation needs.
///
/// A point where a pending operation can no longer be placed (the write clock has passed its
/// window, or the stamp its answer fixes) offers nothing: the write clock never goes back.
fn expand(
    h: &KeyHistory,
    optional: &Optional,
    done: &Bits,
    state: State,
    refused: &mut Vec<(usize, Refusal)>,
) -> (Vec<(usize, Placed)>, Option<usize>) {
    refused.clear();
    let n = h.ops.len();
    let mut options = Vec::new();
    let mut min_response = i64::MAX;
    let mut first = None;
    let mut stuck = false;
    // The pending operations that must be placed, by invoke time, while none of those
    // before has responded before they were invoked.
    'scan: for w in done.low..done.words.len() {
        let mut free = !(done.words[w] | optional.mask[w]);
        while free != 0 {
            let i = w * 64 + free.trailing_zeros() as usize;
            free &= free - 1;
            if i >= n {
                break 'scan;
            }
            let op = &h.ops[i];
            if op.invoke > min_response {
                break 'scan;
            }
            if op.response < min_response {
                min_response = op.response;
                first = Some(i);
            }
            match step(h, state, op) {
                Ok(next) => options.push((i, next)),
                Err(why) => {
                    stuck |= matches!(why, Refusal::Late | Refusal::StampBeforeClock(_));
                    refused.push((i, why));
                }
            }
        }
    }
    if stuck {
        return (Vec::new(), first);
    }
    // An operation that changes nothing here (a read that fits) is placed at once, without
    // branching: placing it later is never better.
    if let Some(&free) = options.iter().find(|(_, next)| next.state == state) {
        return (vec![free], first);
    }
    options.sort_by_key(|(i, next)| (next.at, *i));
    if !refused.is_empty() {
        let mut extra: Vec<(usize, Placed)> = Vec::new();
        for group in &optional.groups {
            let Some(&i) = group.iter().find(|i| !done.is_set(**i)) else {
                continue;
            };
            let op = &h.ops[i];
            if op.invoke > min_response {
                continue;
            }
            let Ok(next) = step(h, state, op) else {
                continue;
            };
            if refused
                .iter()
                .any(|(j, _)| step(h, next.state, &h.ops[*j]).is_ok())
            {
                extra.push((i, next));
            }
        }
        extra.sort_by_key(|(i, next)| (next.at, *i));
        options.extend(extra);
    }
    (options, first)
}
