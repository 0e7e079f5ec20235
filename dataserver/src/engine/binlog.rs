//! The binlog: every change as a record with its data version, in segment
//! files `meta_dir/binlog/binlog.<first version, 20 digits>`.
//!
//! Frame: `len u32 LE | crc32(payload) u32 LE | payload (len bytes)`.
//! Payload: `version u64 | op u8 (ASCII) | file_id (u16 len + bytes) |
//! file_version u64 | has_state u8 | [file state, see index.rs] | patch u64 |
//! committed u64`. `committed` (absent in records written before it was
//! introduced: read as `version`) is the commit watermark when the record
//! was built: the data of every version <= `committed` was durable then.
//! A record with op `V` (void) is a record that recovery cancelled because
//! its small-file data never became durable (see `recovery.rs`): same
//! length as the original, no state, zero padding after `committed`.
//! Versions are consecutive; the first invalid frame (short, bad crc, bad
//! length, version out of sequence) ends the log: it is cut there at start.
//!
//! Voiding rewrites frames in place, so it goes through an intent file
//! `binlog/void.intent` (`"CHVOID01" | count u32 | count × (segment file
//! name (u16 len + bytes) | offset u64 | frame len u32 | frame) | crc32 of
//! everything before it`, installed by
//! tmp + fsync + rename + directory fsync), redone at start if present: a
//! crash in the middle of voiding never leaves a torn frame behind.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::{debug, warn};

use super::codec::{Dec, DecodeError, Enc};
use super::disk::{self, DiskThread};
use super::index::Entry;

/// A segment is closed once it reaches this size.
pub(crate) const SEGMENT_MAX: u64 = 64 << 20;
/// Largest payload accepted when reading.
const MAX_PAYLOAD: u32 = 1 << 20;
/// Zeros written ahead of the log's end at a time…
const ZERO_STEP: u64 = 1 << 20;
/// …once the end comes this close to the zeroed part's.
const ZERO_LOW: u64 = 256 << 10;
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
    /// A cancelled record (its data never became durable): a no-op.
    pub const VOID: u8 = b'V';
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
    /// Commit watermark when the record was built (see the module docs).
    pub(crate) committed: u64,
    /// The client request the change answered (`(0, 0)`: none), for
    /// exactly-once retries across a restart.
    pub(crate) client: (u64, u64),
    /// Offset of the frame in its segment.
    pub(crate) at: u64,
}

/// A frame with `committed = version` (a record whose own data, if any,
/// is durable and which follows only committed records).
#[cfg(test)]
pub(crate) fn encode(
    version: u64,
    op: u8,
    file_id: &str,
    file_version: u64,
    state: Option<&Entry>,
    patch: u64,
) -> Vec<u8> {
    encode_committed(version, op, file_id, file_version, state, patch, version)
}

pub(crate) fn encode_committed(
    version: u64,
    op: u8,
    file_id: &str,
    file_version: u64,
    state: Option<&Entry>,
    patch: u64,
    committed: u64,
) -> Vec<u8> {
    let mut e = Enc::with_capacity(160);
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
    e.u64(committed);
    seal(e.buf)
}

/// Fill in the frame header of `buf` (header placeholder + payload).
fn seal(mut buf: Vec<u8>) -> Vec<u8> {
    let len = (buf.len() - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&buf[FRAME_HEADER..]);
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// `frame` (from [`encode_committed`]) with the client request it answers
/// appended to its payload (`client_id u64 | seq u64`); unchanged for
/// `(0, 0)`.
pub(crate) fn with_client(frame: Vec<u8>, client: (u64, u64)) -> Vec<u8> {
    if client == (0, 0) {
        return frame;
    }
    let mut buf = frame;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let mut ids = [0u8; 16];
    ids[..8].copy_from_slice(&client.0.to_le_bytes());
    ids[8..].copy_from_slice(&client.1.to_le_bytes());
    buf.extend_from_slice(&ids);
    // Extend the header's crc over the new bytes rather than hashing the
    // whole payload again.
    let mut h = crc32fast::Hasher::new_with_initial(crc);
    h.update(&ids);
    let len = (buf.len() - FRAME_HEADER) as u32;
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&h.finalize().to_le_bytes());
    buf
}

