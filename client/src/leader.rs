//! `LeaderClient`: talk to a group of leaders from a dataserver, the SDK or
//! the CLI.
//!
//! Give it every leader's address. Each call goes to the Raft leader it
//! last found (or tries the list in turn), follows `NotLeader` redirects,
//! and retries through elections until the call deadline. Errors the leader
//! answers for (bad request, not found, ...) are returned at once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::leader::LeaderClientError> {
//! use client::leader::LeaderClient;
//! let client = LeaderClient::new(vec!["127.0.0.1:7100".into(), "127.0.0.1:7101".into()]);
//! let map = client.get_map(true).await?;
//! let mut sub = client.subscribe();
//! while let Some(map) = sub.next().await {
//!     println!("map version {}", map.version);
//! }
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use proto::cluster::{
    ClusterMap, GroupInfo, Heartbeat, HeartbeatAck, JoinRequest, LeaderError, LeaderMessage,
    LeaderReply, LeaderRequest, LeaderRequestEnvelope, LeaderStatus, ServerId, ServerInfo,
    ServerStatus,
};
use proto::frame::{FrameError, FrameReader, FrameWriter};
use proto::ErrorCode;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LeaderClientError {
    /// The leader refused the request (not retried).
    #[error("leader refused: {0}")]
    Refused(LeaderError),
    /// No leader answered before the deadline.
    #[error("no leader answered within {waited:?}; last problem: {last}")]
    Unavailable { waited: Duration, last: String },
    /// The leader answered something that does not fit the request.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    #[error("no leader addresses given")]
    NoAddresses,
}

impl LeaderClientError {
    /// The wire error code when a leader refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            LeaderClientError::Refused(e) => Some(e.code()),
            _ => None,
        }
    }
}

/// Timeouts of a [`LeaderClient`].
#[derive(Debug, Clone)]
pub struct ClientTimeouts {
    pub connect: Duration,
    /// One request/answer exchange (a failover waits out a master lease, so
    /// keep this above the lease).
    pub request: Duration,
    /// Total time a call keeps retrying through redirects and elections.
    pub call: Duration,
    /// Pause between rounds when no leader is known.
    pub backoff: Duration,
    /// A subscription silent this long is considered dead.
    pub subscription_silence: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(10),
            call: Duration::from_secs(15),
            backoff: Duration::from_millis(100),
            subscription_silence: Duration::from_secs(3),
        }
    }
}

struct Conn {
    addr: String,
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
}

async fn connect(addr: &str, timeout: Duration) -> Result<Conn, String> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr} timed out"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    Ok(Conn {
        addr: addr.to_string(),
        reader: FrameReader::new(r),
        writer: FrameWriter::new(w),
    })
}

enum Attempt {
    Done(Result<LeaderReply, LeaderClientError>),
    /// Try again, preferring this address.
    Redirect(Option<String>, String),
    Failed(String),
}

struct Shared {
    addrs: Vec<String>,
    /// The leader last seen answering or named by a redirect.
    hint: Mutex<Option<String>>,
    next_id: AtomicU64,
    timeouts: ClientTimeouts,
}

impl Shared {
    /// Addresses in the order to try: the hint first, then the list.
    fn order(&self) -> Vec<String> {
        let mut v = Vec::with_capacity(self.addrs.len() + 1);
        if let Some(h) = self.hint.lock().clone() {
            v.push(h);
        }
        for a in &self.addrs {
            if !v.contains(a) {
                v.push(a.clone());
            }
        }
        v
    }

    fn redirected(&self, to: Option<String>) {
        *self.hint.lock() = to;
    }
}

/// A client of the leader group. Cheap to clone; clones share the leader
/// hint but not the connection.
pub struct LeaderClient {
    shared: Arc<Shared>,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

impl Clone for LeaderClient {
    fn clone(&self) -> Self {
        LeaderClient {
            shared: self.shared.clone(),
            conn: tokio::sync::Mutex::new(None),
        }
    }
}

impl LeaderClient {
    pub fn new(addrs: Vec<String>) -> Self {
        Self::with_timeouts(addrs, ClientTimeouts::default())
    }

