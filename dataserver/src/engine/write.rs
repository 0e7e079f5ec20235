//! The mutating operations.
//!
//! New bytes only ever go where no acknowledged byte lives: a fresh chunk
//! extent, the reserved tail of a record beyond its committed length (and
//! beyond anything a reader may still read), a temp or patch file, or the
//! end of a large file. Then the binlog record carrying the file's complete
//! new state; the index changes and the operation is acknowledged only once
//! both the bytes and the record are durable (fsync policy permitting).
//!
//! Small files (chunk records) commit in ONE fsync round
//! (`Engine::commit_paired`): the new bytes (with the record header) and
//! the binlog record go to the binlog disk thread as one request, are
//! written in the same batch and both files are fdatasync'ed concurrently.
//! A crash between the two fdatasyncs can leave a durable record whose data
//! is not; such a record was never acknowledged. Recovery finds every record
//! that can be in that state and voids the ones whose data does not match
//! their crc32 (`recovery.rs`). Why this is safe:
//! * Bounded search: each record carries the commit watermark `committed`
//!   (every version <= it had its data durable when the record was built).
//!   Recovery keeps only a prefix of the log (it cuts at the first bad
//!   frame), so a kept record implies every earlier record is kept; and no
//!   operation was acknowledged beyond that prefix. So all records up to the
//!   largest watermark in the log have durable records and data; only the
//!   records above it (the in-flight window at the crash) are checked.
//! * Per file, the newest record of the window whose data verifies (or that
//!   carries no small-file data: delete, large file) is the file's state;
//!   newer ones are voided. The lane rule (a later op on a file starts only
//!   after the earlier one was acknowledged or failed) means at most the
//!   newest record of a file can be unacknowledged; an acknowledged record's
//!   data is durable and its extent is not reused while it is the file's
//!   state (the index drops an extent only after publishing a superseding
//!   record, which happens only once that record and its data are durable).
//!   So the last acknowledged state of every file always verifies, and no
//!   kept record depends on a voided one: records are whole file states and
//!   a record of another file never refers to this file's extent.
//! * Different store paths change nothing: each record is checked against
//!   its own chunk file; the order that matters is the binlog's.
//! * Failure of the paired write poisons the engine (the record may be
//!   durable); a dropped future leaks its extent instead of freeing it, so
//!   a record that recovery keeps never shares space with a later one.
//!
//! Large files keep the stricter order: data durable (temp file + rename,
//! patch file, or appended bytes), then the record. Whatever was written
//! before a crash but not referenced by a kept binlog record is unreferenced
//! space (chunk extents), a temp file (removed at start), or bytes beyond a
//! large file's committed length (cut at start).
//!
//! Two steps follow the binlog record for large files: applying a modify
//! patch in place and `set_len` for truncate. Both are redone at start
//! from durable state (the patch file, the committed length); if either
//! fails at run time the engine is poisoned.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use proto::{FileId, FileStat, MetaEntry, MetaMode};

use super::binlog::{self, op};
use super::chunk::{encode_header, open_rw, Store, HEADER_LEN, PREFILL};
use super::content::{
    blocking, crc_concat, crc_range, crc_zeros, hasher_of, verify, BodyIn, Kept, Out, Sink,
};
use super::dio::{align_up, DirectSink, DirectTail, DIRECT_MIN};
use super::disk;
use super::disk::Target;
use super::error::{EngineError, IoContext};
use super::index::{Entry, Loc};
use super::replica::{Change, Origin};
use super::{Body, Engine, FsyncPolicy};
use proto::ReplOp;

/// Metadata limits.
pub(crate) const MAX_META_TOTAL: usize = 64 << 10;
pub(crate) const MAX_META_KEY: usize = 256;
pub(crate) const MAX_META_VALUE: usize = 16 << 10;
/// Patch files: `<store>/tmp/patch.<nonce, 16 hex>`.
pub(crate) const PATCH_HEADER: u64 = 128;
const PATCH_MAGIC: &[u8; 8] = b"CHPATCH1";

/// The binlog frame of `entry`'s change at data version `v`, made by
/// `origin` (which notes the version it took, and gives the entry its file
/// version and the record its client ids).
fn record_frame(
    origin: &Origin<'_>,
    v: u64,
    committed: u64,
    code: u8,
    ids: &str,
    entry: &mut Entry,
    patch: u64,
) -> Vec<u8> {
    origin.took(v);
    entry.version = origin.file_version(v);
    let frame =
        binlog::encode_committed(v, code, ids, entry.version, Some(entry), patch, committed);
    binlog::with_client(frame, origin.client())
}

pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Drop duplicate keys (the last value wins) and check the limits.
pub(crate) fn normalize_meta(meta: Vec<MetaEntry>) -> Result<Vec<MetaEntry>, EngineError> {
    let mut out: Vec<MetaEntry> = Vec::with_capacity(meta.len());
    for m in meta {
        if m.key.is_empty() || m.key.len() > MAX_META_KEY {
            return Err(EngineError::BadRequest(format!(
                "metadata key must be 1-{MAX_META_KEY} bytes, got {}",
                m.key.len()
            )));
        }
        if m.value.len() > MAX_META_VALUE {
            return Err(EngineError::BadRequest(format!(
                "metadata value of {:?} is {} bytes, at most {MAX_META_VALUE} allowed",
                m.key,
                m.value.len()
            )));
        }
        match out.iter_mut().find(|e| e.key == m.key) {
            Some(e) => e.value = m.value,
            None => out.push(m),
        }
    }
    check_meta_total(&out)?;
    Ok(out)
}

