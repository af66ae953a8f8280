//! What a violation says: the rule that failed, the key, and the operations around the
//! conflict (client, node, kind, arguments, invoke and response times, result), so that a
//! person can go from the report to the containers' logs.
//!
//! Times are printed relative to the start of the workload (`+12.345s`); lease stamps too.

use std::fmt::{self, Write as _};

use super::model::{Act, Current, KeyHistory, Op, Origin, Refusal, State, UNNAMED, step};
use super::prepare::{Fate, Logical, Names, key_name};
use super::search::Frontier;
use crate::workload::WorkloadOptions;
use crate::workload::history::{Answer, Outcome, Seen};

/// The rules a history can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// A read (or a write's view of the state) older than something already acknowledged.
    StaleRead,
    /// An acknowledged lease missing from the store after healing.
    LostWrite,
    /// Two leases live at once for one key.
    TwoWinners,
    /// A lease answered live after its end, or living longer than its policy says.
    ExtendedLease,
    /// One unique endpoint in two different leases (one write applied twice).
    AppliedTwice,
    /// A lease on the proposal of a call whose answer says it did not create one.
    UnexpectedWrite,
    /// A lease stamped outside the window of the call that created it.
    BadStamp,
    /// A lease no call proposed, or proposed for another key.
    Unexplained,
    /// A client cache answered with a lease that never was, or had ended.
    StaleCache,
    /// A client cache answered with a lease longer than its `max_staleness` after the
    /// store was known to have removed or replaced it.
    CacheTooStale,
    /// No order explains the answers (none of the more specific rules applies).
    NotLinearizable,
    /// The search ran out of budget: neither passed nor failed.
    Undecided,
    /// The workload broke its own rules (a bug in the test, not the store).
    Workload,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::StaleRead => "stale read",
            Rule::LostWrite => "lost write",
            Rule::TwoWinners => "two winners",
            Rule::ExtendedLease => "extended lease",
            Rule::AppliedTwice => "applied twice",
            Rule::UnexpectedWrite => "unexpected write",
            Rule::BadStamp => "bad stamp",
            Rule::Unexplained => "unexplained lease",
            Rule::StaleCache => "stale cache answer",
            Rule::CacheTooStale => "cache past max_staleness",
            Rule::NotLinearizable => "not linearizable",
            Rule::Undecided => "undecided",
            Rule::Workload => "workload error",
        })
    }
}

/// One violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// The key (scope and prefix), when the violation is about one.
    pub key: Option<String>,
    /// What happened, over several lines.
    pub detail: String,
}

impl Violation {
    pub(crate) fn new(rule: Rule, key: Option<String>, detail: String) -> Violation {
        Violation { rule, key, detail }
    }

    pub(crate) fn workload(detail: String) -> Violation {
        Violation::new(Rule::Workload, None, detail)
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "[{}] key {k}: {}", self.rule, self.detail),
            None => write!(f, "[{}] {}", self.rule, self.detail),
        }
    }
}

/// What formatting needs to know.
pub(crate) struct Ctx<'a> {
    pub calls: &'a [Logical<'a>],
    pub names: &'a Names,
    pub workload: &'a WorkloadOptions,
    pub base_ms: i64,
    pub tolerance_ms: i64,
}

