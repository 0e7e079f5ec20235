//! One pusher per (this server, peer): sends this server's own changes
//! (upper-case binlog records) past the peer's mark.
//!
//! Loop: read up to [`BATCH`] records after the mark (only settled ones:
//! durable and visible in the index); keep the local ones, and of those
//! only the last per file (it carries the file's current state anyway);
//! offer them (`AsyncOffer`: the file's current version, or the delete);
//! push the wanted ones, [`IN_FLIGHT`] at a time (`AsyncPush`: `Install`
//! with the current state and content, streamed from disk above 8 MiB; or
//! `Delete`); then move the
//! mark past the batch and persist it. Idle, it waits for the engine to
//! publish a change (no polling); on errors it backs off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::peer::PeerBody;
use futures::stream::{FuturesUnordered, StreamExt};
use proto::cluster::ServerId;
use proto::{AsyncItem, FileId, ReplOp, ReplRecord, Reply, Request};
use tracing::{debug, info, info_span, warn, Instrument};

use super::delay::DelayBoard;
use super::marks::MarkStore;
use crate::engine::now_us;
use crate::engine::{BinlogRecord, Engine, LogPos};
use crate::repl::payload::{ContentReader, Payload};
use crate::repl::peers::PeerPool;

/// Binlog records read per round.
pub const BATCH: usize = 256;
/// Pushes in flight to one peer (each on its own connection).
const IN_FLIGHT: usize = 16;
/// Persist a mark that moved over records with nothing to push at most
/// this often (a stale mark only costs a re-offer).
const IDLE_PERSIST: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What every pusher of this server shares.
pub struct PushShared {
    pub me: ServerId,
    pub engine: Arc<Engine>,
    pub marks: Arc<MarkStore>,
    pub delay: Arc<DelayBoard>,
}

