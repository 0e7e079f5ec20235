//! The epoch this server last took writes in, kept in `meta/epoch`.
//!
//! A server records epoch `e` before it applies anything the master of `e`
//! sent (or, as master, before its first write in `e`). At recovery, with
//! the group's epoch history, it tells whether the server may hold writes
//! nobody acknowledged (see `GroupInfo::divergence_point`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

pub struct EpochFile {
    path: PathBuf,
    current: AtomicU64,
    write: Mutex<()>,
}

impl EpochFile {
    /// Read `dir/epoch` (0 when absent or unreadable).
    pub fn open(dir: &Path) -> EpochFile {
        let path = dir.join("epoch");
        let current = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        EpochFile {
            path,
            current: AtomicU64::new(current),
            write: Mutex::new(()),
        }
    }

    pub fn get(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// Record `epoch` durably if it is newer than the recorded one.
    pub fn observe(&self, epoch: u64) -> std::io::Result<()> {
        if epoch <= self.get() {
            return Ok(());
        }
        let _one = self.write.lock();
        if epoch <= self.get() {
            return Ok(());
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{epoch}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.current.store(epoch, Ordering::Release);
        tracing::info!(epoch, "taking writes in a new epoch");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_grows_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let e = EpochFile::open(dir.path());
        assert_eq!(e.get(), 0);
        e.observe(3).unwrap();
        e.observe(2).unwrap();
        assert_eq!(e.get(), 3);
        assert_eq!(EpochFile::open(dir.path()).get(), 3);
    }
}
