//! The running Raft handle's type, and the stamps a leader puts on its proposals.
//!
//! Below both [`crate::node`] (which starts Raft and proposes) and [`crate::batch`] (which
//! batches proposals): each takes a [`Stamps`] rather than reaching into the other. The
//! handle type lives here rather than in [`crate::raft`] because it names the store's state
//! machine, and [`crate::store`] itself builds on the type configuration in `raft`.

use std::sync::Arc;

use openraft::async_runtime::watch::WatchReceiver as _;

use crate::clock;
use crate::network::LeaderTime;
use crate::raft::TypeConfig;
use crate::store::StateMachineStore;

/// A Raft node of the store.
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;

/// Stamps for this node's proposals while it leads: [`clock::LeaderClock`] fed with the
/// current term and the newest stamp applied. Cheap to clone.
#[derive(Clone)]
pub struct Stamps {
    time: Arc<StoreTime>,
    raft: Raft,
}

impl Stamps {
    /// Stamps from `time` for proposals to `raft`.
    pub(crate) fn new(time: Arc<StoreTime>, raft: Raft) -> Self {
        Self { time, raft }
    }

    /// The store time these stamps come from.
    pub(crate) fn time(&self) -> &StoreTime {
        &self.time
    }

    /// The stamp for a proposal made now.
    pub fn now(&self) -> i64 {
        let term = self.raft.metrics().borrow_watched().current_term;
        self.time.store_ms(term)
    }
}

/// The store time as leader of a term: the leader clock over the newest stamp applied.
/// Also what this node's appends announce to its followers.
pub(crate) struct StoreTime {
    clock: clock::LeaderClock,
    state: StateMachineStore,
}

impl StoreTime {
    /// Store time from `clock` over the newest stamp `state` applied.
    pub(crate) fn new(clock: clock::LeaderClock, state: StateMachineStore) -> Self {
        Self { clock, state }
    }

    /// The leader clock.
    pub(crate) fn clock(&self) -> &clock::LeaderClock {
        &self.clock
    }
}

impl LeaderTime for StoreTime {
    fn store_ms(&self, term: u64) -> i64 {
        self.clock.stamp(term, self.state.clock_ms())
    }
}
