//! What this dataserver knows of the cluster, in one place: the latest map,
//! its own record in it, its group's epoch and master, and its master lease.
//!
//! The role and the request gate are pure functions ([`derive_role`],
//! [`admit`]); [`ClusterView`] only stores their inputs and the derived
//! [`Role`], and [`SharedView`] is what connections read.
//!
//! | role                              | Ping, ListFiles | everything else                               |
//! |-----------------------------------|-----------------|-----------------------------------------------|
//! | `Standalone` (no leaders)         | ok              | ok (no epoch check)                           |
//! | any role, request epoch < group's | ok              | `stale_epoch` "stale epoch N, current M"      |
//! | any role, request epoch > group's | ok              | `unavailable` (this server's map is behind)   |
//! | `Master`, lease valid now         | ok              | ok                                            |
//! | `Master`, no lease or expired     | ok              | `unavailable` "master lease expired"          |
//! | `Slave`, group has a master       | ok              | `not_master` "...; master=<addr>"             |
//! | `Slave`, group has no master      | ok              | `unavailable` "group G has no master"         |
//! | `Joining` (not in the map yet)    | ok              | `unavailable` "not joined to the cluster yet" |
//! | `Removed` (DELETED in the map)    | ok              | `unavailable` "removed from the cluster"      |
//! | `Peer` (async group, ACTIVE)      | ok              | ok (mutations: per file, `repl::push::gate`)  |
//! | `PeerWaiting` (async, not ACTIVE) | ok              | `unavailable` "... not ACTIVE ..."            |
//!
//! A request epoch of 0 is not checked; neither is an epoch while the
//! server knows none (`Joining`, `Removed`). Requests the gate lets through
//! whatever the role are those [`ungated`] names.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use proto::cluster::{ClusterMap, ReplicationMode, ServerId, ServerStatus};
use proto::{ErrorCode, Request, WireError};

/// A master lease granted by the leaders for one epoch of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The group epoch the lease was granted in.
    pub epoch: u64,
    /// Valid strictly before this instant.
    pub until: Instant,
}

/// The group's master as a slave sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRef {
    pub id: ServerId,
    pub addr: String,
}

/// This server's role in serving requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// No leaders configured: serve everything, as a single server.
    Standalone,
    /// Leaders configured, but this server is not in the map yet.
    Joining,
    /// The map names this server its group's master at `epoch`;
    /// `lease_until` is the end of the lease granted for that epoch.
    Master {
        epoch: u64,
        lease_until: Option<Instant>,
    },
    /// Another server (or nobody) is the group's master.
    Slave {
        master: Option<MasterRef>,
        epoch: u64,
    },
    /// An operator removed this server (DELETED in the map).
    Removed,
    /// An ACTIVE member of an async group: takes uploads, serves reads of
    /// anything it has, and changes only the files it is the source of.
    Peer,
    /// A member of an async group that is not ACTIVE (copying, or marked
    /// OFFLINE): serves no clients.
    PeerWaiting { status: ServerStatus },
}

impl Role {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Joining => "joining",
            Role::Master { .. } => "master",
            Role::Slave { .. } => "slave",
            Role::Removed => "removed",
            Role::Peer => "peer",
            Role::PeerWaiting { .. } => "peer (not active)",
        }
    }

    /// The group epoch this role knows, if any.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Role::Master { epoch, .. } | Role::Slave { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }
}

