//! Cluster mode: following the leaders' map and choosing servers from it.
//!
//! A [`ClusterRouter`] owns one map subscription (through
//! [`LeaderClient::subscribe`], which finds the Raft leader and follows it
//! through elections by itself) and publishes every pushed map in a
//! `watch` channel. Routing reads the latest map without locking or
//! waiting; an operation that hit a stale master waits on the channel for
//! the next map.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::cluster::{ClusterMap, GroupInfo, ServerInfo, ServerStatus};
use proto::ErrorCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{ClientError, Result};
use crate::leader::{ClientTimeouts, LeaderClient};
use crate::route::{Route, Target};

/// How an upload picks its group (FastDFS's `store_lookup`). Only groups
/// whose master is ACTIVE are candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadGroupRule {
    /// Take the groups in turn (the default).
    #[default]
    RoundRobin,
    /// The group with the most free space, counted as the smallest
    /// `disk_free` among its ACTIVE members (every member holds every file).
    /// The figures are those of the map: the last change the leaders
    /// recorded for each server, not its latest heartbeat.
    MostFreeSpace,
}

/// Where reads (download, stat, metadata, exists) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadRule {
    /// The group's master (the default): linearizable — a read sees every
    /// write acknowledged before it began, and nothing that is later lost.
    #[default]
    Master,
    /// Any ACTIVE member, in turn (spreads the read load). Every ACTIVE
    /// member has every acknowledged write, so a read still sees every
    /// write acknowledged before it began; but it may also see a write
    /// that is not acknowledged yet (and that a failover may then lose),
    /// and a member the master has just dropped from the write set keeps
    /// answering until the map change reaches it (milliseconds), so reads
    /// can be briefly stale. Not linearizable.
    Any,
}

/// Whether `s` is a usable master: ACTIVE.
fn usable(s: &ServerInfo) -> bool {
    s.status == ServerStatus::Active
}

/// The group's master when it has one and it is ACTIVE.
pub(crate) fn active_master<'m>(map: &'m ClusterMap, g: &GroupInfo) -> Option<&'m ServerInfo> {
    g.master
        .and_then(|id| map.server(id))
        .filter(|s| usable(s) && s.group == g.name)
}

/// Free space of a group: the smallest `disk_free` among its ACTIVE members.
fn group_free(map: &ClusterMap, g: &GroupInfo) -> u64 {
    g.members
        .iter()
        .filter_map(|id| map.server(*id))
        .filter(|s| usable(s))
        .map(|s| s.disk_free)
        .min()
        .unwrap_or(0)
}

/// The group an upload goes to under `rule`, among groups with an ACTIVE
/// master; `turn` is the round-robin counter (any value is fine).
pub(crate) fn choose_group(
    map: &ClusterMap,
    rule: UploadGroupRule,
    turn: usize,
) -> Option<&GroupInfo> {
    let candidates: Vec<&GroupInfo> = map
        .groups
        .iter()
        .filter(|g| active_master(map, g).is_some())
        .collect();
    if candidates.is_empty() {
        return None;
    }
    match rule {
        UploadGroupRule::RoundRobin => Some(candidates[turn % candidates.len()]),
        // Ties go to the first group by name (groups are sorted).
        UploadGroupRule::MostFreeSpace => candidates
            .into_iter()
            .rev()
            .max_by_key(|g| group_free(map, g)),
    }
}