/// A void frame exactly as long as `rec`'s, or `None` when it would not fit
/// (only records with a state are voided, and those always leave room).
pub(crate) fn encode_void(rec: &BinlogRecord) -> Option<Vec<u8>> {
    let mut e = Enc::with_capacity(rec.raw.len());
    e.u32(0);
    e.u32(0);
    e.u64(rec.version);
    e.u8(op::VOID);
    e.str16(&rec.file_id);
    e.u64(rec.file_version);
    e.u8(0);
    e.u64(0);
    e.u64(rec.committed);
    if e.buf.len() > rec.raw.len() {
        return None;
    }
    e.buf.resize(rec.raw.len(), 0);
    Some(seal(e.buf))
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
    let committed = if d.remaining() >= 8 {
        d.u64()?
    } else {
        version
    };
    // A void frame is zero padded to its record's length: no client there.
    let client = if op != op::VOID && d.remaining() >= 16 {
        (d.u64()?, d.u64()?)
    } else {
        (0, 0)
    };
    if d.remaining() != 0 && op != op::VOID {
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
        committed,
        client,
        at: 0,
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
        let Ok(mut rec) = decode_payload(payload, whole.slice(pos..end)) else {
            break;
        };
        rec.at = pos as u64;
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
    /// The last segment, its valid length and its first version.
    pub tail: Option<(PathBuf, u64, u64)>,
}

/// Read the whole binlog, cut a torn tail, and feed every record with a
/// version above `after` to `f` with its segment's path, in order.
pub(crate) fn recover(
    dir: &Path,
    after: u64,
    mut f: impl FnMut(BinlogRecord, &Path),
) -> io::Result<Recovered> {
    std::fs::create_dir_all(dir)?;
    redo_voids(dir)?;
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
                f(r, path);
            }
        }
        if valid < buf.len() {
            if buf[valid..].iter().all(|&b| b == 0) {
                // Zeros written ahead of the log's end (`Binlog::zero_ahead`).
                debug!(path = %path.display(), valid, len = buf.len(), "cutting the binlog's zeroed tail");
            } else {
                warn!(
                    path = %path.display(),
                    valid,
                    len = buf.len(),
                    "binlog tail is torn; cutting it"
                );
            }
            let file = OpenOptions::new().write(true).open(path)?;
            file.set_len(valid as u64)?;
            file.sync_all()?;
            cut_rest = true;
        }
        tail = Some((path.clone(), valid as u64, *first));
    }
    if cut_rest {
        disk::sync_dir(dir)?;
    }
    Ok(Recovered { last, tail })
}

/// Drop every record above version `keep` (a rollback to the group's
/// history, see `rollback.rs`): `first` sees them before anything changes,
/// then segments after the one holding `keep + 1` are removed (newest
/// first) and that one is cut before it (removed when it starts there).
/// Returns how many were dropped. Repeating it after a crash midway drops
/// the rest; the log is a prefix throughout.
pub(crate) fn cut_after(
    dir: &Path,
    keep: u64,
    first: impl FnOnce(&[BinlogRecord]) -> io::Result<()>,
) -> io::Result<usize> {
    let mut dropped = Vec::new();
    let mut cut: Option<(PathBuf, u64)> = None;
    recover(dir, keep, |r, path| {
        if cut.is_none() {
            cut = Some((path.to_path_buf(), r.at));
        }
        dropped.push(r);
    })?;
    first(&dropped)?;
    let Some((path, at)) = cut else {
        return Ok(0);
    };
    for (_, later) in segments(dir)?.iter().rev().filter(|(_, p)| *p > path) {
        std::fs::remove_file(later)?;
    }
    if at == 0 {
        std::fs::remove_file(&path)?;
    } else {
        let f = OpenOptions::new().write(true).open(&path)?;
        f.set_len(at)?;
        f.sync_all()?;
    }
    disk::sync_dir(dir)?;
    Ok(dropped.len())
}

/// The first version the log holds (`None`: no segment).
pub(crate) fn first_version(dir: &Path) -> io::Result<Option<u64>> {
    Ok(segments(dir)?.first().map(|(first, _)| *first))
}

const VOID_INTENT: &str = "void.intent";
const VOID_INTENT_TMP: &str = "void.intent.tmp";
const VOID_MAGIC: &[u8; 8] = b"CHVOID01";

/// One frame to replace in place: segment path, offset, new frame.
pub(crate) type VoidFrame = (PathBuf, u64, Vec<u8>);

