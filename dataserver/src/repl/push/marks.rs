//! Push marks: per peer, the last data version of this server whose local
//! (upper-case) records have all been pushed to that peer.
//!
//! One file per peer, `<meta>/marks/<peer id>`, holding the version in
//! decimal and a newline. It is replaced atomically (write a temp file,
//! fsync it, rename it over the mark, fsync the directory), so after a
//! crash it holds either the old or the new mark. A mark only moves
//! forward. A missing mark is 0 (push everything); an unreadable one is
//! treated as 0 too (pushing again is harmless: the peer's answer to the
//! offer skips what it has).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use proto::cluster::ServerId;
use tracing::warn;

/// Why a mark could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error("creating {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the push mark {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The marks of every peer, cached in memory.
pub struct MarkStore {
    dir: PathBuf,
    cache: Mutex<HashMap<ServerId, u64>>,
    /// One writer at a time per store (marks are small and rare).
    write: Mutex<()>,
}

impl MarkStore {
    /// Marks under `meta_dir/marks` (created on first write).
    pub fn open(meta_dir: &Path) -> MarkStore {
        MarkStore {
            dir: meta_dir.join("marks"),
            cache: Mutex::new(HashMap::new()),
            write: Mutex::new(()),
        }
    }

    fn path(&self, peer: ServerId) -> PathBuf {
        self.dir.join(peer.to_string())
    }

    /// The mark for `peer` (0 when none).
    pub fn get(&self, peer: ServerId) -> u64 {
        if let Some(v) = self.cache.lock().get(&peer) {
            return *v;
        }
        let path = self.path(peer);
        let v = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or_else(|e| {
                warn!(path = %path.display(), error = %e, "unreadable push mark; pushing from the start");
                0
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read push mark; pushing from the start");
                0
            }
        };
        *self.cache.lock().entry(peer).or_insert(v)
    }

    /// Durably move `peer`'s mark to `v` (no-op unless it moves forward).
    pub fn set(&self, peer: ServerId, v: u64) -> Result<(), MarkError> {
        let _one = self.write.lock();
        if v <= self.get(peer) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| MarkError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.path(peer);
        let tmp = self.dir.join(format!("{peer}.tmp"));
        let wrote = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{v}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if let Err(source) = wrote {
            let _ = std::fs::remove_file(&tmp);
            return Err(MarkError::Write { path, source });
        }
        self.cache.lock().insert(peer, v);
        Ok(())
    }
}

impl MarkStore {
    /// Forget `peer`'s mark (a peer that starts over from an empty store):
    /// its pushes start from the beginning.
    pub fn reset(&self, peer: ServerId) -> Result<(), MarkError> {
        let _one = self.write.lock();
        let path = self.path(peer);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(MarkError::Write { path, source }),
        }
        self.cache.lock().insert(peer, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_reopening_and_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let m = MarkStore::open(dir.path());
        assert_eq!(m.get(2), 0);
        m.set(2, 10).unwrap();
        m.set(3, 4).unwrap();
        m.set(2, 7).unwrap();
        assert_eq!(m.get(2), 10);
        let again = MarkStore::open(dir.path());
        assert_eq!(again.get(2), 10);
        assert_eq!(again.get(3), 4);
        assert_eq!(again.get(4), 0);
        again.reset(3).unwrap();
        assert_eq!(again.get(3), 0);
        assert_eq!(MarkStore::open(dir.path()).get(3), 0);
        let text = std::fs::read_to_string(dir.path().join("marks/2")).unwrap();
        assert_eq!(text, "10\n");
    }

    #[test]
    fn writes_leave_no_temp_file_and_a_bad_mark_reads_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let m = MarkStore::open(dir.path());
        m.set(5, 99).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path().join("marks"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["5".to_string()]);
        // A torn or garbage mark (not something this code writes) is 0:
        // everything is offered again, which the peer's answers make safe.
        std::fs::write(dir.path().join("marks/6"), b"\x00garbage").unwrap();
        assert_eq!(MarkStore::open(dir.path()).get(6), 0);
    }
}
