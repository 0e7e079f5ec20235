//! The storage engine: chunk files for small files, single files for large
//! ones, the index, the binlog, space accounting and the disk threads.
//!
//! PUBLIC SURFACE (contract with `server/`): keep these signatures; add
//! whatever private modules you need below `engine/`.
//!
//! Module map:
//! * [`disk`]: io_uring (or pwrite) disk threads with group commit;
//! * [`binlog`]: the change log with data versions;
//! * [`index`]: the in-memory index and the file-state encoding;
//! * [`checkpoint`]: index checkpoints;
//! * [`chunk`]: chunk files and record headers, per-store-path state;
//! * [`space`]: free lists, extent guards, statvfs;
//! * [`content`]: body streaming, buffered writes, verified reads;
//! * [`dio`]: aligned buffers and O_DIRECT writes of new records;
//! * [`write`]: the mutating operations; [`read`]: downloads;
//! * [`recovery`]: opening the engine; [`lanes`]: per-file ordering;
//! * [`rollback`]: dropping versions past the group's history at open.
//!
//! Durability and crash safety are described in `docs/ARCHITECTURE.md`
//! (storage engine section) and in the comments of [`write`].

mod binlog;
mod checkpoint;
mod chunk;
mod codec;
mod content;
mod dio;
mod disk;
mod error;
mod index;
mod lanes;
mod listing;
mod pushed;
mod read;
mod recovery;
mod replica;
mod rollback;
mod space;
mod write;

#[cfg(test)]
mod dio_tests;
#[cfg(test)]
mod pushed_tests;
#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod rollback_tests;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use proto::{FileId, FileStat, MetaEntry, MetaMode};

pub use binlog::{op as binlog_op, BinlogRecord, LogPos};
pub use dio::RecvBuf;
pub use error::EngineError;
pub use pushed::{PushOutcome, Snapshot};
pub use replica::{Content, HookFuture, ReplicateHook};
pub use rollback::{request as request_rollback, RolledBack};
pub(crate) use write::now_us;

use replica::Origin;

use chunk::Store;
use disk::DiskStats;
use index::{Entry, IndexMap};

/// Durability policy for acknowledged writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fdatasync before every acknowledgement (group-committed).
    #[default]
    Always,
    /// Acknowledge after the write; fdatasync every `fsync_interval_ms`.
    Batch,
    /// Never fdatasync (the OS flushes when it likes).
    Never,
}

/// Engine configuration (a part of the server's TOML config).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Group this server stores files for.
    pub group: String,
    /// This server's id (goes into new file ids).
    pub server_id: u32,
    /// One or more store paths (disks). Index `i` is `M{i:02X}` in file ids.
    pub store_paths: Vec<PathBuf>,
    /// Where the binlog and index checkpoints live.
    pub meta_dir: PathBuf,
    /// Files larger than this are stored as single files.
    pub large_file_threshold: u64,
    /// Maximum size of one chunk file.
    pub chunk_file_size: u64,
    /// Extra capacity reserved for in-place growth of small files, as a
    /// fraction of their size (0.2 = 20 %).
    pub reserve_ratio: f64,
    /// Writes are refused with `NoSpace` when they would leave less than
    /// this many bytes free on a store path.
    pub reserved_space: u64,
    pub fsync: FsyncPolicy,
    pub fsync_interval_ms: u64,
    /// Use io_uring when the kernel allows (probed at start; falls back to
    /// pwrite + fdatasync).
    pub io_uring: bool,
    /// Number of per-file lanes.
    pub lanes: usize,
}

/// A source of body bytes (the network layer feeds it from `Data` frames).
/// It yields exactly the declared size in total, then `None`.
pub trait Body: Send {
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, EngineError>> + Send;
}

/// A download in progress.
pub struct FileRead {
    pub stat: FileStat,
    pub offset: u64,
    pub length: u64,
    src: read::Src,
    served: u64,
}

impl FileRead {
    /// The next piece of at most `max` bytes; `None` when `length` is served.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, EngineError> {
        self.next_piece(max).await
    }
}

/// Space on one store path.
#[derive(Debug, Clone)]
pub struct StorePathUsage {
    pub path: PathBuf,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub reserved_bytes: u64,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// fdatasync calls issued by the disk threads (binlog and data).
    pub fsyncs: u64,
    /// Write pieces submitted by the disk threads.
    pub writes: u64,
    /// Batches processed by the disk threads.
    pub batches: u64,
}

