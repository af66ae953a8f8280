//! The operation mix every worker draws from, and what a worker remembers between calls:
//! the last endpoint it saw for each key, so that its `Reassign`s expect something that was
//! there, its `DrainEndpoint`s name something that may still be live, and its eligible lists
//! sometimes leave the current endpoint out (a replacement).

use super::history::{Answer, Request};

/// What one worker remembers.
pub(super) struct Memory {
    worker: usize,
    seq: u64,
    /// The last endpoint seen for each key.
    seen: Vec<Option<String>>,
}

impl Memory {
    pub(super) fn new(worker: usize, keys: usize) -> Memory {
        Memory {
            worker,
            seq: 0,
            seen: vec![None; keys],
        }
    }

    /// An endpoint no call of any worker has proposed or will propose.
    fn fresh_endpoint(&mut self) -> String {
        self.seq += 1;
        format!("w{}-{}:80", self.worker, self.seq)
    }

    /// The next call: a key and what to ask about it.
    pub(super) fn next(&mut self) -> (usize, Request) {
        let k = fastrand::usize(..self.seen.len());
        let seen = self.seen[k].clone();
        let roll = fastrand::u32(..100);
        let request = match (roll, seen) {
            (0..55, _) | (55..80, None) => self.resolve(k),
            (55..67, Some(expected)) => Request::Reassign {
                expected,
                endpoint: self.fresh_endpoint(),
            },
            (67..80, Some(endpoint)) => Request::Drain { endpoint },
            (80..88, _) => Request::Release,
            _ => Request::Lookup,
        };
        (k, request)
    }

    fn resolve(&mut self, k: usize) -> Request {
        let proposed = self.fresh_endpoint();
        let eligible = match (fastrand::u32(..100), &self.seen[k]) {
            // Keeps the current lease if it is the one this worker saw.
            (0..15, Some(seen)) => vec![proposed.clone(), seen.clone()],
            // Leaves every other endpoint out: replaces a live lease.
            (15..25, _) => vec![proposed.clone()],
            _ => Vec::new(),
        };
        Request::Resolve { proposed, eligible }
    }

    /// Learn from an answer about key `k`.
    pub(super) fn learn(&mut self, k: usize, answer: &Answer) {
        match answer {
            Answer::Released(true) | Answer::Drained(1..) | Answer::Looked(None) => {
                self.seen[k] = None;
            }
            other => {
                if let Some(lease) = other.lease() {
                    self.seen[k] = Some(lease.endpoint.clone());
                }
            }
        }
    }
}
