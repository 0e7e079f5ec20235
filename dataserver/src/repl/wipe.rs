//! Wiping a server's store to copy everything again (a server whose
//! history diverged from the group's and cannot just drop the versions
//! past the shared part: see `engine::rollback`), and restarting for a
//! rollback.
//!
//! The wipe is crash-safe and happens before the engine opens: a durable
//! marker `meta/WIPE` is written, the process re-executes itself (same pid,
//! same arguments), and at start a present marker empties every store path
//! and the meta directory before anything is read, then goes.

use std::path::{Path, PathBuf};

/// What a wipe empties.
#[derive(Debug, Clone)]
pub struct WipePlan {
    pub store_paths: Vec<PathBuf>,
    pub meta_dir: PathBuf,
}

const MARKER: &str = "WIPE";

/// Write the marker and re-execute this process. Returns only on failure
/// (as the error text).
pub fn wipe_and_restart(plan: &WipePlan) -> String {
    if let Err(e) = write_marker(&plan.meta_dir) {
        return format!("writing the wipe marker: {e}");
    }
    restart("wipe the store")
}

/// Ask the engine to roll back to version `keep` (see
/// `engine::request_rollback`) and re-execute this process. Returns only on
/// failure (as the error text).
pub fn roll_back_and_restart(plan: &WipePlan, keep: u64) -> String {
    if let Err(e) = crate::engine::request_rollback(&plan.meta_dir, keep) {
        return format!("writing the rollback marker: {e}");
    }
    restart("roll back")
}

/// Re-execute this process (same pid, same arguments), to `why` at start.
/// Returns only on failure (as the error text).
fn restart(why: &str) -> String {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return format!("finding this executable: {e}"),
    };
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    tracing::warn!("restarting to {why}");
    let err = std::process::Command::new(exe).args(args).exec();
    format!("re-executing to {why}: {err}")
}

fn write_marker(meta: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(meta)?;
    let p = meta.join(MARKER);
    let f = std::fs::File::create(&p)?;
    f.sync_all()?;
    std::fs::File::open(meta)?.sync_all()
}

/// At start: finish a wipe that was asked for. Returns whether one ran.
pub fn apply_pending(plan: &WipePlan) -> std::io::Result<bool> {
    let marker = plan.meta_dir.join(MARKER);
    if !marker.exists() {
        return Ok(false);
    }
    for dir in plan.store_paths.iter().chain([&plan.meta_dir]) {
        empty_dir(dir, &marker)?;
    }
    std::fs::remove_file(&marker)?;
    std::fs::File::open(&plan.meta_dir)?.sync_all()?;
    tracing::warn!("store wiped; everything will be copied from the master");
    Ok(true)
}

fn empty_dir(dir: &Path, keep: &Path) -> std::io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let p = entry?.path();
        if p == keep {
            continue;
        }
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_store_is_emptied_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let plan = WipePlan {
            store_paths: vec![dir.path().join("s0")],
            meta_dir: dir.path().join("meta"),
        };
        std::fs::create_dir_all(plan.store_paths[0].join("chunks")).unwrap();
        std::fs::write(plan.store_paths[0].join("chunks/c"), b"x").unwrap();
        std::fs::create_dir_all(&plan.meta_dir).unwrap();
        std::fs::write(plan.meta_dir.join("epoch"), b"3").unwrap();
        assert!(!apply_pending(&plan).unwrap());
        assert!(plan.meta_dir.join("epoch").exists());
        write_marker(&plan.meta_dir).unwrap();
        assert!(apply_pending(&plan).unwrap());
        assert!(!plan.meta_dir.join("epoch").exists());
        assert!(!plan.store_paths[0].join("chunks").exists());
        assert!(!plan.meta_dir.join(MARKER).exists());
        assert!(!apply_pending(&plan).unwrap());
    }
}
