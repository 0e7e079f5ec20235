//! Synchronous replication within a group (the dataserver side).
//!
//! * [`master`]: the [`Replicator`], installed as the engine's replicate
//!   hook on every clustered server. On the master it sends each durable
//!   local change to the slaves, waits for every ACTIVE one (and every
//!   ONLINE one being activated), has the leaders drop a slave that misses
//!   its deadline, and refuses to acknowledge once the lease has run out.
//!   It also answers an ONLINE slave's request to become ACTIVE.
//!   Small changes to a busy slave go several to a frame ([`batch`]).
//! * [`slave`]: applying a replicated change in data-version order.
//! * [`catchup`]: a WAIT_SYNC / SYNCING / RECOVERING / ONLINE server copies
//!   what it misses from the master and climbs to ACTIVE.
//! * [`pace`]: a master holds writes to the pace of a returning member
//!   whose copy would otherwise never catch up.
//! * [`targets`]: who a change goes to, from the cluster map (pure).
//! * [`push`]: async (FastDFS-style) groups: the gate, pushers with their
//!   marks, the receiving side, and a new member's full copy.

pub mod batch;
pub mod catchup;
pub mod dedup;
pub mod epoch;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod master;
pub mod pace;
pub mod payload;
pub mod peers;
pub mod pull;
pub mod push;
pub mod slave;
pub mod targets;
pub mod wipe;

use std::time::Duration;

pub use master::Replicator;

/// Replication timing.
#[derive(Debug, Clone, Copy)]
pub struct ReplTiming {
    /// A slave that has not made a change durable within this is reported.
    pub deadline: Duration,
    /// How long a slave waits for the versions before one that arrived.
    pub gap_wait: Duration,
}

impl ReplTiming {
    /// A slave's deadline; a missing earlier version is waited for three
    /// quarters of it (so a change that waits for a gap still answers in
    /// time).
    pub fn with_deadline(deadline: Duration) -> Self {
        ReplTiming {
            deadline,
            gap_wait: deadline * 3 / 4,
        }
    }
}

impl Default for ReplTiming {
    fn default() -> Self {
        ReplTiming::with_deadline(Duration::from_millis(2000))
    }
}
