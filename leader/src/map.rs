//! The cluster-map state machine, free of I/O: commands and how they apply.
//!
//! Every command is validated against the current map first; a refused
//! command changes nothing (not even the version). An accepted one raises
//! `version` and stamps `updated_ms` with the proposal time it carries, so
//! applying the same log on every leader gives the same map.

use proto::cluster::{
    ClusterMap, EpochStart, GroupInfo, JoinRequest, ReplicationMode, ServerId, ServerInfo,
    ServerStatus, EPOCH_HISTORY,
};
use serde::{Deserialize, Serialize};

use crate::status::{transition, StatusEvent};

/// Figures a dataserver reports, recorded with its state changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub data_version: u64,
    pub disk_free: u64,
    pub disk_total: u64,
}

/// A change to the cluster map (the Raft log's application data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A dataserver joins (or rejoins) its group. `master_lease_ms` is the
    /// lease term recorded when the group is created.
    Join {
        req: JoinRequest,
        master_lease_ms: u32,
        at_ms: u64,
    },
    /// A status event for a known server (heard again, timed out, progress).
    Event {
        id: ServerId,
        event: StatusEvent,
        stats: Option<Stats>,
        at_ms: u64,
    },
    /// An operator removes a server.
    Remove { id: ServerId, at_ms: u64 },
    /// Appoint `to` master of `group`, if the group's epoch is still
    /// `expected_epoch`; raises the epoch and records `start_version` (the
    /// new master's data version as last heard) as the epoch's start.
    SetMaster {
        group: String,
        to: ServerId,
        expected_epoch: u64,
        start_version: u64,
        at_ms: u64,
    },
    /// The master of `group` at `epoch` reports the exact version its
    /// epoch starts after.
    EpochStarted {
        group: String,
        master: ServerId,
        epoch: u64,
        version: u64,
        at_ms: u64,
    },
    /// The master of `group` at `epoch` reports that `slave` missed a
    /// replication deadline (ACTIVE/ONLINE → OFFLINE).
    DropSlave {
        group: String,
        master: ServerId,
        slave: ServerId,
        epoch: u64,
        at_ms: u64,
    },
    /// The master of `group` at `epoch` vouches for ONLINE `slave`
    /// (→ ACTIVE) at `data_version`.
    Activate {
        group: String,
        master: ServerId,
        slave: ServerId,
        epoch: u64,
        data_version: u64,
        at_ms: u64,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    BadRequest,
    NotFound,
}

/// A refused command: nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub code: RefusalCode,
    pub message: String,
}

fn bad(message: impl Into<String>) -> Refused {
    Refused {
        code: RefusalCode::BadRequest,
        message: message.into(),
    }
}

fn not_found(message: impl Into<String>) -> Refused {
    Refused {
        code: RefusalCode::NotFound,
        message: message.into(),
    }
}

/// What an accepted command touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Raft-internal entries (blank, membership) touch no map data.
    Nothing,
    Server(ServerInfo),
    Group(GroupInfo),
}

/// The state machine's answer to one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub map_version: u64,
    pub outcome: Result<Applied, Refused>,
}

/// Longest group name accepted (it appears in every file id).
pub const MAX_GROUP_NAME: usize = 32;

