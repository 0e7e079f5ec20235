//! Index checkpoints: `meta_dir/index.ckpt`.
//!
//! Layout: `magic "CHIDXCK1" | safe_version u64 | count u64 |
//! count × (file_id (u16 len + bytes) | file state) | crc32 u32` where the
//! crc covers everything before it. Written to `index.ckpt.tmp`, fsynced,
//! renamed over `index.ckpt`, then the directory is fsynced. Every change
//! with a data version <= `safe_version` is reflected; changes above it are
//! replayed from the binlog (replay sets whole file states, so changes
//! that are in both are harmless).

use std::io::{self, Write};
use std::path::Path;

use proto::FileId;
use tracing::warn;

use super::codec::{Dec, Enc};
use super::disk;
use super::index::{Entry, IndexMap};

const MAGIC: &[u8; 8] = b"CHIDXCK1";
const NAME: &str = "index.ckpt";
const TMP: &str = "index.ckpt.tmp";

/// Serialize `entries` as of `safe_version` and install the checkpoint.
pub(crate) fn write(dir: &Path, safe_version: u64, entries: &[(FileId, Entry)]) -> io::Result<()> {
    let mut e = Enc::with_capacity(64 + entries.len() * 96);
    e.buf.extend_from_slice(MAGIC);
    e.u64(safe_version);
    e.u64(entries.len() as u64);
    for (id, ent) in entries {
        e.str16(&id.to_string());
        ent.encode(&mut e);
    }
    let crc = crc32fast::hash(&e.buf);
    e.u32(crc);
    let tmp = dir.join(TMP);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&e.buf)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(NAME))?;
    disk::sync_dir(dir)
}

/// Whether a checkpoint is present that reflects changes above `keep` (or
/// is unreadable, which [`load`] would ignore): a rollback to `keep` must
/// then replay the whole binlog instead.
pub(crate) fn is_past(dir: &Path, keep: u64) -> io::Result<bool> {
    let mut head = [0u8; 16];
    match std::fs::File::open(dir.join(NAME)) {
        Ok(f) => {
            use std::os::unix::fs::FileExt;
            if f.read_exact_at(&mut head, 0).is_ok() && &head[..8] == MAGIC {
                let safe = u64::from_le_bytes(head[8..16].try_into().unwrap_or([0xff; 8]));
                return Ok(safe > keep);
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Remove the checkpoint (the whole binlog is replayed at the next open).
pub(crate) fn remove(dir: &Path) -> io::Result<()> {
    disk::remove_file(dir, NAME)
}

/// Load the checkpoint; `None` when there is none or it is unusable (then
/// the whole binlog is replayed).
pub(crate) fn load(dir: &Path) -> io::Result<Option<(u64, IndexMap)>> {
    let buf = match std::fs::read(dir.join(NAME)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if buf.len() < MAGIC.len() + 20 || &buf[..8] != MAGIC {
        warn!("index checkpoint has a bad header; replaying the whole binlog");
        return Ok(None);
    }
    let body = &buf[..buf.len() - 4];
    let tail = &buf[buf.len() - 4..];
    if crc32fast::hash(body) != u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) {
        warn!("index checkpoint crc mismatch; replaying the whole binlog");
        return Ok(None);
    }
    let mut d = Dec::new(&body[8..]);
    let parsed = (|| {
        let safe = d.u64()?;
        let n = d.u64()?;
        let mut map = IndexMap::with_capacity(n.min(1 << 24) as usize);
        for _ in 0..n {
            let id = d.str16()?;
            let ent = Entry::decode(&mut d)?;
            let id = FileId::parse(&id).map_err(|_| super::codec::DecodeError("bad file id"))?;
            map.insert(id, ent);
        }
        Ok::<_, super::codec::DecodeError>((safe, map))
    })();
    match parsed {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            warn!(error = %e, "index checkpoint unreadable; replaying the whole binlog");
            Ok(None)
        }
    }
}