/// Replace frames with void frames of the same length, crash-safely: the
/// intent is made durable first and redone at start if we crash midway.
pub(crate) fn void_frames(dir: &Path, voids: &[VoidFrame]) -> io::Result<()> {
    if voids.is_empty() {
        return Ok(());
    }
    let intent = write_void_intent(dir, voids)?;
    apply_void_intent(dir, &intent)
}

/// Make the intent to void `voids` durable; returns its bytes.
fn write_void_intent(dir: &Path, voids: &[VoidFrame]) -> io::Result<Vec<u8>> {
    let mut e = Enc::default();
    e.buf.extend_from_slice(VOID_MAGIC);
    e.u32(voids.len() as u32);
    for (path, at, frame) in voids {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other("binlog segment without a name"))?;
        e.str16(name);
        e.u64(*at);
        e.u32(frame.len() as u32);
        e.buf.extend_from_slice(frame);
    }
    let crc = crc32fast::hash(&e.buf);
    e.u32(crc);
    let tmp = dir.join(VOID_INTENT_TMP);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&e.buf)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(VOID_INTENT))?;
    disk::sync_dir(dir)?;
    Ok(e.buf)
}

/// Redo an interrupted [`void_frames`].
fn redo_voids(dir: &Path) -> io::Result<()> {
    let _ = std::fs::remove_file(dir.join(VOID_INTENT_TMP));
    let buf = match std::fs::read(dir.join(VOID_INTENT)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    warn!("redoing an interrupted binlog void");
    apply_void_intent(dir, &buf)
}

fn apply_void_intent(dir: &Path, buf: &[u8]) -> io::Result<()> {
    let bad =
        |m: &'static str| io::Error::new(io::ErrorKind::InvalidData, format!("void intent: {m}"));
    if buf.len() < VOID_MAGIC.len() + 8 || &buf[..8] != VOID_MAGIC {
        return Err(bad("bad header"));
    }
    let (body, tail) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) {
        // Installed by rename after an fsync, so this is damage, not a
        // torn write: refuse to guess.
        return Err(bad("crc mismatch"));
    }
    let mut d = Dec::new(&body[8..]);
    let n = d.u32().map_err(|_| bad("short"))?;
    let mut touched: Vec<File> = Vec::new();
    for _ in 0..n {
        let name = d.str16().map_err(|_| bad("short"))?;
        let at = d.u64().map_err(|_| bad("short"))?;
        let len = d.u32().map_err(|_| bad("short"))? as usize;
        let frame = d.bytes(len).map_err(|_| bad("short"))?;
        if !name.starts_with("binlog.") || name.contains('/') {
            return Err(bad("bad segment name"));
        }
        let f = OpenOptions::new().write(true).open(dir.join(&name))?;
        f.write_all_at(frame, at)?;
        touched.push(f);
    }
    for f in &touched {
        f.sync_data()?;
    }
    std::fs::remove_file(dir.join(VOID_INTENT))?;
    disk::sync_dir(dir)
}

struct State {
    seg: Arc<File>,
    /// The open segment's first version (its name).
    seg_first: u64,
    /// Where the next record goes in it.
    offset: u64,
    /// The segment holds zeros (or records) up to here: records below it
    /// overwrite allocated blocks instead of growing the file.
    zeroed: u64,
    next: u64,
    /// Versions handed out whose index update has not happened yet.
    pending: BTreeSet<u64>,
}

/// The binlog writer.
pub(crate) struct Binlog {
    dir: PathBuf,
    disk: DiskThread,
    st: Mutex<State>,
    /// Every record up to this version is durable (a prefix).
    durable: AtomicU64,
    /// Versions whose record was sent together with its small-file data
    /// and whose data is not known to be durable yet (removed by a hook on
    /// the store path's disk thread, so a dropped future cannot leak one).
    unsettled: Arc<Mutex<BTreeSet<u64>>>,
    /// The last version handed out (for replicas waiting their turn).
    assigned: tokio::sync::watch::Sender<u64>,
    /// [`Self::safe_version`], raised whenever a version is applied (async
    /// pushers wake on it).
    published: tokio::sync::watch::Sender<u64>,
    /// Where the last [`Self::records_since`] stopped.
    read_hint: Mutex<Option<LogPos>>,
}

/// Where a binlog reader stopped: just after the record of `version`,
/// which ends at byte `offset` of the segment starting at `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPos {
    pub version: u64,
    pub segment: u64,
    pub offset: u64,
}