/// Group names: 1 to 32 of `[A-Za-z0-9_-]`.
pub fn validate_group_name(name: &str) -> Result<(), Refused> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME {
        return Err(bad(format!(
            "group name must be 1 to {MAX_GROUP_NAME} characters, got {:?}",
            name
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad(format!(
            "group name {name:?} may only hold letters, digits, '_' and '-'"
        )));
    }
    Ok(())
}

/// Addresses are `host:port` with a non-empty host and a non-zero port.
pub fn validate_addr(addr: &str) -> Result<(), Refused> {
    let ok = addr.len() <= 255
        && addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
    if ok {
        Ok(())
    } else {
        Err(bad(format!("address {addr:?} is not host:port")))
    }
}

/// Apply one command to the map. On `Err` the map is unchanged.
pub fn apply(map: &mut ClusterMap, cmd: &Command) -> Result<Applied, Refused> {
    let before = map.clone();
    let res = match cmd {
        Command::Join {
            req,
            master_lease_ms,
            at_ms,
        } => join(map, req, *master_lease_ms, *at_ms),
        Command::Event {
            id,
            event,
            stats,
            at_ms,
        } => server_event(map, *id, *event, *stats, *at_ms),
        Command::Remove { id, at_ms } => remove(map, *id, *at_ms),
        Command::SetMaster {
            group,
            to,
            expected_epoch,
            start_version,
            at_ms,
        } => set_master(map, group, *to, *expected_epoch, *start_version, *at_ms),
        Command::EpochStarted {
            group,
            master,
            epoch,
            version,
            ..
        } => epoch_started(map, group, *master, *epoch, *version),
        Command::DropSlave {
            group,
            master,
            slave,
            epoch,
            at_ms,
        } => master_vouched(
            map,
            group,
            *master,
            *slave,
            *epoch,
            StatusEvent::Dropped,
            None,
            *at_ms,
        ),
        Command::Activate {
            group,
            master,
            slave,
            epoch,
            data_version,
            at_ms,
        } => master_vouched(
            map,
            group,
            *master,
            *slave,
            *epoch,
            StatusEvent::Activated,
            Some(*data_version),
            *at_ms,
        ),
    };
    match res {
        Ok(applied) => {
            if *map != before {
                map.version += 1;
                map.updated_ms = at_ms(cmd);
            }
            Ok(applied)
        }
        Err(e) => {
            *map = before;
            Err(e)
        }
    }
}

fn at_ms(cmd: &Command) -> u64 {
    match cmd {
        Command::Join { at_ms, .. }
        | Command::Event { at_ms, .. }
        | Command::Remove { at_ms, .. }
        | Command::SetMaster { at_ms, .. }
        | Command::EpochStarted { at_ms, .. }
        | Command::DropSlave { at_ms, .. }
        | Command::Activate { at_ms, .. } => *at_ms,
    }
}

fn join(
    map: &mut ClusterMap,
    req: &JoinRequest,
    master_lease_ms: u32,
    at_ms: u64,
) -> Result<Applied, Refused> {
    if req.id == 0 {
        return Err(bad("server id 0 is reserved"));
    }
    validate_group_name(&req.group)?;
    validate_addr(&req.addr)?;
    if let Some(g) = map.group(&req.group) {
        if g.mode != req.mode {
            return Err(bad(format!(
                "group {} replicates {}, but server {} is configured for {}",
                g.name, g.mode, req.id, req.mode
            )));
        }
    }
    let stats = Stats {
        data_version: req.data_version,
        disk_free: req.disk_free,
        disk_total: req.disk_total,
    };
    match map.server(req.id).cloned() {
        Some(old) if old.status != ServerStatus::Deleted => {
            if old.group != req.group {
                return Err(bad(format!(
                    "server {} belongs to group {}, not {}",
                    req.id, old.group, req.group
                )));
            }
            if old.addr != req.addr && old.status.is_alive() {
                return Err(bad(format!(
                    "duplicate server id {}: already registered at {} and {}",
                    req.id, old.addr, old.status
                )));
            }
            let is_master = resumes_at_once(map, &old.group, req.id);
            let to = transition(Some(old.status), StatusEvent::Restarted { is_master })
                .map_err(|e| bad(e.to_string()))?;
            let s = map
                .server_mut(req.id)
                .ok_or_else(|| not_found(format!("server {}", req.id)))?;
            s.addr = req.addr.clone();
            set_status(s, to, at_ms);
            set_stats(s, stats);
            Ok(Applied::Server(s.clone()))
        }
        old => {
            // A new server, or a DELETED one joining afresh.
            if let Some(old) = &old {
                if let Some(g) = map.group_mut(&old.group) {
                    g.members.retain(|m| *m != req.id);
                }
            }
            if map.group(&req.group).is_none() {
                let pos = map
                    .groups
                    .binary_search_by(|g| g.name.as_str().cmp(&req.group))
                    .unwrap_or_else(|p| p);
                map.groups.insert(
                    pos,
                    GroupInfo {
                        name: req.group.clone(),
                        mode: req.mode,
                        members: Vec::new(),
                        master: None,
                        epoch: 0,
                        master_lease_ms,
                        epoch_starts: Vec::new(),
                    },
                );
            }
            let group = map
                .group_mut(&req.group)
                .ok_or_else(|| not_found(format!("group {}", req.group)))?;
            let status = transition(
                old.as_ref().map(|o| o.status),
                StatusEvent::Joined {
                    group_has_members: !group.members.is_empty(),
                },
            )
            .map_err(|e| bad(e.to_string()))?;
            let pos = group.members.binary_search(&req.id).unwrap_or_else(|p| p);
            group.members.insert(pos, req.id);
            // Async groups have no master: every member is its own files' source.
            if group.master.is_none()
                && status == ServerStatus::Active
                && group.mode == ReplicationMode::Sync
            {
                group.master = Some(req.id);
                group.epoch += 1;
                push_epoch(group, stats.data_version);
            }
            let info = ServerInfo {
                id: req.id,
                addr: req.addr.clone(),
                group: req.group.clone(),
                status,
                data_version: stats.data_version,
                disk_free: stats.disk_free,
                disk_total: stats.disk_total,
                status_changed_ms: at_ms,
            };
            match map.servers.binary_search_by_key(&req.id, |s| s.id) {
                Ok(i) => map.servers[i] = info.clone(),
                Err(i) => map.servers.insert(i, info.clone()),
            }
            Ok(Applied::Server(info))
        }
    }
}

/// May server `id` of `group` serve at once when it comes back? The sync
/// group's master (nobody else can have taken writes since it left), and
/// every member of an async group (its own files are authoritative; its
/// peers resume pushing from their marks).
fn resumes_at_once(map: &ClusterMap, group: &str, id: ServerId) -> bool {
    map.group(group)
        .is_some_and(|g| g.master == Some(id) || g.mode == ReplicationMode::Async)
}

fn set_status(s: &mut ServerInfo, to: ServerStatus, at_ms: u64) {
    if s.status != to {
        s.status = to;
        s.status_changed_ms = at_ms;
    }
}

fn set_stats(s: &mut ServerInfo, stats: Stats) {
    s.data_version = stats.data_version;
    s.disk_free = stats.disk_free;
    s.disk_total = stats.disk_total;
}

fn server_event(
    map: &mut ClusterMap,
    id: ServerId,
    event: StatusEvent,
    stats: Option<Stats>,
    at_ms: u64,
) -> Result<Applied, Refused> {
    let Some(server) = map.server(id) else {
        return Err(not_found(format!("server {id} has not joined")));
    };
    // The master flag of `Returned` is decided here, from the map itself.
    let event = match event {
        StatusEvent::Returned { .. } => StatusEvent::Returned {
            is_master: resumes_at_once(map, &server.group, id),
        },
        StatusEvent::Progress {
            reached: ServerStatus::Active,
            ..
        } if map.group(&server.group).map(|g| g.mode) != Some(ReplicationMode::Async) => {
            return Err(bad(format!(
                "server {id}: only a member of an async group reports itself ACTIVE; in a sync group the master activates it"
            )))
        }
        StatusEvent::Joined { .. } | StatusEvent::Removed => {
            return Err(bad(format!("{event:?} is not a server event")))
        }
        e => e,
    };
    let to = transition(Some(server.status), event).map_err(|e| bad(e.to_string()))?;
    let s = map
        .server_mut(id)
        .ok_or_else(|| not_found(format!("server {id}")))?;
    set_status(s, to, at_ms);
    if let Some(stats) = stats {
        set_stats(s, stats);
    }
    Ok(Applied::Server(s.clone()))
}

fn remove(map: &mut ClusterMap, id: ServerId, at_ms: u64) -> Result<Applied, Refused> {
    let Some(server) = map.server(id) else {
        return Err(not_found(format!("server {id} is not in the map")));
    };
    let to = transition(Some(server.status), StatusEvent::Removed)
        .map_err(|_| bad(format!("server {id} is already deleted")))?;
    let group = server.group.clone();
    if let Some(g) = map.group_mut(&group) {
        g.members.retain(|m| *m != id);
        if g.master == Some(id) {
            // The monitor appoints a successor (raising the epoch) once the
            // removed master's lease has run out.
            g.master = None;
        }
    }
    let s = map
        .server_mut(id)
        .ok_or_else(|| not_found(format!("server {id}")))?;
    set_status(s, to, at_ms);
    Ok(Applied::Server(s.clone()))
}

fn push_epoch(g: &mut GroupInfo, version: u64) {
    g.epoch_starts.push(EpochStart {
        epoch: g.epoch,
        version,
    });
    if g.epoch_starts.len() > EPOCH_HISTORY {
        let extra = g.epoch_starts.len() - EPOCH_HISTORY;
        g.epoch_starts.drain(..extra);
    }
}

/// A status event the group's master reports about one of its slaves; it
/// counts only while `master` is still the master at `epoch`.
#[allow(clippy::too_many_arguments)]
fn master_vouched(
    map: &mut ClusterMap,
    group: &str,
    master: ServerId,
    slave: ServerId,
    epoch: u64,
    event: StatusEvent,
    data_version: Option<u64>,
    at_ms: u64,
) -> Result<Applied, Refused> {
    let Some(g) = map.group(group) else {
        return Err(not_found(format!("no group {group:?}")));
    };
    if g.master != Some(master) || g.epoch != epoch {
        return Err(bad(format!(
            "server {master} is not the master of {group} at epoch {epoch} (epoch {} now)",
            g.epoch
        )));
    }
    if slave == master || !g.members.contains(&slave) {
        return Err(bad(format!(
            "server {slave} is not a slave of group {group}"
        )));
    }
    let Some(server) = map.server(slave) else {
        return Err(not_found(format!("server {slave} is not in the map")));
    };
    let to = transition(Some(server.status), event).map_err(|e| bad(e.to_string()))?;
    let s = map
        .server_mut(slave)
        .ok_or_else(|| not_found(format!("server {slave}")))?;
    set_status(s, to, at_ms);
    if let Some(v) = data_version {
        s.data_version = v;
    }
    Ok(Applied::Server(s.clone()))
}

fn epoch_started(
    map: &mut ClusterMap,
    group: &str,
    master: ServerId,
    epoch: u64,
    version: u64,
) -> Result<Applied, Refused> {
    let Some(g) = map.group_mut(group) else {
        return Err(not_found(format!("no group {group:?}")));
    };
    if g.master != Some(master) || g.epoch != epoch {
        return Err(bad(format!(
            "server {master} is not the master of {group} at epoch {epoch} (epoch {} now)",
            g.epoch
        )));
    }
    match g.epoch_starts.last_mut() {
        Some(e) if e.epoch == epoch => e.version = version,
        _ => push_epoch(g, version),
    }
    Ok(Applied::Group(g.clone()))
}

/// Appoint `to`; every other replicating member (ACTIVE, ONLINE) goes back
/// to RECOVERING, to check its history against the new master's before it
/// takes writes again.
fn set_master(
    map: &mut ClusterMap,
    group: &str,
    to: ServerId,
    expected_epoch: u64,
    start_version: u64,
    at_ms: u64,
) -> Result<Applied, Refused> {
    let Some(g) = map.group(group) else {
        return Err(not_found(format!("no group {group:?}")));
    };
    if g.mode == ReplicationMode::Async {
        return Err(bad(format!(
            "group {group} replicates async: it has no master (every member takes uploads)"
        )));
    }
    if g.epoch != expected_epoch {
        return Err(bad(format!(
            "group {group} moved on (epoch {} now, {expected_epoch} expected); retry",
            g.epoch
        )));
    }
    if g.master == Some(to) {
        return Err(bad(format!("server {to} is already master of {group}")));
    }
    let Some(target) = map.server(to) else {
        return Err(not_found(format!("server {to} is not in the map")));
    };
    if target.group != group || !g.members.contains(&to) {
        return Err(bad(format!("server {to} is not a member of group {group}")));
    }
    if target.status != ServerStatus::Active {
        return Err(bad(format!(
            "server {to} is {}, only an ACTIVE server can become master",
            target.status
        )));
    }
    let g = map
        .group_mut(group)
        .ok_or_else(|| not_found(format!("no group {group:?}")))?;
    g.master = Some(to);
    g.epoch += 1;
    push_epoch(g, start_version);
    let g = g.clone();
    for id in g.members.iter().filter(|id| **id != to) {
        if let Some(s) = map.server_mut(*id) {
            if let Ok(next) = transition(Some(s.status), StatusEvent::NewMaster) {
                set_status(s, next, at_ms);
            }
        }
    }
    Ok(Applied::Group(g))
}

/// The ACTIVE member of `group` best placed to become master: the highest
/// data version (as given by `version_of`), ties to the lowest id; never
/// `exclude`.
pub fn best_candidate(
    map: &ClusterMap,
    group: &str,
    exclude: Option<ServerId>,
    version_of: impl Fn(&ServerInfo) -> u64,
) -> Option<ServerId> {
    let g = map.group(group)?;
    g.members
        .iter()
        .filter(|id| Some(**id) != exclude)
        .filter_map(|id| map.server(*id))
        .filter(|s| s.status == ServerStatus::Active)
        .max_by(|a, b| version_of(a).cmp(&version_of(b)).then(b.id.cmp(&a.id)))
        .map(|s| s.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_req(id: ServerId, group: &str, port: u16) -> JoinRequest {
        JoinRequest {
            id,
            addr: format!("127.0.0.1:{port}"),
            group: group.into(),
            mode: ReplicationMode::Sync,
            data_version: 0,
            disk_free: 100,
            disk_total: 200,
        }
    }

    fn join(map: &mut ClusterMap, id: ServerId, group: &str) -> Result<Applied, Refused> {
        apply(
            map,
            &Command::Join {
                req: join_req(id, group, 9000 + id as u16),
                master_lease_ms: 3000,
                at_ms: 1,
            },
        )
    }

    fn event(map: &mut ClusterMap, id: ServerId, event: StatusEvent) -> Result<Applied, Refused> {
        apply(
            map,
            &Command::Event {
                id,
                event,
                stats: None,
                at_ms: 2,
            },
        )
    }

    /// The group's master vouches for `id` (ONLINE → ACTIVE).
    fn activate(map: &mut ClusterMap, id: ServerId) -> Result<Applied, Refused> {
        let g = map.group("g1").unwrap();
        let cmd = Command::Activate {
            group: "g1".into(),
            master: g.master.unwrap(),
            slave: id,
            epoch: g.epoch,
            data_version: 0,
            at_ms: 3,
        };
        apply(map, &cmd)
    }

    fn status(map: &ClusterMap, id: ServerId) -> ServerStatus {
        map.server(id).map(|s| s.status).unwrap()
    }

    fn join_async(map: &mut ClusterMap, id: ServerId) -> Result<Applied, Refused> {
        let mut req = join_req(id, "a1", 9100 + id as u16);
        req.mode = ReplicationMode::Async;
        apply(
            map,
            &Command::Join {
                req,
                master_lease_ms: 3000,
                at_ms: 1,
            },
        )
    }

    fn progress(reached: ServerStatus) -> StatusEvent {
        StatusEvent::Progress {
            reached,
            caught_up: true,
        }
    }

    #[test]
    fn async_groups_have_no_master_and_members_resume_at_once() {
        let mut m = ClusterMap::default();
        join_async(&mut m, 1).unwrap();
        join_async(&mut m, 2).unwrap();
        let g = m.group("a1").unwrap();
        assert_eq!((g.master, g.epoch), (None, 0));
        assert_eq!(status(&m, 1), ServerStatus::Active);
        assert_eq!(status(&m, 2), ServerStatus::WaitSync);
        // The new member copies, then reports itself ACTIVE.
        event(&mut m, 2, progress(ServerStatus::Syncing)).unwrap();
        event(&mut m, 2, progress(ServerStatus::Active)).unwrap();
        assert_eq!(status(&m, 2), ServerStatus::Active);
        // Silent, then back: ACTIVE again at once; a restart keeps it ACTIVE.
        event(&mut m, 1, StatusEvent::TimedOut).unwrap();
        assert_eq!(status(&m, 1), ServerStatus::Offline);
        event(&mut m, 1, StatusEvent::Returned { is_master: false }).unwrap();
        assert_eq!(status(&m, 1), ServerStatus::Active);
        join_async(&mut m, 1).unwrap();
        assert_eq!(status(&m, 1), ServerStatus::Active);
        // Nobody can be made master.
        let before = m.clone();
        let cmd = Command::SetMaster {
            group: "a1".into(),
            to: 1,
            expected_epoch: 0,
            start_version: 0,
            at_ms: 4,
        };
        assert!(apply(&mut m, &cmd).is_err());
        assert_eq!(m, before);
    }

    #[test]
    fn only_async_members_report_themselves_active() {
        let mut m = ClusterMap::default();
        join(&mut m, 1, "g1").unwrap();
        join(&mut m, 2, "g1").unwrap();
        event(&mut m, 2, progress(ServerStatus::Syncing)).unwrap();
        let before = m.clone();
        assert!(event(&mut m, 2, progress(ServerStatus::Active)).is_err());
        assert_eq!(m, before);
        // An async member may not skip the copy either.
        join_async(&mut m, 3).unwrap();
        join_async(&mut m, 4).unwrap();
        assert!(event(&mut m, 4, progress(ServerStatus::Active)).is_err());
    }

    #[test]
    fn first_member_is_active_master_others_wait() {
        let mut m = ClusterMap::default();
        join(&mut m, 1, "g1").unwrap();
        join(&mut m, 2, "g1").unwrap();
        let g = m.group("g1").unwrap();
        assert_eq!(g.master, Some(1));
        assert_eq!(g.epoch, 1);
        assert_eq!(g.members, vec![1, 2]);
        assert_eq!(status(&m, 1), ServerStatus::Active);
        assert_eq!(status(&m, 2), ServerStatus::WaitSync);
        assert_eq!(m.version, 2);
    }

    #[test]
    fn refused_joins_change_nothing() {
        let mut m = ClusterMap::default();
        join(&mut m, 1, "g1").unwrap();
        let before = m.clone();
        // Wrong group for a known id.
        let e = join(&mut m, 1, "g2").unwrap_err();
        assert!(e.message.contains("belongs to group g1"), "{e}");
        // Duplicate id from another address while the first is alive.
        let mut dup = join_req(1, "g1", 1234);
        dup.addr = "127.0.0.1:1234".into();
        let e = apply(
            &mut m,
            &Command::Join {
                req: dup,
                master_lease_ms: 3000,
                at_ms: 5,
            },
        )
        .unwrap_err();
        assert!(e.message.contains("duplicate server id 1"), "{e}");
        // Mode mismatch, bad names, bad addresses, id 0.
        let mut wrong_mode = join_req(2, "g1", 1);
        wrong_mode.mode = ReplicationMode::Async;
        for req in [
            wrong_mode,
            join_req(3, "../etc", 1),
            join_req(3, "", 1),
            JoinRequest {
                addr: "nohost".into(),
                ..join_req(3, "g1", 1)
            },
            join_req(0, "g1", 1),
        ] {
            let r = apply(
                &mut m,
                &Command::Join {
                    req,
                    master_lease_ms: 3000,
                    at_ms: 5,
                },
            );
            assert_eq!(r.unwrap_err().code, RefusalCode::BadRequest);
        }
        assert_eq!(m, before);
    }

    #[test]
    fn offline_master_returns_active_slave_recovers() {
        let mut m = ClusterMap::default();
        join(&mut m, 1, "g1").unwrap();
        join(&mut m, 2, "g1").unwrap();
        event(&mut m, 1, StatusEvent::TimedOut).unwrap();
        event(&mut m, 2, StatusEvent::TimedOut).unwrap();
        assert_eq!(status(&m, 1), ServerStatus::Offline);
        // Timing out twice is refused and changes nothing.
        let v = m.version;
        assert!(event(&mut m, 1, StatusEvent::TimedOut).is_err());
        assert_eq!(m.version, v);
        // The caller's is_master flag is ignored: the map decides.
        event(&mut m, 1, StatusEvent::Returned { is_master: false }).unwrap();
        event(&mut m, 2, StatusEvent::Returned { is_master: true }).unwrap();
        assert_eq!(status(&m, 1), ServerStatus::Active);
        assert_eq!(status(&m, 2), ServerStatus::Recovering);
        assert_eq!(m.group("g1").unwrap().epoch, 1);
    }

    #[test]
    fn offline_server_may_move_address_on_rejoin() {
        let mut m = ClusterMap::default();
        join(&mut m, 1, "g1").unwrap();
        event(&mut m, 1, StatusEvent::TimedOut).unwrap();
        let mut moved = join_req(1, "g1", 1);
        moved.addr = "10.0.0.9:7000".into();
        apply(
            &mut m,
            &Command::Join {
                req: moved,
                master_lease_ms: 3000,
                at_ms: 9,
            },
        )
        .unwrap();
        let s = m.server(1).unwrap();
        assert_eq!(s.addr, "10.0.0.9:7000");
        assert_eq!(s.status, ServerStatus::Active);
    }

    #[test]
    fn set_master_checks_target_and_epoch() {
        let mut m = ClusterMap::default();
        join(&mut m, 1, "g1").unwrap();
        join(&mut m, 2, "g1").unwrap();
        join(&mut m, 3, "g2").unwrap();
        let sm = |to, expected_epoch| Command::SetMaster {
            group: "g1".into(),
            to,
            expected_epoch,
            start_version: 40,
            at_ms: 3,
        };
        let before = m.clone();
        // 2 is WAIT_SYNC.
        let e = apply(&mut m, &sm(2, 1)).unwrap_err();
        assert!(e.message.contains("only an ACTIVE"), "{e}");
        // 3 is in another group; 9 does not exist; 1 is already master.
        assert!(apply(&mut m, &sm(3, 1)).is_err());
        assert_eq!(
            apply(&mut m, &sm(9, 1)).unwrap_err().code,
            RefusalCode::NotFound
        );
        assert!(apply(&mut m, &sm(1, 1)).is_err());
        assert_eq!(m, before);
        // Bring 2 to ACTIVE through the ladder, then fail over.
        for reached in [ServerStatus::Syncing, ServerStatus::Online] {
            event(
                &mut m,
                2,
                StatusEvent::Progress {
                    reached,
                    caught_up: false,
                },
            )
            .unwrap();
        }
        activate(&mut m, 2).unwrap();
        // Stale epoch refused.
        assert!(apply(&mut m, &sm(2, 0)).is_err());
        let Applied::Group(g) = apply(&mut m, &sm(2, 1)).unwrap() else {
            panic!("expected a group");
        };
        assert_eq!((g.master, g.epoch), (Some(2), 2));
        // The old master was ACTIVE: it must recheck its history.
        assert_eq!(status(&m, 1), ServerStatus::Recovering);
        apply(
            &mut m,
            &Command::EpochStarted {
                group: "g1".into(),
                master: 2,
                epoch: 2,
                version: 40,
                at_ms: 4,
            },
        )
        .unwrap();
        let g = m.group("g1").unwrap().clone();
        // Only the master at the current epoch reports its start.
        let stale = Command::EpochStarted {
            group: "g1".into(),
            master: 1,
            epoch: 2,
            version: 41,
            at_ms: 5,
        };
        assert!(apply(&mut m, &stale).is_err());
        assert_eq!(
            g.epoch_starts,
            vec![
                EpochStart {
                    epoch: 1,
                    version: 0
                },
                EpochStart {
                    epoch: 2,
                    version: 40
                }
            ]
        );
        let _ = g;
    }

    #[test]
    fn only_the_current_master_drops_and_activates_slaves() {
        let mut m = ClusterMap::default();
        join(&mut m, 1, "g1").unwrap();
        join(&mut m, 2, "g1").unwrap();
        join(&mut m, 3, "g2").unwrap();
        for reached in [ServerStatus::Syncing, ServerStatus::Online] {
            event(
                &mut m,
                2,
                StatusEvent::Progress {
                    reached,
                    caught_up: false,
                },
            )
            .unwrap();
        }
        let cmd = |master, slave, epoch, activate: bool| {
            if activate {
                Command::Activate {
                    group: "g1".into(),
                    master,
                    slave,
                    epoch,
                    data_version: 12,
                    at_ms: 4,
                }
            } else {
                Command::DropSlave {
                    group: "g1".into(),
                    master,
                    slave,
                    epoch,
                    at_ms: 4,
                }
            }
        };
        let before = m.clone();
        // Not the master, a stale epoch, the master itself, another group.
        assert!(apply(&mut m, &cmd(2, 2, 1, true)).is_err());
        assert!(apply(&mut m, &cmd(1, 2, 0, true)).is_err());
        assert!(apply(&mut m, &cmd(1, 1, 1, true)).is_err());
        assert!(apply(&mut m, &cmd(1, 3, 1, true)).is_err());
        assert_eq!(m, before);
        apply(&mut m, &cmd(1, 2, 1, true)).unwrap();
        assert_eq!(status(&m, 2), ServerStatus::Active);
        assert_eq!(m.server(2).unwrap().data_version, 12);
        apply(&mut m, &cmd(1, 2, 1, false)).unwrap();
        assert_eq!(status(&m, 2), ServerStatus::Offline);
        // Dropping an OFFLINE slave again is refused.
        assert!(apply(&mut m, &cmd(1, 2, 1, false)).is_err());
    }

    #[test]
    fn a_restarted_slave_recovers_a_restarted_master_stays() {
        let mut m = ClusterMap::default();
        join(&mut m, 1, "g1").unwrap();
        join(&mut m, 2, "g1").unwrap();
        for reached in [ServerStatus::Syncing, ServerStatus::Online] {
            event(
                &mut m,
                2,
                StatusEvent::Progress {
                    reached,
                    caught_up: false,
                },
            )
            .unwrap();
        }
        activate(&mut m, 2).unwrap();
        join(&mut m, 2, "g1").unwrap();
        join(&mut m, 1, "g1").unwrap();
        assert_eq!(status(&m, 2), ServerStatus::Recovering);
        assert_eq!(status(&m, 1), ServerStatus::Active);
        assert_eq!(m.group("g1").unwrap().master, Some(1));
    }

    #[test]
    fn remove_marks_deleted_and_clears_master() {
        let mut m = ClusterMap::default();
        join(&mut m, 1, "g1").unwrap();
        join(&mut m, 2, "g1").unwrap();
        apply(&mut m, &Command::Remove { id: 1, at_ms: 4 }).unwrap();
        assert_eq!(status(&m, 1), ServerStatus::Deleted);
        let g = m.group("g1").unwrap();
        assert_eq!(g.master, None);
        assert_eq!(g.members, vec![2]);
        let v = m.version;
        assert!(apply(&mut m, &Command::Remove { id: 1, at_ms: 5 }).is_err());
        assert!(apply(&mut m, &Command::Remove { id: 7, at_ms: 5 }).is_err());
        assert_eq!(m.version, v);
        // A deleted id may join afresh.
        join(&mut m, 1, "g1").unwrap();
        assert_eq!(status(&m, 1), ServerStatus::WaitSync);
    }

    #[test]
    fn best_candidate_prefers_highest_version() {
        let mut m = ClusterMap::default();
        join(&mut m, 1, "g1").unwrap();
        join(&mut m, 2, "g1").unwrap();
        join(&mut m, 3, "g1").unwrap();
        for id in [2, 3] {
            for reached in [ServerStatus::Syncing, ServerStatus::Online] {
                event(
                    &mut m,
                    id,
                    StatusEvent::Progress {
                        reached,
                        caught_up: true,
                    },
                )
                .unwrap();
            }
            activate(&mut m, id).unwrap();
        }
        let v = |s: &ServerInfo| if s.id == 3 { 10 } else { 5 };
        assert_eq!(best_candidate(&m, "g1", Some(1), v), Some(3));
        assert_eq!(best_candidate(&m, "g1", Some(3), v), Some(1));
        assert_eq!(best_candidate(&m, "g1", None, |_| 0), Some(1));
        assert_eq!(best_candidate(&m, "nope", None, |_| 0), None);
    }
}
