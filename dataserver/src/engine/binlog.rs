//! The binlog: every change as a record with its data version, in segment
//! files `meta_dir/binlog/binlog.<first version, 20 digits>`.
//!
//! Frame: `len u32 LE | crc32(payload) u32 LE | payload (len bytes)`.
//! Payload: `version u64 | op u8 (ASCII) | file_id (u16 len + bytes) |
//! file_version u64 | has_state u8 | [file state, see index.rs] | patch u64`.
//! Versions are consecutive; the first invalid frame (short, bad crc, bad
//! length, version out of sequence) ends the log: it is cut there at start.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::warn;

use super::codec::{Dec, DecodeError, Enc};
use super::disk::{self, DiskThread};
use super::index::Entry;

/// A segment is closed once it reaches this size.
pub(crate) const SEGMENT_MAX: u64 = 64 << 20;
/// Largest payload accepted when reading.
const MAX_PAYLOAD: u32 = 1 << 20;
const FRAME_HEADER: usize = 8;

/// Op codes. Upper case: originated on this server; the lower-case twin is
/// reserved for records applied by replication.
pub mod op {
    pub const CREATE: u8 = b'C';
    pub const APPEND: u8 = b'A';
    pub const MODIFY: u8 = b'M';
    pub const TRUNCATE: u8 = b'T';
    pub const DELETE: u8 = b'D';
    pub const SET_META: u8 = b'S';
}

/// One decoded binlog record.
#[derive(Debug, Clone)]
pub struct BinlogRecord {
    /// Server-wide data version of this change.
    pub version: u64,
    /// ASCII op code (see [`op`]).
    pub op: u8,
    /// Canonical file id.
    pub file_id: String,
    /// The file's version after the change.
    pub file_version: u64,
    /// The full frame as stored (for shipping to a peer).
    pub raw: Bytes,
    pub(crate) state: Option<Entry>,
    pub(crate) patch: u64,
}

pub(crate) fn encode(
    version: u64,
    op: u8,
    file_id: &str,
    file_version: u64,
    state: Option<&Entry>,
    patch: u64,
) -> Vec<u8> {
    let mut e = Enc::with_capacity(128);
    e.u32(0);
    e.u32(0);
    e.u64(version);
    e.u8(op);
    e.str16(file_id);
    e.u64(file_version);
    match state {
        Some(s) => {
            e.u8(1);
            s.encode(&mut e);
        }
        None => e.u8(0),
    }
    e.u64(patch);
    let len = (e.buf.len() - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&e.buf[FRAME_HEADER..]);
    e.buf[0..4].copy_from_slice(&len.to_le_bytes());
    e.buf[4..8].copy_from_slice(&crc.to_le_bytes());
    e.buf
}

fn decode_payload(p: &[u8], raw: Bytes) -> Result<BinlogRecord, DecodeError> {
    let mut d = Dec::new(p);
    let version = d.u64()?;
    let op = d.u8()?;
    let file_id = d.str16()?;
    let file_version = d.u64()?;
    let state = match d.u8()? {
        0 => None,
        1 => Some(Entry::decode(&mut d)?),
        _ => return Err(DecodeError("bad state flag")),
    };
    let patch = d.u64()?;
    if d.remaining() != 0 {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(BinlogRecord {
        version,
        op,
        file_id,
        file_version,
        raw,
        state,
        patch,
    })
}

/// Parse frames from `buf`; returns the records and the length of the
/// valid prefix. `prev` is the version before the first expected record
/// (0 = any).
fn parse(buf: &[u8], mut prev: u64) -> (Vec<BinlogRecord>, usize) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let whole = Bytes::copy_from_slice(buf);
    while buf.len() - pos >= FRAME_HEADER {
        let len = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]);
        let crc = u32::from_le_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]]);
        if len == 0 || len > MAX_PAYLOAD || buf.len() - pos - FRAME_HEADER < len as usize {
            break;
        }
        let end = pos + FRAME_HEADER + len as usize;
        let payload = &buf[pos + FRAME_HEADER..end];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(rec) = decode_payload(payload, whole.slice(pos..end)) else {
            break;
        };
        if prev != 0 && rec.version != prev + 1 {
            break;
        }
        prev = rec.version;
        out.push(rec);
        pos = end;
    }
    (out, pos)
}

fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segs = Vec::new();
    for ent in std::fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(num) = name.strip_prefix("binlog.") else {
            continue;
        };
        if num.len() == 20 {
            if let Ok(first) = num.parse::<u64>() {
                segs.push((first, ent.path()));
            }
        }
    }
    segs.sort();
    Ok(segs)
}

fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("binlog.{first:020}"))
}

/// What recovery found.
pub(crate) struct Recovered {
    /// Last valid version (0 if none).
    pub last: u64,
    /// The last segment and its valid length.
    pub tail: Option<(PathBuf, u64)>,
}

