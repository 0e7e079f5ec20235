//! Opening the engine: load the checkpoint, replay the binlog tail (cutting
//! a torn end), settle the records above the commit watermark, rebuild free
//! space from the index, redo committed large-file steps (patches, committed
//! lengths), remove leftovers, start the threads.
//!
//! Settling: small-file records are committed together with their data in
//! one fsync round (see `write.rs`), so a record above the largest commit
//! watermark found in the log may be durable while its data is not. Those
//! records (the in-flight window at the crash, typically a few dozen) are
//! held back during replay; per file, the newest one whose data matches its
//! crc32 (or that has no small-file data) wins, and every newer one of that
//! file is voided in the log (rewritten in place as an op `V` frame through
//! a durable intent file), so it stays cancelled after later restarts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use proto::FileId;
use tracing::{error, info, warn};

use super::binlog::{self, op, Binlog, BinlogRecord};
use super::checkpoint;
use super::chunk::{chunk_name, open_rw, parse_chunk_name, Store, HEADER_LEN};
use super::content;
use super::disk::{self, probe_io_uring, DiskStats, DiskThread};
use super::error::{EngineError, IoContext};
use super::index::{IndexMap, Loc};
use super::lanes::Lanes;
use super::rollback;
use super::space::{Alloc, Extent, FreeList, FsSpace};
use super::write::{decode_patch_header, patch_path, PATCH_HEADER};
use super::{Engine, EngineConfig};

/// How often the background thread writes a checkpoint (when anything changed).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

pub(crate) struct CheckpointThread {
    stop: crossbeam_channel::Sender<()>,
    join: std::thread::JoinHandle<()>,
}

impl CheckpointThread {
    pub fn stop(self) {
        drop(self.stop);
        if self.join.join().is_err() {
            error!("checkpoint thread panicked");
        }
    }
}

fn validate(cfg: &EngineConfig) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::BadRequest(format!("engine config: {m}")));
    if proto::file_id::validate_group(&cfg.group).is_err() {
        return bad(format!("invalid group {:?}", cfg.group));
    }
    if cfg.store_paths.is_empty() || cfg.store_paths.len() > 256 {
        return bad("need 1-256 store paths".into());
    }
    if cfg.large_file_threshold + HEADER_LEN > cfg.chunk_file_size {
        return bad(format!(
            "chunk_file_size ({}) must exceed large_file_threshold ({}) by at least {HEADER_LEN}",
            cfg.chunk_file_size, cfg.large_file_threshold
        ));
    }
    if !(0.0..=10.0).contains(&cfg.reserve_ratio) {
        return bad("reserve_ratio must be between 0 and 10".into());
    }
    Ok(())
}