/// Where `target` goes in `map`: the master of the file's group (or of the
/// group chosen for an upload), with the group's epoch.
pub(crate) fn route_in(
    map: &ClusterMap,
    target: Target<'_>,
    rule: UploadGroupRule,
    reads: ReadRule,
    turn: usize,
) -> Result<Route> {
    let no_route = |code, message: String| ClientError::NoRoute { code, message };
    let to_master = |g: &GroupInfo| -> Result<Route> {
        match active_master(map, g) {
            Some(m) => Ok(Route {
                addr: m.addr.as_str().into(),
                epoch: g.epoch,
                map_version: map.version,
            }),
            None => Err(no_route(
                ErrorCode::Unavailable,
                format!(
                    "group {} has no ACTIVE master (cluster map version {})",
                    g.name, map.version
                ),
            )),
        }
    };
    match target {
        Target::Any => map
            .groups
            .iter()
            .find_map(|g| active_master(map, g).map(|m| (g, m)))
            .map(|(_, m)| Route {
                addr: m.addr.as_str().into(),
                epoch: 0,
                map_version: map.version,
            })
            .or_else(|| {
                map.servers.iter().find(|s| usable(s)).map(|s| Route {
                    addr: s.addr.as_str().into(),
                    epoch: 0,
                    map_version: map.version,
                })
            })
            .ok_or_else(|| {
                no_route(
                    ErrorCode::Unavailable,
                    format!("no ACTIVE server in cluster map version {}", map.version),
                )
            }),
        Target::Create => match choose_group(map, rule, turn) {
            Some(g) => to_master(g),
            None => Err(no_route(
                ErrorCode::Unavailable,
                format!(
                    "no group with an ACTIVE master in cluster map version {} ({} groups)",
                    map.version,
                    map.groups.len()
                ),
            )),
        },
        Target::Read(id) if reads == ReadRule::Any => match map.group(id.group()) {
            Some(g) => {
                let active: Vec<&ServerInfo> = g
                    .members
                    .iter()
                    .filter_map(|m| map.server(*m))
                    .filter(|s| usable(s))
                    .collect();
                match active.get(turn % active.len().max(1)) {
                    Some(s) => Ok(Route {
                        addr: s.addr.as_str().into(),
                        epoch: g.epoch,
                        map_version: map.version,
                    }),
                    None => to_master(g),
                }
            }
            None => Err(no_route(
                ErrorCode::WrongGroup,
                format!(
                    "no group {} in cluster map version {}",
                    id.group(),
                    map.version
                ),
            )),
        },
        Target::Read(id) | Target::Write(id) => match map.group(id.group()) {
            Some(g) => to_master(g),
            None => Err(no_route(
                ErrorCode::WrongGroup,
                format!(
                    "no group {} in cluster map version {}",
                    id.group(),
                    map.version
                ),
            )),
        },
    }
}

/// Routes operations by the leaders' map, kept current by a subscription.
pub(crate) struct ClusterRouter {
    leaders: Vec<String>,
    describe: String,
    map: watch::Receiver<Option<Arc<ClusterMap>>>,
    rule: UploadGroupRule,
    reads: ReadRule,
    turn: AtomicUsize,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ClusterRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRouter")
            .field("leaders", &self.leaders)
            .field("rule", &self.rule)
            .field("reads", &self.reads)
            .finish()
    }
}

impl Drop for ClusterRouter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ClusterRouter {
    /// Subscribe to the map (in the background; see [`wait_first`]).
    ///
    /// [`wait_first`]: Self::wait_first
    pub(crate) fn start(
        leaders: Vec<String>,
        timeouts: ClientTimeouts,
        rule: UploadGroupRule,
        reads: ReadRule,
    ) -> ClusterRouter {
        let (tx, rx) = watch::channel(None);
        let lc = LeaderClient::with_timeouts(leaders.clone(), timeouts);
        let task = tokio::spawn(async move {
            let mut sub = lc.subscribe();
            while let Some(map) = sub.next().await {
                tracing::debug!(version = map.version, "cluster map pushed");
                if tx.send(Some(Arc::new(map))).is_err() {
                    return;
                }
            }
        });
        ClusterRouter {
            describe: format!("leaders {}", leaders.join(",")),
            leaders,
            map: rx,
            rule,
            reads,
            // Start the round robin at a random group, so many short-lived
            // clients do not all begin with the first one.
            turn: AtomicUsize::new(rand::random::<u16>() as usize),
            task,
        }
    }

    pub(crate) fn leaders(&self) -> &[String] {
        &self.leaders
    }

    pub(crate) fn describe(&self) -> &str {
        &self.describe
    }

    /// The latest map, once one arrived.
    pub(crate) fn current(&self) -> Option<Arc<ClusterMap>> {
        self.map.borrow().clone()
    }