fn check_meta_total(meta: &[MetaEntry]) -> Result<(), EngineError> {
    let total: usize = meta.iter().map(|m| m.key.len() + m.value.len()).sum();
    if total > MAX_META_TOTAL {
        return Err(EngineError::BadRequest(format!(
            "metadata totals {total} bytes, at most {MAX_META_TOTAL} allowed"
        )));
    }
    Ok(())
}

/// A piece of new content.
#[derive(Debug, Clone, Copy)]
enum Seg {
    /// Bytes of the old content.
    Old {
        from: u64,
        len: u64,
    },
    /// The next bytes of the request body.
    Body {
        len: u64,
    },
    Zeros {
        len: u64,
    },
}

/// New small-file bytes written but not yet made durable: the last pieces
/// (queued with the binlog record) and, for a new record, its header (it
/// carries the record's data version, known only then).
enum Staged {
    /// An in-place change of an existing record (no new header).
    InPlace(Arc<File>, Vec<(u64, Bytes)>),
    /// A new record written through the page cache.
    Record(Arc<File>, Vec<(u64, Bytes)>),
    /// A new record written with O_DIRECT (header in its first buffer).
    Direct(DirectTail),
}

impl Staged {
    /// What goes to disk with the binlog record; `header` builds the new
    /// record's header for the record at `offset`.
    fn into_target(
        self,
        offset: u64,
        header: impl FnOnce() -> [u8; HEADER_LEN as usize],
    ) -> Target {
        match self {
            Staged::InPlace(file, pieces) => Target::new(file, pieces),
            Staged::Record(file, mut pieces) => {
                pieces.push((offset, Bytes::copy_from_slice(&header())));
                Target::new(file, pieces)
            }
            Staged::Direct(tail) => tail.seal(&header()),
        }
    }
}

/// Leaks an extent guard when dropped while still holding it.
struct LeakOnDrop(Option<Arc<super::space::Extent>>);

impl Drop for LeakOnDrop {
    fn drop(&mut self) {
        if let Some(ext) = self.0.take() {
            std::mem::forget(ext);
        }
    }
}

/// A body for operations that take none.
struct NoBody;

impl Body for NoBody {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, EngineError> {
        Ok(None)
    }
}

pub(crate) fn encode_patch_header(
    id: &str,
    offset: u64,
    len: u64,
    crc: u32,
) -> [u8; PATCH_HEADER as usize] {
    let mut h = [0u8; PATCH_HEADER as usize];
    let idb = id.as_bytes();
    let n = idb.len().min(88);
    h[0..8].copy_from_slice(PATCH_MAGIC);
    h[8..16].copy_from_slice(&offset.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h[28..30].copy_from_slice(&(n as u16).to_le_bytes());
    h[30..30 + n].copy_from_slice(&idb[..n]);
    let c = crc32fast::hash(&h[..124]);
    h[124..128].copy_from_slice(&c.to_le_bytes());
    h
}

/// (file id, offset, len, data crc) from a patch header.
pub(crate) fn decode_patch_header(h: &[u8]) -> Option<(String, u64, u64, u32)> {
    if h.len() < PATCH_HEADER as usize || &h[0..8] != PATCH_MAGIC {
        return None;
    }
    if crc32fast::hash(&h[..124]) != u32::from_le_bytes([h[124], h[125], h[126], h[127]]) {
        return None;
    }
    let u64at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let n = (u16::from_le_bytes([h[28], h[29]]) as usize).min(88);
    let id = String::from_utf8(h[30..30 + n].to_vec()).ok()?;
    Some((
        id,
        u64at(8),
        u64at(16),
        u32::from_le_bytes([h[24], h[25], h[26], h[27]]),
    ))
}

fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}

impl Engine {
    fn capacity_for(&self, size: u64, appender: bool) -> u64 {
        let max = self.cfg.chunk_file_size - HEADER_LEN;
        if !appender {
            return size;
        }
        let c = (size as f64 * (1.0 + self.cfg.reserve_ratio)).ceil() as u64;
        c.max(size).max(64).min(max)
    }

    fn sync_dirs(&self) -> bool {
        self.cfg.fsync != FsyncPolicy::Never
    }

    /// Like [`check_space`](Self::check_space) for a new small-file record
    /// of `size` bytes: freed chunk space is reused without growing the file
    /// system, so a record that fits there is accepted even at the reserve.
    fn check_chunk_space(&self, store: &Store, size: u64) -> Result<(), EngineError> {
        if size <= self.cfg.large_file_threshold {
            let cap = self.capacity_for(size, false) + HEADER_LEN;
            if store.free.lock().fits(cap) {
                return Ok(());
            }
        }
        self.check_space(store, size)
    }

    /// Zero-fill chunk space ahead ([`Store::prefill`]) for small records,
    /// when the file system can spare it above the reserve.
    fn prefill(&self, store: &Store) {
        if self.cfg.fsync != FsyncPolicy::Always {
            return;
        }
        let room = store.space.avail().unwrap_or(0);
        if room.saturating_sub(PREFILL) >= self.cfg.reserved_space {
            store.prefill();
        }
    }

    fn check_space(&self, store: &Store, need: u64) -> Result<(), EngineError> {
        let avail = store
            .space
            .avail()
            .ctx(|| format!("statvfs {}", store.root.display()))?;
        if avail.saturating_sub(need) < self.cfg.reserved_space || avail < need {
            return Err(EngineError::NoSpace(format!(
                "store path {} has {avail} bytes free; writing {need} would leave less than the reserved {}",
                store.root.display(),
                self.cfg.reserved_space
            )));
        }
        store.space.charge(need);
        Ok(())
    }

