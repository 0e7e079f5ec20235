//! Climbing to ACTIVE: a member that is not in the write set copies what
//! it misses from the master, then asks to be activated. Also starts a new
//! master's epoch.
//!
//! * WAIT_SYNC: report SYNCING.
//! * SYNCING / RECOVERING: first the history check — a server that last
//!   took writes in an older epoch and holds versions past the point the
//!   next epoch started (`GroupInfo::divergence_point`) may hold writes
//!   nobody acknowledged (so may one whose recovery voided a version the
//!   group may have, `Engine::voided_from`): it restarts to drop the
//!   versions past that point (`engine::rollback`), then restores the
//!   files the dropped versions left overwritten from the master (sharing
//!   no history at all, it wipes the store to re-copy everything,
//!   [`super::wipe`]). Then catch up: list the master's binlog from the
//!   next version here and apply each version in turn ([`super::pull`]).
//!   Caught up: report ONLINE.
//! * ONLINE: the same history check (a member ONLINE when its master was
//!   replaced may hold live writes the new one lacks). The master now sends
//!   live writes too; fill any gap, then ask the master to activate
//!   (`ReplReady`): it makes every write wait for this server, replicates
//!   a barrier, and has the leaders mark it ACTIVE.

use std::sync::Arc;
use std::time::Duration;

use client::peer::{PeerBody, PeerConn};
use proto::cluster::{ClusterMap, ServerId, ServerStatus};
use proto::{ErrorCode, FileId, Reply, Request};
use tokio::sync::Notify;
use tracing::{debug, info, info_span, warn, Instrument};

use super::pull::Puller;
use super::push::copy::Copier;
use super::push::AsyncRepl;
use super::{wipe, Replicator};
use crate::cluster::{Role, SharedView};
use crate::engine::Engine;

/// How many times an ONLINE server asks to be activated while the master
/// does not see it ONLINE yet (50 ms apart).
const ACTIVATION_TRIES: u32 = 20;

/// What catch-up needs.
pub struct CatchUp {
    pub id: ServerId,
    pub group: String,
    pub engine: Arc<Engine>,
    pub view: SharedView,
    pub repl: Arc<Replicator>,
    /// Store paths and meta dir, for a wipe.
    pub wipe: wipe::WipePlan,
    /// Async groups: the pushers.
    pub async_repl: Option<Arc<AsyncRepl>>,
}

