//! One file per command: its arguments and its run function.

pub(crate) mod drain;
pub(crate) mod list;
pub(crate) mod lookup;
pub(crate) mod members;
pub(crate) mod reassign;
pub(crate) mod release;
pub(crate) mod resolve;
pub(crate) mod restore;
pub(crate) mod snapshot;
pub(crate) mod status;
pub(crate) mod transfer_leader;
pub(crate) mod watch;
