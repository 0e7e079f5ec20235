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

use proto::cluster::{ClusterMap, GroupInfo, ReplicationMode, ServerInfo, ServerStatus};
use proto::{ErrorCode, FileId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{ClientError, Result};
use crate::leader::{ClientTimeouts, LeaderClient};
use crate::route::{Route, Target};

/// How an upload picks its group (FastDFS's `store_lookup`). A group is a
/// candidate when it can take a new file: a sync group with an ACTIVE
/// master, an async group with at least one ACTIVE member.
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

/// Where reads (download, stat, metadata, exists) go, and what they
/// promise. The promise depends on the group's replication mode.
///
/// **Sync groups** (FastCFS: the master replicates every write to every
/// ACTIVE slave before answering):
///
/// * [`Master`](Self::Master): linearizable. A read sees every write
///   acknowledged before it began, and nothing that is later lost.
/// * [`Any`](Self::Any): a read still sees every write acknowledged before
///   it began, but may also see one not acknowledged yet (that a failover
///   may then lose), and briefly stale data from a member just dropped
///   from the write set. Not linearizable.
///
/// **Async groups** (FastDFS: no master; each file has a *source* server,
/// the member that created it, which alone applies its changes and pushes
/// them to its peers afterwards, some milliseconds later):
///
/// * [`Master`](Self::Master): reads go to the file's source server while
///   it is ACTIVE, so a client sees its own acknowledged writes and every
///   other acknowledged write of that file (read-your-writes, monotonic)
///   *as long as the source stays ACTIVE*. When it is not, reads fall back
///   to any ACTIVE peer (FastDFS does the same), which may not have the
///   latest changes or the file at all. Not linearizable: the source can
///   be cut off and still answer, and a file that was never pushed before
///   its source failed is not found elsewhere.
/// * [`Any`](Self::Any): reads go to the ACTIVE members in turn. A peer may
///   return **stale content** (an older version of the file) or not have a
///   new file yet; a `not_found` (or `exists = false`) from a peer is
///   checked with the source, when it is ACTIVE, before it is reported
///   (FastDFS's rule). No linearizability, no read-your-writes, no
///   monotonic reads; every member converges once pushes settle.
///
/// Writes (append, modify, truncate, delete, set-meta) always go to the
/// group's master (sync) or to the file's source server (async), and an
/// `if_version` on them is checked there, so compare-and-set stays safe in
/// both modes even when the read that chose the version was stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadRule {
    /// Sync: the group's master (linearizable). Async: the file's source
    /// server, or any ACTIVE peer when the source is not ACTIVE. The
    /// default.
    #[default]
    Master,
    /// Any ACTIVE member, in turn (spreads the read load); see the type's
    /// documentation for what it gives up in each mode.
    Any,
}

/// Whether `s` may serve: ACTIVE.
fn usable(s: &ServerInfo) -> bool {
    s.status == ServerStatus::Active
}

/// The group's master when it has one and it is ACTIVE.
pub(crate) fn active_master<'m>(map: &'m ClusterMap, g: &GroupInfo) -> Option<&'m ServerInfo> {
    g.master
        .and_then(|id| map.server(id))
        .filter(|s| usable(s) && s.group == g.name)
}

/// The group's ACTIVE members, in member order.
fn active_members<'m>(map: &'m ClusterMap, g: &GroupInfo) -> Vec<&'m ServerInfo> {
    g.members
        .iter()
        .filter_map(|id| map.server(*id))
        .filter(|s| usable(s) && s.group == g.name)
        .collect()
}

/// Whether a group can take a new file: an ACTIVE master (sync) or any
/// ACTIVE member (async).
fn takes_uploads(map: &ClusterMap, g: &GroupInfo) -> bool {
    match g.mode {
        ReplicationMode::Sync => active_master(map, g).is_some(),
        ReplicationMode::Async => !active_members(map, g).is_empty(),
    }
}

/// Free space of a group: the smallest `disk_free` among its ACTIVE members.
fn group_free(map: &ClusterMap, g: &GroupInfo) -> u64 {
    active_members(map, g)
        .iter()
        .map(|s| s.disk_free)
        .min()
        .unwrap_or(0)
}