/// Read the whole binlog, cut a torn tail, and feed every record with a
/// version above `after` to `f`, in order.
pub(crate) fn recover(
    dir: &Path,
    after: u64,
    mut f: impl FnMut(BinlogRecord),
) -> io::Result<Recovered> {
    std::fs::create_dir_all(dir)?;
    let segs = segments(dir)?;
    let mut last = 0u64;
    let mut tail = None;
    let mut cut_rest = false;
    for (i, (first, path)) in segs.iter().enumerate() {
        if cut_rest {
            warn!(path = %path.display(), "removing binlog segment after a torn record");
            std::fs::remove_file(path)?;
            continue;
        }
        // Segments wholly at or below `after` only need reading for the
        // last version when they are the final one.
        let next_first = segs.get(i + 1).map(|s| s.0);
        if let Some(nf) = next_first {
            if nf <= after + 1 && nf > *first {
                last = nf - 1;
                continue;
            }
        }
        let buf = std::fs::read(path)?;
        let expect_prev = if last == 0 { 0 } else { last };
        let (recs, valid) = parse(&buf, expect_prev);
        if let Some(r) = recs.first() {
            if r.version != *first {
                warn!(path = %path.display(), "binlog segment name does not match its first record");
            }
        }
        for r in recs {
            last = r.version;
            if r.version > after {
                f(r);
            }
        }
        if valid < buf.len() {
            warn!(
                path = %path.display(),
                valid,
                len = buf.len(),
                "binlog tail is torn; cutting it"
            );
            let file = OpenOptions::new().write(true).open(path)?;
            file.set_len(valid as u64)?;
            file.sync_all()?;
            cut_rest = true;
        }
        tail = Some((path.clone(), valid as u64));
    }
    if cut_rest {
        disk::sync_dir(dir)?;
    }
    Ok(Recovered { last, tail })
}

struct State {
    seg: Arc<File>,
    offset: u64,
    next: u64,
    /// Versions handed out whose index update has not happened yet.
    pending: BTreeSet<u64>,
}

/// The binlog writer.
pub(crate) struct Binlog {
    dir: PathBuf,
    disk: DiskThread,
    st: Mutex<State>,
    durable: AtomicU64,
}

fn open_append(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

impl Binlog {
    /// Start appending after recovery; `next` is the first version to hand out.
    pub fn start(dir: &Path, disk: DiskThread, rec: &Recovered, next: u64) -> io::Result<Binlog> {
        let (seg, offset) = match &rec.tail {
            Some((path, len)) if *len < SEGMENT_MAX => (open_append(path, false)?, *len),
            _ => {
                let f = open_append(&seg_path(dir, next), true)?;
                f.set_len(0)?;
                disk::sync_dir(dir)?;
                (f, 0)
            }
        };
        Ok(Binlog {
            dir: dir.to_path_buf(),
            disk,
            st: Mutex::new(State {
                seg: Arc::new(seg),
                offset,
                next,
                pending: BTreeSet::new(),
            }),
            durable: AtomicU64::new(next.saturating_sub(1)),
        })
    }

    /// Append one record built by `build(version)` and wait until it is
    /// durable (per policy). The version stays pending until [`Self::applied`].
    pub async fn append(&self, build: impl FnOnce(u64) -> Vec<u8>) -> io::Result<u64> {
        let permit = self.disk.permit().await?;
        let (v, rx) = {
            let mut st = self.st.lock();
            let v = st.next;
            let frame = build(v);
            if st.offset >= SEGMENT_MAX {
                let path = seg_path(&self.dir, v);
                let f = open_append(&path, true)?;
                disk::sync_dir(&self.dir)?;
                st.seg = Arc::new(f);
                st.offset = 0;
            }
            let off = st.offset;
            st.offset += frame.len() as u64;
            st.next = v + 1;
            st.pending.insert(v);
            let rx = self.disk.send(
                permit,
                st.seg.clone(),
                vec![(off, Bytes::from(frame))],
                true,
            );
            (v, rx)
        };
        disk::wait(rx).await?;
        self.durable.fetch_max(v, Ordering::AcqRel);
        Ok(v)
    }

    /// The index reflects version `v` (or its op gave up).
    pub fn applied(&self, v: u64) {
        self.st.lock().pending.remove(&v);
    }

    /// Every version up to the returned one is applied to the index.
    pub fn safe_version(&self) -> u64 {
        let st = self.st.lock();
        match st.pending.first() {
            Some(&p) => p - 1,
            None => st.next - 1,
        }
    }

    pub fn durable_version(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub fn disk(&self) -> &DiskThread {
        &self.disk
    }

    /// Durable records with versions above `after`, at most `max` of them.
    pub fn records_since(&self, after: u64, max: usize) -> io::Result<Vec<BinlogRecord>> {
        let durable = self.durable_version();
        let segs = segments(&self.dir)?;
        let mut out = Vec::new();
        for (i, (_, path)) in segs.iter().enumerate() {
            if let Some((nf, _)) = segs.get(i + 1) {
                if *nf <= after + 1 {
                    continue;
                }
            }
            let buf = std::fs::read(path)?;
            let (recs, _) = parse(&buf, 0);
            for r in recs {
                if r.version > durable || out.len() >= max {
                    return Ok(out);
                }
                if r.version > after {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stops_at_torn_frame() {
        let mut buf = Vec::new();
        for v in 1..=3u64 {
            buf.extend(encode(v, op::DELETE, "g/x", v, None, 0));
        }
        let full = buf.len();
        buf.extend(encode(4, op::DELETE, "g/x", 4, None, 0));
        buf.truncate(buf.len() - 3);
        let (recs, valid) = parse(&buf, 0);
        assert_eq!(recs.len(), 3);
        assert_eq!(valid, full);
        // A flipped byte inside a record ends the log there.
        let mut bad = buf.clone();
        bad[full - 2] ^= 0xff;
        let (recs, _) = parse(&bad, 0);
        assert_eq!(recs.len(), 2);
        // Out-of-sequence version.
        let mut gap = encode(1, op::DELETE, "g/x", 1, None, 0);
        gap.extend(encode(3, op::DELETE, "g/x", 3, None, 0));
        assert_eq!(parse(&gap, 0).0.len(), 1);
    }
}