    /// Wait (up to `max`) until the map's version is above `version`;
    /// returns whether it is.
    pub(crate) async fn wait_newer(&self, version: u64, max: Duration) -> bool {
        let mut rx = self.map.clone();
        let newer = rx.wait_for(|m| m.as_ref().is_some_and(|m| m.version > version));
        let arrived = matches!(tokio::time::timeout(max, newer).await, Ok(Ok(_)));
        arrived
    }

    /// Wait (up to `max`) for the first map; returns whether one arrived.
    pub(crate) async fn wait_first(&self, max: Duration) -> bool {
        let mut rx = self.map.clone();
        let first = rx.wait_for(Option::is_some);
        let arrived = matches!(tokio::time::timeout(max, first).await, Ok(Ok(_)));
        arrived
    }

    pub(crate) fn route(&self, target: Target<'_>) -> Result<Route> {
        let Some(map) = self.current() else {
            return Err(ClientError::NoRoute {
                code: ErrorCode::Unavailable,
                message: format!("no cluster map from {} yet", self.describe),
            });
        };
        let turn = match target {
            Target::Create | Target::Read(_) => self.turn.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let route = route_in(&map, target, self.rule, self.reads, turn)?;
        tracing::trace!(addr = %route.addr, epoch = route.epoch, map = map.version, "cluster route");
        Ok(route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::cluster::ReplicationMode;
    use proto::FileId;

    fn server(id: u64, group: &str, status: ServerStatus, free: u64) -> ServerInfo {
        ServerInfo {
            id,
            addr: format!("127.0.0.1:{}", 9000 + id),
            group: group.into(),
            status,
            data_version: 0,
            disk_free: free,
            disk_total: 1 << 40,
            status_changed_ms: 0,
        }
    }

    fn group(name: &str, members: &[u64], master: Option<u64>, epoch: u64) -> GroupInfo {
        GroupInfo {
            name: name.into(),
            mode: ReplicationMode::Sync,
            members: members.to_vec(),
            master,
            epoch,
            master_lease_ms: 3000,
            epoch_starts: Vec::new(),
        }
    }

    /// g1: master 1 (10 free) + slave 2 (5 free); g2: master 3 (50 free);
    /// g3: master 4 OFFLINE; g4: no master.
    fn map() -> ClusterMap {
        ClusterMap {
            version: 7,
            updated_ms: 0,
            groups: vec![
                group("g1", &[1, 2], Some(1), 3),
                group("g2", &[3], Some(3), 1),
                group("g3", &[4], Some(4), 2),
                group("g4", &[5], None, 0),
            ],
            servers: vec![
                server(1, "g1", ServerStatus::Active, 10),
                server(2, "g1", ServerStatus::Active, 5),
                server(3, "g2", ServerStatus::Active, 50),
                server(4, "g3", ServerStatus::Offline, 500),
                server(5, "g4", ServerStatus::WaitSync, 900),
            ],
        }
    }

    #[test]
    fn round_robin_takes_groups_with_active_masters_in_turn() {
        let m = map();
        let picked: Vec<&str> = (0..4)
            .map(|t| {
                choose_group(&m, UploadGroupRule::RoundRobin, t)
                    .unwrap()
                    .name
                    .as_str()
            })
            .collect();
        assert_eq!(picked, ["g1", "g2", "g1", "g2"]);
    }

    #[test]
    fn most_free_space_counts_the_fullest_active_member() {
        let mut m = map();
        // g1's free space is its slave's 5, g2 has 50.
        let g = choose_group(&m, UploadGroupRule::MostFreeSpace, 0).unwrap();
        assert_eq!(g.name, "g2");
        // The turn counter does not matter.
        let g = choose_group(&m, UploadGroupRule::MostFreeSpace, 1).unwrap();
        assert_eq!(g.name, "g2");
        // An OFFLINE member no longer counts: g1 now has 100 on its master.
        m.server_mut(1).unwrap().disk_free = 100;
        m.server_mut(2).unwrap().status = ServerStatus::Offline;
        let g = choose_group(&m, UploadGroupRule::MostFreeSpace, 0).unwrap();
        assert_eq!(g.name, "g1");
        // Ties go to the first group by name.
        m.server_mut(3).unwrap().disk_free = 100;
        let g = choose_group(&m, UploadGroupRule::MostFreeSpace, 0).unwrap();
        assert_eq!(g.name, "g1");
    }

    #[test]
    fn no_candidate_without_an_active_master() {
        let mut m = map();
        m.server_mut(1).unwrap().status = ServerStatus::Offline;
        m.server_mut(3).unwrap().status = ServerStatus::Recovering;
        for rule in [UploadGroupRule::RoundRobin, UploadGroupRule::MostFreeSpace] {
            assert!(choose_group(&m, rule, 0).is_none());
            let e = route_in(&m, Target::Create, rule, ReadRule::Master, 0).unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::Unavailable));
            assert!(e.is_retryable());
        }
    }

    #[test]
    fn read_rule_any_spreads_reads_over_active_members() {
        let mut m = map();
        let f = FileId::generate("g1", 0, 1, 1_700_000_000, 5, 0, "txt").unwrap();
        let addrs = |m: &ClusterMap, rule| -> Vec<String> {
            (0..4)
                .map(|t| {
                    let r = route_in(m, Target::Read(&f), UploadGroupRule::RoundRobin, rule, t);
                    let r = r.unwrap();
                    assert_eq!(r.epoch, 3);
                    r.addr.to_string()
                })
                .collect()
        };
        assert_eq!(
            addrs(&m, ReadRule::Any),
            [
                "127.0.0.1:9001",
                "127.0.0.1:9002",
                "127.0.0.1:9001",
                "127.0.0.1:9002"
            ]
        );
        assert!(addrs(&m, ReadRule::Master)
            .iter()
            .all(|a| a == "127.0.0.1:9001"));
        // Writes always go to the master; a slave that is not ACTIVE gets no reads.
        let w = route_in(
            &m,
            Target::Write(&f),
            UploadGroupRule::RoundRobin,
            ReadRule::Any,
            1,
        );
        assert_eq!(&*w.unwrap().addr, "127.0.0.1:9001");
        m.server_mut(2).unwrap().status = ServerStatus::Recovering;
        assert!(addrs(&m, ReadRule::Any)
            .iter()
            .all(|a| a == "127.0.0.1:9001"));
    }

    #[test]
    fn file_ops_go_to_their_groups_master_with_its_epoch() {
        let m = map();
        let id = |g: &str| FileId::generate(g, 0, 1, 1_700_000_000, 5, 0, "txt").unwrap();
        let f = id("g2");
        let r = route_in(
            &m,
            Target::Write(&f),
            UploadGroupRule::RoundRobin,
            ReadRule::Master,
            0,
        )
        .unwrap();
        assert_eq!((&*r.addr, r.epoch, r.map_version), ("127.0.0.1:9003", 1, 7));
        let f = id("g1");
        let r = route_in(
            &m,
            Target::Read(&f),
            UploadGroupRule::RoundRobin,
            ReadRule::Master,
            0,
        )
        .unwrap();
        assert_eq!((&*r.addr, r.epoch), ("127.0.0.1:9001", 3));
        // OFFLINE master, no master: retryable; unknown group: not.
        for g in ["g3", "g4"] {
            let f = id(g);
            let e = route_in(
                &m,
                Target::Write(&f),
                UploadGroupRule::RoundRobin,
                ReadRule::Master,
                0,
            )
            .unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{g}");
        }
        let f = id("g9");
        let e = route_in(
            &m,
            Target::Read(&f),
            UploadGroupRule::RoundRobin,
            ReadRule::Master,
            0,
        )
        .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::WrongGroup));
        assert!(!e.is_retryable());
        // Ping: any ACTIVE master, no epoch check.
        let r = route_in(
            &m,
            Target::Any,
            UploadGroupRule::RoundRobin,
            ReadRule::Master,
            0,
        )
        .unwrap();
        assert_eq!((&*r.addr, r.epoch), ("127.0.0.1:9001", 0));
    }
}