/// Outcome of [`Binlog::append_paired`].
pub(crate) struct Paired {
    pub version: u64,
    /// Record and data both durable, or the first error.
    pub result: io::Result<()>,
}

fn open_append(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

/// A replicated record must get exactly the version its master gave it.
fn check_expected(st: &State, expect: Option<u64>) -> io::Result<()> {
    match expect {
        Some(e) if e != st.next => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "replicated version {e} arrived, but the next version here is {}",
                st.next
            ),
        )),
        _ => Ok(()),
    }
}

impl Binlog {
    /// Start appending after recovery; `next` is the first version to hand out.
    pub fn start(dir: &Path, disk: DiskThread, rec: &Recovered, next: u64) -> io::Result<Binlog> {
        let (seg, offset, seg_first) = match &rec.tail {
            Some((path, len, first)) if *len < SEGMENT_MAX => {
                (open_append(path, false)?, *len, *first)
            }
            _ => {
                let f = open_append(&seg_path(dir, next), true)?;
                f.set_len(0)?;
                disk::sync_dir(dir)?;
                (f, 0, next)
            }
        };
        Ok(Binlog {
            dir: dir.to_path_buf(),
            disk,
            st: Mutex::new(State {
                seg: Arc::new(seg),
                seg_first,
                offset,
                zeroed: offset,
                next,
                pending: BTreeSet::new(),
            }),
            durable: AtomicU64::new(next.saturating_sub(1)),
            unsettled: Arc::new(Mutex::new(BTreeSet::new())),
            assigned: tokio::sync::watch::Sender::new(next.saturating_sub(1)),
            published: tokio::sync::watch::Sender::new(next.saturating_sub(1)),
            read_hint: Mutex::new(None),
        })
    }

    /// Every version <= the returned one has its data durable (`u64::MAX`
    /// when nothing is outstanding).
    fn settled_through(&self) -> u64 {
        self.unsettled.lock().first().map_or(u64::MAX, |&f| f - 1)
    }

    /// Open a new segment when the current one is full (under the lock).
    fn rotate(&self, st: &mut State) -> io::Result<()> {
        if st.offset >= SEGMENT_MAX {
            let path = seg_path(&self.dir, st.next);
            let f = open_append(&path, true)?;
            disk::sync_dir(&self.dir)?;
            st.seg = Arc::new(f);
            st.seg_first = st.next;
            st.offset = 0;
            st.zeroed = 0;
        }
        Ok(())
    }

    /// Queue zeros ahead of the log's end when it comes close to the zeroed
    /// part's (under the lock, after the record's own write was queued, so
    /// the disk thread writes them in that order and no record is ever
    /// zeroed). Only an optimisation: when no disk slot is free, or the
    /// write fails, records just grow the file as they otherwise would.
    fn zero_ahead(&self, st: &mut State) {
        if st.offset + ZERO_LOW < st.zeroed || st.zeroed >= SEGMENT_MAX {
            return;
        }
        let from = st.zeroed.max(st.offset);
        let to = (from + ZERO_STEP).min(SEGMENT_MAX);
        if to <= from {
            return;
        }
        let Some(permit) = self.disk.try_permit() else {
            return;
        };
        st.zeroed = to;
        // Made durable by the next record's fdatasync; nobody waits for it.
        drop(
            self.disk
                .send(permit, st.seg.clone(), disk::zeros(from, to), false),
        );
    }

    /// Append one record built by `build(version, committed)` together with
    /// its small-file data `data(version)`: both go to the binlog disk
    /// thread as one request, are written in the same batch and their
    /// fdatasyncs are in flight together (one fsync round); the result is
    /// `Ok` only when both are durable. The version is unsettled until then
    /// (a hook on the disk thread settles it, so a dropped future cannot
    /// leave it unsettled) and pending until [`Self::applied`].
    pub async fn append_paired(
        &self,
        expect: Option<u64>,
        build: impl FnOnce(u64, u64) -> Vec<u8>,
        data: impl FnOnce(u64) -> disk::Target,
    ) -> io::Result<Paired> {
        let permit = self.disk.permit().await?;
        let (v, rx) = {
            let mut st = self.st.lock();
            check_expected(&st, expect)?;
            self.rotate(&mut st)?;
            let v = st.next;
            let committed = {
                let mut u = self.unsettled.lock();
                u.insert(v);
                u.first().map_or(v, |&f| f - 1)
            };
            let frame = build(v, committed);
            let unsettled = self.unsettled.clone();
            let hook: disk::Hook = Box::new(move |ok| {
                if ok {
                    unsettled.lock().remove(&v);
                }
            });
            let off = st.offset;
            st.offset += frame.len() as u64;
            st.next = v + 1;
            st.pending.insert(v);
            self.assigned.send_replace(v);
            let log = disk::Target::new(st.seg.clone(), vec![(off, Bytes::from(frame))]);
            let targets = vec![data(v), log];
            let rx = self.disk.send_multi(permit, targets, true, Some(hook));
            self.zero_ahead(&mut st);
            (v, rx)
        };
        let result = disk::wait(rx).await;
        if result.is_ok() {
            self.durable.fetch_max(v, Ordering::AcqRel);
        }
        Ok(Paired { version: v, result })
    }

