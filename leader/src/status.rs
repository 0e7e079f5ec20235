//! Server status transitions: the one place that decides them.
//!
//! | from                         | event                                   | to          |
//! |------------------------------|-----------------------------------------|-------------|
//! | (new) / DELETED              | `Joined`, group has no other member     | ACTIVE      |
//! | (new) / DELETED              | `Joined`, group has other members       | WAIT_SYNC   |
//! | OFFLINE                      | `Returned`, still the group's master,   | ACTIVE      |
//! |                              | or a member of an async group           |             |
//! | OFFLINE                      | `Returned`, otherwise                   | RECOVERING  |
//! | any other alive status       | `Returned` (a heartbeat)                | unchanged   |
//! | RECOVERING, ONLINE, ACTIVE   | `Restarted`, not the master (rejoined   | RECOVERING  |
//! |                              | within the timeout: its replication     |             |
//! |                              | stream was cut)                         |             |
//! | OFFLINE                      | `Restarted`                             | as `Returned` |
//! | any other alive status       | `Restarted`                             | unchanged   |
//! | INIT                         | `Progress(WAIT_SYNC)`                   | WAIT_SYNC   |
//! | WAIT_SYNC                    | `Progress(SYNCING)`                     | SYNCING     |
//! | SYNCING, RECOVERING          | `Progress(ONLINE)`                      | ONLINE      |
//! | SYNCING                      | `Progress(ACTIVE)`: async groups only   | ACTIVE      |
//! |                              | (the full copy is done; no master)      |             |
//! | ONLINE                       | `Activated` (the master vouches that it | ACTIVE      |
//! |                              | has every version and gets every write) |             |
//! | any alive status             | `TimedOut`                              | OFFLINE     |
//! | ACTIVE, ONLINE               | `Dropped` (missed a replication         | OFFLINE     |
//! |                              | deadline; reported by the master)       |             |
//! | ACTIVE, ONLINE               | `NewMaster` (another member became      | RECOVERING  |
//! |                              | master: recheck history, catch up)      |             |
//! | anything but DELETED         | `Removed`                               | DELETED     |
//!
//! Everything else is refused with a [`TransitionError`] and changes nothing.
//! "Alive" is every status but OFFLINE and DELETED.

use proto::cluster::ServerStatus;

/// What happened to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StatusEvent {
    /// A new server (or a DELETED one) joins its group.
    Joined { group_has_members: bool },
    /// A known server is heard from again (a rejoin at restart, or a
    /// heartbeat). `is_master`: the group's map still names it master, so
    /// nobody else can have taken writes since it left.
    Returned { is_master: bool },
    /// A known server joins again (it restarted). A slave that was
    /// receiving writes lost its stream and must catch up.
    Restarted { is_master: bool },
    /// Silent for longer than the server timeout.
    TimedOut,
    /// The master reports the slave missed a replication deadline.
    Dropped,
    /// Another member of the group was made master.
    NewMaster,
    /// The dataserver reports it reached `reached` (WAIT_SYNC, SYNCING,
    /// ONLINE). `caught_up` is informational.
    Progress {
        reached: ServerStatus,
        caught_up: bool,
    },
    /// The master vouches the ONLINE slave has every version it assigned
    /// and receives every new write.
    Activated,
    /// An operator removed it.
    Removed,
}

/// A refused transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event} is not allowed for a server in status {from}")]
pub struct TransitionError {
    pub from: String,
    pub event: String,
}

fn refuse(from: Option<ServerStatus>, event: StatusEvent) -> TransitionError {
    TransitionError {
        from: from.map_or("(unknown)", |s| s.as_str()).to_string(),
        event: format!("{event:?}"),
    }
}