pub(crate) fn open(cfg: EngineConfig) -> Result<Arc<Engine>, EngineError> {
    validate(&cfg)?;
    let bdir = cfg.meta_dir.join("binlog");
    std::fs::create_dir_all(&bdir).ctx(|| format!("creating {}", bdir.display()))?;
    let uring = cfg.io_uring && probe_io_uring();
    info!(io_uring = uring, "storage engine opening");
    let poisoned = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(DiskStats::default());
    let interval = Duration::from_millis(cfg.fsync_interval_ms.max(1));

    // 0. A rollback asked for cuts the log first (see `rollback.rs`).
    let rollback = rollback::prepare(&cfg.meta_dir, &bdir)?;

    // 1. Index: checkpoint + binlog tail.
    let (safe, mut map) = checkpoint::load(&cfg.meta_dir)
        .ctx(|| "reading the index checkpoint".into())?
        .unwrap_or_default();
    let mut patches: HashMap<u64, (String, u64)> = HashMap::new();
    let mut replayed = 0u64;
    // Records above the commit watermark wait in `tail` until a later
    // record's watermark covers them or the log ends.
    let mut watermark = 0u64;
    let mut tail: VecDeque<(BinlogRecord, PathBuf)> = VecDeque::new();
    let rec = binlog::recover(&bdir, safe, |r, path| {
        replayed += 1;
        watermark = watermark.max(r.committed);
        while tail.front().is_some_and(|(t, _)| t.version <= watermark) {
            if let Some((t, _)) = tail.pop_front() {
                apply(&mut map, &mut patches, t);
            }
        }
        if r.version <= watermark {
            apply(&mut map, &mut patches, r);
        } else {
            tail.push_back((r, path.to_path_buf()));
        }
    })
    .ctx(|| "recovering the binlog".into())?;
    let voided = settle_tail(&cfg, &bdir, &mut map, &mut patches, tail)?;
    // Data versions continue from the log (or the checkpoint), never from
    // the files: a file copied from another server (a catch-up install, an
    // async push) keeps that server's file version, which can be above
    // this log's — continuing from it would leave a gap the log reader
    // stops at, and the next recovery would cut every record after it.
    let next = rec.last.max(safe) + 1;
    info!(
        files = map.len(),
        checkpoint = safe,
        replayed,
        voided,
        next,
        "index recovered"
    );

    // 2. Store paths.
    let mut stores = Vec::with_capacity(cfg.store_paths.len());
    for (i, root) in cfg.store_paths.iter().enumerate() {
        let store = open_store(
            &cfg, i as u8, root, &mut map, uring, interval, &stats, &poisoned,
        )?;
        redo_patches(&store, &map, &patches)?;
        stores.push(store);
    }
    fix_large_files(&stores, &map)?;
    for s in &stores {
        remove_orphans(&cfg.group, s, &map);
    }
    let rolled_back = match rollback {
        Some(p) => Some(rollback::finish(&cfg.meta_dir, p, &map, &stores)?),
        None => None,
    };

    // 3. Binlog writer.
    let bdisk = DiskThread::spawn(
        "binlog",
        uring,
        cfg.fsync,
        interval,
        stats.clone(),
        poisoned.clone(),
    )
    .ctx(|| "starting the binlog disk thread".into())?;
    let blog = Binlog::start(&bdir, bdisk, &rec, next).ctx(|| "opening the binlog".into())?;

    let voided_from = rollback::voided(&cfg.meta_dir);
    let engine = Arc::new(Engine {
        lanes: Lanes::new(cfg.lanes),
        cfg,
        stores,
        binlog: blog,
        index: RwLock::new(map),
        gate: tokio::sync::RwLock::new(()),
        poisoned,
        closed: AtomicBool::new(false),
        stats,
        ckpt_lock: Mutex::new(()),
        ckpt_thread: Mutex::new(None),
        hook: RwLock::new(None),
        voided: Mutex::new(voided_from),
        rolled_back: Mutex::new(rolled_back),
    });
    let t = spawn_checkpointer(Arc::downgrade(&engine))
        .ctx(|| "starting the checkpoint thread".into())?;
    *engine.ckpt_thread.lock() = Some(t);
    Ok(engine)
}

/// Replay one record into the index.
fn apply(map: &mut IndexMap, patches: &mut HashMap<u64, (String, u64)>, r: BinlogRecord) {
    if r.op == op::VOID {
        return;
    }
    let id = match FileId::parse(&r.file_id) {
        Ok(id) => id,
        Err(e) => {
            warn!(version = r.version, error = %e, "binlog record with a bad file id skipped");
            return;
        }
    };
    if r.op.to_ascii_uppercase() == op::DELETE {
        map.remove(&id);
    } else if let Some(state) = r.state {
        if r.op.to_ascii_uppercase() == op::MODIFY && r.patch != 0 {
            patches.insert(r.patch, (r.file_id.clone(), r.version));
        }
        map.insert(id, state);
    }
}