    /// The store path with the most free space, if it has room for `size`.
    fn pick_store(&self, size: u64) -> Result<&Store, EngineError> {
        let mut best: Option<(&Store, u64)> = None;
        for s in &self.stores {
            let avail = s
                .space
                .avail()
                .ctx(|| format!("statvfs {}", s.root.display()))?;
            if best.is_none_or(|(_, b)| avail > b) {
                best = Some((s, avail));
            }
        }
        let (s, _) = best.ok_or_else(|| EngineError::Internal("no store paths".into()))?;
        self.check_chunk_space(s, size)?;
        Ok(s)
    }

    fn lookup(&self, id: &FileId) -> Result<Entry, EngineError> {
        self.index
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(id.to_string()))
    }

    fn check_version(id: &FileId, e: &Entry, if_version: Option<u64>) -> Result<(), EngineError> {
        match if_version {
            Some(want) if want != e.version => Err(EngineError::VersionMismatch {
                id: id.to_string(),
                expected: want,
                actual: e.version,
            }),
            _ => Ok(()),
        }
    }

    fn new_id(
        &self,
        store: u8,
        now_us: u64,
        size: u64,
        crc: u32,
        ext: &str,
    ) -> Result<FileId, EngineError> {
        for _ in 0..16 {
            let id = FileId::generate(
                &self.cfg.group,
                store,
                self.cfg.server_id,
                (now_us / 1_000_000) as u32,
                size,
                crc,
                ext,
            )
            .map_err(|e| EngineError::BadRequest(e.to_string()))?;
            if !self.index.read().contains_key(&id) {
                return Ok(id);
            }
        }
        Err(EngineError::Internal(
            "could not generate a unique file id".into(),
        ))
    }

    /// Append the binlog record for `entry` (its version is set to the data
    /// version) and wait until it is durable. On failure the engine is
    /// poisoned: the log may hold a partial record that later ones must not
    /// follow.
    async fn log(
        &self,
        op: u8,
        id: &FileId,
        mut entry: Entry,
        patch: u64,
        origin: Origin<'_>,
    ) -> Result<Entry, EngineError> {
        self.conform(id, &mut entry, origin)?;
        let ids = id.to_string();
        let code = origin.op_code(op);
        let res = self
            .binlog
            .append(origin.expect(), |v, committed| {
                record_frame(&origin, v, committed, code, &ids, &mut entry, patch)
            })
            .await;
        match res {
            Ok(_) => Ok(entry),
            Err(e) => Err(self.binlog_failed(e)),
        }
    }

    /// A failed binlog append poisons the engine (the log may hold a
    /// partial record), except a replicated version that lost the race for
    /// its number (nothing was written).
    pub(crate) fn binlog_failed(&self, e: std::io::Error) -> EngineError {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            return EngineError::Diverged(e.to_string());
        }
        self.poison("binlog write failed");
        EngineError::io("writing the binlog", e)
    }

    /// Make a logged change visible.
    /// `v` is the data version the change took (for a pushed or replicated
    /// change not the entry's version, which is the file's).
    pub(crate) fn publish(&self, id: &FileId, entry: Entry, v: u64) -> FileStat {
        let stat = entry.stat(id);
        let old = self.index.write().insert(id.clone(), entry);
        drop(old);
        self.binlog.applied(v);
        stat
    }

    async fn commit(
        &self,
        op: u8,
        id: &FileId,
        entry: Entry,
        origin: Origin<'_>,
        change: Change,
    ) -> Result<FileStat, EngineError> {
        let e = self.log(op, id, entry, 0, origin).await?;
        self.finish(origin, change, id, e).await
    }

    /// Commit a small-file change together with its new bytes in one
    /// fsync round: the data write (plus the record header when
    /// `staged.header`) and the binlog record go to the binlog disk thread
    /// as one request, both are fdatasync'ed concurrently, and the change is
    /// published only when both are durable. A crash in between can leave a
    /// durable record whose data is not: recovery verifies such records
    /// (those above the commit watermark) and voids the ones whose data
    /// does not match (see `recovery.rs`). Any failure poisons the engine.
    async fn commit_paired(
        &self,
        op: u8,
        id: &FileId,
        mut entry: Entry,
        staged: Staged,
        origin: Origin<'_>,
        change: Change,
    ) -> Result<FileStat, EngineError> {
        self.conform(id, &mut entry, origin)?;
        let code = origin.op_code(op);
        let Loc::Small {
            offset, capacity, ..
        } = entry.loc
        else {
            return Err(EngineError::Internal(format!(
                "{id}: paired commit of a large file"
            )));
        };
        let ids = id.to_string();
        let (size, crc, appender) = (entry.size, entry.crc32, entry.appender);
        // From here a durable record may name the extent: if this future is
        // dropped before the change is published, the extent is leaked (it
        // returns at the next start, rebuilt from the index) rather than
        // reused under a record that recovery may keep.
        let mut guard = LeakOnDrop(entry.extent.clone());
        let res = self
            .binlog
            .append_paired(
                origin.expect(),
                |v, committed| record_frame(&origin, v, committed, code, &ids, &mut entry, 0),
                |v| {
                    staged.into_target(offset, || {
                        encode_header(&ids, v, size, capacity, crc, appender)
                    })
                },
            )
            .await;
        let paired = match res {
            Ok(p) => p,
            Err(e) => return Err(self.binlog_failed(e)),
        };
        if let Err(e) = paired.result {
            // The record may be durable without its data: recovery voids it.
            self.poison("writing a binlog record and its data failed");
            return Err(EngineError::io(
                format!("writing {id} and its binlog record"),
                e,
            ));
        }
        guard.0 = None;
        debug_assert!(origin.expect().is_none_or(|e| e == paired.version));
        self.finish(origin, change, id, entry).await
    }

    pub(crate) async fn do_upload(
        &self,
        size: u64,
        ext: &str,
        meta: Vec<MetaEntry>,
        appender: bool,
        body: &mut impl Body,
        origin: Origin<'_>,
    ) -> Result<FileStat, EngineError> {
        proto::file_id::validate_ext(ext).map_err(|e| EngineError::BadRequest(e.to_string()))?;
        self.upload_inner(None, size, ext, meta, appender, body, origin)
            .await
    }

    /// Create (or, for a catch-up install, replace) the file `id` with a
    /// replicated state.
    pub(crate) async fn do_upload_as(
        &self,
        id: &FileId,
        size: u64,
        meta: Vec<MetaEntry>,
        appender: bool,
        body: &mut impl Body,
        origin: Origin<'_>,
    ) -> Result<FileStat, EngineError> {
        let _lane = self.lanes.lock(id).await;
        self.upload_as_in_lane(id, size, meta, appender, body, origin)
            .await
    }

    /// [`Self::do_upload_as`] for a caller holding the file's lane.
    pub(crate) async fn upload_as_in_lane(
        &self,
        id: &FileId,
        size: u64,
        meta: Vec<MetaEntry>,
        appender: bool,
        body: &mut impl Body,
        origin: Origin<'_>,
    ) -> Result<FileStat, EngineError> {
        let old = self.index.read().get(id).cloned();
        let stat = self
            .upload_inner(Some(id), size, id.ext(), meta, appender, body, origin)
            .await?;
        // A replaced large file that is small now: its old file goes.
        if let (Some(old), Some(new)) = (old, self.index.read().get(id)) {
            if matches!(old.loc, Loc::Large { .. }) && matches!(new.loc, Loc::Small { .. }) {
                let path = self.stores[old.loc.store() as usize].large_path(id);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(%id, error = %e, "removing a replaced large file failed");
                }
            }
        }
        Ok(stat)
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_inner(
        &self,
        fixed: Option<&FileId>,
        size: u64,
        ext: &str,
        meta: Vec<MetaEntry>,
        appender: bool,
        body: &mut impl Body,
        origin: Origin<'_>,
    ) -> Result<FileStat, EngineError> {
        let _g = self.gate.read().await;
        self.check_writable()?;
        let meta = normalize_meta(meta)?;
        let store = match fixed {
            // A replicated file lives on the store path its id names.
            Some(id) => {
                let s = &self.stores[id.store_path() as usize];
                self.check_chunk_space(s, size)?;
                s
            }
            None => self.pick_store(size)?,
        };
        let now = now_us();
        let change = Change {
            op: ReplOp::Create,
            prev_version: 0,
            content: Some((0, size)),
            body: self.keep_for_slaves(origin, size),
        };
        let name = |crc| match fixed {
            Some(id) => Ok(id.clone()),
            None => self.new_id(store.index, now, size, crc, ext),
        };
        let mut bin = BodyIn::new(body, size).keeping(&change.body);
        let mut entry = Entry {
            loc: Loc::Large { store: store.index },
            size,
            crc32: 0,
            create_us: now,
            modify_us: now,
            version: 0,
            appender,
            meta,
            extent: None,
        };
        if size <= self.cfg.large_file_threshold {
            let segs = [Seg::Body { len: size }];
            let (id, e, staged) = self
                .write_small(store, None, &segs, &mut bin, entry, name)
                .await?;
            return self
                .commit_paired(op::CREATE, &id, e, staged, origin, change)
                .await;
        }
        let tmp = store
            .tmp_dir
            .join(format!("up.{:016x}", rand::random::<u64>()));
        let staged = self
            .stage_large(store, &tmp, None, &[Seg::Body { len: size }], &mut bin)
            .await;
        let crc = match staged {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let id = name(crc)?;
        // A replicated or pushed file must match its source before it
        // replaces anything here.
        let mut probe = entry.clone();
        probe.crc32 = crc;
        if let Err(e) = self.conform(&id, &mut probe, origin) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let path = store.large_path(&id);
        if let Err(e) = self.install(store, &tmp, &path).await {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        entry.crc32 = crc;
        let logged = self.log(op::CREATE, &id, entry, 0, origin).await;
        match logged {
            Ok(e) => self.finish(origin, change, &id, e).await,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Stage new small-file content (`segs` over the old content and the
    /// body) for a fresh extent; the last pieces and the header go out with
    /// [`Self::commit_paired`]. `name` gives the id once the crc is known.
    /// Returns the id, the uncommitted entry and the staged bytes.
    async fn write_small<B: Body>(
        &self,
        store: &Store,
        old: Option<(&Arc<File>, u64)>,
        segs: &[Seg],
        bin: &mut BodyIn<'_, B>,
        mut entry: Entry,
        name: impl FnOnce(u32) -> Result<FileId, EngineError>,
    ) -> Result<(FileId, Entry, Staged), EngineError> {
        let size: u64 = segs.iter().map(seg_len).sum();
        let cap = self.capacity_for(size, entry.appender);
        let alloc_err = || format!("allocating {cap} bytes in {}", store.chunks_dir.display());
        let direct = if self.cfg.fsync == FsyncPolicy::Always && size >= DIRECT_MIN {
            store
                .alloc_direct(align_up(HEADER_LEN + cap), size)
                .ctx(alloc_err)?
        } else {
            None
        };
        let (ext, crc, staged) = match direct {
            Some((ext, target)) => {
                let mut sink = DirectSink::new(&store.disk, target, ext.offset);
                fill(&mut sink, segs, old, bin).await?;
                let (crc, _, tail) = sink.finish().await?;
                (ext, crc, Staged::Direct(tail))
            }
            None => {
                let (ext, file, grew) = store.alloc(HEADER_LEN + cap, size).ctx(alloc_err)?;
                if grew {
                    self.prefill(store);
                }
                let mut sink = Sink::new(&store.disk, file.clone(), ext.offset + HEADER_LEN);
                fill(&mut sink, segs, old, bin).await?;
                let (crc, _, pieces) = sink.finish();
                (ext, crc, Staged::Record(file, pieces))
            }
        };
        let capacity = ext.len - HEADER_LEN;
        let id = name(crc)?;
        entry.loc = Loc::Small {
            store: store.index,
            chunk: ext.chunk,
            offset: ext.offset,
            capacity,
        };
        entry.size = size;
        entry.crc32 = crc;
        entry.extent = Some(ext);
        Ok((id, entry, staged))
    }

    /// Write new content into the temp file `tmp` durably; returns its crc.
    async fn stage_large<B: Body>(
        &self,
        store: &Store,
        tmp: &Path,
        old: Option<(&Arc<File>, u64)>,
        segs: &[Seg],
        bin: &mut BodyIn<'_, B>,
    ) -> Result<u32, EngineError> {
        let file = Arc::new(create_new(tmp).ctx(|| format!("creating {}", tmp.display()))?);
        let mut sink = Sink::new(&store.disk, file.clone(), 0);
        fill(&mut sink, segs, old, bin).await?;
        let (crc, _, pieces) = sink.finish();
        store
            .disk
            .write(&file, pieces, true)
            .await
            .ctx(|| format!("writing {}", tmp.display()))?;
        Ok(crc)
    }

    /// Move a durable temp file to its final place and make the rename durable.
    pub(super) async fn install(
        &self,
        store: &Store,
        tmp: &Path,
        path: &Path,
    ) -> Result<(), EngineError> {
        let (tmp, path, data_dir) = (
            tmp.to_path_buf(),
            path.to_path_buf(),
            store.data_dir.clone(),
        );
        let sync = self.sync_dirs();
        blocking(move || -> std::io::Result<()> {
            let parent = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| data_dir.clone());
            let d1 = parent
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| data_dir.clone());
            for (dir, up) in [(&d1, &data_dir), (&parent, &d1)] {
                match std::fs::create_dir(dir) {
                    Ok(()) => {
                        if sync {
                            disk::sync_dir(up)?;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            std::fs::rename(&tmp, &path)?;
            if sync {
                disk::sync_dir(&parent)?;
            }
            Ok(())
        })
        .await?
        .ctx(|| "installing a large file".to_string())
    }

    /// Rewrite a file (copy-on-write) with new content `segs`: into a new
    /// chunk extent if it fits the threshold, else as a large file.
    #[allow(clippy::too_many_arguments)]
    async fn rewrite<B: Body>(
        &self,
        op: u8,
        id: &FileId,
        e: &Entry,
        segs: &[Seg],
        bin: &mut BodyIn<'_, B>,
        origin: Origin<'_>,
        change: Change,
    ) -> Result<FileStat, EngineError> {
        let store = &self.stores[e.loc.store() as usize];
        let new_size: u64 = segs.iter().map(seg_len).sum();
        let (old_file, old_base) = match e.loc {
            Loc::Small { chunk, offset, .. } => {
                let f = store
                    .chunk(chunk)
                    .ctx(|| format!("opening the chunk of {id}"))?;
                let base = offset + HEADER_LEN;
                verify(&f, base, e.size, e.crc32, &id.to_string()).await?;
                (f, base)
            }
            Loc::Large { .. } => {
                return Err(EngineError::Internal("rewrite of a large file".into()));
            }
        };
        let mut entry = e.clone();
        entry.modify_us = now_us();
        if new_size <= self.cfg.large_file_threshold {
            let (_, ent, staged) = self
                .write_small(store, Some((&old_file, old_base)), segs, bin, entry, |_| {
                    Ok(id.clone())
                })
                .await?;
            return self
                .commit_paired(op, id, ent, staged, origin, change)
                .await;
        }
        // Grows past the threshold: migrate to a large file.
        let tmp = store
            .tmp_dir
            .join(format!("up.{:016x}", rand::random::<u64>()));
        let crc = match self
            .stage_large(store, &tmp, Some((&old_file, old_base)), segs, bin)
            .await
        {
            Ok(c) => c,
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(err);
            }
        };
        let path = store.large_path(id);
        if let Err(err) = self.install(store, &tmp, &path).await {
            let _ = std::fs::remove_file(&tmp);
            return Err(err);
        }
        entry.loc = Loc::Large { store: store.index };
        entry.size = new_size;
        entry.crc32 = crc;
        entry.extent = None;
        match self.log(op, id, entry, 0, origin).await {
            Ok(e) => self.finish(origin, change, id, e).await,
            Err(err) => {
                let _ = std::fs::remove_file(&path);
                Err(err)
            }
        }
    }

    /// Lane, gate, lookup and version check shared by the mutations.
    fn mutable_entry(&self, id: &FileId, if_version: Option<u64>) -> Result<Entry, EngineError> {
        self.check_writable()?;
        let e = self.lookup(id)?;
        Self::check_version(id, &e, if_version)?;
        Ok(e)
    }

    pub(crate) async fn do_delete(
        &self,
        id: &FileId,
        if_version: Option<u64>,
        origin: Origin<'_>,
    ) -> Result<u64, EngineError> {
        self.check_id(id)?;
        let _g = self.gate.read().await;
        let _lane = self.lanes.lock(id).await;
        self.delete_in_lane(id, if_version, origin).await
    }

    /// [`Self::do_delete`] for a caller holding the gate and the file's lane.
    pub(crate) async fn delete_in_lane(
        &self,
        id: &FileId,
        if_version: Option<u64>,
        origin: Origin<'_>,
    ) -> Result<u64, EngineError> {
        let e = self.mutable_entry(id, if_version)?;
        let ids = id.to_string();
        let code = origin.op_code(op::DELETE);
        let v = match self
            .binlog
            .append(origin.expect(), |v, c| {
                let frame = binlog::encode_committed(v, code, &ids, v, None, 0, c);
                binlog::with_client(frame, origin.client())
            })
            .await
        {
            Ok(v) => v,
            Err(err) => return Err(self.binlog_failed(err)),
        };
        let replicated = match origin {
            Origin::Local { client } => {
                let mut gone = e.clone();
                gone.version = v;
                let change = Change {
                    op: ReplOp::Delete,
                    prev_version: e.version,
                    content: None,
                    body: Kept::default(),
                };
                self.replicate_local(client, change, id, &gone).await
            }
            Origin::Replica(_) | Origin::Pushed(..) => Ok(()),
        };
        let old = self.index.write().remove(id);
        drop(old);
        self.binlog.applied(v);
        replicated?;
        if let Loc::Large { store } = e.loc {
            let path = self.stores[store as usize].large_path(id);
            let sync = self.sync_dirs();
            let res = blocking(move || -> std::io::Result<()> {
                std::fs::remove_file(&path)?;
                if let (true, Some(p)) = (sync, path.parent()) {
                    disk::sync_dir(p)?;
                }
                Ok(())
            })
            .await?;
            if let Err(err) = res {
                // The binlog says deleted; the start-up scan removes it.
                tracing::warn!(%id, error = %err, "removing a deleted large file failed");
            }
        }
        Ok(v)
    }

    pub(crate) async fn do_append(
        &self,
        id: &FileId,
        size: u64,
        if_version: Option<u64>,
        body: &mut impl Body,
        origin: Origin<'_>,
    ) -> Result<FileStat, EngineError> {
        self.check_id(id)?;
        let _g = self.gate.read().await;
        let _lane = self.lanes.lock(id).await;
        let e = self.mutable_entry(id, if_version)?;
        if !e.appender {
            return Err(EngineError::NotAppender(id.to_string()));
        }
        let new_size = e
            .size
            .checked_add(size)
            .ok_or_else(|| EngineError::BadRequest("size overflows".into()))?;
        let store = &self.stores[e.loc.store() as usize];
        let change = Change {
            op: ReplOp::Append { offset: e.size },
            prev_version: e.version,
            content: Some((e.size, size)),
            body: self.keep_for_slaves(origin, size),
        };
        let mut bin = BodyIn::new(body, size).keeping(&change.body);
        match e.loc {
            Loc::Small {
                chunk,
                offset,
                capacity,
                ..
            } => {
                let ext = e
                    .extent
                    .clone()
                    .ok_or_else(|| EngineError::Internal(format!("{id}: no extent")))?;
                let in_place = new_size <= capacity
                    && new_size <= self.cfg.large_file_threshold
                    && e.size >= ext.high_water.load(Ordering::Acquire);
                if !in_place {
                    self.check_chunk_space(store, new_size)?;
                    let segs = [
                        Seg::Old {
                            from: 0,
                            len: e.size,
                        },
                        Seg::Body { len: size },
                    ];
                    return self
                        .rewrite(op::APPEND, id, &e, &segs, &mut bin, origin, change)
                        .await;
                }
                self.check_space(store, size)?;
                let file = store
                    .chunk(chunk)
                    .ctx(|| format!("opening the chunk of {id}"))?;
                let mut sink = Sink::new(&store.disk, file.clone(), offset + HEADER_LEN + e.size);
                bin.take(size, &mut sink).await?;
                bin.finish().await?;
                let (acrc, _, pieces) = sink.finish();
                let mut entry = e.clone();
                entry.size = new_size;
                entry.crc32 = crc_concat(e.crc32, e.size, acrc, size);
                entry.modify_us = now_us();
                let staged = Staged::InPlace(file, pieces);
                let res = self
                    .commit_paired(op::APPEND, id, entry, staged, origin, change)
                    .await;
                ext.raise_high_water(new_size);
                res
            }
            Loc::Large { .. } => {
                self.check_space(store, size)?;
                let path = store.large_path(id);
                let file = Arc::new(open_large(&path, id).await?);
                let mut sink = Sink::new(&store.disk, file.clone(), e.size);
                bin.take(size, &mut sink).await?;
                bin.finish().await?;
                let (acrc, _, pieces) = sink.finish();
                store
                    .disk
                    .write(&file, pieces, true)
                    .await
                    .ctx(|| format!("appending to {id}"))?;
                let mut entry = e.clone();
                entry.size = new_size;
                entry.crc32 = crc_concat(e.crc32, e.size, acrc, size);
                entry.modify_us = now_us();
                self.commit(op::APPEND, id, entry, origin, change).await
            }
        }
    }

    pub(crate) async fn do_modify(
        &self,
        id: &FileId,
        offset: u64,
        size: u64,
        if_version: Option<u64>,
        body: &mut impl Body,
        origin: Origin<'_>,
    ) -> Result<FileStat, EngineError> {
        self.check_id(id)?;
        let _g = self.gate.read().await;
        let _lane = self.lanes.lock(id).await;
        let e = self.mutable_entry(id, if_version)?;
        if offset > e.size {
            return Err(EngineError::BadRequest(format!(
                "modify offset {offset} is beyond the end of {id} ({} bytes)",
                e.size
            )));
        }
        let end = offset
            .checked_add(size)
            .ok_or_else(|| EngineError::BadRequest("size overflows".into()))?;
        let new_size = e.size.max(end);
        let store = &self.stores[e.loc.store() as usize];
        let change = Change {
            op: ReplOp::Modify { offset },
            prev_version: e.version,
            content: Some((offset, size)),
            body: self.keep_for_slaves(origin, size),
        };
        let mut bin = BodyIn::new(body, size).keeping(&change.body);
        match e.loc {
            Loc::Small { .. } => {
                self.check_chunk_space(store, new_size)?;
                let mut segs = vec![
                    Seg::Old {
                        from: 0,
                        len: offset,
                    },
                    Seg::Body { len: size },
                ];
                if end < e.size {
                    segs.push(Seg::Old {
                        from: end,
                        len: e.size - end,
                    });
                }
                self.rewrite(op::MODIFY, id, &e, &segs, &mut bin, origin, change)
                    .await
            }
            Loc::Large { .. } => {
                self.check_space(store, size.saturating_mul(2))?;
                self.modify_large(store, id, &e, offset, size, &mut bin, origin, change)
                    .await
            }
        }
    }

    /// Large-file modify through a durable patch file:
    /// patch written + fsynced → binlog `M` naming the patch → patch copied
    /// into place + fsynced → index → patch removed. A patch whose record is
    /// durable and still the file's latest change is re-applied at start.
    #[allow(clippy::too_many_arguments)]
    async fn modify_large<B: Body>(
        &self,
        store: &Store,
        id: &FileId,
        e: &Entry,
        offset: u64,
        size: u64,
        bin: &mut BodyIn<'_, B>,
        origin: Origin<'_>,
        change: Change,
    ) -> Result<FileStat, EngineError> {
        let nonce = rand::random::<u64>().max(1);
        let ppath = patch_path(&store.tmp_dir, nonce);
        let staged = async {
            let pf = Arc::new(create_new(&ppath).ctx(|| format!("creating {}", ppath.display()))?);
            let mut sink = Sink::new(&store.disk, pf.clone(), PATCH_HEADER);
            bin.take(size, &mut sink).await?;
            bin.finish().await?;
            let (pcrc, _, mut pieces) = sink.finish();
            let h = encode_patch_header(&id.to_string(), offset, size, pcrc);
            pieces.push((0, Bytes::copy_from_slice(&h)));
            store
                .disk
                .write(&pf, pieces, true)
                .await
                .ctx(|| format!("writing {}", ppath.display()))?;
            if self.sync_dirs() {
                let dir = store.tmp_dir.clone();
                blocking(move || disk::sync_dir(&dir))
                    .await?
                    .ctx(|| "syncing tmp dir".into())?;
            }
            Ok::<_, EngineError>((pf, pcrc))
        }
        .await;
        let (pf, pcrc) = match staged {
            Ok(v) => v,
            Err(err) => {
                let _ = std::fs::remove_file(&ppath);
                return Err(err);
            }
        };
        let path = store.large_path(id);
        let lf = Arc::new(open_large(&path, id).await?);
        let end = offset + size;
        let crc = async {
            let mut h = crc_range(&lf, 0, offset).await?;
            h.combine(&hasher_of(pcrc, size));
            if end < e.size {
                h.combine(&crc_range(&lf, end, e.size - end).await?);
            }
            Ok::<_, EngineError>(h.finalize())
        }
        .await;
        let crc = match crc {
            Ok(c) => c,
            Err(err) => {
                let _ = std::fs::remove_file(&ppath);
                return Err(err);
            }
        };
        let mut entry = e.clone();
        entry.size = e.size.max(end);
        entry.crc32 = crc;
        entry.modify_us = now_us();
        let entry = self.log(op::MODIFY, id, entry, nonce, origin).await?;
        let applied = async {
            let mut sink = Sink::new(&store.disk, lf.clone(), offset);
            sink.copy_from(&pf, PATCH_HEADER, size).await?;
            let (_, _, pieces) = sink.finish();
            store
                .disk
                .write(&lf, pieces, true)
                .await
                .ctx(|| format!("applying a patch to {id}"))
        }
        .await;
        if let Err(err) = applied {
            self.poison("applying a committed patch failed");
            return Err(err);
        }
        let res = self.finish(origin, change, id, entry).await;
        if let Err(err) = std::fs::remove_file(&ppath) {
            tracing::warn!(path = %ppath.display(), error = %err, "removing an applied patch failed");
        }
        res
    }

    pub(crate) async fn do_truncate(
        &self,
        id: &FileId,
        size: u64,
        if_version: Option<u64>,
        origin: Origin<'_>,
    ) -> Result<FileStat, EngineError> {
        self.check_id(id)?;
        let _g = self.gate.read().await;
        let _lane = self.lanes.lock(id).await;
        let e = self.mutable_entry(id, if_version)?;
        if !e.appender {
            return Err(EngineError::NotAppender(id.to_string()));
        }
        let store = &self.stores[e.loc.store() as usize];
        if size > e.size {
            self.check_space(store, size - e.size)?;
        }
        let mut none = NoBody;
        let mut bin = BodyIn::new(&mut none, 0);
        let mut entry = e.clone();
        entry.size = size;
        entry.modify_us = now_us();
        let change = Change {
            op: ReplOp::Truncate,
            prev_version: e.version,
            content: None,
            body: Kept::default(),
        };
        match e.loc {
            Loc::Small {
                chunk,
                offset,
                capacity,
                ..
            } => {
                let file = store
                    .chunk(chunk)
                    .ctx(|| format!("opening the chunk of {id}"))?;
                let base = offset + HEADER_LEN;
                let ext = e
                    .extent
                    .clone()
                    .ok_or_else(|| EngineError::Internal(format!("{id}: no extent")))?;
                if size <= e.size {
                    // Shrink in place: bytes beyond the committed length
                    // are not content.
                    let mut h = crc_range(&file, base, size).await?;
                    let prefix = h.clone().finalize();
                    h.combine(&crc_range(&file, base + size, e.size - size).await?);
                    let whole = h.finalize();
                    if whole != e.crc32 {
                        return Err(EngineError::Corrupt(format!(
                            "{id}: stored crc32 {:08x}, data has {whole:08x}",
                            e.crc32
                        )));
                    }
                    entry.crc32 = prefix;
                    return self.commit(op::TRUNCATE, id, entry, origin, change).await;
                }
                let in_place = size <= capacity
                    && size <= self.cfg.large_file_threshold
                    && e.size >= ext.high_water.load(Ordering::Acquire);
                if in_place {
                    let mut sink = Sink::new(&store.disk, file.clone(), base + e.size);
                    sink.zeros(size - e.size).await?;
                    let (zcrc, _, pieces) = sink.finish();
                    entry.crc32 = crc_concat(e.crc32, e.size, zcrc, size - e.size);
                    let staged = Staged::InPlace(file, pieces);
                    let res = self
                        .commit_paired(op::TRUNCATE, id, entry, staged, origin, change)
                        .await;
                    ext.raise_high_water(size);
                    return res;
                }
                let segs = [
                    Seg::Old {
                        from: 0,
                        len: e.size,
                    },
                    Seg::Zeros { len: size - e.size },
                ];
                self.rewrite(op::TRUNCATE, id, &e, &segs, &mut bin, origin, change)
                    .await
            }
            Loc::Large { .. } => {
                let path = store.large_path(id);
                let lf = Arc::new(open_large(&path, id).await?);
                entry.crc32 = if size <= e.size {
                    crc_range(&lf, 0, size).await?.finalize()
                } else {
                    let mut h = hasher_of(e.crc32, e.size);
                    h.combine(&crc_zeros(size - e.size));
                    h.finalize()
                };
                // Binlog first, then set_len (redone at start from the
                // committed length if we crash in between).
                let entry = self.log(op::TRUNCATE, id, entry, 0, origin).await?;
                let sync = self.cfg.fsync == FsyncPolicy::Always;
                let f = lf.clone();
                let res = blocking(move || -> std::io::Result<()> {
                    f.set_len(size)?;
                    if sync {
                        f.sync_data()?;
                    }
                    Ok(())
                })
                .await?;
                if let Err(err) = res {
                    self.poison("set_len after a committed truncate failed");
                    return Err(EngineError::io(format!("truncating {id}"), err));
                }
                self.finish(origin, change, id, entry).await
            }
        }
    }

    pub(crate) async fn do_set_meta(
        &self,
        id: &FileId,
        meta: Vec<MetaEntry>,
        mode: MetaMode,
        if_version: Option<u64>,
        origin: Origin<'_>,
    ) -> Result<FileStat, EngineError> {
        self.check_id(id)?;
        let meta = normalize_meta(meta)?;
        let _g = self.gate.read().await;
        let _lane = self.lanes.lock(id).await;
        let e = self.mutable_entry(id, if_version)?;
        let merged = match mode {
            MetaMode::Overwrite => meta,
            MetaMode::Merge => {
                let mut m = e.meta.clone();
                for n in meta {
                    match m.iter_mut().find(|x| x.key == n.key) {
                        Some(x) => x.value = n.value,
                        None => m.push(n),
                    }
                }
                check_meta_total(&m)?;
                m
            }
        };
        let mut entry = e.clone();
        entry.meta = merged;
        entry.modify_us = now_us();
        let change = Change {
            op: ReplOp::SetMeta,
            prev_version: e.version,
            content: None,
            body: Kept::default(),
        };
        self.commit(op::SET_META, id, entry, origin, change).await
    }
}

fn seg_len(s: &Seg) -> u64 {
    match *s {
        Seg::Old { len, .. } | Seg::Body { len } | Seg::Zeros { len } => len,
    }
}

/// Produce the new content into `sink`.
async fn fill<B: Body>(
    sink: &mut impl Out,
    segs: &[Seg],
    old: Option<(&Arc<File>, u64)>,
    bin: &mut BodyIn<'_, B>,
) -> Result<(), EngineError> {
    for s in segs {
        match *s {
            Seg::Old { from, len } => {
                let (f, base) =
                    old.ok_or_else(|| EngineError::Internal("no old content".into()))?;
                sink.copy_from(f, base + from, len).await?;
            }
            Seg::Body { len } => bin.take(len, sink).await?,
            Seg::Zeros { len } => sink.zeros(len).await?,
        }
    }
    bin.finish().await
}

pub(crate) fn patch_path(tmp_dir: &Path, nonce: u64) -> PathBuf {
    tmp_dir.join(format!("patch.{nonce:016x}"))
}

async fn open_large(path: &Path, id: &FileId) -> Result<File, EngineError> {
    let p = path.to_path_buf();
    blocking(move || open_rw(&p, false)).await?.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EngineError::Io {
                context: format!("large file of {id} is missing"),
                source: e,
            }
        } else {
            EngineError::io(format!("opening {id}"), e)
        }
    })
}
