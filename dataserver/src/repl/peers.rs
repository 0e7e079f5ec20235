//! A few pooled connections to one peer dataserver, for the copiers and
//! pushers that talk to a single peer (catch-up from the master, an async
//! member's full copy, a pusher).

use std::time::Duration;

use client::peer::{PeerBody, PeerConn};
use client::ClientError;
use parking_lot::Mutex;
use proto::{Reply, Request, WireError};

pub struct PeerPool {
    addr: String,
    connect_timeout: Duration,
    call_timeout: Duration,
    /// Idle connections kept at most.
    keep: usize,
    idle: Mutex<Vec<PeerConn>>,
}

impl PeerPool {
    pub fn new(
        addr: impl Into<String>,
        connect_timeout: Duration,
        call_timeout: Duration,
        keep: usize,
    ) -> Self {
        PeerPool {
            addr: addr.into(),
            connect_timeout,
            call_timeout,
            keep,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One exchange (see [`PeerConn::call`]) on an idle connection or a new
    /// one; the connection is kept only after a clean exchange.
    pub async fn call(
        &self,
        op: Request,
        epoch: u64,
        body: PeerBody<'_>,
        data: Option<&mut Vec<u8>>,
    ) -> Result<Result<Reply, WireError>, ClientError> {
        self.call_as(op, epoch, (0, 0), body, data).await
    }

    /// [`Self::call`] with the envelope's `(client_id, seq)` set.
    pub async fn call_as(
        &self,
        op: Request,
        epoch: u64,
        client: (u64, u64),
        body: PeerBody<'_>,
        data: Option<&mut Vec<u8>>,
    ) -> Result<Result<Reply, WireError>, ClientError> {
        let idle = take_reusable(&mut self.idle.lock());
        let mut c = match idle {
            Some(c) => c,
            None => PeerConn::connect(&self.addr, self.connect_timeout, self.call_timeout).await?,
        };
        let r = c.call(op, epoch, client, body, data).await?;
        let mut idle = self.idle.lock();
        if idle.len() < self.keep {
            idle.push(c);
        }
        Ok(r)
    }

    /// Drop every idle connection (after an error, start afresh).
    pub fn clear(&self) {
        self.idle.lock().clear();
    }
}

/// The most recently used idle connection the peer has not closed; closed
/// ones are dropped on the way.
pub fn take_reusable(idle: &mut Vec<PeerConn>) -> Option<PeerConn> {
    while let Some(c) = idle.pop() {
        if c.is_reusable() {
            return Some(c);
        }
    }
    None
}
