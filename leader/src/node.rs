//! One leader process: request handling and the failure monitor.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use proto::cluster::{
    ClusterMap, GroupInfo, Heartbeat, HeartbeatAck, JoinRequest, LeaderError, LeaderPeer,
    LeaderReply, LeaderRequest, LeaderStatus, ReplicationMode, ServerId, ServerLive, ServerStatus,
};
use proto::ErrorCode;

use crate::config::LeaderConfig;
use crate::live::LiveTable;
use crate::map::{self, Applied, Command, RefusalCode, Refused, Stats};
use crate::raft::{MapPublisher, RaftHandle, RaftStartError, RaftView, WriteError};
use crate::status::StatusEvent;

/// Failure-detection and lease timings.
#[derive(Debug, Clone)]
pub struct Timing {
    /// A server silent this long is marked OFFLINE.
    pub server_timeout: Duration,
    /// How long a master lease lasts.
    pub master_lease: Duration,
    /// How often the monitor looks.
    pub tick: Duration,
}

/// A running leader.
pub struct Node {
    pub id: u64,
    pub addr: String,
    timing: Timing,
    raft: RaftHandle,
    maps: MapPublisher,
    live: Mutex<LiveTable>,
    /// One failover at a time.
    failover: tokio::sync::Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn from_write(e: WriteError) -> LeaderError {
    match e {
        WriteError::NotLeader(r) => LeaderError::not_leader(r),
        WriteError::Raft(m) => LeaderError::new(ErrorCode::Unavailable, m),
    }
}

fn from_refused(r: Refused) -> LeaderError {
    let code = match r.code {
        RefusalCode::BadRequest => ErrorCode::BadRequest,
        RefusalCode::NotFound => ErrorCode::NotFound,
    };
    LeaderError::new(code, r.message)
}

/// Clears a group's lease revocation however a failover ends.
struct Revocation<'a> {
    node: &'a Node,
    group: String,
}

impl Drop for Revocation<'_> {
    fn drop(&mut self) {
        self.node.live.lock().revoking.remove(&self.group);
    }
}

