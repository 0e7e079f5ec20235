//! Rolling this server back to the group's history: a server that holds
//! versions past the point where its group's history went on without it
//! (a master killed with writes its slaves never took; see
//! `GroupInfo::divergence_point`) drops those versions instead of
//! re-copying the whole group.
//!
//! Asked for with a durable marker `meta/ROLLBACK` (the version to keep)
//! before a restart; done when the engine opens, before anything is read:
//!
//! 1. the file ids the later records touched are added to the marker
//!    (durably), then the binlog is cut after the kept version and an index
//!    checkpoint that reflects later changes is removed (the whole log is
//!    replayed instead, so the index is the one at the kept version);
//! 2. the engine opens as usual: space the dropped versions took is free
//!    again (rebuilt from the index), their large files are orphans and go;
//! 3. every touched file the kept history still has is checked against its
//!    crc32. The dropped versions never overwrite a kept byte in place
//!    except through space they freed (a file they modified or deleted,
//!    whose old extent they may have reused) and large-file patches and
//!    truncates: such a file no longer matches. All intact: the marker goes
//!    and catch-up copies the group's versions from the next one on. Any
//!    broken: the marker stays (a restart finds the same), and catch-up
//!    first restores each from the master's copy at the same file version,
//!    in place, leaving the index as it is ([`Engine::restore_kept`]); a
//!    file the master has changed or deleted since is left to the versions
//!    copied next, which replace it. Then the marker goes
//!    ([`Engine::complete_rollback`]).
//!
//! When the index at the kept version cannot be rebuilt (a checkpoint past
//! it and a binlog that no longer starts at version 1) nothing is changed
//! and the server must re-copy everything too.
//!
//! A crash at any step redoes the rollback from the marker: the ids are
//! kept in it before the log is cut, and cutting a cut log changes nothing.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proto::FileId;
use tracing::{info, warn};

use super::binlog;
use super::checkpoint;
use super::chunk::{encode_header, Store, HEADER_LEN};
use super::content::crc_of;
use super::disk;
use super::error::{EngineError, IoContext};
use super::index::{Entry, IndexMap, Loc};
use super::Engine;

const MARKER: &str = "ROLLBACK";
/// The lowest version recovery voided that the group may have otherwise.
const VOIDED: &str = "VOIDED";

/// What a rollback at open did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// The version kept: the log ends there.
    pub kept: u64,
    /// Files the dropped versions touched (at this open and any interrupted
    /// one before it).
    pub touched: usize,
    /// Touched files whose kept state no longer matches its data, to be
    /// restored from the master ([`Engine::restore_kept`]) or replaced by
    /// the newer versions copied from it; the rollback is complete (its
    /// marker goes) only then ([`Engine::complete_rollback`]).
    pub broken: Vec<String>,
    /// The history before the kept version is no longer here (see
    /// `Pending`): nothing was rolled back; the server must re-copy
    /// everything.
    pub history_missing: bool,
}

impl RolledBack {
    /// Whether the server must wipe its store and re-copy everything.
    pub fn must_recopy(&self) -> bool {
        self.history_missing
    }
}

/// A rollback being done: the marker's content.
pub(crate) struct Pending {
    kept: u64,
    touched: BTreeSet<String>,
    /// The index at the kept version cannot be rebuilt (the checkpoint is
    /// past it and the binlog no longer starts at version 1): nothing was
    /// changed, and the server must re-copy everything.
    history_missing: bool,
}

/// Ask for a rollback to `keep` at the next open (durable when it returns).
pub fn request(meta_dir: &Path, keep: u64) -> io::Result<()> {
    write_marker(meta_dir, keep, &BTreeSet::new())
}

fn write_marker(meta_dir: &Path, keep: u64, touched: &BTreeSet<String>) -> io::Result<()> {
    let mut text = format!("{keep}\n");
    for id in touched {
        text.push_str(id);
        text.push('\n');
    }
    disk::replace_file(meta_dir, MARKER, text.as_bytes())
}

