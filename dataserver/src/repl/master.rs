//! The master's side: sending changes to the slaves, dropping a slave that
//! misses its deadline, activating a slave that caught up, and starting an
//! epoch.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::leader::{LeaderClient, LeaderClientError};
use client::peer::{PeerBody, PeerConn};
use parking_lot::Mutex;
use proto::cluster::{ServerId, ServerStatus};
use proto::{ErrorCode, ReplRecord, Reply, Request, WireError};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::batch::{Batcher, Item, BATCH_BODY_MAX};
use super::dedup::Dedup;
use super::epoch::EpochFile;
use super::pace::Pace;
use super::payload::{ContentReader, Payload};
use super::peers::take_reusable;
use super::slave;
use super::targets::{targets, Target};
use super::ReplTiming;
use crate::cluster::{Role, SharedView};
use crate::engine::{Content, Engine, EngineError, HookFuture, ReplicateHook};

/// An ONLINE slave's deadline, in multiples of the write set's.
const ONLINE_PATIENCE: u32 = 5;

/// Idle connections kept per slave.
const POOL_PER_PEER: usize = 32;

pub struct Replicator {
    me: Weak<Replicator>,
    id: ServerId,
    group: String,
    view: SharedView,
    leaders: LeaderClient,
    timing: ReplTiming,
    epoch: Arc<EpochFile>,
    /// The epoch whose start the leaders recorded with this server as
    /// master: writes are taken only in it.
    ready_epoch: AtomicU64,
    /// The epoch this master is fenced in (0: not fenced).
    fenced: AtomicU64,
    /// ONLINE slaves being activated: every write waits for them.
    activating: Mutex<HashSet<ServerId>>,
    pool: Mutex<HashMap<String, Vec<PeerConn>>>,
    /// One copier from the master at a time (catch-up or gap filling).
    pull: tokio::sync::Mutex<()>,
    /// Held (shared) by every change applied as a slave, exclusively by
    /// [`Replicator::start_epoch`]: a new master starts its epoch only once
    /// no change of the old epoch is still being applied here.
    applying: tokio::sync::RwLock<()>,
    dedup: Arc<Dedup>,
    /// Holds writes to the pace of a member that cannot catch up.
    pace: Pace,
    /// Small changes queued per slave, sent several to a frame.
    batcher: Batcher,
}

/// A reply's kind, for an error message.
fn reply_name(r: &Reply) -> String {
    format!("{r:?}").chars().take(60).collect()
}

fn unavailable(msg: impl Into<String>) -> EngineError {
    EngineError::Unavailable(msg.into())
}

impl Replicator {
    pub fn new(
        id: ServerId,
        group: String,
        view: SharedView,
        leaders: LeaderClient,
        timing: ReplTiming,
        epoch: Arc<EpochFile>,
        dedup: Arc<Dedup>,
    ) -> Arc<Replicator> {
        Arc::new_cyclic(|me| Replicator {
            me: me.clone(),
            id,
            group,
            view,
            leaders,
            timing,
            epoch,
            ready_epoch: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            activating: Mutex::new(HashSet::new()),
            pool: Mutex::new(HashMap::new()),
            pull: tokio::sync::Mutex::new(()),
            applying: tokio::sync::RwLock::new(()),
            dedup,
            pace: Pace::default(),
            batcher: Batcher::default(),
        })
    }

    pub fn epoch_file(&self) -> &Arc<EpochFile> {
        &self.epoch
    }