/// The role of server `id` of `group` given the map and its lease.
pub fn derive_role(
    map: Option<&ClusterMap>,
    id: ServerId,
    group: &str,
    lease: Option<Lease>,
) -> Role {
    let Some(map) = map else {
        return Role::Joining;
    };
    let Some(me) = map.server(id) else {
        return Role::Joining;
    };
    if me.status == ServerStatus::Deleted {
        return Role::Removed;
    }
    if me.group != group {
        // The leaders refuse such a join; until the map agrees, serve nothing.
        return Role::Joining;
    }
    let Some(g) = map.group(group) else {
        return Role::Joining;
    };
    if g.mode == ReplicationMode::Async {
        return match me.status {
            ServerStatus::Active => Role::Peer,
            status => Role::PeerWaiting { status },
        };
    }
    if g.master == Some(id) {
        Role::Master {
            epoch: g.epoch,
            lease_until: lease.filter(|l| l.epoch == g.epoch).map(|l| l.until),
        }
    } else {
        Role::Slave {
            master: map.master_of(group).map(|m| MasterRef {
                id: m.id,
                addr: m.addr.clone(),
            }),
            epoch: g.epoch,
        }
    }
}

/// Requests every server answers whatever its role, status, lease or
/// epoch: `Ping` (liveness) and `ListFiles` (read-only; `chorus verify`
/// compares every member of a group, slaves and OFFLINE-marked ones too).
pub fn ungated(op: &Request) -> bool {
    matches!(op, Request::Ping | Request::ListFiles { .. })
}

/// Whether a request may be served, as the table in the module docs says.
/// `ping`: the request is [`ungated`] (a Ping or a ListFiles); `epoch`: the
/// epoch it carries (0: none).
pub fn admit(
    role: &Role,
    group: &str,
    ping: bool,
    epoch: u64,
    now: Instant,
) -> Result<(), WireError> {
    if ping || *role == Role::Standalone {
        return Ok(());
    }
    if let Some(current) = role.epoch() {
        if epoch != 0 && epoch < current {
            return Err(WireError::new(
                ErrorCode::StaleEpoch,
                format!("stale epoch {epoch}, current {current}"),
            ));
        }
        if epoch > current {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                format!(
                    "epoch {epoch} is newer than this server's map (epoch {current}); retry shortly"
                ),
            ));
        }
    }
    match role {
        Role::Standalone => Ok(()),
        Role::Master { lease_until, .. } => match lease_until {
            Some(until) if now < *until => Ok(()),
            Some(_) => Err(WireError::new(
                ErrorCode::Unavailable,
                format!("master lease expired (group {group}); the leaders cannot be reached"),
            )),
            None => Err(WireError::new(
                ErrorCode::Unavailable,
                format!("master lease expired (group {group}): no lease granted yet"),
            )),
        },
        Role::Slave {
            master: Some(m),
            epoch,
        } => Err(WireError::new(
            ErrorCode::NotMaster,
            format!(
                "not the master of group {group} (epoch {epoch}); master={}",
                m.addr
            ),
        )),
        Role::Slave { master: None, .. } => Err(WireError::new(
            ErrorCode::Unavailable,
            format!("group {group} has no master"),
        )),
        Role::Joining => Err(WireError::new(
            ErrorCode::Unavailable,
            "this server has not joined the cluster yet",
        )),
        Role::Removed => Err(WireError::new(
            ErrorCode::Unavailable,
            "this server was removed from the cluster",
        )),
        // Which files a peer may change is decided per file (see
        // `repl::push::gate`).
        Role::Peer => Ok(()),
        Role::PeerWaiting { status } => Err(WireError::new(
            ErrorCode::Unavailable,
            format!(
                "this member of async group {group} is {status}, not ACTIVE: it serves no clients yet"
            ),
        )),
    }
}

/// What this server knows of the cluster.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub id: ServerId,
    pub group: String,
    /// The newest map seen (join answer, subscription), if any.
    pub map: Option<ClusterMap>,
    pub lease: Option<Lease>,
    role: Role,
}

impl ClusterView {
    /// A clustered server that has not joined yet.
    pub fn joining(id: ServerId, group: impl Into<String>) -> Self {
        ClusterView {
            id,
            group: group.into(),
            map: None,
            lease: None,
            role: Role::Joining,
        }
    }