fn read_marker(meta_dir: &Path) -> Result<Option<Pending>, EngineError> {
    let path = meta_dir.join(MARKER);
    let mut text = String::new();
    match std::fs::File::open(&path) {
        Ok(mut f) => {
            f.read_to_string(&mut text)
                .ctx(|| format!("reading {}", path.display()))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::io(format!("opening {}", path.display()), e)),
    }
    let mut lines = text.lines();
    let kept = lines
        .next()
        .and_then(|l| l.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            EngineError::Corrupt(format!(
                "{}: first line is not a version; remove the file to start without the rollback",
                path.display()
            ))
        })?;
    let touched = lines
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    Ok(Some(Pending {
        kept,
        touched,
        history_missing: false,
    }))
}

/// Step 1 (before the index is loaded): cut the log after the kept
/// version. `None` when no rollback was asked for.
pub(crate) fn prepare(meta_dir: &Path, bdir: &Path) -> Result<Option<Pending>, EngineError> {
    let Some(mut p) = read_marker(meta_dir)? else {
        return Ok(None);
    };
    let replay_all =
        checkpoint::is_past(meta_dir, p.kept).ctx(|| "reading the checkpoint's version".into())?;
    if replay_all && binlog::first_version(bdir).ok().flatten() != Some(1) {
        warn!(
            kept = p.kept,
            "cannot roll back: the checkpoint is past the kept version and the binlog no longer reaches back to version 1"
        );
        p.history_missing = true;
        return Ok(Some(p));
    }
    // The touched ids are in the marker before the log is cut.
    let dropped = binlog::cut_after(bdir, p.kept, |later| {
        let before = p.touched.len();
        p.touched.extend(
            later
                .iter()
                .filter(|r| !r.file_id.is_empty())
                .map(|r| r.file_id.clone()),
        );
        if p.touched.len() > before {
            write_marker(meta_dir, p.kept, &p.touched)?;
        }
        Ok(())
    })
    .ctx(|| "cutting the binlog".into())?;
    if replay_all {
        checkpoint::remove(meta_dir).ctx(|| "removing a checkpoint past the rollback".into())?;
    }
    warn!(
        kept = p.kept,
        dropped,
        touched = p.touched.len(),
        checkpoint_removed = replay_all,
        "rolling back to the group's history: versions after the kept one dropped"
    );
    Ok(Some(p))
}

/// Step 3 (once the index is rebuilt and the stores are open): check the
/// touched files the kept history has; the marker goes when all are intact.
pub(crate) fn finish(
    meta_dir: &Path,
    p: Pending,
    map: &IndexMap,
    stores: &[Store],
) -> Result<RolledBack, EngineError> {
    if p.history_missing {
        return Ok(RolledBack {
            kept: p.kept,
            touched: 0,
            broken: Vec::new(),
            history_missing: true,
        });
    }
    let mut broken = Vec::new();
    for s in &p.touched {
        let Ok(id) = FileId::parse(s) else { continue };
        let Some(e) = map.get(&id) else { continue };
        if !intact(&id, e, stores) {
            warn!(file = %s, version = e.version, "a rolled-back file no longer matches its kept state");
            broken.push(s.clone());
        }
    }
    if broken.is_empty() {
        complete(meta_dir, p.kept)?;
        info!(
            kept = p.kept,
            touched = p.touched.len(),
            "rolled back: every touched file matches its kept state"
        );
    }
    Ok(RolledBack {
        kept: p.kept,
        touched: p.touched.len(),
        broken,
        history_missing: false,
    })
}

/// The rollback to `kept` is complete: its marker goes, and so does a
/// voided version it dropped. Returns whether that one went.
fn complete(meta_dir: &Path, kept: u64) -> Result<bool, EngineError> {
    let dropped_void = voided(meta_dir).is_some_and(|v| v > kept);
    if dropped_void {
        disk::remove_file(meta_dir, VOIDED).ctx(|| "removing meta/VOIDED".into())?;
    }
    disk::remove_file(meta_dir, MARKER).ctx(|| "removing meta/ROLLBACK".into())?;
    Ok(dropped_void)
}

/// Whether `e`'s bytes on disk still have its crc32.
fn intact(id: &FileId, e: &Entry, stores: &[Store]) -> bool {
    let Some(store) = stores.get(e.loc.store() as usize) else {
        return false;
    };
    let (file, base) = match e.loc {
        Loc::Small { chunk, offset, .. } => match store.chunk(chunk) {
            Ok(f) => (f, offset + HEADER_LEN),
            Err(_) => return false,
        },
        Loc::Large { .. } => match std::fs::File::open(store.large_path(id)) {
            Ok(f) => (Arc::new(f), 0),
            Err(_) => return false,
        },
    };
    crc_of(&file, base, e.size).is_ok_and(|h| h.finalize() == e.crc32)
}

