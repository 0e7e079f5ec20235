//! Server status transitions: the one place that decides them.
//!
//! | from                         | event                                   | to          |
//! |------------------------------|-----------------------------------------|-------------|
//! | (new) / DELETED              | `Joined`, group has no other member     | ACTIVE      |
//! | (new) / DELETED              | `Joined`, group has other members       | WAIT_SYNC   |
//! | OFFLINE                      | `Returned`, still the group's master    | ACTIVE      |
//! | OFFLINE                      | `Returned`, not the master              | RECOVERING  |
//! | any other alive status       | `Returned` (a restart within timeout)   | unchanged   |
//! | INIT                         | `Progress(WAIT_SYNC)`                   | WAIT_SYNC   |
//! | WAIT_SYNC                    | `Progress(SYNCING)`                     | SYNCING     |
//! | SYNCING, RECOVERING          | `Progress(ONLINE)`                      | ONLINE      |
//! | ONLINE                       | `Progress(ACTIVE)`, caught up           | ACTIVE      |
//! | any alive status             | `TimedOut`                              | OFFLINE     |
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
    /// Silent for longer than the server timeout.
    TimedOut,
    /// The dataserver reports it reached `reached`; `caught_up` is whether
    /// its data version equals the master's (needed for ACTIVE).
    Progress {
        reached: ServerStatus,
        caught_up: bool,
    },
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
            Some(Online),
            StatusEvent::Progress {
                reached: Active,
                caught_up: true,
            },
        ) => Active,
        (Some(s), StatusEvent::TimedOut) if s.is_alive() => Offline,
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
        assert_eq!(transition(Some(Online), p(Active, true)), Ok(Active));
        // ACTIVE only when caught up with the master.
        assert!(transition(Some(Online), p(Active, false)).is_err());
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