impl CatchUp {
    /// Run until the process ends: act on every tick or wake-up.
    pub async fn run(self, tick: Duration, wake: Arc<Notify>) {
        let mut t = tokio::time::interval(tick);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = t.tick() => {}
                _ = wake.notified() => {}
            }
            if let Err(e) = self.step().await {
                warn!(error = %e, "catch-up step did not finish; retrying");
            }
        }
    }

    /// Copy from the master until what is left would take at most `slack`
    /// (zero: until nothing settled there is left).
    async fn pull(&self, master: &str, epoch: u64, slack: Duration) -> Result<u64, String> {
        let _one = self.repl.pull_lock().lock().await;
        Puller::new(&self.engine, &self.repl, master, epoch)
            .run_until(slack)
            .await
    }

    /// Before copying from the master: a server whose history went past
    /// the group's (it last took writes in an older epoch and holds versions
    /// past the point the next one started, or a recovery voided a version
    /// here the group may have) restarts to roll back to the shared part
    /// (or, sharing nothing, to wipe and re-copy everything); one that has
    /// rolled back restores the files it found overwritten.
    async fn check_history(
        &self,
        map: Option<&ClusterMap>,
        master: &str,
        epoch: u64,
    ) -> Result<(), String> {
        if let Some(g) = map.and_then(|m| m.group(&self.group)) {
            let last_epoch = self.repl.epoch_file().get();
            let mine = self.engine.next_version() - 1;
            let voided = self.engine.voided_from();
            let trusted = [
                g.divergence_point(last_epoch),
                voided.map(|v| v.saturating_sub(1)),
            ]
            .into_iter()
            .flatten()
            .min();
            match trusted {
                Some(0) if mine > 0 => {
                    warn!(
                        last_epoch,
                        mine,
                        "this server may hold writes the group never acknowledged, and no history is shared: wiping it to copy everything again"
                    );
                    return Err(wipe::wipe_and_restart(&self.wipe));
                }
                Some(point) if mine > point => {
                    warn!(
                        last_epoch,
                        mine,
                        point,
                        ?voided,
                        "this server may hold writes the group never acknowledged: rolling back to the shared history"
                    );
                    return Err(wipe::roll_back_and_restart(&self.wipe, point));
                }
                _ => {}
            }
        }
        let broken = self.engine.rollback_broken();
        if !broken.is_empty() {
            self.restore(master, epoch, &broken).await?;
        }
        Ok(())
    }

    /// Put back the files the rollback found overwritten (see
    /// `engine::rollback`): each the master still has at the kept file
    /// version is restored from its copy; one it changed or deleted since
    /// is left to the versions copied next, which replace it. Then the
    /// rollback is complete. A copy at the kept version with other content,
    /// or an older one, means the history was not shared after all: wipe.
    async fn restore(&self, master: &str, epoch: u64, broken: &[String]) -> Result<(), String> {
        let _one = self.repl.pull_lock().lock().await;
        let puller = Puller::new(&self.engine, &self.repl, master, epoch);
        let mut restored = 0;
        for name in broken {
            let id = FileId::parse(name).map_err(|e| format!("{name}: {e}"))?;
            let Some(kept) = self.engine.kept_version(&id) else {
                continue;
            };
            match puller.fetch(name).await? {
                Some((v, _, data)) if v == kept => {
                    let ok = self
                        .engine
                        .restore_kept(&id, v, data)
                        .await
                        .map_err(|e| format!("restoring {name}: {e}"))?;
                    if !ok {
                        warn!(file = %name, version = v, "the master's copy at the kept version differs: wiping to copy everything again");
                        return Err(wipe::wipe_and_restart(&self.wipe));
                    }
                    restored += 1;
                }
                Some((v, _, _)) if v < kept => {
                    warn!(file = %name, kept, master = v, "the master has an older copy than the kept one: wiping to copy everything again");
                    return Err(wipe::wipe_and_restart(&self.wipe));
                }
                // Changed or deleted since: a copied version replaces it.
                _ => {}
            }
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.complete_rollback())
            .await
            .map_err(|e| format!("completing the rollback: {e}"))?
            .map_err(|e| e.to_string())?;
        info!(
            restored,
            broken = broken.len(),
            "files the rollback found overwritten restored from the master"
        );
        Ok(())
    }

    /// How close a copy must come before this server asks into the write
    /// set: the rest is copied while the master's writes wait for this
    /// server, which must take them within the replication deadline (a
    /// live change waits three quarters of it for the copy). Estimated at
    /// the last batch's pace, which can drop meanwhile on a loaded machine:
    /// a quarter of the deadline left too little room (a returning slave
    /// dropped on its way back in CI, 950 versions behind).
    fn slack(&self) -> Duration {
        self.repl.timing().deadline / 8
    }

    /// Ask the master to make this ONLINE server ACTIVE, copying what is
    /// left meanwhile: from the request on every write waits for this
    /// server, and the live ones past the copy wait their turn here.
    async fn join_write_set(&self, master: &str, epoch: u64) -> Result<(), String> {
        let (pulled, asked) = tokio::join!(
            self.pull(master, epoch, Duration::ZERO),
            self.ask_activation(master, epoch)
        );
        if let Err(e) = pulled {
            debug!(error = %e, "copying the rest while activating failed");
        }
        asked
    }

    /// `ReplReady`, retried briefly while the master cannot take it yet
    /// (its map does not show this server ONLINE: it has just reported it).
    async fn ask_activation(&self, master: &str, epoch: u64) -> Result<(), String> {
        let mut tries = 0;
        loop {
            tries += 1;
            if self.view.with(|v| v.my_status()) == ServerStatus::Active {
                // Activated already (the map reached us after the answer).
                return Ok(());
            }
            let mut conn = connect(master).await?;
            let r = conn
                .call(
                    Request::ReplReady {
                        server_id: self.id,
                        data_version: self.engine.data_version(),
                    },
                    epoch,
                    (0, 0),
                    PeerBody::None,
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            match r {
                Ok(Reply::Activated { map_version }) => {
                    info!(map_version, "activated: ACTIVE");
                    return Ok(());
                }
                Ok(other) => return Err(format!("unexpected answer to ReplReady: {other:?}")),
                // Not ONLINE in the master's map yet, or the master is
                // starting: soon, most likely.
                Err(e) if tries < ACTIVATION_TRIES && e.code == ErrorCode::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(format!("activation refused: {e}")),
            }
        }
    }

    async fn step(&self) -> Result<(), String> {
        let (role, status, map) = self
            .view
            .with(|v| (v.role().clone(), v.my_status(), v.map.clone()));
        if let Some(a) = &self.async_repl {
            return self.async_step(a, status, map.as_ref()).await;
        }
        let (epoch, master) = match role {
            Role::Master { epoch, .. } => {
                // Its history is the group's now, voided versions included.
                let engine = self.engine.clone();
                tokio::task::spawn_blocking(move || engine.forget_voided())
                    .await
                    .map_err(|e| format!("forgetting voided versions: {e}"))?
                    .map_err(|e| e.to_string())?;
                return self.repl.start_epoch(&self.engine, epoch).await;
            }
            Role::Slave {
                epoch,
                master: Some(m),
            } => (epoch, m),
            _ => return Ok(()),
        };
        let client = self.repl.leaders();
        match status {
            ServerStatus::WaitSync => self.report_syncing().await,
            ServerStatus::Syncing | ServerStatus::Recovering => {
                self.check_history(map.as_ref(), &master.addr, epoch)
                    .await?;
                let reached = self.pull(&master.addr, epoch, self.slack()).await?;
                client
                    .report_progress(self.id, ServerStatus::Online, reached)
                    .await
                    .map_err(|e| e.to_string())?;
                info!(%status, data_version = reached, "caught up: ONLINE");
                // Straight on: every moment ONLINE the master writes on
                // without waiting for this server.
                self.join_write_set(&master.addr, epoch).await
            }
            ServerStatus::Online => {
                self.check_history(map.as_ref(), &master.addr, epoch)
                    .await?;
                self.pull(&master.addr, epoch, self.slack()).await?;
                self.join_write_set(&master.addr, epoch).await
            }
            _ => Ok(()),
        }
    }
}