/// The group an upload goes to under `rule`, among groups that take
/// uploads; `turn` is the round-robin counter (any value is fine).
pub(crate) fn choose_group(
    map: &ClusterMap,
    rule: UploadGroupRule,
    turn: usize,
) -> Option<&GroupInfo> {
    let candidates: Vec<&GroupInfo> = map
        .groups
        .iter()
        .filter(|g| takes_uploads(map, g))
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

/// How many groups an upload's round robin turns over (for spreading the
/// uploads within an async group independently of the group choice).
fn upload_candidates(map: &ClusterMap) -> usize {
    map.groups.iter().filter(|g| takes_uploads(map, g)).count()
}

fn no_route(code: ErrorCode, message: String) -> ClientError {
    ClientError::NoRoute { code, message }
}

fn route_to(map: &ClusterMap, s: &ServerInfo, epoch: u64) -> Route {
    Route {
        addr: s.addr.as_str().into(),
        epoch,
        map_version: map.version,
        fallback: None,
    }
}

/// Async group: the file's source server, when the map has it as a member
/// of `g` (whatever its status).
fn source_of<'m>(map: &'m ClusterMap, g: &GroupInfo, id: &FileId) -> Option<&'m ServerInfo> {
    map.server(u64::from(id.source_server()))
        .filter(|s| s.group == g.name)
}

/// Async group routing of one file operation (epoch 0: async groups have
/// no epochs).
fn route_async(
    map: &ClusterMap,
    g: &GroupInfo,
    target: Target<'_>,
    reads: ReadRule,
    turn: usize,
) -> Result<Route> {
    let unavailable = |what: String| {
        no_route(
            ErrorCode::Unavailable,
            format!(
                "{what} (async group {}, cluster map version {})",
                g.name, map.version
            ),
        )
    };
    let no_active = || unavailable("no ACTIVE member".into());
    match target {
        Target::Create => {
            let active = active_members(map, g);
            active
                .get(turn % active.len().max(1))
                .map(|s| route_to(map, s, 0))
                .ok_or_else(no_active)
        }
        Target::Write(id) => match source_of(map, g, id) {
            Some(s) if usable(s) => Ok(route_to(map, s, 0)),
            Some(s) => Err(unavailable(format!(
                "the source server {} of {id} is {}; only it may change the file",
                s.id, s.status
            ))),
            None => Err(unavailable(format!(
                "the source server {} of {id} is not a member",
                id.source_server()
            ))),
        },
        Target::Read(id) => {
            let source = source_of(map, g, id).filter(|s| usable(s));
            let active = active_members(map, g);
            match (reads, source) {
                (ReadRule::Master, Some(s)) => Ok(route_to(map, s, 0)),
                (ReadRule::Master, None) | (ReadRule::Any, _) => {
                    let s = active
                        .get(turn % active.len().max(1))
                        .ok_or_else(no_active)?;
                    let mut r = route_to(map, s, 0);
                    // A peer may not have a new file yet: ask the source
                    // before reporting it missing.
                    r.fallback = source
                        .filter(|src| src.id != s.id)
                        .map(|src| src.addr.as_str().into());
                    Ok(r)
                }
            }
        }
        Target::Any => active_members(map, g)
            .first()
            .map(|s| route_to(map, s, 0))
            .ok_or_else(no_active),
    }
}

