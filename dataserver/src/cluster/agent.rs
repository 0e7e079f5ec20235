//! The cluster agent: join the group through the leaders, then heartbeat,
//! follow the map and report progress, keeping the [`SharedView`] current.

use std::sync::Arc;
use std::time::{Duration, Instant};

use client::leader::{ClientTimeouts, LeaderClient, LeaderClientError};
use proto::cluster::{Heartbeat, JoinRequest, ReplicationMode, ServerId};
use proto::ErrorCode;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::view::{Role, SharedView};
use super::ClusterError;
use crate::engine::Engine;
use crate::repl::catchup::CatchUp;

/// What the agent needs to know about this server.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub id: ServerId,
    pub group: String,
    /// The address announced to the leaders.
    pub advertise: String,
    pub leaders: Vec<String>,
    pub heartbeat: Duration,
    /// The group's replication mode this server joins with.
    pub mode: ReplicationMode,
    /// Async mode: the push delay (ms) reported with every heartbeat,
    /// kept up to date by the pushers.
    pub sync_delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// Timeouts for leader calls: short, so one stuck leader never holds a
/// heartbeat for long (the lease counts from the send anyway).
pub(crate) fn timeouts() -> ClientTimeouts {
    ClientTimeouts {
        connect: Duration::from_millis(500),
        request: Duration::from_secs(2),
        call: Duration::from_secs(4),
        backoff: Duration::from_millis(100),
        subscription_silence: Duration::from_secs(3),
    }
}

/// Disk figures summed over the store paths: (free, total).
fn disk(engine: &Engine) -> (u64, u64) {
    engine
        .usage()
        .iter()
        .fold((0, 0), |(f, t), u| (f + u.free_bytes, t + u.total_bytes))
}

/// Resolves when `stop` flips to true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Log role changes in one place.
fn note_role(view: &SharedView, before: &Role) {
    let after = view.role();
    let changed = match (before, &after) {
        (Role::Master { epoch: a, .. }, Role::Master { epoch: b, .. }) => a != b,
        (
            Role::Slave {
                master: a,
                epoch: x,
            },
            Role::Slave {
                master: b,
                epoch: y,
            },
        ) => a != b || x != y,
        (a, b) => std::mem::discriminant(a) != std::mem::discriminant(b),
    };
    if changed {
        match &after {
            Role::Master { epoch, .. } => info!(epoch, "this server is now its group's master"),
            Role::Slave { master, epoch } => info!(
                epoch,
                master = master.as_ref().map_or("none", |m| m.addr.as_str()),
                "this server is now a slave"
            ),
            other => info!(role = other.name(), "cluster role changed"),
        }
    }
}

