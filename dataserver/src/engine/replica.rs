//! The engine's side of replication.
//!
//! * Every mutation runs with an [`Origin`]: a client request here, or a
//!   change replicated from the master. A replicated change must take the
//!   data version the master gave it (the binlog refuses anything else),
//!   keeps the master's times and metadata, and must produce the master's
//!   size and crc32 (else [`EngineError::Diverged`] and nothing is logged).
//!   Its binlog record carries the lower-case op code.
//! * A local change on a master is durable here first, then handed to the
//!   [`ReplicateHook`] (which sends it to the slaves and waits for them),
//!   and only then published to the index and acknowledged: no reader can
//!   see a change the slaves do not have. If the hook fails, the change is
//!   published anyway (the index must match the binlog) and the caller gets
//!   the hook's error; the hook fences the server (see `repl/`).
//! * [`Engine::apply_replicated`] applies one [`ReplRecord`] on a slave.

use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use proto::{FileId, FileStat, ReplOp, ReplRecord, ReplState};

use super::chunk::HEADER_LEN;
use super::content::{read_at, Kept};
use super::error::{EngineError, IoContext};
use super::index::{Entry, Loc};
use super::{Body, Engine};

/// Where a mutation comes from.
#[derive(Clone, Copy)]
pub(crate) enum Origin<'a> {
    /// A client request at this server: `(client_id, seq)`.
    Local { client: (u64, u64) },
    /// A change the master assigned `rec.version`.
    Replica(&'a ReplRecord),
    /// Async mode: a peer's own file, pushed here; it takes this server's
    /// next data version (noted in the atomic when handed out) but keeps
    /// the source's file version.
    Pushed(&'a ReplRecord, &'a AtomicU64),
}

impl Origin<'_> {
    /// The data version the binlog must hand out (replicas only).
    pub fn expect(&self) -> Option<u64> {
        match self {
            Origin::Local { .. } | Origin::Pushed(..) => None,
            Origin::Replica(r) => Some(r.version),
        }
    }

    /// The file version to record for a change at data version `v`.
    pub fn file_version(&self, v: u64) -> u64 {
        match self {
            Origin::Local { .. } => v,
            Origin::Replica(r) | Origin::Pushed(r, _) => r.file_version,
        }
    }

    /// The client request this change answers, kept in its binlog record
    /// (`(0, 0)`: none; pushed changes answer nobody here).
    pub fn client(&self) -> (u64, u64) {
        match self {
            Origin::Local { client } => *client,
            Origin::Replica(r) => (r.client_id, r.seq),
            Origin::Pushed(..) => (0, 0),
        }
    }

    /// Note the data version the binlog handed out for this change.
    pub fn took(&self, v: u64) {
        if let Origin::Pushed(_, at) = self {
            at.store(v, Ordering::Release);
        }
    }

    /// The data version the change took here, given the version recorded
    /// in its entry (the file version): a local change's are the same; a
    /// replicated change took the master's; a pushed one what [`Self::took`]
    /// noted.
    pub fn data_version(&self, entry_version: u64) -> u64 {
        match self {
            Origin::Local { .. } => entry_version,
            Origin::Replica(r) => r.version,
            Origin::Pushed(_, at) => at.load(Ordering::Acquire),
        }
    }

    /// The binlog op code: lower case for replicated changes.
    pub fn op_code(&self, op: u8) -> u8 {
        match self {
            Origin::Local { .. } => op,
            Origin::Replica(_) | Origin::Pushed(..) => op.to_ascii_lowercase(),
        }
    }
}

/// Bodies up to this size are kept in memory for the slaves.
const KEEP_MAX: u64 = 8 << 20;

/// What a local change was, for the slaves.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub op: ReplOp,
    /// The file's version before (0: it did not exist).
    pub prev_version: u64,
    /// The bytes to send: `(offset, len)` within the new content.
    pub content: Option<(u64, u64)>,
    /// Those bytes as they arrived, if kept (see [`Engine::keep_for_slaves`]).
    pub body: Kept,
}