impl Ctx<'_> {
    /// A time relative to the start of the workload.
    pub fn time(&self, t: i64) -> String {
        match t {
            i64::MAX => "never".to_string(),
            i64::MIN => "the start".to_string(),
            t => {
                let d = t - self.base_ms;
                let sign = if d < 0 { "-" } else { "+" };
                format!("{sign}{}.{:03}s", d.abs() / 1000, d.abs() % 1000)
            }
        }
    }

    fn seen(&self, s: &Seen) -> String {
        match s.created_at_ms {
            Some(c) => format!(
                "{} [{}, {})",
                s.endpoint,
                self.time(c),
                self.time(s.expires_at_ms)
            ),
            None => format!("{} [?, {})", s.endpoint, self.time(s.expires_at_ms)),
        }
    }

    fn answer(&self, a: &Answer) -> String {
        let lease = |l: &Option<Seen>| l.as_ref().map_or("no lease".to_string(), |s| self.seen(s));
        match a {
            Answer::Resolved {
                lease,
                created,
                replaced,
                cached,
            } => {
                let how = match (created, replaced, cached) {
                    (_, _, true) => "from the cache",
                    (true, _, _) => "created",
                    (_, true, _) => "replaced by",
                    _ => "kept",
                };
                format!("{how} {}", self.seen(lease))
            }
            Answer::Reassigned { lease: l, swapped } => {
                format!(
                    "{} {}",
                    if *swapped {
                        "swapped to"
                    } else {
                        "not swapped:"
                    },
                    lease(l)
                )
            }
            Answer::Looked(l) => lease(l),
            other => other.to_string(),
        }
    }

    /// Known lease `l` of `h`, with its creator.
    pub fn lease(&self, h: &KeyHistory, l: u32) -> String {
        let lease = &h.leases[l as usize];
        let by = lease.creator.map_or_else(
            || "no known creator".to_string(),
            |c| format!("created by #{c}"),
        );
        format!(
            "{} [{}, {}) {by}",
            self.names.name(lease.endpoint),
            self.time(lease.created),
            self.time(lease.expires)
        )
    }

    /// One logical call, on one line (indented).
    pub fn call_line(&self, c: usize) -> String {
        let call = &self.calls[c];
        let first = call.first();
        let last = call.attempts[call.attempts.len() - 1];
        let via = call
            .attempts
            .iter()
            .map(|a| match &a.outcome {
                Outcome::Ok(_) => a.via.to_string(),
                Outcome::Err { code, .. } => format!("{} {code}", a.via),
            })
            .collect::<Vec<_>>()
            .join(", then ");
        let result = match call.fate {
            Fate::Answered(a, _) => self.answer(a),
            Fate::Unknown => "outcome unknown".to_string(),
            Fate::Refused(code) => format!("refused ({code})"),
        };
        format!(
            "    #{c} w{} {via}: {} [{} .. {}] -> {result}",
            first.worker,
            first.request,
            self.time(first.invoke_ms),
            self.time(last.response_ms)
        )
    }

    /// One operation of `h`, on one line.
    pub fn op_line(&self, h: &KeyHistory, op: &Op) -> String {
        match op.origin {
            Origin::Call(c) => self.call_line(c),
            Origin::FinalList => {
                let listed = match op.act {
                    Act::Read(Some(l)) => self.lease(h, l),
                    _ => "no lease".to_string(),
                };
                format!(
                    "    the final List [{} .. {}] -> {listed}",
                    self.time(op.invoke),
                    self.time(op.response)
                )
            }
        }
    }

    fn state(&self, h: &KeyHistory, st: State) -> String {
        let lease = match st.current {
            Current::None => "no lease".to_string(),
            Current::Known(l) => {
                let live = if st.write_clock < h.leases[l as usize].expires {
                    "live"
                } else {
                    "ended"
                };
                format!("{live} lease {}", self.lease(h, l))
            }
            Current::Phantom { endpoint, end_lo } => format!(
                "a lease nobody saw{} (from a write of unknown outcome; it ends at {} or later)",
                if endpoint == UNNAMED {
                    String::new()
                } else {
                    format!(" on {}", self.names.name(endpoint))
                },
                self.time(end_lo)
            ),
        };
        format!("{lease}; write clock {}", self.time(st.write_clock))
    }

    /// The rule `refusal` breaks, and why, for `op` at `st`.
    fn refusal(&self, h: &KeyHistory, op: &Op, st: State, refusal: Refusal) -> (Rule, String) {
        let current = self.state(h, st);
        let s0 = st.write_clock.max(op.lo);
        match refusal {
            Refusal::StampOutsideWindow(s) => (
                Rule::BadStamp,
                format!("its lease is stamped {}, outside its window", self.time(s)),
            ),
            Refusal::StampBeforeClock(s) => (
                Rule::NotLinearizable,
                format!(
                    "its lease is stamped {}, before the write clock there ({}); a write applied after others takes effect, and stamps its lease, at their latest stamp or later",
                    self.time(s),
                    self.time(st.write_clock)
                ),
            ),
            Refusal::Late => (
                Rule::NotLinearizable,
                format!(
                    "the write clock there ({}) is past its window, which ends at {}: a write after those takes effect, and a read reads, at that clock or later",
                    self.time(st.write_clock),
                    self.time(op.hi)
                ),
            ),
            Refusal::CreatedOverLive => (
                Rule::TwoWinners,
                format!("it created a lease while the key had a {current}"),
            ),
            Refusal::WrongEndpoint => (
                Rule::NotLinearizable,
                "its new lease is not on the endpoint it proposed".to_string(),
            ),
            Refusal::ReplacedEligible => (
                Rule::NotLinearizable,
                format!("it replaced a lease it should have kept; the key had a {current}"),
            ),
            Refusal::KeptIneligible => (
                Rule::NotLinearizable,
                "it kept a lease whose endpoint it had not listed as eligible".to_string(),
            ),
            Refusal::NoLive => (
                Rule::StaleRead,
                format!("it acted on a live lease that was not there: the key had {current}"),
            ),
            Refusal::NotCurrent(l) => {
                let older = match st.current {
                    Current::Known(c) => {
                        h.leases[l as usize].created < h.leases[c as usize].created
                    }
                    _ => true,
                };
                let rule = if older {
                    Rule::StaleRead
                } else {
                    Rule::NotLinearizable
                };
                (
                    rule,
                    format!(
                        "it answered {}, but the key had {current}",
                        self.lease(h, l)
                    ),
                )
            }
            Refusal::Ended(l) => (
                Rule::ExtendedLease,
                format!(
                    "it answered {} as live, but that lease had ended by the earliest time it can have read or taken effect at ({}, the later of its window's start and the write clock)",
                    self.lease(h, l),
                    self.time(s0)
                ),
            ),
            Refusal::MissedLive if op.origin == Origin::FinalList => (
                Rule::LostWrite,
                format!(
                    "the store no longer has the key's lease after healing; the key had {current}"
                ),
            ),
            Refusal::MissedLive => (
                Rule::StaleRead,
                format!("it saw no live lease, but the key had {current}"),
            ),
            Refusal::SwappedMismatch => (
                Rule::NotLinearizable,
                format!(
                    "it swapped although the live lease was not on the endpoint expected: {current}"
                ),
            ),
            Refusal::NotSwappedMatch => (
                Rule::NotLinearizable,
                format!(
                    "it did not swap although the live lease was on the endpoint expected: {current}"
                ),
            ),
            Refusal::DrainedMany(n) => (
                Rule::AppliedTwice,
                format!("it drained {n} leases of an endpoint only one call ever proposed"),
            ),
            Refusal::NoEffect => (Rule::NotLinearizable, "it would change nothing".to_string()),
        }
    }
}