    pub fn with_timeouts(addrs: Vec<String>, timeouts: ClientTimeouts) -> Self {
        LeaderClient {
            shared: Arc::new(Shared {
                addrs,
                hint: Mutex::new(None),
                next_id: AtomicU64::new(1),
                timeouts,
            }),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// The address of the leader this client last talked to.
    pub fn leader_hint(&self) -> Option<String> {
        self.shared.hint.lock().clone()
    }

    async fn attempt(&self, slot: &mut Option<Conn>, addr: &str, op: &LeaderRequest) -> Attempt {
        let t = &self.shared.timeouts;
        if slot.as_ref().is_none_or(|c| c.addr != addr) {
            match connect(addr, t.connect).await {
                Ok(c) => *slot = Some(c),
                Err(e) => return Attempt::Failed(e),
            }
        }
        let Some(conn) = slot.as_mut() else {
            return Attempt::Failed("no connection".into());
        };
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = LeaderMessage::Request(LeaderRequestEnvelope { id, op: op.clone() });
        let exchange = async {
            conn.writer.write(&msg, &[]).await?;
            loop {
                match conn.reader.read::<LeaderMessage>().await? {
                    Some((LeaderMessage::Response(r), _)) if r.id == id => {
                        return Ok(Some(r.result))
                    }
                    Some((LeaderMessage::Response(r), _)) if r.id == 0 => {
                        return Ok(Some(r.result))
                    }
                    Some(_) => continue,
                    None => return Ok::<_, FrameError>(None),
                }
            }
        };
        let result = match tokio::time::timeout(t.request, exchange).await {
            Err(_) => Err(format!("{addr}: no answer within {:?}", t.request)),
            Ok(Err(e)) => Err(format!("{addr}: {e}")),
            Ok(Ok(None)) => Err(format!("{addr}: connection closed")),
            Ok(Ok(Some(r))) => Ok(r),
        };
        match result {
            Err(e) => {
                *slot = None;
                Attempt::Failed(e)
            }
            Ok(Ok(reply)) => {
                self.shared.redirected(Some(addr.to_string()));
                Attempt::Done(Ok(reply))
            }
            Ok(Err(e)) if e.code() == ErrorCode::NotLeader => {
                Attempt::Redirect(e.redirect.as_ref().map(|r| r.addr.clone()), e.to_string())
            }
            Ok(Err(e)) if e.code() == ErrorCode::Unavailable => Attempt::Failed(e.to_string()),
            Ok(Err(e)) => Attempt::Done(Err(LeaderClientError::Refused(e))),
        }
    }

    /// Send `op` to the known leader first, then to the others, following
    /// redirects, retrying until the call deadline. Requests any leader may
    /// serve are answered by the first one reached.
    async fn call(&self, op: LeaderRequest) -> Result<LeaderReply, LeaderClientError> {
        if self.shared.addrs.is_empty() {
            return Err(LeaderClientError::NoAddresses);
        }
        let t = self.shared.timeouts.clone();
        let start = Instant::now();
        let mut slot = self.conn.lock().await;
        let mut last = String::from("nothing tried");
        loop {
            let mut redirected = false;
            for addr in self.shared.order() {
                match self.attempt(&mut slot, &addr, &op).await {
                    Attempt::Done(r) => return r,
                    Attempt::Redirect(to, why) => {
                        last = why;
                        if let Some(to) = to {
                            if to != addr {
                                self.shared.redirected(Some(to));
                                redirected = true;
                                break;
                            }
                        }
                    }
                    Attempt::Failed(why) => {
                        tracing::debug!("leader call: {why}");
                        last = why;
                        if self.shared.hint.lock().as_deref() == Some(addr.as_str()) {
                            self.shared.redirected(None);
                        }
                    }
                }
                if start.elapsed() >= t.call {
                    break;
                }
            }
            if start.elapsed() >= t.call {
                return Err(LeaderClientError::Unavailable {
                    waited: start.elapsed(),
                    last,
                });
            }
            if !redirected {
                tokio::time::sleep(t.backoff).await;
            }
        }
    }

    /// Join (or rejoin) a group; answers the server's record and the map.
    pub async fn join(
        &self,
        req: JoinRequest,
    ) -> Result<(ServerInfo, ClusterMap), LeaderClientError> {
        match self.call(LeaderRequest::Join(req)).await? {
            LeaderReply::Joined { server, map } => Ok((server, map)),
            other => Err(LeaderClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn heartbeat(&self, hb: Heartbeat) -> Result<HeartbeatAck, LeaderClientError> {
        match self.call(LeaderRequest::Heartbeat(hb)).await? {
            LeaderReply::HeartbeatAck(a) => Ok(a),
            other => Err(LeaderClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Read the map; `linearizable` asks the Raft leader to confirm it is
    /// current, otherwise any leader answers from its applied map.
    pub async fn get_map(&self, linearizable: bool) -> Result<ClusterMap, LeaderClientError> {
        match self.call(LeaderRequest::GetMap { linearizable }).await? {
            LeaderReply::Map(m) => Ok(m),
            other => Err(LeaderClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Move a group's master (to `to`, or the best ACTIVE member).
    pub async fn failover(
        &self,
        group: &str,
        to: Option<ServerId>,
    ) -> Result<GroupInfo, LeaderClientError> {
        let op = LeaderRequest::Failover {
            group: group.to_string(),
            to,
        };
        match self.call(op).await? {
            LeaderReply::FailedOver { group, .. } => Ok(group),
            other => Err(LeaderClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Mark a server DELETED.
    pub async fn remove_server(&self, id: ServerId) -> Result<ServerInfo, LeaderClientError> {
        match self.call(LeaderRequest::RemoveServer { id }).await? {
            LeaderReply::Removed { server, .. } => Ok(server),
            other => Err(LeaderClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Report that a server reached `status` at `data_version`.
    pub async fn report_progress(
        &self,
        id: ServerId,
        status: ServerStatus,
        data_version: u64,
    ) -> Result<ServerInfo, LeaderClientError> {
        let op = LeaderRequest::ReportProgress {
            id,
            status,
            data_version,
        };
        match self.call(op).await? {
            LeaderReply::Progress { server, .. } => Ok(server),
            other => Err(LeaderClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// As the master of `group` at `epoch`: `slave` missed a replication
    /// deadline (the leaders mark it OFFLINE before answering).
    pub async fn slave_failed(
        &self,
        group: &str,
        master: ServerId,
        slave: ServerId,
        epoch: u64,
    ) -> Result<ServerInfo, LeaderClientError> {
        let op = LeaderRequest::SlaveFailed {
            group: group.to_string(),
            master,
            slave,
            epoch,
        };
        match self.call(op).await? {
            LeaderReply::Progress { server, .. } => Ok(server),
            other => Err(LeaderClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// As the master of `group` at `epoch`: the epoch starts after `version`.
    pub async fn epoch_started(
        &self,
        group: &str,
        master: ServerId,
        epoch: u64,
        version: u64,
    ) -> Result<(), LeaderClientError> {
        let op = LeaderRequest::EpochStarted {
            group: group.to_string(),
            master,
            epoch,
            version,
        };
        match self.call(op).await? {
            LeaderReply::FailedOver { .. } => Ok(()),
            other => Err(LeaderClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// As the master of `group` at `epoch`: ONLINE `slave` has every
    /// version up to `data_version` and gets every new write; make it ACTIVE.
    /// Returns the server and the map version of the change.
    pub async fn activate(
        &self,
        group: &str,
        master: ServerId,
        slave: ServerId,
        epoch: u64,
        data_version: u64,
    ) -> Result<(ServerInfo, u64), LeaderClientError> {
        let op = LeaderRequest::Activate {
            group: group.to_string(),
            master,
            slave,
            epoch,
            data_version,
        };
        match self.call(op).await? {
            LeaderReply::Progress {
                server,
                map_version,
            } => Ok((server, map_version)),
            other => Err(LeaderClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The status of whichever leader answers first (the known leader first).
    pub async fn status(&self) -> Result<LeaderStatus, LeaderClientError> {
        match self.call(LeaderRequest::Status).await? {
            LeaderReply::Status(s) => Ok(s),
            other => Err(LeaderClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The status of one given leader (for listing every leader).
    pub async fn status_of(
        addr: &str,
        timeout: Duration,
    ) -> Result<LeaderStatus, LeaderClientError> {
        let c = LeaderClient::with_timeouts(
            vec![addr.to_string()],
            ClientTimeouts {
                connect: timeout,
                request: timeout,
                call: timeout,
                ..ClientTimeouts::default()
            },
        );
        c.status().await
    }

    /// Follow the map: the current map at once, then every change. The
    /// subscription finds the Raft leader, and finds the next one by itself
    /// when it goes away. Dropping the [`Subscription`] ends it.
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = mpsc::channel(256);
        let shared = self.shared.clone();
        let task = tokio::spawn(follow(shared, tx));
        Subscription { rx, task }
    }
}

/// A live subscription to the cluster map.
pub struct Subscription {
    rx: mpsc::Receiver<ClusterMap>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// The next map (each strictly newer than the one before).
    pub async fn next(&mut self) -> Option<ClusterMap> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Followed {
    /// Subscribed and streamed until the link ended.
    Streamed,
    Redirect(Option<String>),
    Failed(String),
    ReceiverGone,
}

async fn follow(shared: Arc<Shared>, tx: mpsc::Sender<ClusterMap>) {
    let mut last_version: Option<u64> = None;
    loop {
        let mut progressed = false;
        for addr in shared.order() {
            match follow_one(&shared, &addr, &tx, &mut last_version).await {
                Followed::ReceiverGone => return,
                Followed::Streamed => {
                    progressed = true;
                    break;
                }
                Followed::Redirect(Some(to)) if to != addr => {
                    shared.redirected(Some(to));
                    progressed = true;
                    break;
                }
                Followed::Redirect(_) => {}
                Followed::Failed(why) => {
                    tracing::debug!("subscription via {addr}: {why}");
                    if shared.hint.lock().as_deref() == Some(addr.as_str()) {
                        shared.redirected(None);
                    }
                }
            }
        }
        if !progressed {
            tokio::time::sleep(shared.timeouts.backoff).await;
        }
    }
}

async fn follow_one(
    shared: &Shared,
    addr: &str,
    tx: &mpsc::Sender<ClusterMap>,
    last_version: &mut Option<u64>,
) -> Followed {
    let t = &shared.timeouts;
    let mut conn = match connect(addr, t.connect).await {
        Ok(c) => c,
        Err(e) => return Followed::Failed(e),
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let msg = LeaderMessage::Request(LeaderRequestEnvelope {
        id,
        op: LeaderRequest::Subscribe,
    });
    if let Err(e) = conn.writer.write(&msg, &[]).await {
        return Followed::Failed(e.to_string());
    }
    let mut streamed = false;
    loop {
        let next =
            tokio::time::timeout(t.subscription_silence, conn.reader.read::<LeaderMessage>()).await;
        let frame = match next {
            Err(_) => {
                return end(
                    streamed,
                    format!("{addr}: silent for {:?}", t.subscription_silence),
                )
            }
            Ok(Err(e)) => return end(streamed, format!("{addr}: {e}")),
            Ok(Ok(None)) => return end(streamed, format!("{addr}: closed")),
            Ok(Ok(Some((m, _)))) => m,
        };
        match frame {
            LeaderMessage::MapUpdate(map) => {
                if !streamed {
                    streamed = true;
                    shared.redirected(Some(addr.to_string()));
                    tracing::debug!(%addr, version = map.version, "subscribed");
                }
                if last_version.is_none_or(|v| map.version > v) {
                    *last_version = Some(map.version);
                    if tx.send(map).await.is_err() {
                        return Followed::ReceiverGone;
                    }
                }
            }
            LeaderMessage::Keepalive { .. } => {}
            LeaderMessage::Response(r) => {
                return match r.result {
                    Err(e) if e.code() == ErrorCode::NotLeader => {
                        if streamed {
                            if let Some(to) = &e.redirect {
                                shared.redirected(Some(to.addr.clone()));
                            }
                            Followed::Streamed
                        } else {
                            Followed::Redirect(e.redirect.map(|r| r.addr))
                        }
                    }
                    Err(e) => end(streamed, format!("{addr}: {e}")),
                    Ok(_) => end(streamed, format!("{addr}: unexpected reply")),
                };
            }
            other => return end(streamed, format!("{addr}: unexpected {other:?}")),
        }
    }
}

fn end(streamed: bool, why: String) -> Followed {
    if streamed {
        tracing::debug!("subscription ended: {why}");
        Followed::Streamed
    } else {
        Followed::Failed(why)
    }
}