/// Bytes of a durable, not yet published change, read back for the slaves.
#[derive(Clone)]
pub struct Content {
    file: Arc<File>,
    base: u64,
    len: u64,
    /// A small file's extent stays reserved while its bytes are read.
    _extent: Option<Arc<super::space::Extent>>,
    /// The same bytes still in memory (the body as it arrived), if kept.
    mem: Option<Arc<[Bytes]>>,
}

impl Content {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Up to `max` bytes from `at` (within the change's bytes).
    pub async fn read(&self, at: u64, max: usize) -> Result<Bytes, EngineError> {
        let n = (self.len.saturating_sub(at)).min(max as u64) as usize;
        if let Some(parts) = &self.mem {
            let mut start = 0u64;
            for p in parts.iter() {
                let end = start + p.len() as u64;
                if at < end {
                    let from = (at - start) as usize;
                    return Ok(p.slice(from..p.len().min(from + n)));
                }
                start = end;
            }
            return Ok(Bytes::new());
        }
        read_at(&self.file, self.base + at, n).await
    }

    /// Serve these bytes from `parts`, if given (and they are them),
    /// instead of from disk.
    fn with_mem(mut self, parts: Option<Vec<Bytes>>) -> Self {
        let Some(parts) = parts else {
            return self;
        };
        let n: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if n == self.len {
            self.mem = Some(parts.into_iter().filter(|p| !p.is_empty()).collect());
        }
        self
    }

    /// All of it, in pieces of at most one stream chunk (1 MiB).
    pub async fn chunks(&self) -> Result<Vec<Bytes>, EngineError> {
        let mut parts = Vec::new();
        let mut at = 0;
        while at < self.len {
            let b = self.read(at, proto::frame::STREAM_CHUNK).await?;
            if b.is_empty() {
                return Err(EngineError::Corrupt(format!(
                    "content ends at {at} of {} bytes",
                    self.len
                )));
            }
            at += b.len() as u64;
            parts.push(b);
        }
        Ok(parts)
    }
}

/// The boxed future a [`ReplicateHook`] returns.
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<(), EngineError>> + Send + 'a>>;

/// Sends a durable local change to the slaves (set by the server on a
/// member of a sync group).
pub trait ReplicateHook: Send + Sync + 'static {
    /// `None` when this server has nobody to replicate to right now.
    fn replicate(&self, rec: ReplRecord, content: Option<Content>) -> HookFuture<'_>;
}

pub(crate) fn repl_state(e: &Entry) -> ReplState {
    ReplState {
        size: e.size,
        crc32: e.crc32,
        create_time_us: e.create_us,
        modify_time_us: e.modify_us,
        appender: e.appender,
        meta: e.meta.clone(),
    }
}

impl Engine {
    /// Install the hook that replicates local changes (`None` removes it).
    pub fn set_replicate_hook(&self, hook: Option<Arc<dyn ReplicateHook>>) {
        *self.hook.write() = hook;
    }

    /// A replicated change must end where the master's did.
    pub(crate) fn conform(
        &self,
        id: &FileId,
        entry: &mut Entry,
        origin: Origin<'_>,
    ) -> Result<(), EngineError> {
        let (Origin::Replica(rec) | Origin::Pushed(rec, _)) = origin else {
            return Ok(());
        };
        let Some(st) = &rec.state else {
            return Ok(());
        };
        if entry.size != st.size || entry.crc32 != st.crc32 {
            return Err(EngineError::Diverged(format!(
                "{id} at version {}: the master has {} bytes crc32 {:08x}, applying here gives {} bytes crc32 {:08x}",
                rec.version, st.size, st.crc32, entry.size, entry.crc32
            )));
        }
        entry.create_us = st.create_time_us;
        entry.modify_us = st.modify_time_us;
        entry.appender = st.appender;
        entry.meta = st.meta.clone();
        Ok(())
    }