pub struct Engine {
    cfg: EngineConfig,
    stores: Vec<Store>,
    binlog: binlog::Binlog,
    index: RwLock<IndexMap>,
    lanes: lanes::Lanes,
    /// Every mutation holds it shared; shutdown takes it exclusively.
    gate: tokio::sync::RwLock<()>,
    poisoned: Arc<AtomicBool>,
    closed: AtomicBool,
    stats: Arc<DiskStats>,
    ckpt_lock: Mutex<()>,
    ckpt_thread: Mutex<Option<recovery::CheckpointThread>>,
    /// Replicates local changes before they are published (sync masters).
    hook: RwLock<Option<Arc<dyn ReplicateHook>>>,
    /// What a rollback asked for before this open did (its broken files
    /// cleared once the rollback is complete).
    rolled_back: Mutex<Option<RolledBack>>,
    /// See [`Engine::voided_from`].
    voided: Mutex<Option<u64>>,
}

impl Engine {
    /// Open (recovering from the binlog and checkpoint) and start the disk
    /// threads. Call from inside a tokio runtime or not: nothing async runs here.
    pub fn open(cfg: EngineConfig) -> Result<Arc<Engine>, EngineError> {
        recovery::open(cfg)
    }

    /// Store a new file of `size` bytes read from `body`.
    pub async fn upload(
        &self,
        size: u64,
        ext: &str,
        meta: Vec<MetaEntry>,
        appender: bool,
        body: &mut impl Body,
    ) -> Result<FileStat, EngineError> {
        self.upload_for(size, ext, meta, appender, body, (0, 0))
            .await
    }

    /// [`Self::upload`] on behalf of `client` = `(client_id, seq)`, which
    /// the slaves remember for exactly-once retries.
    pub async fn upload_for(
        &self,
        size: u64,
        ext: &str,
        meta: Vec<MetaEntry>,
        appender: bool,
        body: &mut impl Body,
        client: (u64, u64),
    ) -> Result<FileStat, EngineError> {
        self.do_upload(size, ext, meta, appender, body, Origin::Local { client })
            .await
    }

    /// Start reading `length` bytes (to the end when `None`, clamped to the
    /// end otherwise) from `offset` (must be <= size).
    pub async fn open_read(
        &self,
        id: &FileId,
        offset: u64,
        length: Option<u64>,
    ) -> Result<FileRead, EngineError> {
        self.do_open_read(id, offset, length).await
    }

    /// Delete a file; returns the data version of the deletion.
    pub async fn delete(&self, id: &FileId, if_version: Option<u64>) -> Result<u64, EngineError> {
        self.delete_for(id, if_version, (0, 0)).await
    }

    /// [`Self::delete`] on behalf of `client` (see [`Self::upload_for`]).
    pub async fn delete_for(
        &self,
        id: &FileId,
        if_version: Option<u64>,
        client: (u64, u64),
    ) -> Result<u64, EngineError> {
        self.do_delete(id, if_version, Origin::Local { client })
            .await
    }

    /// Append `size` bytes to an appender file.
    pub async fn append(
        &self,
        id: &FileId,
        size: u64,
        if_version: Option<u64>,
        body: &mut impl Body,
    ) -> Result<FileStat, EngineError> {
        self.append_for(id, size, if_version, body, (0, 0)).await
    }

    /// [`Self::append`] on behalf of `client` (see [`Self::upload_for`]).
    pub async fn append_for(
        &self,
        id: &FileId,
        size: u64,
        if_version: Option<u64>,
        body: &mut impl Body,
        client: (u64, u64),
    ) -> Result<FileStat, EngineError> {
        self.do_append(id, size, if_version, body, Origin::Local { client })
            .await
    }

    /// Overwrite `size` bytes at `offset` (<= current size; may extend).
    pub async fn modify(
        &self,
        id: &FileId,
        offset: u64,
        size: u64,
        if_version: Option<u64>,
        body: &mut impl Body,
    ) -> Result<FileStat, EngineError> {
        self.modify_for(id, offset, size, if_version, body, (0, 0))
            .await
    }

    /// [`Self::modify`] on behalf of `client` (see [`Self::upload_for`]).
    pub async fn modify_for(
        &self,
        id: &FileId,
        offset: u64,
        size: u64,
        if_version: Option<u64>,
        body: &mut impl Body,
        client: (u64, u64),
    ) -> Result<FileStat, EngineError> {
        let origin = Origin::Local { client };
        self.do_modify(id, offset, size, if_version, body, origin)
            .await
    }