impl Node {
    /// Open the data dir and start Raft.
    pub async fn start(cfg: &LeaderConfig) -> Result<Arc<Node>, RaftStartError> {
        let (raft, maps) =
            RaftHandle::start(cfg.id, &cfg.peers, &cfg.data_dir, &cfg.tuning).await?;
        let addr = cfg
            .peers
            .get(&cfg.id)
            .cloned()
            .unwrap_or_else(|| cfg.listen.clone());
        Ok(Arc::new(Node {
            id: cfg.id,
            addr,
            timing: cfg.timing.clone(),
            raft,
            maps,
            live: Mutex::new(LiveTable::default()),
            failover: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    pub fn maps(&self) -> &MapPublisher {
        &self.maps
    }

    /// The map as applied here.
    pub fn current_map(&self) -> Arc<ClusterMap> {
        self.maps.latest.borrow().clone()
    }

    /// Keep the live table in step with the Raft role.
    fn observe(&self, view: &RaftView) {
        let mut live = self.live.lock();
        if view.is_leader {
            if live.leading_since.is_none() {
                tracing::info!(term = view.term, "became the Raft leader");
                live.take_over(Instant::now());
            }
        } else if live.leading_since.is_some() {
            tracing::info!(term = view.term, "no longer the Raft leader");
            live.step_down();
        }
    }

    fn require_leader(&self) -> Result<(), LeaderError> {
        let view = self.raft.view();
        self.observe(&view);
        if view.is_leader {
            Ok(())
        } else {
            Err(LeaderError::not_leader(view.leader))
        }
    }

    /// Refuse a command that would be refused when applied, before it costs a
    /// log entry.
    fn precheck(&self, cmd: &Command) -> Result<(), LeaderError> {
        let mut scratch = (*self.current_map()).clone();
        map::apply(&mut scratch, cmd)
            .map(|_| ())
            .map_err(from_refused)
    }

    async fn commit(&self, cmd: Command) -> Result<(Applied, u64), LeaderError> {
        let resp = self.raft.write(cmd).await.map_err(from_write)?;
        match resp.outcome {
            Ok(a) => Ok((a, resp.map_version)),
            Err(r) => Err(from_refused(r)),
        }
    }

    fn live_version(&self, id: ServerId, recorded: u64) -> u64 {
        self.live
            .lock()
            .stats(id)
            .map_or(recorded, |s| s.data_version)
    }

    /// Serve one request (everything but `Subscribe`).
    pub async fn handle(&self, op: LeaderRequest) -> Result<LeaderReply, LeaderError> {
        match op {
            LeaderRequest::Join(req) => self.join(req).await,
            LeaderRequest::Heartbeat(hb) => self.heartbeat(hb).await,
            LeaderRequest::GetMap { linearizable } => {
                if linearizable {
                    self.raft.ensure_linearizable().await.map_err(from_write)?;
                }
                Ok(LeaderReply::Map((*self.current_map()).clone()))
            }
            LeaderRequest::Failover { group, to } => self.failover(group, to).await,
            LeaderRequest::RemoveServer { id } => {
                self.require_leader()?;
                let cmd = Command::Remove {
                    id,
                    at_ms: now_ms(),
                };
                self.precheck(&cmd)?;
                match self.commit(cmd).await? {
                    (Applied::Server(server), map_version) => {
                        tracing::info!(id, "server removed");
                        Ok(LeaderReply::Removed {
                            server,
                            map_version,
                        })
                    }
                    _ => Err(LeaderError::new(
                        ErrorCode::Internal,
                        "remove applied nothing",
                    )),
                }
            }
            LeaderRequest::ReportProgress {
                id,
                status,
                data_version,
            } => self.progress(id, status, data_version).await,
            LeaderRequest::Status => Ok(LeaderReply::Status(self.status())),
            LeaderRequest::SlaveFailed {
                group,
                master,
                slave,
                epoch,
            } => {
                let cmd = Command::DropSlave {
                    group,
                    master,
                    slave,
                    epoch,
                    at_ms: now_ms(),
                };
                self.vouched(cmd, slave).await
            }
            LeaderRequest::EpochStarted {
                group,
                master,
                epoch,
                version,
            } => {
                self.require_leader()?;
                let cmd = Command::EpochStarted {
                    group,
                    master,
                    epoch,
                    version,
                    at_ms: now_ms(),
                };
                self.precheck(&cmd)?;
                match self.commit(cmd).await? {
                    (Applied::Group(group), map_version) => {
                        tracing::info!(group = %group.name, epoch = group.epoch, version, "epoch start recorded");
                        Ok(LeaderReply::FailedOver { group, map_version })
                    }
                    _ => Err(LeaderError::new(
                        ErrorCode::Internal,
                        "epoch start applied nothing",
                    )),
                }
            }
            LeaderRequest::Activate {
                group,
                master,
                slave,
                epoch,
                data_version,
            } => {
                let cmd = Command::Activate {
                    group,
                    master,
                    slave,
                    epoch,
                    data_version,
                    at_ms: now_ms(),
                };
                self.vouched(cmd, slave).await
            }
            LeaderRequest::Subscribe => Err(LeaderError::new(
                ErrorCode::Protocol,
                "subscribe is served by the connection handler",
            )),
        }
    }

    async fn join(&self, req: JoinRequest) -> Result<LeaderReply, LeaderError> {
        self.require_leader()?;
        let id = req.id;
        let stats = Stats {
            data_version: req.data_version,
            disk_free: req.disk_free,
            disk_total: req.disk_total,
        };
        let cmd = Command::Join {
            req,
            master_lease_ms: self.timing.master_lease.as_millis() as u32,
            at_ms: now_ms(),
        };
        self.precheck(&cmd)?;
        let (applied, _) = self.commit(cmd).await?;
        self.live.lock().heard(id, stats, Instant::now());
        match applied {
            Applied::Server(server) => {
                tracing::info!(id, group = %server.group, status = %server.status, "server joined");
                Ok(LeaderReply::Joined {
                    server,
                    map: (*self.current_map()).clone(),
                })
            }
            _ => Err(LeaderError::new(
                ErrorCode::Internal,
                "join applied nothing",
            )),
        }
    }

    async fn heartbeat(&self, hb: Heartbeat) -> Result<LeaderReply, LeaderError> {
        self.require_leader()?;
        let map = self.current_map();
        let Some(server) = map.server(hb.id) else {
            return Err(LeaderError::new(
                ErrorCode::NotFound,
                format!("server {} has not joined; join first", hb.id),
            ));
        };
        if server.status == ServerStatus::Deleted {
            return Err(LeaderError::new(
                ErrorCode::BadRequest,
                format!("server {} was removed; it must join again", hb.id),
            ));
        }
        if server.group != hb.group {
            return Err(LeaderError::new(
                ErrorCode::BadRequest,
                format!(
                    "server {} belongs to group {}, not {}",
                    hb.id, server.group, hb.group
                ),
            ));
        }
        let stats = Stats {
            data_version: hb.data_version,
            disk_free: hb.disk_free,
            disk_total: hb.disk_total,
        };
        let now = Instant::now();
        {
            let mut live = self.live.lock();
            live.heard(hb.id, stats, now);
            live.sync_delay(hb.id, hb.sync_delay_ms);
        }
        let mut status = server.status;
        if status == ServerStatus::Offline {
            let cmd = Command::Event {
                id: hb.id,
                event: StatusEvent::Returned { is_master: false },
                stats: Some(stats),
                at_ms: now_ms(),
            };
            if let (Applied::Server(s), _) = self.commit(cmd).await? {
                tracing::info!(id = hb.id, status = %s.status, "server is back");
                status = s.status;
            }
        }
        let map = self.current_map();
        let group = map.group(&hb.group);
        let is_master = group.and_then(|g| g.master) == Some(hb.id);
        let lease_ms = if is_master && status == ServerStatus::Active {
            let granted = self
                .live
                .lock()
                .grant_lease(&hb.group, now, self.timing.master_lease);
            granted.then_some(self.timing.master_lease.as_millis() as u32)
        } else {
            None
        };
        Ok(LeaderReply::HeartbeatAck(HeartbeatAck {
            map_version: map.version,
            status,
            epoch: group.map_or(0, |g| g.epoch),
            lease_ms,
        }))
    }

    async fn progress(
        &self,
        id: ServerId,
        reached: ServerStatus,
        data_version: u64,
    ) -> Result<LeaderReply, LeaderError> {
        self.require_leader()?;
        let map = self.current_map();
        let Some(server) = map.server(id) else {
            return Err(LeaderError::new(
                ErrorCode::NotFound,
                format!("server {id} has not joined"),
            ));
        };
        let caught_up = match map.master_of(&server.group) {
            Some(m) if m.id != id => data_version >= self.live_version(m.id, m.data_version),
            _ => true,
        };
        let stats = match self.live.lock().stats(id) {
            Some(s) => Stats { data_version, ..s },
            None => Stats {
                data_version,
                disk_free: server.disk_free,
                disk_total: server.disk_total,
            },
        };
        let cmd = Command::Event {
            id,
            event: StatusEvent::Progress { reached, caught_up },
            stats: Some(stats),
            at_ms: now_ms(),
        };
        self.precheck(&cmd)?;
        match self.commit(cmd).await? {
            (Applied::Server(server), map_version) => {
                tracing::info!(id, status = %server.status, "progress recorded");
                Ok(LeaderReply::Progress {
                    server,
                    map_version,
                })
            }
            _ => Err(LeaderError::new(
                ErrorCode::Internal,
                "progress applied nothing",
            )),
        }
    }

    /// A master's report about one of its slaves (dropped, activated).
    async fn vouched(&self, cmd: Command, slave: ServerId) -> Result<LeaderReply, LeaderError> {
        self.require_leader()?;
        self.precheck(&cmd)?;
        match self.commit(cmd).await? {
            (Applied::Server(server), map_version) => {
                tracing::warn!(id = slave, status = %server.status, "master reported a slave");
                Ok(LeaderReply::Progress {
                    server,
                    map_version,
                })
            }
            _ => Err(LeaderError::new(
                ErrorCode::Internal,
                "slave report applied nothing",
            )),
        }
    }

    async fn failover(
        &self,
        group: String,
        to: Option<ServerId>,
    ) -> Result<LeaderReply, LeaderError> {
        self.require_leader()?;
        let _one_at_a_time = self.failover.lock().await;
        let map = self.current_map();
        let Some(g) = map.group(&group) else {
            return Err(LeaderError::new(
                ErrorCode::NotFound,
                format!("no group {group:?}"),
            ));
        };
        let target = match to {
            Some(t) => t,
            None => map::best_candidate(&map, &group, g.master, |s| {
                self.live_version(s.id, s.data_version)
            })
            .ok_or_else(|| {
                LeaderError::new(
                    ErrorCode::BadRequest,
                    format!("group {group} has no other ACTIVE member to fail over to"),
                )
            })?,
        };
        let mut cmd = Command::SetMaster {
            group: group.clone(),
            to: target,
            expected_epoch: g.epoch,
            start_version: 0,
            at_ms: now_ms(),
        };
        self.precheck(&cmd)?;
        // Stop renewing the old master's lease and wait for it to run out.
        self.live.lock().revoking.insert(group.clone());
        let _revocation = Revocation {
            node: self,
            group: group.clone(),
        };
        let deadline = Instant::now() + self.timing.master_lease + Duration::from_secs(1);
        loop {
            let now = Instant::now();
            if self
                .live
                .lock()
                .lease_expired(&group, now, self.timing.master_lease)
            {
                break;
            }
            self.require_leader()?;
            if now >= deadline {
                return Err(LeaderError::new(
                    ErrorCode::Timeout,
                    "the old master's lease did not run out in time",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Command::SetMaster {
            at_ms,
            start_version,
            ..
        } = &mut cmd
        {
            *at_ms = now_ms();
            // Read only now: the target keeps applying until the old lease ran out.
            let recorded = map.server(target).map_or(0, |s| s.data_version);
            *start_version = self.live_version(target, recorded);
        }
        match self.commit(cmd).await? {
            (Applied::Group(group), map_version) => {
                tracing::info!(group = %group.name, master = ?group.master, epoch = group.epoch, "failover done");
                Ok(LeaderReply::FailedOver { group, map_version })
            }
            _ => Err(LeaderError::new(
                ErrorCode::Internal,
                "failover applied nothing",
            )),
        }
    }

    /// This leader's view, for `chorus status`.
    pub fn status(&self) -> LeaderStatus {
        let view = self.raft.view();
        self.observe(&view);
        let now = Instant::now();
        let live: Vec<ServerLive> = {
            let t = self.live.lock();
            let mut v: Vec<ServerLive> = t
                .servers
                .iter()
                .map(|(id, s)| ServerLive {
                    id: *id,
                    ms_since_heartbeat: now.saturating_duration_since(s.last_seen).as_millis()
                        as u64,
                    data_version: s.stats.data_version,
                    disk_free: s.stats.disk_free,
                    disk_total: s.stats.disk_total,
                    sync_delay_ms: s.sync_delay_ms,
                })
                .collect();
            v.sort_by_key(|s| s.id);
            v
        };
        LeaderStatus {
            id: self.id,
            addr: self.addr.clone(),
            role: view.role.to_string(),
            raft_leader: view.leader.clone(),
            term: view.term,
            last_log_index: view.last_log_index,
            last_applied_index: view.last_applied_index,
            map_version: self.current_map().version,
            peers: view
                .members
                .iter()
                .map(|(id, addr, matched)| LeaderPeer {
                    id: *id,
                    addr: addr.clone(),
                    matched_index: *matched,
                })
                .collect(),
            live,
        }
    }

    /// The failure monitor: on the Raft leader, marks silent servers OFFLINE
    /// and appoints a master where a group lost its own (after the old lease
    /// ran out). Runs until the process ends.
    pub async fn run_monitor(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.timing.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let view = self.raft.view();
            self.observe(&view);
            if !view.is_leader {
                continue;
            }
            self.check_timeouts().await;
            self.check_masters().await;
        }
    }

    async fn check_timeouts(&self) {
        let map = self.current_map();
        let now = Instant::now();
        let silent: Vec<(ServerId, Option<Stats>)> = {
            let live = self.live.lock();
            map.servers
                .iter()
                .filter(|s| s.status.is_alive())
                .filter(|s| {
                    live.last_seen(s.id).is_some_and(|t| {
                        now.saturating_duration_since(t) > self.timing.server_timeout
                    })
                })
                .map(|s| (s.id, live.stats(s.id)))
                .collect()
        };
        for (id, stats) in silent {
            let cmd = Command::Event {
                id,
                event: StatusEvent::TimedOut,
                stats,
                at_ms: now_ms(),
            };
            match self.commit(cmd).await {
                Ok(_) => tracing::warn!(id, "server silent too long: OFFLINE"),
                Err(e) => tracing::debug!(id, "timeout not recorded: {e}"),
            }
        }
    }

    async fn check_masters(&self) {
        let map = self.current_map();
        let now = Instant::now();
        let lost: Vec<&GroupInfo> = map
            .groups
            .iter()
            .filter(|g| g.mode == ReplicationMode::Sync)
            .filter(|g| {
                g.master
                    .and_then(|m| map.server(m))
                    .is_none_or(|s| s.status != ServerStatus::Active)
            })
            .collect();
        for g in lost {
            {
                let live = self.live.lock();
                if live.revoking.contains(&g.name)
                    || !live.lease_expired(&g.name, now, self.timing.master_lease)
                {
                    continue;
                }
            }
            let Some(to) = map::best_candidate(&map, &g.name, None, |s| {
                self.live_version(s.id, s.data_version)
            }) else {
                continue;
            };
            let recorded = map.server(to).map_or(0, |s| s.data_version);
            let cmd = Command::SetMaster {
                group: g.name.clone(),
                to,
                expected_epoch: g.epoch,
                start_version: self.live_version(to, recorded),
                at_ms: now_ms(),
            };
            match self.commit(cmd).await {
                Ok(_) => {
                    tracing::warn!(group = %g.name, master = to, epoch = g.epoch + 1, "master lost: promoted")
                }
                Err(e) => tracing::debug!(group = %g.name, "promotion not recorded: {e}"),
            }
        }
    }
}