    /// The bytes `(offset, len)` of `entry`'s content.
    pub(crate) fn content_of(
        &self,
        id: &FileId,
        entry: &Entry,
        offset: u64,
        len: u64,
    ) -> Result<Content, EngineError> {
        let store = &self.stores[entry.loc.store() as usize];
        match entry.loc {
            Loc::Small {
                chunk, offset: rec, ..
            } => {
                let file = store
                    .chunk(chunk)
                    .ctx(|| format!("opening the chunk of {id}"))?;
                Ok(Content {
                    file,
                    base: rec + HEADER_LEN + offset,
                    len,
                    _extent: entry.extent.clone(),
                    mem: None,
                })
            }
            Loc::Large { .. } => {
                let path = store.large_path(id);
                let file = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
                Ok(Content {
                    file: Arc::new(file),
                    base: offset,
                    len,
                    _extent: None,
                    mem: None,
                })
            }
        }
    }

    /// Use up version `v` with a no-op record.
    pub(crate) async fn log_noop(&self, v: u64) -> Result<u64, EngineError> {
        let _g = self.gate.read().await;
        self.check_writable()?;
        let res = self
            .binlog
            .append(Some(v), |v, c| {
                super::binlog::encode_committed(v, super::binlog::op::VOID, "", v, None, 0, c)
            })
            .await;
        match res {
            Ok(v) => {
                self.binlog.applied(v);
                Ok(v)
            }
            Err(e) => Err(self.binlog_failed(e)),
        }
    }

    /// The next data version this server will hand out.
    pub fn next_version(&self) -> u64 {
        self.binlog.next_version()
    }

    /// Wait until version `v - 1` has been handed out here (so `v` is the
    /// next), at most `limit`. False on timeout or when `v` is already past.
    pub async fn wait_turn(&self, v: u64, limit: std::time::Duration) -> bool {
        let mut rx = self.binlog.assigned();
        let want = v.saturating_sub(1);
        // The watch's guard must be gone before the binlog lock is taken
        // (the binlog updates the watch under that lock).
        let reached =
            tokio::time::timeout(limit, async { rx.wait_for(|&a| a >= want).await.is_ok() })
                .await
                .unwrap_or(false);
        reached && self.binlog.next_version() == v
    }