    pub fn pull_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.pull
    }

    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    pub fn pace(&self) -> &Pace {
        &self.pace
    }

    /// This server's id.
    pub fn id(&self) -> ServerId {
        self.id
    }

    /// Permission to apply a change of `epoch` as a slave: held while it is
    /// applied (and its answer recorded), refused once this server is no
    /// longer a slave at that epoch.
    pub async fn slave_apply(
        &self,
        epoch: u64,
    ) -> Result<tokio::sync::RwLockReadGuard<'_, ()>, WireError> {
        let guard = self.applying.read().await;
        slave::admit(&self.view, epoch)?;
        Ok(guard)
    }

    pub fn leaders(&self) -> &LeaderClient {
        &self.leaders
    }

    pub fn timing(&self) -> ReplTiming {
        self.timing
    }

    /// May this server, as master at `epoch`, take writes?
    pub fn writable(&self, epoch: u64) -> Result<(), WireError> {
        self.serving(epoch)?;
        if self.ready_epoch.load(Ordering::Acquire) == epoch {
            Ok(())
        } else {
            Err(WireError::new(
                ErrorCode::Unavailable,
                format!("master of epoch {epoch} is still starting; retry"),
            ))
        }
    }

    /// May this server, as master at `epoch`, serve at all? Not while it is
    /// fenced: it applied a change a slave of the write set may lack and
    /// could not have that slave dropped, so neither a read (which could see
    /// the change, then lost at a failover) nor a write may be served until
    /// the slave is dropped or the epoch moves on.
    pub fn serving(&self, epoch: u64) -> Result<(), WireError> {
        if self.fenced.load(Ordering::Acquire) == epoch {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                "this master is fenced: a slave missed a change and the leaders could not be told",
            ));
        }
        Ok(())
    }

    /// Fence this master at `epoch` and keep trying to drop `slave`; the
    /// fence lifts when the leaders have dropped it or the epoch changed.
    fn fence(&self, slave: ServerId, epoch: u64) {
        if self.fenced.swap(epoch, Ordering::AcqRel) == epoch {
            return;
        }
        warn!(
            slave,
            epoch, "fenced: refusing every request until the slave is dropped"
        );
        let Some(me) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            loop {
                let current = me.view.with(|v| match *v.role() {
                    Role::Master { epoch, .. } => Some(epoch),
                    _ => None,
                });
                if current != Some(epoch) {
                    break;
                }
                match me.drop_slave(slave, epoch).await {
                    Ok(()) => break,
                    Err(e) => debug!(slave, error = %e, "still fenced"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let _ = me
                .fenced
                .compare_exchange(epoch, 0, Ordering::AcqRel, Ordering::Acquire);
            info!(epoch, "fence lifted");
        });
    }

    /// As the new master of `epoch`: wait for the changes in flight to
    /// settle, record the epoch locally, and have the leaders record the
    /// version it starts after. Writes are refused until this succeeds.
    pub async fn start_epoch(&self, engine: &Engine, epoch: u64) -> Result<(), String> {
        if self.ready_epoch.load(Ordering::Acquire) == epoch {
            return Ok(());
        }
        // The role is master already, so no slave apply starts from here
        // on; wait for those in progress (a change of the old epoch applied
        // after the start would take a version this epoch hands out, and a
        // retry of it could run before its answer was recorded).
        let quiet = self.applying.write().await;
        let last = engine.next_version() - 1;
        if !engine.wait_durable(last, Duration::from_secs(5)).await {
            return Err(format!("versions up to {last} did not become durable"));
        }
        drop(quiet);
        self.epoch
            .observe(epoch)
            .map_err(|e| format!("recording epoch {epoch}: {e}"))?;
        self.leaders
            .epoch_started(&self.group, self.id, epoch, last)
            .await
            .map_err(|e| format!("reporting the start of epoch {epoch}: {e}"))?;
        self.ready_epoch.store(epoch, Ordering::Release);
        info!(
            epoch,
            after_version = last,
            "master: epoch started, taking writes"
        );
        Ok(())
    }

    fn take_conn(&self, addr: &str) -> Option<PeerConn> {
        self.pool.lock().get_mut(addr).and_then(take_reusable)
    }

    fn put_conn(&self, conn: PeerConn) {
        let mut p = self.pool.lock();
        let v = p.entry(conn.addr().to_string()).or_default();
        if v.len() < POOL_PER_PEER {
            v.push(conn);
        }
    }

    /// A pooled connection to `addr`, or a new one.
    async fn conn(&self, addr: &str, deadline: Duration) -> Result<PeerConn, String> {
        match self.take_conn(addr) {
            Some(c) => Ok(c),
            None => PeerConn::connect(addr, deadline, deadline)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Send one change to one slave and wait for it to be durable there.
    /// A small one goes through the slave's queue ([`batch`](super::batch)).
    async fn send(
        &self,
        t: &Target,
        epoch: u64,
        rec: &ReplRecord,
        payload: &Payload,
        deadline: Duration,
    ) -> Result<(), String> {
        let deadline = payload.deadline(deadline);
        if let Payload::Mem(body) = payload {
            if body.len() as u64 <= BATCH_BODY_MAX {
                return self
                    .send_queued(t, epoch, rec, body.clone(), deadline)
                    .await;
            }
        }
        let mut reader = match payload {
            Payload::Stream(c) => Some(ContentReader::new(c.clone())),
            Payload::Mem(_) => None,
        };
        let once = async {
            let mut conn = self.conn(&t.addr, deadline).await?;
            let res = conn
                .call(
                    Request::Replicate(rec.clone()),
                    epoch,
                    (rec.client_id, rec.seq),
                    match (payload, &mut reader) {
                        (Payload::Mem(b), _) => PeerBody::Slice(b),
                        (Payload::Stream(_), Some(r)) => PeerBody::Reader(r, payload.len()),
                        (Payload::Stream(_), None) => PeerBody::Slice(&[]),
                    },
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            self.put_conn(conn);
            match res {
                Ok(Reply::Replicated { .. }) => Ok(()),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        match tokio::time::timeout(deadline, once).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {deadline:?}")),
        }
    }

    /// Queue a small change for `t` and wait for its answer; start a batch
    /// if the slave may take another now.
    async fn send_queued(
        &self,
        t: &Target,
        epoch: u64,
        rec: &ReplRecord,
        body: Bytes,
        deadline: Duration,
    ) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        let item = Item {
            epoch,
            deadline,
            rec: rec.clone(),
            body,
            done,
        };
        if self.batcher.push(&t.addr, item) {
            let me = self
                .me
                .upgrade()
                .ok_or_else(|| "the replicator is stopping".to_string())?;
            let addr = t.addr.clone();
            tokio::spawn(async move { me.drive(&addr).await });
        }
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the batch carrying this change was dropped".into()),
            Err(_) => Err(format!("no answer within {deadline:?}")),
        }
    }

    /// Let the other ready writers queue their changes for `addr`, then
    /// send everything queued (several frames at once when it is more than
    /// one holds) and answer each change's writer.
    async fn drive(&self, addr: &str) {
        tokio::task::yield_now().await;
        let frames = self.batcher.take(addr);
        let sends = frames.into_iter().map(|batch| async move {
            let outcome = self.send_batch(addr, &batch).await;
            match outcome {
                Ok(results) => {
                    for (item, r) in batch.into_iter().zip(results) {
                        let _ = item.done.send(r);
                    }
                }
                Err(e) => {
                    for item in batch {
                        let _ = item.done.send(Err(e.clone()));
                    }
                }
            }
        });
        futures::future::join_all(sends).await;
    }

    /// One exchange for `batch`: `Replicate` for a lone change, else
    /// `ReplicateBatch` with the bodies back to back. Per change, its
    /// outcome; `Err` when the exchange as a whole failed.
    async fn send_batch(
        &self,
        addr: &str,
        batch: &[Item],
    ) -> Result<Vec<Result<(), String>>, String> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let deadline = batch
            .iter()
            .map(|i| i.deadline)
            .max()
            .unwrap_or(self.timing.deadline);
        let once = async {
            let mut conn = self.conn(addr, deadline).await?;
            let res = if let [one] = batch {
                conn.call(
                    Request::Replicate(one.rec.clone()),
                    one.epoch,
                    (one.rec.client_id, one.rec.seq),
                    PeerBody::Slice(&one.body),
                    None,
                )
                .await
            } else {
                let records = batch.iter().map(|i| i.rec.clone()).collect();
                let mut body = Vec::with_capacity(batch.iter().map(|i| i.body.len()).sum());
                for i in batch {
                    body.extend_from_slice(&i.body);
                }
                conn.call(
                    Request::ReplicateBatch { records },
                    first.epoch,
                    (0, 0),
                    PeerBody::Slice(&body),
                    None,
                )
                .await
            }
            .map_err(|e| e.to_string())?;
            self.put_conn(conn);
            match res {
                Ok(Reply::Replicated { .. }) if batch.len() == 1 => Ok(vec![Ok(())]),
                Ok(Reply::ReplicatedBatch { results, .. }) if results.len() == batch.len() => {
                    Ok(results
                        .into_iter()
                        .map(|r| r.map_or(Ok(()), |e| Err(e.to_string())))
                        .collect())
                }
                Ok(other) => Err(format!(
                    "unexpected answer to {} changes: {}",
                    batch.len(),
                    reply_name(&other)
                )),
                Err(e) => Err(e.to_string()),
            }
        };
        match tokio::time::timeout(deadline, once).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {deadline:?}")),
        }
    }

    /// Have the leaders drop `slave`; `Ok` once it is no longer ACTIVE.
    async fn drop_slave(&self, slave: ServerId, epoch: u64) -> Result<(), String> {
        match self
            .leaders
            .slave_failed(&self.group, self.id, slave, epoch)
            .await
        {
            Ok(s) => {
                warn!(slave, status = %s.status, "slave dropped from the write set");
                Ok(())
            }
            // Already not ACTIVE/ONLINE (the transition was refused): fine
            // if the map agrees.
            Err(LeaderClientError::Refused(e)) => {
                let status = self.leaders.get_map(true).await.ok().and_then(|m| {
                    m.server(slave)
                        .filter(|_| m.group(&self.group).is_some_and(|g| g.epoch == epoch))
                        .map(|s| s.status)
                });
                match status {
                    Some(s) if s != ServerStatus::Active => Ok(()),
                    _ => Err(format!("the leaders refused to drop slave {slave}: {e}")),
                }
            }
            Err(e) => Err(format!(
                "could not reach the leaders to drop slave {slave}: {e}"
            )),
        }
    }

    async fn replicate_inner(
        &self,
        rec: ReplRecord,
        content: Option<Content>,
    ) -> Result<(), EngineError> {
        let (epoch, targets) = {
            let mut act = self.activating.lock();
            let me = self.id;
            let group = self.group.clone();
            self.view.with(|v| {
                let Role::Master { epoch, .. } = *v.role() else {
                    return None;
                };
                let map = v.map.as_ref()?;
                // Forget activations that ended (ACTIVE now, or dropped).
                act.retain(|id| {
                    map.server(*id)
                        .is_some_and(|s| s.status == ServerStatus::Online)
                });
                Some((epoch, targets(map, &group, me, &act)))
            })
        }
        .ok_or_else(|| {
            unavailable(
                "this server stopped being the master during the write; it may have been applied",
            )
        })?;
        if targets.is_empty() {
            return self.check_lease();
        }
        #[cfg(feature = "fault-injection")]
        if super::fault::ack_before_replicate() {
            if let Some(me) = self.me.upgrade() {
                let payload = Payload::of(content.as_ref()).await?;
                tokio::spawn(async move {
                    tokio::time::sleep(super::fault::DELAY).await;
                    for t in targets {
                        let _ = me.send(&t, epoch, &rec, &payload, me.timing.deadline).await;
                    }
                });
            }
            return Ok(());
        }
        let payload = Payload::of(content.as_ref()).await?;
        let mut waits = Vec::new();
        for t in targets {
            if t.wait {
                waits.push(t);
            } else if let Some(me) = self.me.upgrade() {
                // ONLINE: sent in the background; a failure drops it.
                let (rec, payload) = (rec.clone(), payload.clone());
                tokio::spawn(async move {
                    // Nobody waits for an ONLINE slave: give it time to
                    // fill a gap before calling it failed.
                    let patient = me.timing.deadline * ONLINE_PATIENCE;
                    if let Err(e) = me.send(&t, epoch, &rec, &payload, patient).await {
                        debug!(slave = t.id, error = %e, "online slave missed a change");
                        if let Err(e) = me.drop_slave(t.id, epoch).await {
                            debug!(slave = t.id, error = %e, "dropping an online slave failed");
                        }
                    }
                });
            }
        }
        let sends = waits
            .iter()
            .map(|t| self.send(t, epoch, &rec, &payload, self.timing.deadline));
        let results = futures::future::join_all(sends).await;
        for (t, r) in waits.iter().zip(results) {
            if let Err(e) = r {
                warn!(slave = t.id, version = rec.version, error = %e, "slave missed its deadline");
                if let Err(e) = self.drop_slave(t.id, epoch).await {
                    // Applied here, maybe not on that slave, which may still
                    // become master: serve nothing until that is settled, and
                    // a retry must not apply it again here.
                    self.fence(t.id, epoch);
                    if rec.client_id != 0 && rec.seq != 0 {
                        self.dedup.mark_unknown(rec.client_id, rec.seq, e.clone());
                    }
                    return Err(unavailable(format!(
                        "{e}; the change may have been applied"
                    )));
                }
            }
        }
        let lease = self.check_lease();
        if lease.is_err() && rec.client_id != 0 && rec.seq != 0 {
            // Every slave in the write set has it: a retry gets this answer.
            self.dedup
                .record(rec.client_id, rec.seq, slave::client_reply(&rec));
        }
        lease
    }

    /// A change is acknowledged only while the lease holds.
    fn check_lease(&self) -> Result<(), EngineError> {
        if self.view.with(|v| v.holds_lease(Instant::now())) {
            Ok(())
        } else {
            Err(unavailable(
                "master lease expired before the change was acknowledged; it may have been applied",
            ))
        }
    }

    /// An ONLINE slave asks to become ACTIVE: from now on every write waits
    /// for it; a barrier makes sure it has every earlier version; then the
    /// leaders make it ACTIVE.
    pub async fn activate(&self, engine: &Engine, slave: ServerId) -> Result<Reply, WireError> {
        let (epoch, status) = self
            .view
            .with(|v| {
                let Role::Master { epoch, .. } = *v.role() else {
                    return None;
                };
                let st = v.map.as_ref()?.server(slave).map(|s| s.status);
                Some((epoch, st))
            })
            .ok_or_else(|| WireError::new(ErrorCode::NotMaster, "not the master"))?;
        self.writable(epoch)?;
        if status != Some(ServerStatus::Online) {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                format!("server {slave} is {status:?} in this master's map, not ONLINE"),
            ));
        }
        self.activating.lock().insert(slave);
        let barrier = engine.barrier().await;
        let v = match barrier {
            Ok(v) => v,
            Err(e) => {
                self.activating.lock().remove(&slave);
                return Err(WireError::new(e.code(), e.to_string()));
            }
        };
        match self
            .leaders
            .activate(&self.group, self.id, slave, epoch, v)
            .await
        {
            Ok((_, map_version)) => {
                info!(slave, data_version = v, "slave activated");
                Ok(Reply::Activated { map_version })
            }
            Err(e) => {
                self.activating.lock().remove(&slave);
                Err(WireError::new(
                    ErrorCode::Unavailable,
                    format!("the leaders did not activate {slave}: {e}"),
                ))
            }
        }
    }
}

impl ReplicateHook for Replicator {
    fn replicate(&self, rec: ReplRecord, content: Option<Content>) -> HookFuture<'_> {
        Box::pin(self.replicate_inner(rec, content))
    }
}