/// Resolve the records above the commit watermark (whose small-file data
/// may not have become durable): per file, the newest record whose data
/// verifies (or that carries no small-file data) is its final state; every
/// newer record of that file is voided in the log, older ones are replayed
/// as superseded history. Returns how many records were voided; the lowest
/// voided version is noted (`rollback::note_voided`).
fn settle_tail(
    cfg: &EngineConfig,
    bdir: &Path,
    map: &mut IndexMap,
    patches: &mut HashMap<u64, (String, u64)>,
    tail: VecDeque<(BinlogRecord, PathBuf)>,
) -> Result<usize, EngineError> {
    if tail.is_empty() {
        return Ok(0);
    }
    let mut by_file: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (r, _)) in tail.iter().enumerate() {
        by_file.entry(r.file_id.as_str()).or_default().push(i);
    }
    let mut chunks: HashMap<(u8, u32), Option<std::fs::File>> = HashMap::new();
    let mut void = vec![false; tail.len()];
    for idxs in by_file.values() {
        for &i in idxs.iter().rev() {
            let r = &tail[i].0;
            if data_intact(cfg, &mut chunks, r) {
                break;
            }
            warn!(
                version = r.version,
                file = %r.file_id,
                "binlog record whose data never became durable; voiding it"
            );
            void[i] = true;
        }
    }
    let mut frames = Vec::new();
    for (i, (r, path)) in tail.iter().enumerate() {
        if void[i] {
            let frame = binlog::encode_void(r).ok_or_else(|| {
                EngineError::Internal(format!("binlog record {} cannot be voided", r.version))
            })?;
            frames.push((path.clone(), r.at, frame));
        }
    }
    // Noted before the voids are made durable: a crash in between voids
    // them again at the next start, never the other way round.
    if let Some(low) = tail
        .iter()
        .zip(&void)
        .filter(|(_, v)| **v)
        .map(|((r, _), _)| r.version)
        .min()
    {
        rollback::note_voided(&cfg.meta_dir, low).ctx(|| "noting voided versions".into())?;
    }
    binlog::void_frames(bdir, &frames).ctx(|| "voiding binlog records".into())?;
    for (i, (r, _)) in tail.into_iter().enumerate() {
        if !void[i] {
            apply(map, patches, r);
        }
    }
    Ok(frames.len())
}

/// Whether a record's small-file data is on disk as the record says (always
/// true for records without small-file data).
fn data_intact(
    cfg: &EngineConfig,
    chunks: &mut HashMap<(u8, u32), Option<std::fs::File>>,
    r: &BinlogRecord,
) -> bool {
    let Some(Loc::Small {
        store,
        chunk,
        offset,
        ..
    }) = r.state.as_ref().map(|s| s.loc)
    else {
        return true;
    };
    let Some(state) = &r.state else { return true };
    let Some(root) = cfg.store_paths.get(store as usize) else {
        return false;
    };
    let f = chunks
        .entry((store, chunk))
        .or_insert_with(|| std::fs::File::open(root.join("chunks").join(chunk_name(chunk))).ok());
    let Some(f) = f else { return false };
    content::crc_of(f, offset + HEADER_LEN, state.size).is_ok_and(|h| h.finalize() == state.crc32)
}