    /// Wait until every version up to `v` is durable here, at most `limit`.
    pub async fn wait_durable(&self, v: u64, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.data_version() < v {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        true
    }

    /// A master's barrier: a local no-op version, replicated like any
    /// change. When it returns `Ok`, every slave the hook waited for has
    /// every version up to the returned one.
    pub async fn barrier(&self) -> Result<u64, EngineError> {
        let v = {
            let _g = self.gate.read().await;
            self.check_writable()?;
            let res = self
                .binlog
                .append(None, |v, c| {
                    super::binlog::encode_committed(v, super::binlog::op::VOID, "", v, None, 0, c)
                })
                .await;
            match res {
                Ok(v) => v,
                Err(e) => return Err(self.binlog_failed(e)),
            }
        };
        let hook = self.hook.read().clone();
        let res = match hook {
            Some(h) => {
                let rec = ReplRecord {
                    version: v,
                    file_id: String::new(),
                    op: ReplOp::Noop,
                    prev_version: 0,
                    file_version: v,
                    state: None,
                    body_len: 0,
                    client_id: 0,
                    seq: 0,
                };
                h.replicate(rec, None).await
            }
            None => Ok(()),
        };
        self.binlog.applied(v);
        res.map(|()| v)
    }

    /// Catch-up listing: records from `from` up to the last version every
    /// change below which is visible in the index, at most `max`; and
    /// that version.
    pub fn log_refs(
        &self,
        from: u64,
        max: usize,
    ) -> Result<(Vec<proto::LogRef>, u64), EngineError> {
        let safe = self.binlog.safe_version().min(self.data_version());
        let recs = self.binlog_records_since(from.saturating_sub(1), max)?;
        let refs = recs
            .into_iter()
            .filter(|r| r.version <= safe)
            .map(|r| {
                let void = r.op.to_ascii_uppercase() == super::binlog::op::VOID;
                proto::LogRef {
                    version: r.version,
                    file_id: if void { String::new() } else { r.file_id },
                    delete: r.op.to_ascii_uppercase() == super::binlog::op::DELETE,
                }
            })
            .collect();
        Ok((refs, safe))
    }

    /// Catch-up fetch: a file's current version, state and whole content,
    /// as published (never a change half-seen). `None`: no file.
    ///
    /// Read without the file's lane first: a write holding it may be
    /// waiting for the very slave that asks (one being activated, which
    /// needs this answer to fill the gap before that write), and lanes are
    /// shared by many files. A published small-file record never changes
    /// under its reader (its extent stays reserved while read); a large
    /// file patched in place meanwhile fails the crc check, and then the
    /// lane is taken.
    pub async fn fetch_file(
        &self,
        id: &FileId,
    ) -> Result<Option<(u64, ReplState, Vec<Bytes>)>, EngineError> {
        self.check_id(id)?;
        let Some(entry) = self.index.read().get(id).cloned() else {
            return Ok(None);
        };
        if let Ok(Some(parts)) = self.whole_content(id, &entry).await {
            return Ok(Some((entry.version, repl_state(&entry), parts)));
        }
        let _lane = self.lanes.lock(id).await;
        let Some(entry) = self.index.read().get(id).cloned() else {
            return Ok(None);
        };
        match self.whole_content(id, &entry).await? {
            Some(parts) => Ok(Some((entry.version, repl_state(&entry), parts))),
            None => Err(EngineError::Corrupt(format!(
                "{id}: content does not match its crc32"
            ))),
        }
    }

    /// A file's whole content per `entry`; `None` if it does not match the
    /// entry's crc32.
    async fn whole_content(
        &self,
        id: &FileId,
        entry: &Entry,
    ) -> Result<Option<Vec<Bytes>>, EngineError> {
        let parts = self.content_of(id, entry, 0, entry.size)?.chunks().await?;
        let mut h = crc32fast::Hasher::new();
        for p in &parts {
            h.update(p);
        }
        Ok((h.finalize() == entry.crc32).then_some(parts))
    }

    /// The last step of every mutation: replicate a local change (if a
    /// hook is set), then publish it.
    pub(crate) async fn finish(
        &self,
        origin: Origin<'_>,
        change: Change,
        id: &FileId,
        entry: Entry,
    ) -> Result<FileStat, EngineError> {
        let res = match origin {
            Origin::Local { client } => self.replicate_local(client, change, id, &entry).await,
            Origin::Replica(_) | Origin::Pushed(..) => Ok(()),
        };
        let v = origin.data_version(entry.version);
        let stat = self.publish(id, entry, v);
        res.map(|()| stat)
    }

    /// Whether the body of a local change of `size` bytes is kept in
    /// memory for the slaves (only with a replicate hook, up to
    /// [`KEEP_MAX`]); else its bytes are read back from disk.
    pub(crate) fn keep_for_slaves(&self, origin: Origin<'_>, size: u64) -> Kept {
        if matches!(origin, Origin::Local { .. }) && size <= KEEP_MAX && self.hook.read().is_some()
        {
            Kept::on()
        } else {
            Kept::default()
        }
    }

    pub(crate) async fn replicate_local(
        &self,
        client: (u64, u64),
        change: Change,
        id: &FileId,
        entry: &Entry,
    ) -> Result<(), EngineError> {
        let Some(hook) = self.hook.read().clone() else {
            return Ok(());
        };
        let content = match change.content {
            Some((off, len)) => Some(
                self.content_of(id, entry, off, len)?
                    .with_mem(change.body.take()),
            ),
            None => None,
        };
        let rec = ReplRecord {
            version: entry.version,
            file_id: id.to_string(),
            op: change.op,
            prev_version: change.prev_version,
            file_version: entry.version,
            state: Some(repl_state(entry)),
            body_len: content.as_ref().map_or(0, |c| c.len()),
            client_id: client.0,
            seq: client.1,
        };
        hook.replicate(rec, content).await
    }

    /// Apply one replicated change. The caller applies changes in version
    /// order, one at a time up to the point its version is taken (see
    /// `repl::slave`), and `rec.version` must be the next version here.
    ///
    /// Rules, by the file's version here (`have`, 0 when absent):
    /// * `Noop`, or `have >= rec.file_version` (already there, e.g. from a
    ///   catch-up copy): the version is used by a no-op record.
    /// * `Install`: the file is replaced by the given state and content.
    /// * `Delete`: removed (a no-op record when absent).
    /// * otherwise `have` must be `rec.prev_version` (else `Diverged`), and
    ///   the change is applied and must produce the master's size and crc.
    pub async fn apply_replicated(
        &self,
        rec: &ReplRecord,
        body: &mut impl Body,
    ) -> Result<u64, EngineError> {
        let origin = Origin::Replica(rec);
        let next = self.binlog.next_version();
        if rec.version != next {
            return Err(EngineError::Diverged(format!(
                "replicated version {} arrived, but the next version here is {next}",
                rec.version
            )));
        }
        if rec.op == ReplOp::Noop {
            return self.log_noop(rec.version).await;
        }
        let id = super::pushed::parse_id(&rec.file_id)?;
        self.check_id(&id)?;
        let have = {
            // The version before this one may have changed the same file
            // and still be on its way to the index (a copied version and a
            // live one meet while a slave is activated): it holds the
            // file's lane until it is published. Safe to wait for here:
            // every holder already has its version.
            let _lane = self.lanes.lock(&id).await;
            self.index.read().get(&id).map_or(0, |e| e.version)
        };
        if rec.op != ReplOp::Install && have != 0 && have >= rec.file_version {
            return self.log_noop(rec.version).await;
        }
        let state = || {
            rec.state.clone().ok_or_else(|| {
                EngineError::BadRequest(format!("replicated {} without a state", rec.op.name()))
            })
        };
        match rec.op {
            ReplOp::Delete => {
                if have == 0 {
                    return self.log_noop(rec.version).await;
                }
                self.do_delete(&id, None, origin).await
            }
            ReplOp::Install => {
                let st = state()?;
                self.do_upload_as(&id, rec.body_len, st.meta, st.appender, body, origin)
                    .await
                    .map(|s| s.version)
            }
            _ if have != rec.prev_version => Err(EngineError::Diverged(format!(
                "{id}: the master changed version {} here, but this server has version {have}",
                rec.prev_version
            ))),
            ReplOp::Create => {
                let st = state()?;
                self.do_upload_as(&id, rec.body_len, st.meta, st.appender, body, origin)
                    .await
                    .map(|s| s.version)
            }
            ReplOp::Append { .. } => self
                .do_append(&id, rec.body_len, None, body, origin)
                .await
                .map(|s| s.version),
            ReplOp::Modify { offset } => self
                .do_modify(&id, offset, rec.body_len, None, body, origin)
                .await
                .map(|s| s.version),
            ReplOp::Truncate => {
                let st = state()?;
                self.do_truncate(&id, st.size, None, origin)
                    .await
                    .map(|s| s.version)
            }
            ReplOp::SetMeta => {
                let st = state()?;
                self.do_set_meta(&id, st.meta, proto::MetaMode::Overwrite, None, origin)
                    .await
                    .map(|s| s.version)
            }
            ReplOp::Noop => self.log_noop(rec.version).await,
        }
    }
}
