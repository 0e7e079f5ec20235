//! Async (FastDFS-style) replication: every ACTIVE member of an async group
//! takes uploads and changes the files it is the source of; each pushes
//! its own changes to every other ACTIVE member afterwards.
//!
//! * [`gate`]: what an async member serves (pure).
//! * [`receive`]: answering `AsyncOffer` and taking `AsyncPush`.
//! * [`pusher`]: one task per peer, from the peer's mark in [`marks`].
//! * [`delay`]: the heartbeat's `sync_delay_ms`.
//! * [`copy`]: a new member's full copy before it turns ACTIVE.
//!
//! [`AsyncRepl`] starts and stops the pushers as the map changes: this
//! server pushes while it is ACTIVE, to every other ACTIVE member of its
//! group. A member seen copying (WAIT_SYNC / SYNCING) starts from an
//! empty store, so its mark is reset: once ACTIVE it is offered everything.

pub mod copy;
pub mod delay;
pub mod gate;
pub mod marks;
pub mod pusher;
pub mod receive;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use proto::cluster::{ClusterMap, ServerId, ServerStatus};
use tokio::task::AbortHandle;
use tracing::{info, warn};

use crate::engine::Engine;
use delay::DelayBoard;
use marks::MarkStore;
use pusher::PushShared;

/// The pushers of this server.
pub struct AsyncRepl {
    shared: Arc<PushShared>,
    group: String,
    running: Mutex<HashMap<ServerId, (String, AbortHandle)>>,
}

impl AsyncRepl {
    pub fn new(
        me: ServerId,
        group: String,
        engine: Arc<Engine>,
        meta_dir: &std::path::Path,
        sync_delay_ms: Arc<std::sync::atomic::AtomicU64>,
    ) -> AsyncRepl {
        AsyncRepl {
            shared: Arc::new(PushShared {
                me,
                engine,
                marks: Arc::new(MarkStore::open(meta_dir)),
                delay: Arc::new(DelayBoard::new(sync_delay_ms)),
            }),
            group,
            running: Mutex::new(HashMap::new()),
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }

    /// Start and stop pushers to match `map`.
    pub fn reconcile(&self, map: Option<&ClusterMap>) {
        let me = self.shared.me;
        let mut want: HashMap<ServerId, String> = HashMap::new();
        if let Some(m) = map {
            let active_here = m
                .server(me)
                .is_some_and(|s| s.status == ServerStatus::Active);
            let members = m.group(&self.group).map_or(&[][..], |g| &g.members[..]);
            for &id in members {
                let Some(s) = m.server(id) else { continue };
                if id == me {
                    continue;
                }
                match s.status {
                    ServerStatus::Active if active_here => {
                        want.insert(id, s.addr.clone());
                    }
                    ServerStatus::WaitSync | ServerStatus::Syncing
                        if self.shared.marks.get(id) != 0 =>
                    {
                        info!(peer = id, "peer starts over: resetting its push mark");
                        if let Err(e) = self.shared.marks.reset(id) {
                            warn!(peer = id, error = %e, "cannot reset a push mark");
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut running = self.running.lock();
        running.retain(|id, (addr, handle)| {
            let keep = want.get(id) == Some(addr);
            if !keep {
                info!(peer = *id, "stopping the pusher");
                handle.abort();
                self.shared.delay.set(*id, None);
            }
            keep
        });
        for (id, addr) in want {
            if running.contains_key(&id) {
                continue;
            }
            let task = tokio::spawn(pusher::run(self.shared.clone(), id, addr.clone()));
            running.insert(id, (addr, task.abort_handle()));
        }
        drop(running);
        self.shared.delay.refresh();
    }

    /// Peers with a running pusher.
    pub fn peers(&self) -> Vec<ServerId> {
        let mut p: Vec<ServerId> = self.running.lock().keys().copied().collect();
        p.sort_unstable();
        p
    }
}

impl Drop for AsyncRepl {
    fn drop(&mut self) {
        for (_, (_, h)) in self.running.lock().drain() {
            h.abort();
        }
    }
}