    /// Set an appender file's size (shrinks, or extends with zeros).
    pub async fn truncate(
        &self,
        id: &FileId,
        size: u64,
        if_version: Option<u64>,
    ) -> Result<FileStat, EngineError> {
        self.truncate_for(id, size, if_version, (0, 0)).await
    }

    /// [`Self::truncate`] on behalf of `client` (see [`Self::upload_for`]).
    pub async fn truncate_for(
        &self,
        id: &FileId,
        size: u64,
        if_version: Option<u64>,
        client: (u64, u64),
    ) -> Result<FileStat, EngineError> {
        self.do_truncate(id, size, if_version, Origin::Local { client })
            .await
    }

    pub async fn stat(&self, id: &FileId) -> Result<FileStat, EngineError> {
        self.check_id(id)?;
        let idx = self.index.read();
        idx.get(id)
            .map(|e| e.stat(id))
            .ok_or_else(|| EngineError::NotFound(id.to_string()))
    }

    pub async fn set_meta(
        &self,
        id: &FileId,
        meta: Vec<MetaEntry>,
        mode: MetaMode,
        if_version: Option<u64>,
    ) -> Result<FileStat, EngineError> {
        self.set_meta_for(id, meta, mode, if_version, (0, 0)).await
    }

    /// [`Self::set_meta`] on behalf of `client` (see [`Self::upload_for`]).
    pub async fn set_meta_for(
        &self,
        id: &FileId,
        meta: Vec<MetaEntry>,
        mode: MetaMode,
        if_version: Option<u64>,
        client: (u64, u64),
    ) -> Result<FileStat, EngineError> {
        let origin = Origin::Local { client };
        self.do_set_meta(id, meta, mode, if_version, origin).await
    }

    /// The file's metadata and version.
    pub async fn get_meta(&self, id: &FileId) -> Result<(Vec<MetaEntry>, u64), EngineError> {
        self.check_id(id)?;
        let idx = self.index.read();
        idx.get(id)
            .map(|e| (e.meta.clone(), e.version))
            .ok_or_else(|| EngineError::NotFound(id.to_string()))
    }

    pub async fn exists(&self, id: &FileId) -> Result<bool, EngineError> {
        self.check_id(id)?;
        Ok(self.index.read().contains_key(id))
    }

    /// The data version of the last durable change.
    pub fn data_version(&self) -> u64 {
        self.binlog.durable_version()
    }

    pub fn usage(&self) -> Vec<StorePathUsage> {
        self.stores
            .iter()
            .map(|s| {
                let (total, free) = space::fs_space(&s.root).unwrap_or((0, 0));
                StorePathUsage {
                    path: s.root.clone(),
                    total_bytes: total,
                    free_bytes: free,
                    reserved_bytes: self.cfg.reserved_space,
                }
            })
            .collect()
    }

    /// Bytes on the chunk-file free lists (reusable without growing files).
    pub fn chunk_free_bytes(&self) -> u64 {
        self.stores.iter().map(|s| s.free.lock().free_bytes()).sum()
    }

    /// Number of files in the index.
    pub fn file_count(&self) -> usize {
        self.index.read().len()
    }

    /// Disk-thread counters (fsyncs, writes, batches).
    pub fn counters(&self) -> EngineCounters {
        EngineCounters {
            fsyncs: self.stats.fsyncs.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
            batches: self.stats.batches.load(Ordering::Relaxed),
        }
    }

    /// What the rollback asked for before this open did (`None`: none was).
    pub fn rolled_back(&self) -> Option<RolledBack> {
        self.rolled_back.lock().clone()
    }

    /// The lowest version a recovery voided here (a record whose data never
    /// became durable, after a power loss) and that no rollback has dropped
    /// since: a member of a sync group trusts its history only below it,
    /// since the group may have a real change at that number.
    pub fn voided_from(&self) -> Option<u64> {
        *self.voided.lock()
    }

    /// This server's history became the group's (it is the master now):
    /// versions voided here are the group's too (blocking file I/O, only
    /// when there is something to forget).
    pub fn forget_voided(&self) -> Result<(), EngineError> {
        let mut v = self.voided.lock();
        if v.is_some() {
            rollback::forget_voided(&self.cfg.meta_dir)
                .map_err(|e| EngineError::io("removing meta/VOIDED", e))?;
            *v = None;
        }
        Ok(())
    }