/// The status a server moves to when `event` happens in status `from`
/// (`None`: the server is not in the map yet).
pub fn transition(
    from: Option<ServerStatus>,
    event: StatusEvent,
) -> Result<ServerStatus, TransitionError> {
    use ServerStatus::*;
    let to = match (from, event) {
        (None | Some(Deleted), StatusEvent::Joined { group_has_members }) => {
            if group_has_members {
                WaitSync
            } else {
                Active
            }
        }
        (Some(Offline), StatusEvent::Returned { is_master: true }) => Active,
        (Some(Offline), StatusEvent::Returned { is_master: false }) => Recovering,
        (Some(s), StatusEvent::Returned { .. }) if s.is_alive() => s,
        (Some(Offline), StatusEvent::Restarted { is_master }) => {
            if is_master {
                Active
            } else {
                Recovering
            }
        }
        (Some(Recovering | Online | Active), StatusEvent::Restarted { is_master: false }) => {
            Recovering
        }
        (Some(s), StatusEvent::Restarted { .. }) if s.is_alive() => s,
        (
            Some(Init),
            StatusEvent::Progress {
                reached: WaitSync, ..
            },
        ) => WaitSync,
        (
            Some(WaitSync),
            StatusEvent::Progress {
                reached: Syncing, ..
            },
        ) => Syncing,
        (
            Some(Syncing | Recovering),
            StatusEvent::Progress {
                reached: Online, ..
            },
        ) => Online,
        (
            Some(Syncing),
            StatusEvent::Progress {
                reached: Active, ..
            },
        ) => Active,
        (Some(Online), StatusEvent::Activated) => Active,
        (Some(s), StatusEvent::TimedOut) if s.is_alive() => Offline,
        (Some(Active | Online), StatusEvent::Dropped) => Offline,
        (Some(Active | Online), StatusEvent::NewMaster) => Recovering,
        (Some(s), StatusEvent::Removed) if s != Deleted => Deleted,
        _ => return Err(refuse(from, event)),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServerStatus::*;

    const ALL: [ServerStatus; 8] = [
        Init, WaitSync, Syncing, Offline, Recovering, Online, Active, Deleted,
    ];

    #[test]
    fn join_into_empty_group_is_active_else_wait_sync() {
        let empty = StatusEvent::Joined {
            group_has_members: false,
        };
        let busy = StatusEvent::Joined {
            group_has_members: true,
        };
        assert_eq!(transition(None, empty), Ok(Active));
        assert_eq!(transition(None, busy), Ok(WaitSync));
        assert_eq!(transition(Some(Deleted), busy), Ok(WaitSync));
        for s in ALL.into_iter().filter(|s| *s != Deleted) {
            assert!(transition(Some(s), busy).is_err(), "{s} joined again");
        }
    }

    #[test]
    fn timeout_takes_every_alive_status_offline() {
        for s in ALL {
            let r = transition(Some(s), StatusEvent::TimedOut);
            if s.is_alive() {
                assert_eq!(r, Ok(Offline), "{s}");
            } else {
                assert!(r.is_err(), "{s}");
            }
        }
        assert!(transition(None, StatusEvent::TimedOut).is_err());
    }

    #[test]
    fn returning_from_offline() {
        assert_eq!(
            transition(Some(Offline), StatusEvent::Returned { is_master: false }),
            Ok(Recovering)
        );
        assert_eq!(
            transition(Some(Offline), StatusEvent::Returned { is_master: true }),
            Ok(Active)
        );
        for s in [Init, WaitSync, Syncing, Recovering, Online, Active] {
            assert_eq!(
                transition(Some(s), StatusEvent::Returned { is_master: false }),
                Ok(s)
            );
        }
        assert!(transition(Some(Deleted), StatusEvent::Returned { is_master: false }).is_err());
        assert!(transition(None, StatusEvent::Returned { is_master: false }).is_err());
    }

    #[test]
    fn progress_follows_the_ladder_only() {
        let p = |reached, caught_up| StatusEvent::Progress { reached, caught_up };
        assert_eq!(transition(Some(Init), p(WaitSync, false)), Ok(WaitSync));
        assert_eq!(transition(Some(WaitSync), p(Syncing, false)), Ok(Syncing));
        assert_eq!(transition(Some(Syncing), p(Online, false)), Ok(Online));
        assert_eq!(transition(Some(Recovering), p(Online, false)), Ok(Online));
        // ACTIVE only when the master vouches for it.
        assert!(transition(Some(Online), p(Active, true)).is_err());
        assert_eq!(transition(Some(Online), StatusEvent::Activated), Ok(Active));
        for s in ALL.into_iter().filter(|s| *s != Online) {
            assert!(transition(Some(s), StatusEvent::Activated).is_err(), "{s}");
        }
        // No skipping rungs, no going back, nothing from OFFLINE / DELETED.
        assert!(transition(Some(WaitSync), p(Active, true)).is_err());
        assert!(transition(Some(Recovering), p(Active, true)).is_err());
        assert!(transition(Some(Active), p(Online, true)).is_err());
        assert!(transition(Some(Offline), p(Online, true)).is_err());
        assert!(transition(Some(Deleted), p(Active, true)).is_err());
        for s in ALL {
            assert!(transition(Some(s), p(Offline, true)).is_err());
            assert!(transition(Some(s), p(Deleted, true)).is_err());
        }
    }

    #[test]
    fn restarts_send_replicating_slaves_back_to_recovering() {
        let r = |s, is_master| transition(Some(s), StatusEvent::Restarted { is_master });
        for s in [Recovering, Online, Active] {
            assert_eq!(r(s, false), Ok(Recovering), "{s}");
        }
        assert_eq!(r(Active, true), Ok(Active));
        assert_eq!(r(Offline, true), Ok(Active));
        assert_eq!(r(Offline, false), Ok(Recovering));
        for s in [Init, WaitSync, Syncing] {
            assert_eq!(r(s, false), Ok(s));
        }
        assert!(r(Deleted, false).is_err());
    }

    #[test]
    fn a_new_master_sends_replicating_members_to_recovering() {
        for s in ALL {
            let r = transition(Some(s), StatusEvent::NewMaster);
            if matches!(s, Active | Online) {
                assert_eq!(r, Ok(Recovering), "{s}");
            } else {
                assert!(r.is_err(), "{s}");
            }
        }
    }

    #[test]
    fn only_replicating_slaves_are_dropped() {
        for s in ALL {
            let r = transition(Some(s), StatusEvent::Dropped);
            if matches!(s, Active | Online) {
                assert_eq!(r, Ok(Offline), "{s}");
            } else {
                assert!(r.is_err(), "{s}");
            }
        }
    }

    #[test]
    fn remove_from_anything_but_deleted() {
        for s in ALL {
            let r = transition(Some(s), StatusEvent::Removed);
            if s == Deleted {
                assert!(r.is_err());
            } else {
                assert_eq!(r, Ok(Deleted));
            }
        }
        assert!(transition(None, StatusEvent::Removed).is_err());
    }
}