    /// Append one record built by `build(version, committed)` and wait
    /// until it is durable (per policy). For records whose data (if any) is
    /// already durable. The version stays pending until [`Self::applied`].
    pub async fn append(
        &self,
        expect: Option<u64>,
        build: impl FnOnce(u64, u64) -> Vec<u8>,
    ) -> io::Result<u64> {
        let permit = self.disk.permit().await?;
        let (v, rx) = {
            let mut st = self.st.lock();
            check_expected(&st, expect)?;
            self.rotate(&mut st)?;
            let v = st.next;
            let frame = build(v, self.settled_through().min(v));
            let off = st.offset;
            st.offset += frame.len() as u64;
            st.next = v + 1;
            st.pending.insert(v);
            self.assigned.send_replace(v);
            let rx = self.disk.send(
                permit,
                st.seg.clone(),
                vec![(off, Bytes::from(frame))],
                true,
            );
            self.zero_ahead(&mut st);
            (v, rx)
        };
        disk::wait(rx).await?;
        self.durable.fetch_max(v, Ordering::AcqRel);
        Ok(v)
    }

    /// Watch the last version handed out.
    pub fn assigned(&self) -> tokio::sync::watch::Receiver<u64> {
        self.assigned.subscribe()
    }

    /// The next version to be handed out.
    pub fn next_version(&self) -> u64 {
        self.st.lock().next
    }

    /// The index reflects version `v` (or its op gave up).
    pub fn applied(&self, v: u64) {
        let mut st = self.st.lock();
        st.pending.remove(&v);
        let safe = match st.pending.first() {
            Some(&p) => p - 1,
            None => st.next - 1,
        };
        self.published.send_if_modified(|s| {
            let raised = safe > *s;
            *s = (*s).max(safe);
            raised
        });
    }

    /// Watch [`Self::safe_version`] rise.
    pub fn published(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Every version up to the returned one is applied to the index.
    pub fn safe_version(&self) -> u64 {
        let st = self.st.lock();
        match st.pending.first() {
            Some(&p) => p - 1,
            None => st.next - 1,
        }
    }

    /// Every version up to the returned one has a durable record and
    /// durable data (records up to it are never voided by recovery).
    pub fn durable_version(&self) -> u64 {
        self.durable
            .load(Ordering::Acquire)
            .min(self.settled_through())
    }

    pub fn disk(&self) -> &DiskThread {
        &self.disk
    }

    /// Durable records with versions above `after`, at most `max` of them.
    /// Reads on from where the previous call stopped when it asks for the
    /// records right after those (catch-up reads the log batch by batch),
    /// instead of from the start of the segment.
    pub fn records_since(&self, after: u64, max: usize) -> io::Result<Vec<BinlogRecord>> {
        let hint = *self.read_hint.lock();
        let (recs, pos) = self.records_after(after, u64::MAX, max, hint)?;
        if pos.is_some() {
            *self.read_hint.lock() = pos;
        }
        Ok(recs)
    }
}

impl Binlog {
    /// Like [`Self::records_since`] (but only up to version `upto`), reading
    /// on from `hint` (where an earlier call stopped) instead of from the
    /// start of the segment, when `hint` is for version `after`. Returns the records and where
    /// this call stopped (`None` when it returned nothing).
    pub fn records_after(
        &self,
        after: u64,
        upto: u64,
        max: usize,
        hint: Option<LogPos>,
    ) -> io::Result<(Vec<BinlogRecord>, Option<LogPos>)> {
        let durable = self.durable_version().min(upto);
        // Records end here in the open segment; past it are only zeros
        // written ahead (not worth reading on every call).
        let open = {
            let st = self.st.lock();
            (st.seg_first, st.offset)
        };
        let segs = segments(&self.dir)?;
        let start = segs
            .iter()
            .rposition(|(first, _)| *first <= after + 1)
            .unwrap_or(0);
        let mut out = Vec::new();
        let mut pos = None;
        for (i, (first, path)) in segs.iter().enumerate().skip(start) {
            let from = match hint {
                Some(h) if i == start && h.version == after && h.segment == *first => h.offset,
                _ => 0,
            };
            let end = (*first == open.0).then_some(open.1);
            let buf = read_from(path, from, end)?;
            let (recs, _) = parse(&buf, 0);
            for mut r in recs {
                r.at += from;
                if r.version > durable || out.len() >= max {
                    return Ok((out, pos));
                }
                if r.version > after {
                    pos = Some(LogPos {
                        version: r.version,
                        segment: *first,
                        offset: r.at + r.raw.len() as u64,
                    });
                    out.push(r);
                }
            }
        }
        Ok((out, pos))
    }
}

/// The bytes of `path` from `offset` to `end` (or to the end of the file).
fn read_from(path: &Path, offset: u64, end: Option<u64>) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(end.map_or(u64::MAX, |e| e.saturating_sub(offset)))
        .read_to_end(&mut buf)?;
    Ok(buf)
}

