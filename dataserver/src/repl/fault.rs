//! Deliberate faults for proving the consistency suite catches them.
//! Compiled only with the `fault-injection` cargo feature (never in a
//! normal or release build), and even then off unless `CHORUS_FAULT`
//! names one:
//!
//! * `ack-before-replicate`: the master acknowledges a write at once and
//!   sends it to the slaves half a second later, in the background — a
//!   master killed in that window loses acknowledged writes.

use std::sync::OnceLock;
use std::time::Duration;

/// How long the faulty master waits before replicating.
pub const DELAY: Duration = Duration::from_millis(500);

/// Whether `CHORUS_FAULT=ack-before-replicate` is set.
pub fn ack_before_replicate() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var("CHORUS_FAULT").is_ok_and(|v| v == "ack-before-replicate");
        if on {
            tracing::error!("FAULT INJECTED: acknowledging writes before replicating them");
        }
        on
    })
}