fn spawn_checkpointer(weak: Weak<Engine>) -> std::io::Result<CheckpointThread> {
    let (stop, rx) = crossbeam_channel::bounded::<()>(1);
    let join = std::thread::Builder::new()
        .name("engine-ckpt".into())
        .spawn(move || {
            let mut last = None;
            loop {
                match rx.recv_timeout(CHECKPOINT_EVERY) {
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let Some(engine) = weak.upgrade() else { return };
                let v = engine.data_version();
                if last == Some(v) || engine.is_poisoned() {
                    continue;
                }
                match engine.write_checkpoint() {
                    Ok(()) => last = Some(v),
                    Err(e) => warn!(error = %e, "periodic checkpoint failed"),
                }
            }
        })?;
    Ok(CheckpointThread { stop, join })
}

#[allow(clippy::too_many_arguments)]
fn open_store(
    cfg: &EngineConfig,
    idx: u8,
    root: &Path,
    map: &mut IndexMap,
    uring: bool,
    interval: Duration,
    stats: &Arc<DiskStats>,
    poisoned: &Arc<AtomicBool>,
) -> Result<Store, EngineError> {
    let chunks_dir = root.join("chunks");
    let data_dir = root.join("data");
    let tmp_dir = root.join("tmp");
    for d in [&chunks_dir, &data_dir, &tmp_dir] {
        std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
    }
    disk::sync_dir(root).ctx(|| format!("syncing {}", root.display()))?;
    // Leftover uploads are not referenced by anything.
    for ent in std::fs::read_dir(&tmp_dir).ctx(|| format!("listing {}", tmp_dir.display()))? {
        let ent = ent.ctx(|| "listing tmp".into())?;
        if ent.file_name().to_string_lossy().starts_with("up.") {
            let _ = std::fs::remove_file(ent.path());
        }
    }
    // Chunk files.
    let mut files: BTreeMap<u32, (std::fs::File, u64)> = BTreeMap::new();
    for ent in std::fs::read_dir(&chunks_dir).ctx(|| format!("listing {}", chunks_dir.display()))? {
        let ent = ent.ctx(|| "listing chunks".into())?;
        let Some(n) = ent.file_name().to_str().and_then(parse_chunk_name) else {
            continue;
        };
        let f = open_rw(&ent.path(), false).ctx(|| format!("opening {}", ent.path().display()))?;
        let len = f.metadata().ctx(|| "chunk metadata".into())?.len();
        files.insert(n, (f, len));
    }
    // Extents referenced by the index, per chunk.
    let mut used: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for (id, e) in map.iter() {
        if let Loc::Small {
            store,
            chunk,
            offset,
            capacity,
        } = e.loc
        {
            if store != idx {
                continue;
            }
            if !files.contains_key(&chunk) {
                error!(%id, chunk, "chunk file of an indexed small file is missing");
            }
            used.entry(chunk)
                .or_default()
                .push((offset, HEADER_LEN + capacity));
        }
    }
    let max_chunk = files
        .keys()
        .next_back()
        .copied()
        .into_iter()
        .chain(used.keys().next_back().copied())
        .max();
    let (active, active_end) = match max_chunk {
        Some(c) => {
            let flen = files.get(&c).map_or(0, |f| f.1);
            let uend = used
                .get(&c)
                .and_then(|v| v.iter().map(|(o, l)| o + l).max())
                .unwrap_or(0);
            (c, flen.max(uend).min(cfg.chunk_file_size))
        }
        None => (0, 0),
    };
    let mut free = FreeList::new(cfg.chunk_file_size, active, active_end);
    if let Some(max) = max_chunk {
        for c in 0..=max {
            let end = if c == active {
                active_end
            } else {
                cfg.chunk_file_size
            };
            let mut v = used.remove(&c).unwrap_or_default();
            v.sort_unstable();
            let mut pos = 0u64;
            for (o, l) in v {
                if o < pos {
                    error!(chunk = c, offset = o, "overlapping records in the index");
                }
                if o > pos {
                    free.release(c, pos, o - pos);
                }
                pos = pos.max(o + l);
            }
            if end > pos {
                free.release(c, pos, end - pos);
            }
        }
    }
    let free = Arc::new(Mutex::new(free));
    for e in map.values_mut() {
        if let Loc::Small {
            store,
            chunk,
            offset,
            capacity,
        } = e.loc
        {
            if store == idx {
                let a = Alloc {
                    chunk,
                    offset,
                    len: HEADER_LEN + capacity,
                };
                e.extent = Some(Extent::new(a, e.size, free.clone()));
            }
        }
    }
    let mut chunks = Vec::new();
    for (n, (f, _)) in files {
        if chunks.len() <= n as usize {
            chunks.resize(n as usize + 1, None);
        }
        chunks[n as usize] = Some(Arc::new(f));
    }
    let disk = DiskThread::spawn(
        &format!("store{idx}"),
        uring,
        cfg.fsync,
        interval,
        stats.clone(),
        poisoned.clone(),
    )
    .ctx(|| "starting a disk thread".into())?;
    Ok(Store {
        index: idx,
        root: root.to_path_buf(),
        chunks_dir,
        data_dir,
        tmp_dir,
        chunks: RwLock::new(chunks),
        dio: RwLock::new(Vec::new()),
        dio_ok: AtomicBool::new(true),
        prefilling: Arc::new(AtomicBool::new(false)),
        free,
        disk,
        space: FsSpace::new(root),
    })
}

/// Re-apply patches whose binlog record is durable and still the file's
/// latest change; remove every patch file.
fn redo_patches(
    store: &Store,
    map: &IndexMap,
    patches: &HashMap<u64, (String, u64)>,
) -> Result<(), EngineError> {
    let dir = &store.tmp_dir;
    for ent in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let ent = ent.ctx(|| "listing tmp".into())?;
        let name = ent.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_prefix("patch.")) else {
            continue;
        };
        let Ok(nonce) = u64::from_str_radix(hex, 16) else {
            continue;
        };
        if let Some((ids, version)) = patches.get(&nonce) {
            let current = FileId::parse(ids)
                .ok()
                .and_then(|id| map.get(&id).map(|e| (id, e)));
            if let Some((id, e)) = current {
                if e.version == *version
                    && matches!(e.loc, Loc::Large { store: s } if s == store.index)
                {
                    apply_patch(&ent.path(), &store.large_path(&id), ids)
                        .ctx(|| format!("re-applying patch {} to {id}", ent.path().display()))?;
                    info!(%id, version, "re-applied a committed modify patch");
                }
            }
        }
        let _ = std::fs::remove_file(patch_path(dir, nonce));
    }
    Ok(())
}