impl BinlogRecord {
    /// Whether this server originated the change (upper case, not void):
    /// only those are pushed to async peers.
    pub fn is_local(&self) -> bool {
        self.op.is_ascii_uppercase() && self.op != op::VOID
    }

    /// Whether the record deletes its file.
    pub fn is_delete(&self) -> bool {
        self.op.to_ascii_uppercase() == op::DELETE
    }

    /// The file's modify time after the change (µs), when it has a state.
    pub fn time_us(&self) -> Option<u64> {
        self.state.as_ref().map(|s| s.modify_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voiding_is_redone_after_a_crash_midway() {
        let dir = tempfile::tempdir().unwrap();
        let seg = seg_path(dir.path(), 1);
        let mut log = Vec::new();
        for v in 1..=3u64 {
            log.extend(encode(v, op::DELETE, "g1/M00/00/00/x", v, None, 0));
        }
        std::fs::write(&seg, &log).unwrap();
        let (recs, _) = parse(&log, 0);
        let frame = encode_void(&recs[1]).unwrap();
        assert_eq!(frame.len(), recs[1].raw.len());
        // Crash after the intent, with the frame half rewritten.
        write_void_intent(dir.path(), &[(seg.clone(), recs[1].at, frame.clone())]).unwrap();
        let half = 10; // the new crc, the old op
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&frame[..half], recs[1].at).unwrap();
        assert_eq!(parse(&std::fs::read(&seg).unwrap(), 0).0.len(), 1, "torn");
        let mut got = Vec::new();
        let rec = recover(dir.path(), 0, |r, _| got.push((r.version, r.op))).unwrap();
        assert_eq!(got, vec![(1, op::DELETE), (2, op::VOID), (3, op::DELETE)]);
        assert_eq!(rec.last, 3);
        assert!(!dir.path().join(VOID_INTENT).exists());
        // Old-format records (no watermark) read as committed through
        // themselves.
        let mut old = encode(4, op::DELETE, "g1/x", 4, None, 0);
        old.truncate(old.len() - 8);
        let old = seal(old);
        let (r, n) = parse(&old, 0);
        assert_eq!((r.len(), n, r[0].committed), (1, old.len(), 4));
    }

    #[test]
    fn client_ids_round_trip_and_a_void_over_them_has_none() {
        let plain = encode(1, op::DELETE, "g/x", 1, None, 0);
        assert_eq!(with_client(plain.clone(), (0, 0)), plain);
        let mut buf = plain;
        buf.extend(with_client(
            encode(2, op::DELETE, "g/y", 2, None, 0),
            (7, 9),
        ));
        let (recs, valid) = parse(&buf, 0);
        assert_eq!(valid, buf.len());
        assert_eq!(recs[0].client, (0, 0));
        assert_eq!(recs[1].client, (7, 9));
        assert_eq!(recs[1].file_id, "g/y");
        let void = encode_void(&recs[1]).unwrap();
        assert_eq!(void.len(), recs[1].raw.len());
        let (v, _) = parse(&void, 0);
        assert_eq!((v[0].op, v[0].client), (op::VOID, (0, 0)));
    }

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