    /// A server without leaders.
    pub fn standalone(id: ServerId, group: impl Into<String>) -> Self {
        ClusterView {
            role: Role::Standalone,
            ..Self::joining(id, group)
        }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    fn refresh(&mut self) {
        if self.role != Role::Standalone {
            self.role = derive_role(self.map.as_ref(), self.id, &self.group, self.lease);
        }
    }

    /// Take `map` if it is newer than the one held; returns whether it was.
    pub fn apply_map(&mut self, map: ClusterMap) -> bool {
        if self.map.as_ref().is_some_and(|m| m.version >= map.version) {
            return false;
        }
        self.map = Some(map);
        self.refresh();
        true
    }

    /// Record a lease of `lease_ms` granted for `epoch` in answer to a
    /// heartbeat sent at `sent_at`. Leases only ever extend.
    pub fn grant_lease(&mut self, epoch: u64, sent_at: Instant, lease_ms: u32) {
        let until = sent_at + lease_here(lease_ms);
        let lease = match self.lease {
            Some(l) if l.epoch == epoch && l.until >= until => l,
            _ => Lease { epoch, until },
        };
        self.lease = Some(lease);
        self.refresh();
    }

    /// This server's status in the map (INIT before it is in the map).
    pub fn my_status(&self) -> ServerStatus {
        self.map
            .as_ref()
            .and_then(|m| m.server(self.id))
            .map_or(ServerStatus::Init, |s| s.status)
    }

    /// The group's master, when it has one.
    pub fn master(&self) -> Option<MasterRef> {
        self.map
            .as_ref()
            .and_then(|m| m.master_of(&self.group))
            .map(|m| MasterRef {
                id: m.id,
                addr: m.addr.clone(),
            })
    }

    /// Whether this server is the master with a lease valid at `now`.
    pub fn holds_lease(&self, now: Instant) -> bool {
        matches!(self.role, Role::Master { lease_until: Some(t), .. } if now < t)
    }
}

/// How long this server counts a lease of `lease_ms`: a twentieth less
/// (at least 20 ms less), so that a clock here running up to 5 % slower
/// than the leader's still stops serving before the leader appoints a
/// successor. The leader counts the full term, from later (when it got the
/// heartbeat), so the margins add up.
pub fn lease_here(lease_ms: u32) -> Duration {
    let ms = u64::from(lease_ms);
    Duration::from_millis(ms.saturating_sub((ms / 20).max(20)))
}

/// The view shared between the cluster agent and every connection.
#[derive(Debug, Clone)]
pub struct SharedView(Arc<Mutex<ClusterView>>);

impl SharedView {
    pub fn new(view: ClusterView) -> Self {
        SharedView(Arc::new(Mutex::new(view)))
    }

    /// Run `f` on the view (keep it short: connections wait on this lock).
    pub fn with<T>(&self, f: impl FnOnce(&mut ClusterView) -> T) -> T {
        f(&mut self.0.lock())
    }

    /// The gate: may a request (Ping or not, carrying `epoch`) be served now?
    pub fn admit(&self, ping: bool, epoch: u64) -> Result<(), WireError> {
        if ping {
            return Ok(());
        }
        let v = self.0.lock();
        admit(&v.role, &v.group, ping, epoch, Instant::now())
    }