fn apply_patch(ppath: &Path, target: &Path, id: &str) -> std::io::Result<()> {
    let pf = std::fs::File::open(ppath)?;
    let mut h = vec![0u8; PATCH_HEADER as usize];
    pf.read_exact_at(&mut h, 0)?;
    let Some((pid, offset, len, crc)) = decode_patch_header(&h) else {
        return Err(std::io::Error::other("patch header is corrupt"));
    };
    if pid != id {
        return Err(std::io::Error::other("patch names another file"));
    }
    let mut data = vec![0u8; len as usize];
    pf.read_exact_at(&mut data, PATCH_HEADER)?;
    if crc32fast::hash(&data) != crc {
        return Err(std::io::Error::other("patch data fails its checksum"));
    }
    let lf = open_rw(target, false)?;
    lf.write_all_at(&data, offset)?;
    lf.sync_data()
}

/// Every large file gets exactly its committed length (cuts appends that
/// were not committed, redoes truncates).
fn fix_large_files(stores: &[Store], map: &IndexMap) -> Result<(), EngineError> {
    for (id, e) in map {
        let Loc::Large { store } = e.loc else {
            continue;
        };
        let Some(s) = stores.get(store as usize) else {
            error!(%id, store, "large file on a store path that is not configured");
            continue;
        };
        let path = s.large_path(id);
        let f = match open_rw(&path, false) {
            Ok(f) => f,
            Err(err) => {
                error!(%id, error = %err, "large file missing");
                continue;
            }
        };
        let len = f
            .metadata()
            .ctx(|| format!("stat {}", path.display()))?
            .len();
        if len != e.size {
            info!(%id, len, size = e.size, "setting a large file to its committed length");
            f.set_len(e.size)
                .ctx(|| format!("set_len {}", path.display()))?;
            f.sync_data().ctx(|| format!("fsync {}", path.display()))?;
        }
    }
    Ok(())
}

/// Remove large files the index does not reference (a crash between the
/// rename and the binlog record, or between a delete's record and unlink).
fn remove_orphans(group: &str, s: &Store, map: &IndexMap) {
    let Ok(d1s) = std::fs::read_dir(&s.data_dir) else {
        return;
    };
    for d1 in d1s.flatten() {
        let Ok(d2s) = std::fs::read_dir(d1.path()) else {
            continue;
        };
        for d2 in d2s.flatten() {
            let Ok(files) = std::fs::read_dir(d2.path()) else {
                continue;
            };
            for f in files.flatten() {
                let text = format!(
                    "{group}/M{:02X}/{}/{}/{}",
                    s.index,
                    d1.file_name().to_string_lossy(),
                    d2.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                );
                let Ok(id) = FileId::parse(&text) else {
                    warn!(path = %f.path().display(), "unexpected file in the data directory");
                    continue;
                };
                let referenced = map
                    .get(&id)
                    .is_some_and(|e| matches!(e.loc, Loc::Large { store } if store == s.index));
                if !referenced {
                    info!(%id, "removing an unreferenced large file");
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }
}