/// Note that recovery voided version `v` (a record whose data never became
/// durable): on a member of a sync group, the group may have a real change
/// at that number, so this server's history is only trusted below it
/// (`meta/VOIDED` keeps the lowest such version until a rollback drops it
/// or this server's history becomes the group's).
pub(crate) fn note_voided(meta_dir: &Path, v: u64) -> io::Result<()> {
    let low = voided(meta_dir).map_or(v, |old| old.min(v));
    disk::replace_file(meta_dir, VOIDED, format!("{low}\n").as_bytes())
}

/// The version [`note_voided`] keeps, if any.
pub(crate) fn voided(meta_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(meta_dir.join(VOIDED))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// This server's history is the group's (it became master): forget it.
pub(crate) fn forget_voided(meta_dir: &Path) -> io::Result<()> {
    disk::remove_file(meta_dir, VOIDED)
}

impl Engine {
    /// Files the rollback at this open found overwritten and not restored
    /// yet (empty when there was no rollback or it is complete).
    pub fn rollback_broken(&self) -> Vec<String> {
        self.rolled_back
            .lock()
            .as_ref()
            .map(|r| r.broken.clone())
            .unwrap_or_default()
    }

    /// The kept state of `id` (a file the rollback found overwritten), if
    /// the index has it: its file version.
    pub fn kept_version(&self, id: &FileId) -> Option<u64> {
        self.index.read().get(id).map(|e| e.version)
    }

    /// Put back the kept content of `id`, found overwritten by the
    /// rollback, from `data`: the master's copy at the same file
    /// `version`. Written in place and made durable through the store's
    /// disk thread (the chunk record with its header, or the large file
    /// through a temp file moved into place like a new one's); the index is
    /// unchanged. `Ok(false)` when `data` is not that content
    /// (another version, size or crc32), changing nothing.
    pub async fn restore_kept(
        &self,
        id: &FileId,
        version: u64,
        data: Bytes,
    ) -> Result<bool, EngineError> {
        let Some(e) = self.index.read().get(id).cloned() else {
            return Ok(false);
        };
        if e.version != version || e.size != data.len() as u64 || crc32fast::hash(&data) != e.crc32
        {
            return Ok(false);
        }
        let store = self.stores.get(e.loc.store() as usize).ok_or_else(|| {
            EngineError::Internal(format!("{id}: no store path {}", e.loc.store()))
        })?;
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
                let header = encode_header(
                    &id.to_string(),
                    e.version,
                    e.size,
                    capacity,
                    e.crc32,
                    e.appender,
                );
                let pieces = vec![
                    (offset, Bytes::copy_from_slice(&header)),
                    (offset + HEADER_LEN, data),
                ];
                store
                    .disk
                    .write(&file, pieces, true)
                    .await
                    .ctx(|| format!("restoring {id} in its chunk"))?;
            }
            Loc::Large { .. } => {
                let tmp = store
                    .tmp_dir
                    .join(format!("up.{:016x}", rand::random::<u64>()));
                let written = async {
                    let file = std::fs::File::create(&tmp)?;
                    store
                        .disk
                        .write(&Arc::new(file), vec![(0, data)], true)
                        .await
                }
                .await
                .ctx(|| format!("restoring {id} into {}", tmp.display()));
                // The same move into place as a new large file's.
                let installed = match written {
                    Ok(()) => self.install(store, &tmp, &store.large_path(id)).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = installed {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        Ok(true)
    }

    /// Every broken file is restored ([`Self::restore_kept`]) or will be
    /// replaced by newer versions copied from the master: the rollback is
    /// complete, its marker goes (blocking file I/O).
    pub fn complete_rollback(&self) -> Result<(), EngineError> {
        let mut r = self.rolled_back.lock();
        let Some(r) = r.as_mut().filter(|r| !r.broken.is_empty()) else {
            return Ok(());
        };
        if complete(&self.cfg.meta_dir, r.kept)? {
            *self.voided.lock() = None;
        }
        info!(
            kept = r.kept,
            restored_or_replaced = r.broken.len(),
            "rollback complete"
        );
        r.broken.clear();
        Ok(())
    }
}