    pub fn role(&self) -> Role {
        self.0.lock().role.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::cluster::{GroupInfo, ReplicationMode, ServerInfo};

    fn server(id: ServerId, status: ServerStatus) -> ServerInfo {
        ServerInfo {
            id,
            addr: format!("127.0.0.1:{}", 23000 + id),
            group: "g1".into(),
            status,
            data_version: 0,
            disk_free: 1,
            disk_total: 2,
            status_changed_ms: 0,
        }
    }

    fn map(version: u64, master: Option<ServerId>, epoch: u64) -> ClusterMap {
        ClusterMap {
            version,
            updated_ms: 0,
            groups: vec![GroupInfo {
                name: "g1".into(),
                mode: ReplicationMode::Sync,
                members: vec![1, 2, 3],
                master,
                epoch,
                master_lease_ms: 3000,
                epoch_starts: Vec::new(),
            }],
            servers: vec![
                server(1, ServerStatus::Active),
                server(2, ServerStatus::Active),
                server(3, ServerStatus::Deleted),
            ],
        }
    }

    fn code(r: Result<(), WireError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn roles_from_the_map() {
        let t = Instant::now() + Duration::from_secs(1);
        let m = map(4, Some(1), 2);
        assert_eq!(derive_role(None, 1, "g1", None), Role::Joining);
        assert_eq!(derive_role(Some(&m), 9, "g1", None), Role::Joining);
        assert_eq!(derive_role(Some(&m), 3, "g1", None), Role::Removed);
        assert_eq!(
            derive_role(Some(&m), 1, "g1", Some(Lease { epoch: 2, until: t })),
            Role::Master {
                epoch: 2,
                lease_until: Some(t)
            }
        );
        // A lease from another epoch does not count.
        assert_eq!(
            derive_role(Some(&m), 1, "g1", Some(Lease { epoch: 1, until: t })),
            Role::Master {
                epoch: 2,
                lease_until: None
            }
        );
        assert_eq!(
            derive_role(Some(&m), 2, "g1", None),
            Role::Slave {
                master: Some(MasterRef {
                    id: 1,
                    addr: "127.0.0.1:23001".into()
                }),
                epoch: 2
            }
        );
        let headless = map(5, None, 2);
        assert_eq!(
            derive_role(Some(&headless), 2, "g1", None),
            Role::Slave {
                master: None,
                epoch: 2
            }
        );
    }

    #[test]
    fn ping_is_always_served() {
        let now = Instant::now();
        for role in [
            Role::Standalone,
            Role::Joining,
            Role::Removed,
            Role::Master {
                epoch: 3,
                lease_until: None,
            },
            Role::Slave {
                master: None,
                epoch: 3,
            },
        ] {
            assert_eq!(admit(&role, "g1", true, 1, now), Ok(()), "{role:?}");
        }
    }

    #[test]
    fn listing_is_served_by_every_member() {
        assert!(ungated(&Request::Ping));
        let list = Request::ListFiles {
            after: String::new(),
            limit: 100,
        };
        assert!(ungated(&list));
        for op in [
            Request::Stat {
                file_id: "x".into(),
            },
            Request::Exists {
                file_id: "x".into(),
            },
            Request::ReplLog { from: 1, max: 10 },
            Request::Upload {
                size: 1,
                ext: String::new(),
                meta: Vec::new(),
                appender: false,
            },
        ] {
            assert!(!ungated(&op), "{op:?}");
        }
        // Whatever the role, lease or epoch.
        let now = Instant::now();
        for role in [
            Role::Standalone,
            Role::Joining,
            Role::Removed,
            Role::Master {
                epoch: 3,
                lease_until: None,
            },
            Role::Slave {
                master: Some(MasterRef {
                    id: 1,
                    addr: "10.1.2.3:23000".into(),
                }),
                epoch: 3,
            },
            Role::Slave {
                master: None,
                epoch: 3,
            },
        ] {
            for epoch in [0, 1, 3, 9] {
                assert_eq!(
                    admit(&role, "g1", ungated(&list), epoch, now),
                    Ok(()),
                    "{role:?} epoch {epoch}"
                );
            }
        }
        // Through the shared view, on a slave that refuses everything else.
        let mut v = ClusterView::joining(2, "g1");
        v.apply_map(map(4, Some(1), 2));
        let shared = SharedView::new(v);
        assert_eq!(shared.admit(ungated(&list), 0), Ok(()));
        let stat = Request::Stat {
            file_id: "x".into(),
        };
        assert_eq!(
            code(shared.admit(ungated(&stat), 0)),
            Some(ErrorCode::NotMaster)
        );
    }

    #[test]
    fn the_gate_follows_the_table() {
        let now = Instant::now();
        let later = now + Duration::from_millis(500);
        let valid = Role::Master {
            epoch: 3,
            lease_until: Some(later),
        };
        assert_eq!(admit(&Role::Standalone, "g1", false, 77, now), Ok(()));
        assert_eq!(admit(&valid, "g1", false, 0, now), Ok(()));
        assert_eq!(admit(&valid, "g1", false, 3, now), Ok(()));
        // The lease ends at `until`.
        let e = admit(&valid, "g1", false, 0, later).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.contains("master lease expired"), "{e}");
        let no_lease = Role::Master {
            epoch: 3,
            lease_until: None,
        };
        assert_eq!(
            code(admit(&no_lease, "g1", false, 0, now)),
            Some(ErrorCode::Unavailable)
        );
        // Epochs.
        let e = admit(&valid, "g1", false, 2, now).unwrap_err();
        assert_eq!(e.code, ErrorCode::StaleEpoch);
        assert_eq!(e.message, "stale epoch 2, current 3");
        assert_eq!(
            code(admit(&valid, "g1", false, 4, now)),
            Some(ErrorCode::Unavailable)
        );
        // Slaves point at the master.
        let slave = Role::Slave {
            master: Some(MasterRef {
                id: 1,
                addr: "10.1.2.3:23000".into(),
            }),
            epoch: 3,
        };
        let e = admit(&slave, "g1", false, 0, now).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotMaster);
        assert!(e.message.ends_with("master=10.1.2.3:23000"), "{e}");
        assert_eq!(
            code(admit(&slave, "g1", false, 1, now)),
            Some(ErrorCode::StaleEpoch)
        );
        let headless = Role::Slave {
            master: None,
            epoch: 3,
        };
        assert_eq!(
            code(admit(&headless, "g1", false, 0, now)),
            Some(ErrorCode::Unavailable)
        );
        // Not in the map: no epoch to compare, nothing served.
        for role in [Role::Joining, Role::Removed] {
            assert_eq!(
                code(admit(&role, "g1", false, 5, now)),
                Some(ErrorCode::Unavailable)
            );
        }
    }

