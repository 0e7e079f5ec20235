//! Connections kept open per server address for reuse.
//!
//! A connection goes back to the pool only after a request completed
//! cleanly (a response, an error response included, with the connection in
//! step). Anything else drops it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::conn::Conn;
use crate::error::Result;

pub(crate) struct Pool {
    idle: Mutex<HashMap<Arc<str>, Vec<Conn>>>,
    max_idle: usize,
    connect_timeout: Duration,
    request_timeout: Duration,
    opened: AtomicU64,
}

impl Pool {
    pub(crate) fn new(
        max_idle: usize,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            connect_timeout,
            request_timeout,
            opened: AtomicU64::new(0),
        }
    }

    /// An idle connection to `addr` that is still usable, or a new one.
    pub(crate) async fn get(&self, addr: &Arc<str>) -> Result<Conn> {
        loop {
            let conn = {
                let mut idle = self.idle.lock();
                idle.get_mut(addr).and_then(Vec::pop)
            };
            match conn {
                Some(c) if c.is_reusable() => return Ok(c),
                Some(_) => tracing::debug!(%addr, "dropping a pooled connection the server closed"),
                None => break,
            }
        }
        let conn = Conn::connect(addr.clone(), self.connect_timeout, self.request_timeout).await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    /// Return a connection that finished a request cleanly.
    pub(crate) fn put(&self, conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock();
        let list = idle.entry(conn.addr().clone()).or_default();
        if list.len() < self.max_idle {
            list.push(conn);
        }
    }

    /// Connections opened so far.
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Idle connections to `addr` right now.
    pub(crate) fn idle_count(&self, addr: &str) -> usize {
        self.idle.lock().get(addr).map_or(0, Vec::len)
    }
}