/// Where `target` goes in `map`. Sync groups: the master of the file's
/// group (or of the group chosen for an upload), with the group's epoch;
/// reads under [`ReadRule::Any`] go to the ACTIVE members in turn. Async
/// groups: see [`ReadRule`]; uploads go to the group's ACTIVE members in
/// turn, changes to the file's source server, all with epoch 0.
pub(crate) fn route_in(
    map: &ClusterMap,
    target: Target<'_>,
    rule: UploadGroupRule,
    reads: ReadRule,
    turn: usize,
) -> Result<Route> {
    let to_master = |g: &GroupInfo| -> Result<Route> {
        match active_master(map, g) {
            Some(m) => Ok(route_to(map, m, g.epoch)),
            None => Err(no_route(
                ErrorCode::Unavailable,
                format!(
                    "group {} has no ACTIVE master (cluster map version {})",
                    g.name, map.version
                ),
            )),
        }
    };
    let group_of = |id: &FileId| {
        map.group(id.group()).ok_or_else(|| {
            no_route(
                ErrorCode::WrongGroup,
                format!(
                    "no group {} in cluster map version {}",
                    id.group(),
                    map.version
                ),
            )
        })
    };
    match target {
        Target::Any => map
            .groups
            .iter()
            .find_map(|g| active_master(map, g))
            .or_else(|| map.servers.iter().find(|s| usable(s)))
            .map(|s| route_to(map, s, 0))
            .ok_or_else(|| {
                no_route(
                    ErrorCode::Unavailable,
                    format!("no ACTIVE server in cluster map version {}", map.version),
                )
            }),
        Target::Create => match choose_group(map, rule, turn) {
            Some(g) if g.mode == ReplicationMode::Async => {
                // Round robin over the groups takes `turn % groups`; spread
                // within the group with what is left of the counter, so
                // two groups of two members still use all four servers.
                let spread = match rule {
                    UploadGroupRule::RoundRobin => turn / upload_candidates(map).max(1),
                    UploadGroupRule::MostFreeSpace => turn,
                };
                route_async(map, g, target, reads, spread)
            }
            Some(g) => to_master(g),
            None => Err(no_route(
                ErrorCode::Unavailable,
                format!(
                    "no group takes uploads (an ACTIVE master, or an ACTIVE member of an \
                     async group) in cluster map version {} ({} groups)",
                    map.version,
                    map.groups.len()
                ),
            )),
        },
        Target::Read(id) | Target::Write(id) => {
            let g = group_of(id)?;
            if g.mode == ReplicationMode::Async {
                return route_async(map, g, target, reads, turn);
            }
            match target {
                Target::Read(_) if reads == ReadRule::Any => {
                    let active = active_members(map, g);
                    match active.get(turn % active.len().max(1)) {
                        Some(s) => Ok(route_to(map, s, g.epoch)),
                        None => to_master(g),
                    }
                }
                _ => to_master(g),
            }
        }
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

    /// An async group "a1" of servers 11, 12, 13 (all ACTIVE, no master,
    /// epoch 0) beside the sync map's groups.
    fn async_map() -> ClusterMap {
        let mut m = map();
        let mut g = group("a1", &[11, 12, 13], None, 0);
        g.mode = ReplicationMode::Async;
        m.groups.insert(0, g);
        for id in [11, 12, 13] {
            m.servers.push(server(id, "a1", ServerStatus::Active, 100));
        }
        m
    }

    /// A file of group a1 created by `source`.
    fn async_file(source: u32) -> FileId {
        FileId::generate("a1", 0, source, 1_700_000_000, 5, 0, "txt").unwrap()
    }

    fn route(m: &ClusterMap, t: Target<'_>, reads: ReadRule, turn: usize) -> Result<Route> {
        route_in(m, t, UploadGroupRule::RoundRobin, reads, turn)
    }

    #[test]
    fn async_groups_take_uploads_without_a_master_spread_over_active_members() {
        let mut m = async_map();
        m.groups.retain(|g| g.name == "a1");
        let addrs: Vec<(String, u64)> = (0..6)
            .map(|t| {
                let r = route(&m, Target::Create, ReadRule::Master, t).unwrap();
                assert!(r.fallback.is_none());
                (r.addr.to_string(), r.epoch)
            })
            .collect();
        let want: Vec<(String, u64)> = [9011, 9012, 9013, 9011, 9012, 9013]
            .iter()
            .map(|p| (format!("127.0.0.1:{p}"), 0))
            .collect();
        assert_eq!(addrs, want);
        // Only ACTIVE members take uploads.
        m.server_mut(12).unwrap().status = ServerStatus::Syncing;
        m.server_mut(13).unwrap().status = ServerStatus::Offline;
        for t in 0..4 {
            let r = route(&m, Target::Create, ReadRule::Master, t).unwrap();
            assert_eq!(&*r.addr, "127.0.0.1:9011");
        }
        // None ACTIVE: a retryable unavailable.
        m.server_mut(11).unwrap().status = ServerStatus::WaitSync;
        let e = route(&m, Target::Create, ReadRule::Master, 0).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Unavailable));
        assert!(e.is_retryable());
    }

    #[test]
    fn round_robin_mixes_sync_and_async_groups_and_uses_every_async_member() {
        // a1 (async, 3 ACTIVE) and g1, g2 (sync, ACTIVE masters).
        let m = async_map();
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for t in 0..18 {
            let g = choose_group(&m, UploadGroupRule::RoundRobin, t).unwrap();
            let r = route(&m, Target::Create, ReadRule::Master, t).unwrap();
            if g.name == "a1" {
                assert_eq!(r.epoch, 0);
            } else {
                assert_eq!(Some(r.epoch), Some(g.epoch));
            }
            *seen.entry(r.addr.to_string()).or_default() += 1;
        }
        // 6 uploads per group; a1's spread over its three members.
        assert_eq!(seen["127.0.0.1:9001"], 6);
        assert_eq!(seen["127.0.0.1:9003"], 6);
        for p in [9011, 9012, 9013] {
            assert_eq!(seen[&format!("127.0.0.1:{p}")], 2, "{seen:?}");
        }
    }

    #[test]
    fn async_writes_go_to_the_source_server_only() {
        let mut m = async_map();
        let f = async_file(12);
        for (reads, turn) in [(ReadRule::Master, 0), (ReadRule::Any, 5)] {
            let r = route(&m, Target::Write(&f), reads, turn).unwrap();
            assert_eq!((&*r.addr, r.epoch, r.map_version), ("127.0.0.1:9012", 0, 7));
            assert!(r.fallback.is_none());
        }
        // The source is not ACTIVE: wait for a newer map (retryable).
        m.server_mut(12).unwrap().status = ServerStatus::Offline;
        let e = route(&m, Target::Write(&f), ReadRule::Master, 0).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Unavailable));
        assert!(e.is_retryable());
        assert!(e.message().contains("source server 12"), "{e}");
        assert!(e.message().contains("OFFLINE"), "{e}");
        // A source the map does not have in the group: unavailable too.
        let stranger = async_file(99);
        let e = route(&m, Target::Write(&stranger), ReadRule::Master, 0).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Unavailable));
        assert!(e.message().contains("not a member"), "{e}");
        // A server of another group is not this file's source.
        let other = async_file(1);
        assert!(route(&m, Target::Write(&other), ReadRule::Master, 0).is_err());
    }

    #[test]
    fn async_read_rule_master_reads_the_source_then_falls_back_to_peers() {
        let mut m = async_map();
        let f = async_file(13);
        for t in 0..3 {
            let r = route(&m, Target::Read(&f), ReadRule::Master, t).unwrap();
            assert_eq!((&*r.addr, r.epoch), ("127.0.0.1:9013", 0));
            assert!(r.fallback.is_none());
        }
        // Source not ACTIVE: any ACTIVE peer, in turn; nobody to fall back on.
        m.server_mut(13).unwrap().status = ServerStatus::Recovering;
        let addrs: Vec<String> = (0..4)
            .map(|t| {
                let r = route(&m, Target::Read(&f), ReadRule::Master, t).unwrap();
                assert!(r.fallback.is_none());
                r.addr.to_string()
            })
            .collect();
        assert_eq!(
            addrs,
            [
                "127.0.0.1:9011",
                "127.0.0.1:9012",
                "127.0.0.1:9011",
                "127.0.0.1:9012"
            ]
        );
        for id in [11, 12] {
            m.server_mut(id).unwrap().status = ServerStatus::Offline;
        }
        let e = route(&m, Target::Read(&f), ReadRule::Master, 0).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Unavailable));
    }

    #[test]
    fn async_read_rule_any_turns_over_members_and_falls_back_to_the_source() {
        let mut m = async_map();
        let f = async_file(11);
        let routes: Vec<(String, Option<String>)> = (0..3)
            .map(|t| {
                let r = route(&m, Target::Read(&f), ReadRule::Any, t).unwrap();
                assert_eq!(r.epoch, 0);
                (r.addr.to_string(), r.fallback.map(|a| a.to_string()))
            })
            .collect();
        let src = Some("127.0.0.1:9011".to_string());
        assert_eq!(
            routes,
            [
                ("127.0.0.1:9011".to_string(), None),
                ("127.0.0.1:9012".to_string(), src.clone()),
                ("127.0.0.1:9013".to_string(), src),
            ]
        );
        // The source is not ACTIVE: peers only, no fallback.
        m.server_mut(11).unwrap().status = ServerStatus::Offline;
        for t in 0..4 {
            let r = route(&m, Target::Read(&f), ReadRule::Any, t).unwrap();
            assert_ne!(&*r.addr, "127.0.0.1:9011");
            assert!(r.fallback.is_none());
        }
        // Unknown group: not retryable, as in sync mode.
        let g9 = FileId::generate("g9", 0, 11, 1_700_000_000, 5, 0, "").unwrap();
        let e = route(&m, Target::Read(&g9), ReadRule::Any, 0).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::WrongGroup));
    }

    #[test]
    fn sync_routes_never_carry_a_fallback() {
        let m = async_map();
        let f = FileId::generate("g1", 0, 2, 1_700_000_000, 5, 0, "txt").unwrap();
        for reads in [ReadRule::Master, ReadRule::Any] {
            for t in 0..4 {
                for target in [Target::Read(&f), Target::Write(&f)] {
                    let r = route(&m, target, reads, t).unwrap();
                    assert!(r.fallback.is_none());
                    assert_eq!(r.epoch, 3);
                }
            }
        }
    }
}