impl CatchUp {
    /// Async groups: keep the pushers matched to the map; a new member
    /// reports SYNCING, copies every file from the lowest-id ACTIVE member,
    /// then reports itself ACTIVE (see [`super::push`]).
    /// A new member starts its full copy: WAIT_SYNC → SYNCING.
    async fn report_syncing(&self) -> Result<(), String> {
        let v = self.engine.data_version();
        self.repl
            .leaders()
            .report_progress(self.id, ServerStatus::Syncing, v)
            .await
            .map_err(|e| e.to_string())?;
        info!("WAIT_SYNC -> SYNCING");
        Ok(())
    }

    async fn async_step(
        &self,
        a: &AsyncRepl,
        status: ServerStatus,
        map: Option<&ClusterMap>,
    ) -> Result<(), String> {
        a.reconcile(map);
        let client = self.repl.leaders();
        match status {
            ServerStatus::WaitSync => self.report_syncing().await,
            ServerStatus::Syncing => {
                let from = map.and_then(|m| {
                    let g = m.group(&self.group)?;
                    g.members
                        .iter()
                        .filter(|&&id| id != self.id)
                        .filter_map(|&id| m.server(id))
                        .find(|s| s.status == ServerStatus::Active)
                        .map(|s| (s.id, s.addr.clone()))
                });
                if let Some((id, addr)) = &from {
                    let span = info_span!("full_copy", from = id, addr = %addr);
                    let stats = Copier::new(&self.engine, addr)
                        .run()
                        .instrument(span)
                        .await
                        .map_err(|e| e.to_string())?;
                    if stats.left > 0 {
                        warn!(
                            left = stats.left,
                            "some files could not be copied; their sources push them once this server is ACTIVE"
                        );
                    }
                } else {
                    info!("no ACTIVE member to copy from: this server starts the group's data");
                }
                let v = self.engine.data_version();
                client
                    .report_progress(self.id, ServerStatus::Active, v)
                    .await
                    .map_err(|e| e.to_string())?;
                info!(data_version = v, "copied: SYNCING -> ACTIVE");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

async fn connect(addr: &str) -> Result<PeerConn, String> {
    PeerConn::connect(addr, Duration::from_secs(2), Duration::from_secs(30))
        .await
        .map_err(|e| format!("connecting to the master at {addr}: {e}"))
}