    /// Whether a failed disk write has poisoned the engine.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Durable binlog records with a data version above `after`, oldest
    /// first, at most `max` (for replication and catch-up).
    pub fn binlog_records_since(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<BinlogRecord>, EngineError> {
        self.binlog
            .records_since(after, max)
            .map_err(|e| EngineError::io("reading the binlog", e))
    }

    /// The answers of the logged changes among the last `n` that carried a
    /// client's `(client_id, seq)`, oldest first — what a restarted server
    /// needs to answer a resend of one of them (`repl::dedup`). Blocking
    /// file I/O.
    pub fn recent_answers(&self, n: usize) -> Result<Vec<(u64, u64, proto::Reply)>, EngineError> {
        let mut after = self.data_version().saturating_sub(n as u64);
        let mut out = Vec::new();
        loop {
            let recs = self.binlog_records_since(after, 4096)?;
            let Some(last) = recs.last().map(|r| r.version) else {
                return Ok(out);
            };
            after = last;
            for r in recs {
                if r.client == (0, 0) {
                    continue;
                }
                let reply = match (r.op.to_ascii_uppercase(), &r.state) {
                    (binlog::op::DELETE, _) => proto::Reply::Deleted { version: r.version },
                    (binlog::op::VOID, _) | (_, None) => continue,
                    (_, Some(entry)) => match FileId::parse(&r.file_id) {
                        Ok(id) => proto::Reply::Stat(entry.stat(&id)),
                        Err(_) => continue,
                    },
                };
                out.push((r.client.0, r.client.1, reply));
            }
        }
    }

    /// Write an index checkpoint now (blocking file I/O).
    pub fn checkpoint(&self) -> Result<(), EngineError> {
        self.write_checkpoint()
    }

    /// Flush, checkpoint the index, stop the disk threads.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        let _all = self.gate.write().await;
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(t) = self.ckpt_thread.lock().take() {
            t.stop();
        }
        let res = if self.is_poisoned() {
            Err(EngineError::Poisoned)
        } else {
            self.write_checkpoint()
        };
        for s in &self.stores {
            s.disk.stop();
        }
        self.binlog.disk().stop();
        res
    }

    fn check_id(&self, id: &FileId) -> Result<(), EngineError> {
        if id.group() != self.cfg.group {
            return Err(EngineError::WrongGroup {
                id: id.to_string(),
                group: id.group().to_string(),
                ours: self.cfg.group.clone(),
            });
        }
        if id.store_path() as usize >= self.stores.len() {
            return Err(EngineError::InvalidFileId {
                id: id.to_string(),
                why: format!(
                    "store path M{:02X} does not exist here ({} store paths)",
                    id.store_path(),
                    self.stores.len()
                ),
            });
        }
        Ok(())
    }

    /// Refuse writes after poisoning or shutdown.
    fn check_writable(&self) -> Result<(), EngineError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        if self.is_poisoned() {
            return Err(EngineError::Poisoned);
        }
        Ok(())
    }

    fn poison(&self, why: &str) {
        tracing::error!(why, "storage engine poisoned");
        self.poisoned.store(true, Ordering::Release);
    }

    fn write_checkpoint(&self) -> Result<(), EngineError> {
        let _one = self.ckpt_lock.lock();
        if self.is_poisoned() {
            return Err(EngineError::Poisoned);
        }
        let (safe, entries) = {
            let idx = self.index.read();
            let safe = self.binlog.safe_version();
            let entries: Vec<(FileId, Entry)> = idx
                .iter()
                .map(|(k, v)| {
                    let mut e = v.clone();
                    e.extent = None;
                    (k.clone(), e)
                })
                .collect();
            (safe, entries)
        };
        if self.cfg.fsync != FsyncPolicy::Always {
            // Under relaxed policies the checkpoint must not get ahead of
            // the data it points to.
            for s in &self.stores {
                for f in s.chunks.read().iter().flatten() {
                    f.sync_data()
                        .map_err(|e| EngineError::io("syncing a chunk file", e))?;
                }
            }
        }
        checkpoint::write(&self.cfg.meta_dir, safe, &entries)
            .map_err(|e| EngineError::io("writing the index checkpoint", e))?;
        tracing::debug!(safe, files = entries.len(), "index checkpoint written");
        Ok(())
    }
}