    #[test]
    fn view_tracks_maps_and_leases() {
        let mut v = ClusterView::joining(1, "g1");
        assert_eq!(v.my_status(), ServerStatus::Init);
        assert!(v.apply_map(map(4, Some(1), 2)));
        assert!(!v.apply_map(map(4, Some(2), 3)), "same version ignored");
        assert!(!v.apply_map(map(3, Some(2), 3)), "older version ignored");
        assert_eq!(v.my_status(), ServerStatus::Active);
        let now = Instant::now();
        assert!(!v.holds_lease(now));
        v.grant_lease(2, now, 1000);
        // A 1000 ms lease is held for 950 ms here (the clock-rate margin).
        assert_eq!(lease_here(1000), Duration::from_millis(950));
        assert_eq!(lease_here(200), Duration::from_millis(180));
        assert!(v.holds_lease(now + Duration::from_millis(949)));
        assert!(!v.holds_lease(now + Duration::from_millis(950)));
        // An older grant never shortens the lease.
        v.grant_lease(2, now - Duration::from_millis(500), 1000);
        assert!(v.holds_lease(now + Duration::from_millis(949)));
        // Losing the mastership makes it a slave at once.
        assert!(v.apply_map(map(5, Some(2), 3)));
        assert!(!v.holds_lease(now));
        assert_eq!(v.master().map(|m| m.id), Some(2));
        assert!(matches!(v.role(), Role::Slave { epoch: 3, .. }));
        // A standalone view never changes role.
        let mut s = ClusterView::standalone(1, "g1");
        s.apply_map(map(9, Some(2), 3));
        assert_eq!(*s.role(), Role::Standalone);
    }
}