/// Why one round failed (the pusher backs off and retries).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("reading local changes: {0}")]
    Engine(#[from] crate::engine::EngineError),
    #[error("talking to the peer: {0}")]
    Peer(#[from] client::ClientError),
    #[error("the peer refused {what}: {err}")]
    Refused { what: String, err: proto::WireError },
    #[error("unexpected answer to {what}: {answer}")]
    Unexpected { what: &'static str, answer: String },
    #[error(transparent)]
    Mark(#[from] super::marks::MarkError),
}

/// What a round did.
enum Round {
    /// Records were handled; there may be more.
    More,
    /// Nothing past the mark.
    Idle,
}

struct Pusher {
    shared: Arc<PushShared>,
    peer: ServerId,
    /// Connections to the peer (at most [`IN_FLIGHT`] kept idle).
    conns: PeerPool,
    /// The mark in memory (ahead of the file by at most one idle period).
    mark: u64,
    persisted: u64,
    persisted_at: Instant,
    hint: Option<LogPos>,
    pushed: AtomicU64,
}

/// Push to `peer` at `addr` until aborted.
pub async fn run(shared: Arc<PushShared>, peer: ServerId, addr: String) {
    let span = info_span!("pusher", peer, addr = %addr);
    async move {
        let mark = shared.marks.get(peer);
        info!(mark, "pushing local changes to a peer");
        let mut published = shared.engine.published();
        let mut p = Pusher {
            shared,
            peer,
            conns: PeerPool::new(addr, CONNECT_TIMEOUT, CALL_TIMEOUT, IN_FLIGHT),
            mark,
            persisted: mark,
            persisted_at: Instant::now(),
            hint: None,
            pushed: AtomicU64::new(0),
        };
        let mut backoff = BACKOFF_MIN;
        let mut last_problem = String::new();
        loop {
            match p.round().await {
                Ok(Round::More) => {
                    backoff = BACKOFF_MIN;
                    last_problem.clear();
                }
                Ok(Round::Idle) => {
                    backoff = BACKOFF_MIN;
                    last_problem.clear();
                    p.shared.delay.set(p.peer, None);
                    if let Err(e) = p.persist(true) {
                        warn!(error = %e, "cannot persist the push mark");
                    }
                    // Wake on the next published change (or after a while,
                    // to notice a peer that needs nothing from us).
                    let _ = tokio::time::timeout(Duration::from_secs(5), published.changed()).await;
                }
                Err(e) => {
                    p.conns.clear();
                    p.shared.delay.refresh();
                    let problem = e.to_string();
                    if problem != last_problem {
                        warn!(error = %problem, retry_in = ?backoff, "push round failed");
                        last_problem = problem;
                    } else {
                        debug!(error = %problem, "push round failed again");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
    .instrument(span)
    .await
}

impl Pusher {
    fn persist(&mut self, force: bool) -> Result<(), PushError> {
        if self.mark == self.persisted {
            return Ok(());
        }
        if !force && self.persisted_at.elapsed() < IDLE_PERSIST {
            return Ok(());
        }
        self.shared.marks.set(self.peer, self.mark)?;
        self.persisted = self.mark;
        self.persisted_at = Instant::now();
        Ok(())
    }

    async fn round(&mut self) -> Result<Round, PushError> {
        let (recs, pos) = self
            .shared
            .engine
            .records_after(self.mark, BATCH, self.hint)?;
        let Some(last) = recs.last().map(|r| r.version) else {
            debug!(
                mark = self.mark,
                settled = self.shared.engine.settled_version(),
                durable = self.shared.engine.data_version(),
                "nothing to push"
            );
            return Ok(Round::Idle);
        };
        let local: Vec<&BinlogRecord> = recs.iter().filter(|r| r.is_local()).collect();
        if let Some(first) = local.first() {
            let since = first.time_us().unwrap_or_else(now_us);
            self.shared.delay.set(self.peer, Some(since));
        }
        let plan = self.plan(&local);
        debug!(
            mark = self.mark,
            records = recs.len(),
            local = local.len(),
            offer = plan.len(),
            "push round"
        );
        let mut pushed_any = false;
        if !plan.is_empty() {
            let items: Vec<AsyncItem> = plan.iter().map(|(item, _)| item.clone()).collect();
            let want = self.offer(items).await?;
            // One item per file: they may land in any order, so they go
            // concurrently (the peer's fsyncs are shared); the mark moves
            // only once every one of them is there.
            let wanted: Vec<&(AsyncItem, u64)> = plan
                .iter()
                .zip(want)
                .filter_map(|(p, w)| w.then_some(p))
                .collect();
            pushed_any = !wanted.is_empty();
            let mut left = wanted.into_iter();
            let mut pushes = FuturesUnordered::new();
            for (item, time) in left.by_ref().take(IN_FLIGHT) {
                pushes.push(self.push(item, *time));
            }
            while let Some(r) = pushes.next().await {
                r?;
                if let Some((item, time)) = left.next() {
                    pushes.push(self.push(item, *time));
                }
            }
        }
        self.mark = last;
        self.hint = pos;
        self.persist(pushed_any)?;
        Ok(Round::More)
    }

    /// The items to offer: the last local record of each file in the
    /// batch, installs at the file's current version (skipped when the
    /// file is gone: its delete comes later in the log), with the time of
    /// the change for the lag figures.
    fn plan(&self, local: &[&BinlogRecord]) -> Vec<(AsyncItem, u64)> {
        let mut last_of: HashMap<&str, u64> = HashMap::new();
        for r in local {
            last_of.insert(r.file_id.as_str(), r.version);
        }
        let engine = &self.shared.engine;
        local
            .iter()
            .filter(|r| last_of.get(r.file_id.as_str()) == Some(&r.version))
            .filter_map(|r| {
                let time = r.time_us().unwrap_or_else(now_us);
                if r.is_delete() {
                    return Some((
                        AsyncItem {
                            file_id: r.file_id.clone(),
                            file_version: r.file_version,
                            delete: true,
                        },
                        time,
                    ));
                }
                let id = FileId::parse(&r.file_id).ok()?;
                let version = engine.file_version(&id)?;
                Some((
                    AsyncItem {
                        file_id: r.file_id.clone(),
                        file_version: version,
                        delete: false,
                    },
                    time,
                ))
            })
            .collect()
    }

    async fn offer(&self, items: Vec<AsyncItem>) -> Result<Vec<bool>, PushError> {
        let n = items.len();
        let op = Request::AsyncOffer {
            source: self.shared.me,
            items,
        };
        let answer = self.conns.call(op, 0, PeerBody::None, None).await?;
        match answer {
            Ok(Reply::AsyncWanted { want }) if want.len() == n => Ok(want),
            Ok(other) => Err(PushError::Unexpected {
                what: "AsyncOffer",
                answer: format!("{other:?}"),
            }),
            Err(err) => Err(PushError::Refused {
                what: format!("an offer of {n} changes"),
                err,
            }),
        }
    }

    async fn push(&self, item: &AsyncItem, time_us: u64) -> Result<(), PushError> {
        let mut rec = ReplRecord {
            version: 0,
            file_id: item.file_id.clone(),
            op: ReplOp::Delete,
            prev_version: 0,
            file_version: item.file_version,
            state: None,
            body_len: 0,
            client_id: 0,
            seq: 0,
        };
        let payload = if item.delete {
            Payload::Mem(bytes::Bytes::new())
        } else {
            let Ok(id) = FileId::parse(&item.file_id) else {
                return Ok(());
            };
            let Some(snap) = self.shared.engine.snapshot_file(&id).await? else {
                // Deleted since the offer: the delete is further on.
                return Ok(());
            };
            rec.op = ReplOp::Install;
            rec.version = snap.version;
            rec.file_version = snap.version;
            rec.body_len = snap.state.size;
            rec.state = Some(snap.state);
            Payload::of(Some(&snap.content)).await?
        };
        let op = Request::AsyncPush {
            source: self.shared.me,
            rec,
            source_time_us: time_us,
        };
        let answer = match &payload {
            Payload::Mem(b) => self.conns.call(op, 0, PeerBody::Slice(b), None).await?,
            Payload::Stream(content) => {
                let len = content.len();
                let mut reader = ContentReader::new(content.clone());
                self.conns
                    .call(op, 0, PeerBody::Reader(&mut reader, len), None)
                    .await?
            }
        };
        match answer {
            Ok(Reply::Replicated { .. }) => {
                let total = self.pushed.fetch_add(1, Ordering::Relaxed) + 1;
                debug!(file = %item.file_id, delete = item.delete, total, "pushed");
                Ok(())
            }
            Ok(other) => Err(PushError::Unexpected {
                what: "AsyncPush",
                answer: format!("{other:?}"),
            }),
            Err(err) => Err(PushError::Refused {
                what: format!("the push of {}", item.file_id),
                err,
            }),
        }
    }
}
