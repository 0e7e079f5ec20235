//! Climbing the status ladder (WAIT_SYNC / RECOVERING → ACTIVE) by reporting
//! progress to the leaders. Pure; the agent does the calls.
//!
//! Copying data from the master (full sync, binlog catch-up, repair) comes
//! with replication. Until then a member climbs only when it has nothing to
//! copy and nothing to repair: its data version equals the master's live
//! one. A member behind (or ahead of) its master stays where the leaders put
//! it, which is the honest status until replication can close the gap.

use proto::cluster::ServerStatus;

/// The status to report next on the way to ACTIVE, if any.
pub fn next_rung(status: ServerStatus) -> Option<ServerStatus> {
    match status {
        ServerStatus::WaitSync => Some(ServerStatus::Syncing),
        ServerStatus::Syncing | ServerStatus::Recovering => Some(ServerStatus::Online),
        ServerStatus::Online => Some(ServerStatus::Active),
        _ => None,
    }
}

/// Whether a member at `mine` has nothing to copy from (or repair against)
/// a master at `master` (None: the master's live version is unknown).
pub fn nothing_to_copy(mine: u64, master: Option<u64>) -> bool {
    master == Some(mine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServerStatus::*;

    #[test]
    fn ladder() {
        let mut s = WaitSync;
        let mut seen = vec![s];
        while let Some(n) = next_rung(s) {
            s = n;
            seen.push(s);
        }
        assert_eq!(seen, vec![WaitSync, Syncing, Online, Active]);
        assert_eq!(next_rung(Recovering), Some(Online));
        for s in [Init, Offline, Active, Deleted] {
            assert_eq!(next_rung(s), None, "{s}");
        }
    }

    #[test]
    fn climbs_only_when_equal() {
        assert!(nothing_to_copy(0, Some(0)));
        assert!(nothing_to_copy(7, Some(7)));
        assert!(!nothing_to_copy(0, Some(3)), "behind: must copy");
        assert!(!nothing_to_copy(5, Some(3)), "ahead: must repair");
        assert!(!nothing_to_copy(0, None), "unknown master version");
    }
}