/// Run the agent until `stop` flips. Returns an error only for what the
/// server cannot run with: the leaders refusing its join.
pub async fn run(
    cfg: AgentConfig,
    engine: Arc<Engine>,
    view: SharedView,
    catchup: CatchUp,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ClusterError> {
    let client = LeaderClient::with_timeouts(cfg.leaders.clone(), timeouts());
    tokio::select! {
        _ = stopped(&mut stop) => return Ok(()),
        joined = join(&cfg, &client, &engine, &view) => joined?,
    }
    let wake_heartbeat = Arc::new(Notify::new());
    let wake_progress = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    tasks.spawn(follow_map(
        client.clone(),
        view.clone(),
        wake_heartbeat.clone(),
        wake_progress.clone(),
    ));
    tasks.spawn(heartbeats(
        cfg.clone(),
        client.clone(),
        engine.clone(),
        view.clone(),
        wake_heartbeat,
    ));
    tasks.spawn(catchup.run(cfg.heartbeat, wake_progress));
    stopped(&mut stop).await;
    debug!("cluster agent stopping: no more heartbeats");
    tasks.abort_all();
    Ok(())
}

/// Join, retrying with backoff while no leader answers. A refusal (wrong
/// group, duplicate id, bad address) is final.
async fn join(
    cfg: &AgentConfig,
    client: &LeaderClient,
    engine: &Engine,
    view: &SharedView,
) -> Result<(), ClusterError> {
    let mut backoff = Duration::from_millis(200);
    let mut attempt: u32 = 0;
    info!(leaders = ?cfg.leaders, id = cfg.id, group = %cfg.group, "joining the cluster");
    loop {
        attempt += 1;
        let (disk_free, disk_total) = disk(engine);
        let req = JoinRequest {
            id: cfg.id,
            addr: cfg.advertise.clone(),
            group: cfg.group.clone(),
            mode: cfg.mode,
            data_version: engine.data_version(),
            disk_free,
            disk_total,
        };
        match client.join(req).await {
            Ok((server, map)) => {
                let before = view.role();
                view.with(|v| v.apply_map(map));
                info!(
                    id = cfg.id,
                    group = %cfg.group,
                    addr = %cfg.advertise,
                    status = %server.status,
                    "joined the cluster"
                );
                note_role(view, &before);
                return Ok(());
            }
            Err(LeaderClientError::Refused(e)) => {
                error!(error = %e, "the leaders refused this server's join");
                return Err(ClusterError::JoinRefused(e.to_string()));
            }
            Err(e) => {
                warn!(
                    attempt,
                    leaders = ?cfg.leaders,
                    retry_in = ?backoff,
                    error = %e,
                    "cannot reach the leaders to join; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Follow the map pushed by the leaders.
async fn follow_map(
    client: LeaderClient,
    view: SharedView,
    wake_heartbeat: Arc<Notify>,
    wake_progress: Arc<Notify>,
) {
    let mut sub = client.subscribe();
    while let Some(map) = sub.next().await {
        let version = map.version;
        let before = view.role();
        let (newer, needs_lease) = view.with(|v| {
            let newer = v.apply_map(map);
            let needs_lease = matches!(
                v.role(),
                Role::Master { lease_until, .. }
                    if lease_until.is_none_or(|t| t <= Instant::now())
            );
            (newer, needs_lease)
        });
        if newer {
            debug!(version, "cluster map updated");
            note_role(&view, &before);
            if needs_lease {
                // Just appointed: ask for a lease now rather than at the
                // next tick.
                wake_heartbeat.notify_one();
            }
            wake_progress.notify_one();
        }
    }
}

/// One heartbeat per interval; records the lease the answer grants.
async fn heartbeats(
    cfg: AgentConfig,
    client: LeaderClient,
    engine: Arc<Engine>,
    view: SharedView,
    wake: Arc<Notify>,
) {
    let mut tick = tokio::time::interval(cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease_lost_logged = false;
    let mut last_problem = String::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake.notified() => {}
        }
        if engine.is_poisoned() {
            // It refuses every change from now on: let the leaders find it
            // silent, mark it OFFLINE and appoint another master, instead
            // of keeping a master that cannot write.
            error!(
                "storage engine poisoned (a disk write failed): no more heartbeats; \
                 the leaders will mark this server OFFLINE. Fix the disk and restart it"
            );
            return;
        }
        let (disk_free, disk_total) = disk(&engine);
        let hb = Heartbeat {
            id: cfg.id,
            group: cfg.group.clone(),
            status: view.with(|v| v.my_status()),
            data_version: engine.data_version(),
            disk_free,
            disk_total,
            sync_delay_ms: cfg.sync_delay_ms.load(std::sync::atomic::Ordering::Relaxed),
        };
        let sent_at = Instant::now();
        match client.heartbeat(hb).await {
            Ok(ack) => {
                last_problem.clear();
                let before = view.role();
                let behind = view.with(|v| {
                    if let Some(ms) = ack.lease_ms {
                        v.grant_lease(ack.epoch, sent_at, ms);
                        if cfg.heartbeat * 2 > Duration::from_millis(u64::from(ms)) {
                            debug!(
                                lease_ms = ms,
                                "the master lease is short for the heartbeat interval"
                            );
                        }
                    }
                    v.map.as_ref().is_none_or(|m| m.version < ack.map_version)
                });
                if behind {
                    // The subscription will bring it too; don't wait for it.
                    if let Ok(map) = client.get_map(false).await {
                        view.with(|v| v.apply_map(map));
                    }
                }
                note_role(&view, &before);
            }
            Err(LeaderClientError::Refused(e)) if e.code() == ErrorCode::NotFound => {
                warn!(error = %e, "the leaders do not know this server; joining again");
                if let Err(e) = join(&cfg, &client, &engine, &view).await {
                    error!(error = %e, "rejoin refused; this server serves nothing");
                }
            }
            Err(e) => {
                let problem = e.to_string();
                if problem != last_problem {
                    warn!(error = %problem, "heartbeat failed");
                    last_problem = problem;
                }
            }
        }
        let now = Instant::now();
        let (is_master, holds) =
            view.with(|v| (matches!(v.role(), Role::Master { .. }), v.holds_lease(now)));
        if is_master && !holds {
            if !lease_lost_logged {
                warn!("master lease expired: refusing requests until the leaders renew it");
                lease_lost_logged = true;
            }
        } else if lease_lost_logged && holds {
            info!("master lease renewed: serving again");
            lease_lost_logged = false;
        }
    }
}