/// The violation a failed search of `h` stands for.
pub(crate) fn search_failure(
    ctx: &Ctx<'_>,
    h: &KeyHistory,
    frontier: &Frontier,
    gave_up_after: Option<usize>,
) -> Violation {
    let must = h.ops.iter().filter(|o| !o.optional()).count();
    // The refusal to name: that of the operation that must come next, else the first.
    let main = frontier
        .refused
        .iter()
        .find(|(i, _)| Some(*i) == frontier.first_to_respond)
        .or_else(|| frontier.refused.first());
    let (rule, headline) = match (gave_up_after, main) {
        (Some(n), _) => (
            Rule::Undecided,
            format!("the search gave up after {n} points; no verdict"),
        ),
        (None, Some((i, r))) => {
            let (rule, why) = ctx.refusal(h, &h.ops[*i], frontier.state, *r);
            (rule, format!("{why}:\n{}", ctx.op_line(h, &h.ops[*i])))
        }
        (None, None) => (
            Rule::NotLinearizable,
            "no operation can come next".to_string(),
        ),
    };
    let mut detail = format!(
        "{headline}\n  no order of the key's {} operations (lifetime {} ms, clock tolerance {} ms) explains the answers; the deepest point placed {} of the {must} that must be placed",
        h.ops.len(),
        h.lifetime_ms,
        ctx.tolerance_ms,
        frontier.depth
    );
    let _ = write!(
        detail,
        "\n  the model there: {} (the write clock: the state machine's clock, the latest stamp of the writes placed; reads do not move it)",
        ctx.state(h, frontier.state)
    );
    if !frontier.tail.is_empty() {
        let _ = write!(
            detail,
            "\n  placed last, in order (@ the time a write took effect at, or a read read at):"
        );
        for (i, placed) in &frontier.tail {
            let _ = write!(
                detail,
                "\n{}  @ {}",
                ctx.op_line(h, &h.ops[*i]),
                ctx.time(placed.at)
            );
        }
    }
    if let (Some((m, _)), [.., (before_p, before), (p, _)]) = (main, frontier.tail.as_slice()) {
        // Would it fit just before the last operation placed, instead of after it?
        let (last, refused) = (&h.ops[*p], &h.ops[*m]);
        let why = if last.response < refused.invoke {
            format!(
                "real time forbids it: #{} responded at {}, before it was invoked at {}",
                origin_name(last.origin),
                ctx.time(last.response),
                ctx.time(refused.invoke)
            )
        } else {
            match step(h, before.state, refused) {
                Err(r) => format!(
                    "it is refused there too: {}",
                    ctx.refusal(h, refused, before.state, r).1
                ),
                Ok(after_m) => match step(h, after_m.state, last) {
                    Err(r) => format!(
                        "then #{} cannot follow it: {}",
                        origin_name(last.origin),
                        ctx.refusal(h, last, after_m.state, r).1
                    ),
                    Ok(_) => "that order fits, but leads nowhere further".to_string(),
                },
            }
        };
        let _ = write!(
            detail,
            "\n  placed before #{} instead (after #{}): {why}",
            origin_name(h.ops[*p].origin),
            origin_name(h.ops[*before_p].origin)
        );
    }
    if !frontier.refused.is_empty() {
        let _ = write!(detail, "\n  could not come next:");
        for (i, r) in &frontier.refused {
            let (rule, why) = ctx.refusal(h, &h.ops[*i], frontier.state, *r);
            let _ = write!(
                detail,
                "\n{}\n      ({rule}) {why}",
                ctx.op_line(h, &h.ops[*i])
            );
        }
    }
    if let Some(i) = frontier.first_to_respond
        && !frontier.refused.iter().any(|(j, _)| *j == i)
    {
        let _ = write!(
            detail,
            "\n  pending, first to respond:\n{}",
            ctx.op_line(h, &h.ops[i])
        );
    }
    Violation::new(rule, Some(key_name(h.key, ctx.workload)), detail)
}

/// How an operation is named in a report: `#12` for call 12, `List` for the final List.
fn origin_name(origin: Origin) -> String {
    match origin {
        Origin::Call(c) => c.to_string(),
        Origin::FinalList => "List".to_string(),
    }
}
