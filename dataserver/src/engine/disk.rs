//! Disk threads: one thread per device owns its `IoUring` (never shared) and
//! serves write/sync requests sent over a crossbeam channel. The thread takes
//! one request, drains whatever else is waiting, submits every write, then one
//! fdatasync per touched file (group commit), then completes every waiter.
//! A request may name several files (a paired commit: a chunk record and its
//! binlog record): they are written in the same batch and synced in the same
//! round, and the request succeeds only if all do. Buffered writes run on
//! the thread itself; O_DIRECT writes go through the ring; of a batch's
//! fdatasyncs, the last runs on the thread while the ring runs the others.
//! An optional hook runs on the thread with the outcome, even when the
//! waiting future is gone.
//!
//! Buffers are `Bytes` owned by the request until its completion arrives, so
//! a dropped future never frees memory the kernel is still writing.
//! Without io_uring (probe failed or disabled) the thread uses pwrite +
//! fdatasync with the same batching.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use io_uring::{opcode, types, IoUring};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{error, warn};

use super::FsyncPolicy;

/// Most requests in flight per disk thread (tokio side waits for a permit).
const MAX_IN_FLIGHT: usize = 4096;
/// Most requests handled in one batch.
const MAX_BATCH: usize = 256;
/// Submission queue size.
const RING_ENTRIES: u32 = 256;
/// Pieces at least this big start their writeback as soon as written.
const DIRECT_WRITE: usize = 128 << 10;
/// Largest single write submitted to the ring.
const MAX_SQE_LEN: usize = 1 << 30;

/// Counters shared by all disk threads of an engine.
#[derive(Debug, Default)]
pub(crate) struct DiskStats {
    pub fsyncs: AtomicU64,
    pub writes: AtomicU64,
    pub batches: AtomicU64,
}

/// Called by the disk thread once a request's outcome is known (`true`:
/// written and, if asked, durable), even when its waiter is gone.
pub(crate) type Hook = Box<dyn FnOnce(bool) + Send>;

/// Offsets, lengths and buffer addresses of O_DIRECT pieces are multiples
/// of this (the largest logical block size of the disks we run on).
pub(crate) const DIO_ALIGN: usize = 4096;

/// Buffers to write, each at its offset.
pub(crate) type Pieces = Vec<(u64, Bytes)>;

/// Pieces to write into one file.
pub(crate) struct Target {
    /// The file (also what is fdatasynced) and buffered pieces for it.
    pub file: Arc<File>,
    pub pieces: Pieces,
    /// The same file opened with O_DIRECT and pieces written through it,
    /// aligned to [`DIO_ALIGN`]: no page-cache copy, the disk reads the
    /// buffers. Durable only with the file's fdatasync, like the others.
    pub direct: Option<(Arc<File>, Pieces)>,
}

impl Target {
    pub fn new(file: Arc<File>, pieces: Pieces) -> Self {
        Target {
            file,
            pieces,
            direct: None,
        }
    }
}

struct WriteReq {
    /// Usually one file; a paired commit writes two (binlog and chunk).
    targets: Vec<Target>,
    sync: bool,
    done: oneshot::Sender<io::Result<()>>,
    hook: Option<Hook>,
    _permit: OwnedSemaphorePermit,
}

enum Req {
    Write(WriteReq),
    Stop,
}

/// Handle to one disk thread.
pub(crate) struct DiskThread {
    tx: Sender<Req>,
    sem: Arc<Semaphore>,
    policy: FsyncPolicy,
    join: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

/// Whether io_uring works here (ring creation and one no-op round trip).
pub(crate) fn probe_io_uring() -> bool {
    let Ok(mut ring) = IoUring::new(8) else {
        return false;
    };
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: the entry references no memory.
    if unsafe { ring.submission().push(&nop) }.is_err() {
        return false;
    }
    if ring.submit_and_wait(1).is_err() {
        return false;
    }
    let ok = ring
        .completion()
        .next()
        .is_some_and(|c| c.user_data() == 7 && c.result() >= 0);
    ok
}

impl DiskThread {
    pub fn spawn(
        name: &str,
        use_uring: bool,
        policy: FsyncPolicy,
        interval: Duration,
        stats: Arc<DiskStats>,
        poisoned: Arc<AtomicBool>,
    ) -> io::Result<DiskThread> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let ring = if use_uring {
            match IoUring::new(RING_ENTRIES) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(error = %e, "io_uring unavailable for {name}; using pwrite");
                    None
                }
            }
        } else {
            None
        };
        let mut worker = Worker {
            ring,
            policy,
            interval,
            stats,
            poisoned,
            dirty: HashMap::new(),
            last_sync: Instant::now(),
        };
        let join = std::thread::Builder::new()
            .name(format!("disk-{name}"))
            .spawn(move || worker.run(rx))?;
        Ok(DiskThread {
            tx,
            sem: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            policy,
            join: parking_lot::Mutex::new(Some(join)),
        })
    }

    /// Take a slot for one request; await before taking locks that order
    /// requests, then [`DiskThread::send`] without awaiting.
    pub async fn permit(&self) -> io::Result<OwnedSemaphorePermit> {
        self.sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("disk thread stopped"))
    }

    /// A slot for one request if one is free now (for writes that may be
    /// skipped, such as [`zeros`] ahead of a log).
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().try_acquire_owned().ok()
    }

    /// Queue a write (never blocks); `sync` asks for durability under the
    /// `always` policy (ignored under `batch`/`never`, see [`Self::sync`]).
    pub fn send(
        &self,
        permit: OwnedSemaphorePermit,
        file: Arc<File>,
        pieces: Vec<(u64, Bytes)>,
        sync: bool,
    ) -> oneshot::Receiver<io::Result<()>> {
        self.send_multi(permit, vec![Target::new(file, pieces)], sync, None)
    }

    /// Like [`Self::send`] for several files at once (written in the same
    /// batch, synced in the same round); the request succeeds
    /// only if every target does. `hook` runs on the disk thread with the
    /// outcome (also when the receiver was dropped).
    pub fn send_multi(
        &self,
        permit: OwnedSemaphorePermit,
        targets: Vec<Target>,
        sync: bool,
        hook: Option<Hook>,
    ) -> oneshot::Receiver<io::Result<()>> {
        let (done, rx) = oneshot::channel();
        let req = WriteReq {
            targets,
            sync: sync && self.policy == FsyncPolicy::Always,
            done,
            hook,
            _permit: permit,
        };
        if let Err(e) = self.tx.send(Req::Write(req)) {
            if let Req::Write(w) = e.into_inner() {
                if let Some(h) = w.hook {
                    h(false);
                }
                let _ = w.done.send(Err(io::Error::other("disk thread stopped")));
            }
        }
        rx
    }

    /// Write `pieces` and (policy permitting) make them durable.
    pub async fn write(
        &self,
        file: &Arc<File>,
        pieces: Vec<(u64, Bytes)>,
        sync: bool,
    ) -> io::Result<()> {
        let permit = self.permit().await?;
        let rx = self.send(permit, file.clone(), pieces, sync);
        wait(rx).await
    }

    /// Write one target (see [`Target`]) and, if asked, make it durable.
    pub async fn write_target(&self, target: Target, sync: bool) -> io::Result<()> {
        let permit = self.permit().await?;
        wait(self.send_multi(permit, vec![target], sync, None)).await
    }

    /// Stop the thread after it finished what is queued.
    pub fn stop(&self) {
        let _ = self.tx.send(Req::Stop);
        if let Some(j) = self.join.lock().take() {
            if j.join().is_err() {
                error!("disk thread panicked");
            }
        }
    }
}

impl Drop for DiskThread {
    fn drop(&mut self) {
        let _ = self.tx.send(Req::Stop);
    }
}

pub(crate) async fn wait(rx: oneshot::Receiver<io::Result<()>>) -> io::Result<()> {
    match rx.await {
        Ok(r) => r,
        Err(_) => Err(io::Error::other("disk thread dropped the request")),
    }
}

struct Worker {
    ring: Option<IoUring>,
    policy: FsyncPolicy,
    interval: Duration,
    stats: Arc<DiskStats>,
    poisoned: Arc<AtomicBool>,
    /// Files written but not synced yet (`batch` policy).
    dirty: HashMap<i32, Arc<File>>,
    last_sync: Instant,
}

/// One write still to be done: request index, file, offset, the remaining
/// part of a buffer owned by the request.
struct Piece {
    req: usize,
    file: Arc<File>,
    fd: i32,
    offset: u64,
    buf: Bytes,
    /// For a piece written through an O_DIRECT descriptor (`file`): the
    /// buffered file, to write it the ordinary way if O_DIRECT fails.
    fallback: Option<Arc<File>>,
}

impl Piece {
    /// Write the piece with pwrite; a failed O_DIRECT write is retried
    /// through the buffered descriptor (same bytes, same offset).
    fn pwrite(&self) -> io::Result<()> {
        match (
            self.file.write_all_at(&self.buf, self.offset),
            &self.fallback,
        ) {
            (Err(e), Some(f)) => {
                tracing::debug!(error = %e, "O_DIRECT write failed; writing buffered");
                f.write_all_at(&self.buf, self.offset)
            }
            (r, _) => r,
        }
    }

    /// The rest of this piece from `done` bytes on; the rest of an O_DIRECT
    /// write that stopped off a block boundary goes buffered.
    fn rest(&self, done: usize) -> Piece {
        self.part(done, !done.is_multiple_of(DIO_ALIGN))
    }

    /// The piece from `done` bytes on, through the buffered descriptor if
    /// `buffered` (for an O_DIRECT piece).
    fn part(&self, done: usize, buffered: bool) -> Piece {
        let (file, fallback) = match &self.fallback {
            Some(f) if buffered => (f.clone(), None),
            _ => (self.file.clone(), self.fallback.clone()),
        };
        Piece {
            req: self.req,
            fd: file.as_raw_fd(),
            file,
            offset: self.offset + done as u64,
            buf: self.buf.slice(done..),
            fallback,
        }
    }
}

impl Worker {
    fn run(&mut self, rx: Receiver<Req>) {
        loop {
            let first = if self.policy == FsyncPolicy::Batch {
                let left = self.interval.saturating_sub(self.last_sync.elapsed());
                match rx.recv_timeout(left) {
                    Ok(r) => Some(r),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(r) => Some(r),
                    Err(_) => break,
                }
            };
            let mut batch = Vec::new();
            let mut stop = false;
            match first {
                Some(Req::Write(w)) => batch.push(w),
                Some(Req::Stop) => stop = true,
                None => {}
            }
            while !stop && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Req::Write(w)) => batch.push(w),
                    Ok(Req::Stop) => stop = true,
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.process(batch);
            }
            if self.policy == FsyncPolicy::Batch && self.last_sync.elapsed() >= self.interval {
                self.flush_dirty();
            }
            if stop {
                break;
            }
        }
        self.flush_dirty();
    }

    fn flush_dirty(&mut self) {
        self.last_sync = Instant::now();
        if self.dirty.is_empty() {
            return;
        }
        let files: Vec<Arc<File>> = self.dirty.drain().map(|(_, f)| f).collect();
        let res = self.sync_files(&files);
        for (f, r) in files.iter().zip(res) {
            if let Err(e) = r {
                self.poison(f, &e);
            }
        }
    }

    fn poison(&self, f: &File, e: &io::Error) {
        error!(fd = f.as_raw_fd(), error = %e, "fdatasync failed; engine poisoned");
        self.poisoned.store(true, Ordering::Release);
    }

    fn process(&mut self, batch: Vec<WriteReq>) {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let mut results: Vec<io::Result<()>> = (0..batch.len()).map(|_| Ok(())).collect();
        let mut pieces = Vec::new();
        for (i, w) in batch.iter().enumerate() {
            for t in &w.targets {
                let buffered = t.pieces.iter().map(|p| (&t.file, None, p));
                let direct = t
                    .direct
                    .iter()
                    .flat_map(|(d, ps)| ps.iter().map(move |p| (d, Some(t.file.clone()), p)));
                for (file, fallback, (off, buf)) in buffered.chain(direct) {
                    if !buf.is_empty() {
                        pieces.push(Piece {
                            req: i,
                            file: file.clone(),
                            fd: file.as_raw_fd(),
                            offset: *off,
                            buf: buf.clone(),
                            fallback,
                        });
                    }
                }
            }
        }
        self.stats
            .writes
            .fetch_add(pieces.len() as u64, Ordering::Relaxed);
        if self.ring.is_some() {
            // Buffered writes are memcpy into the page cache, and the ring
            // would hand them to io-wq workers (ext4 has no non-blocking
            // buffered writes): a thread hop each, 2-3x slower for 1 MiB.
            // Write those here; only O_DIRECT writes (truly asynchronous
            // on the ring) go through it.
            let (buffered, direct): (Vec<Piece>, Vec<Piece>) =
                pieces.into_iter().partition(|p| p.fallback.is_none());
            for p in buffered {
                self.write_direct(&p, &mut results);
            }
            self.write_ring(direct, &mut results);
        } else {
            for p in pieces {
                self.write_direct(&p, &mut results);
            }
        }
        // One fdatasync per touched file among requests that asked for it.
        let mut to_sync: Vec<Arc<File>> = Vec::new();
        let mut seen: HashMap<i32, usize> = HashMap::new();
        for (i, w) in batch.iter().enumerate() {
            for t in &w.targets {
                let fd = t.file.as_raw_fd();
                if w.sync {
                    if results[i].is_ok() && !seen.contains_key(&fd) {
                        seen.insert(fd, to_sync.len());
                        to_sync.push(t.file.clone());
                    }
                } else if self.policy == FsyncPolicy::Batch
                    && (!t.pieces.is_empty() || t.direct.is_some())
                {
                    self.dirty.insert(fd, t.file.clone());
                }
            }
        }
        if !to_sync.is_empty() {
            let res = self.sync_files(&to_sync);
            for (i, w) in batch.iter().enumerate() {
                if !w.sync || results[i].is_err() {
                    continue;
                }
                for t in &w.targets {
                    if let Some(&k) = seen.get(&t.file.as_raw_fd()) {
                        if let Err(e) = &res[k] {
                            results[i] = Err(io::Error::new(e.kind(), format!("fdatasync: {e}")));
                        }
                    }
                }
            }
            for (f, r) in to_sync.iter().zip(&res) {
                if let Err(e) = r {
                    self.poison(f, e);
                }
            }
            // Once any sync failed (here, or on another thread that may have
            // been the one told of a failed writeback of these pages: the
            // kernel reports it once per open file), nothing is reported
            // durable any more.
            if self.poisoned.load(Ordering::Acquire) {
                for (i, w) in batch.iter().enumerate() {
                    if w.sync && results[i].is_ok() {
                        results[i] = Err(io::Error::other(
                            "an earlier fdatasync failed; nothing is made durable any more",
                        ));
                    }
                }
            }
        }
        for (w, r) in batch.into_iter().zip(results) {
            let WriteReq {
                targets,
                done,
                hook,
                ..
            } = w;
            // Release the buffers before waking the waiter, so its next
            // request can reuse them (see `server::body`).
            drop(targets);
            if let Some(h) = hook {
                h(r.is_ok());
            }
            let _ = done.send(r);
        }
    }

    /// pwrite one piece; under `always`, big pieces also start their
    /// writeback right away (`sync_file_range`), so the disk works while
    /// the rest of the batch is copied and the batch's fdatasync has less
    /// left to wait for. Durability still comes from that fdatasync alone.
    fn write_direct(&self, p: &Piece, results: &mut [io::Result<()>]) {
        if let Err(e) = p.pwrite() {
            results[p.req] = Err(e);
            return;
        }
        if self.policy == FsyncPolicy::Always && p.fallback.is_none() && p.buf.len() >= DIRECT_WRITE
        {
            // SAFETY: plain syscall on an fd we hold open; no memory passed.
            let r = unsafe {
                libc::sync_file_range(
                    p.fd,
                    p.offset as libc::off64_t,
                    p.buf.len() as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            if r != 0 {
                // Only a hint: the fdatasync that follows reports real errors.
                let e = io::Error::last_os_error();
                tracing::debug!(error = %e, "sync_file_range failed");
            }
        }
    }

    fn sync_files(&mut self, files: &[Arc<File>]) -> Vec<io::Result<()>> {
        self.stats
            .fsyncs
            .fetch_add(files.len() as u64, Ordering::Relaxed);
        let Some(ring) = self.ring.as_mut() else {
            return files.iter().map(|f| f.sync_data()).collect();
        };
        // A ring fsync runs on an io-wq worker: a thread hop, and a wake-up
        // of this thread when it is done. The last file (a small-file
        // commit's binlog) is synced here while the workers sync the others
        // (its chunk): still in parallel, one hop fewer.
        let Some((last, rest)) = files.split_last() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(files.len());
        let mut inline = Some(last);
        let mut last_res = None;
        for group in rest.chunks(RING_ENTRIES as usize) {
            let (res, here) = ring_sync(ring, group, inline.take());
            out.extend(res);
            last_res = last_res.or(here);
        }
        out.push(last_res.unwrap_or_else(|| last.sync_data()));
        out
    }

    fn write_ring(&mut self, pieces: Vec<Piece>, results: &mut [io::Result<()>]) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let mut queue: std::collections::VecDeque<Piece> = pieces.into();
        while !queue.is_empty() {
            let mut inflight: Vec<Piece> = Vec::new();
            while inflight.len() < RING_ENTRIES as usize {
                let Some(mut p) = queue.pop_front() else {
                    break;
                };
                if p.buf.len() > MAX_SQE_LEN {
                    queue.push_front(p.rest(MAX_SQE_LEN));
                    p.buf.truncate(MAX_SQE_LEN);
                }
                let e = opcode::Write::new(types::Fd(p.fd), p.buf.as_ptr(), p.buf.len() as u32)
                    .offset(p.offset)
                    .build()
                    .user_data(inflight.len() as u64);
                // SAFETY: `p.buf` and the file (both held by the piece, kept
                // in `inflight`) outlive the completion we wait for.
                if unsafe { ring.submission().push(&e) }.is_err() {
                    queue.push_front(p);
                    break;
                }
                inflight.push(p);
            }
            if inflight.is_empty() {
                break;
            }
            if let Err(e) = submit_wait(ring, inflight.len()) {
                warn!(error = %e, "io_uring submit failed; writing with pwrite");
                drain(ring);
                for p in inflight.into_iter().chain(queue.drain(..)) {
                    if let Err(e) = p.pwrite() {
                        results[p.req] = Err(e);
                    }
                }
                return;
            }
            let mut got = 0;
            let mut done = vec![false; inflight.len()];
            while got < inflight.len() {
                let cqes: Vec<(u64, i32)> = ring
                    .completion()
                    .map(|c| (c.user_data(), c.result()))
                    .collect();
                if cqes.is_empty() {
                    if submit_wait(ring, inflight.len() - got).is_err() {
                        break;
                    }
                    continue;
                }
                for (ud, res) in cqes {
                    let k = ud as usize;
                    let Some(p) = inflight.get(k) else {
                        continue;
                    };
                    got += 1;
                    done[k] = true;
                    if res < 0 && p.fallback.is_some() {
                        // O_DIRECT refused (alignment, file system): the
                        // same bytes go through the page cache instead.
                        tracing::debug!(errno = -res, "O_DIRECT write failed; writing buffered");
                        queue.push_back(p.part(0, true));
                    } else if res < 0 {
                        results[p.req] = Err(io::Error::from_raw_os_error(-res));
                    } else if res == 0 {
                        results[p.req] =
                            Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
                    } else if (res as usize) < p.buf.len() {
                        queue.push_back(p.rest(res as usize));
                    }
                }
            }
            // Any write whose completion we could not collect: do it by hand
            // (idempotent: same bytes, same offset).
            for (k, p) in inflight.iter().enumerate() {
                if !done[k] {
                    drain(ring);
                    if let Err(e) = p.pwrite() {
                        results[p.req] = Err(e);
                    }
                }
            }
        }
    }
}

/// fdatasync each of `group` through the ring and, meanwhile, `inline` on
/// this thread. A sync the ring could not take or confirm is done by hand.
/// Returns the group's results in order, and `inline`'s.
fn ring_sync(
    ring: &mut IoUring,
    group: &[Arc<File>],
    inline: Option<&Arc<File>>,
) -> (Vec<io::Result<()>>, Option<io::Result<()>>) {
    let mut out: Vec<Option<io::Result<()>>> = (0..group.len()).map(|_| None).collect();
    let mut pushed = 0;
    for (j, f) in group.iter().enumerate() {
        let e = opcode::Fsync::new(types::Fd(f.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(j as u64);
        // SAFETY: the fd stays open (the caller holds the Arc) until the
        // completion is collected, or the ring is drained below.
        if unsafe { ring.submission().push(&e) }.is_err() {
            out[j] = Some(f.sync_data());
        } else {
            pushed += 1;
        }
    }
    let submitted = if pushed == 0 {
        Ok(())
    } else {
        submit_wait(ring, 0)
    };
    let here = inline.map(|f| f.sync_data());
    match submitted {
        Err(e) => {
            warn!(error = %e, "io_uring submit failed; syncing with fdatasync");
            drain(ring);
        }
        Ok(()) => {
            let mut got = 0;
            while got < pushed {
                let cqes: Vec<(u64, i32)> = ring
                    .completion()
                    .map(|c| (c.user_data(), c.result()))
                    .collect();
                if cqes.is_empty() {
                    if let Err(e) = submit_wait(ring, pushed - got) {
                        warn!(error = %e, "io_uring wait failed; syncing with fdatasync");
                        drain(ring);
                        break;
                    }
                    continue;
                }
                for (ud, res) in cqes {
                    let Some(slot) = out.get_mut(ud as usize).filter(|s| s.is_none()) else {
                        continue;
                    };
                    got += 1;
                    *slot = Some(if res < 0 {
                        Err(io::Error::from_raw_os_error(-res))
                    } else {
                        Ok(())
                    });
                }
            }
        }
    }
    let res = out
        .into_iter()
        .zip(group)
        .map(|(r, f)| r.unwrap_or_else(|| f.sync_data()))
        .collect();
    (res, here)
}

/// Zero bytes to fill ahead of a file's write position from.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Pieces writing zeros over `[from, to)`, without allocating: filling a
/// file ahead of where records will be written makes their fdatasync a
/// data-only flush (the blocks are allocated and the size is set; an
/// extending write's fdatasync must also commit the file system journal).
pub(crate) fn zeros(from: u64, to: u64) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64);
        out.push((at, Bytes::from_static(&ZEROS[..n as usize])));
        at += n;
    }
    out
}

fn submit_wait(ring: &mut IoUring, want: usize) -> io::Result<()> {
    loop {
        match ring.submit_and_wait(want) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn drain(ring: &mut IoUring) {
    for _ in ring.completion() {}
}

/// fsync a directory (after creating, renaming or removing entries in it).
pub(crate) fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `dir/name` with `bytes` durably: a `.tmp` sibling written and
/// fsynced, renamed over it, the directory fsynced.
pub(crate) fn replace_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Remove `dir/name` durably; absent already is fine.
pub(crate) fn remove_file(dir: &std::path::Path, name: &str) -> io::Result<()> {
    match std::fs::remove_file(dir.join(name)) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk thread under `always`, with the ring if asked and available.
    fn thread(name: &str, uring: bool, stats: Arc<DiskStats>) -> DiskThread {
        DiskThread::spawn(
            name,
            uring && probe_io_uring(),
            FsyncPolicy::Always,
            Duration::from_millis(10),
            stats,
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap()
    }

    async fn roundtrip(uring: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap(),
        );
        let stats = Arc::new(DiskStats::default());
        let t = thread("t", uring, stats.clone());
        let t = Arc::new(t);
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let t = t.clone();
            let f = f.clone();
            tasks.push(tokio::spawn(async move {
                let data = Bytes::from(vec![i as u8; 100]);
                t.write(&f, vec![(i * 100, data)], true).await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), 6400);
        for i in 0..64usize {
            assert!(got[i * 100..(i + 1) * 100].iter().all(|&b| b == i as u8));
        }
        let fsyncs = stats.fsyncs.load(Ordering::Relaxed);
        assert!((1..=64).contains(&fsyncs), "fsyncs {fsyncs}");
        t.stop();
    }

    /// O_DIRECT pieces land (aligned ones directly, a misaligned one
    /// through the buffered descriptor after the kernel refuses it).
    async fn direct_pieces(uring: bool) {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let open = |direct: bool| {
            let mut o = std::fs::OpenOptions::new();
            o.create(true).read(true).write(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&path).map(Arc::new)
        };
        let file = open(false).unwrap();
        let Ok(dio) = open(true) else {
            return; // this file system has no O_DIRECT
        };
        let t = thread("d", uring, Arc::new(DiskStats::default()));
        let mut aligned = super::super::dio::AlignedBuf::new();
        aligned.write_at(0, &[7u8; 3 * DIO_ALIGN]);
        let misaligned = Bytes::from(vec![9u8; 1000]);
        let target = Target {
            file: file.clone(),
            pieces: vec![(0, Bytes::from_static(b"head"))],
            direct: Some((
                dio,
                vec![(DIO_ALIGN as u64, aligned.freeze()), (100, misaligned)],
            )),
        };
        t.write_target(target, true).await.unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), 4 * DIO_ALIGN);
        assert_eq!(&got[..4], b"head");
        assert!(got[100..1100].iter().all(|&b| b == 9));
        assert!(got[DIO_ALIGN..].iter().all(|&b| b == 7));
        t.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn direct_pieces_land_with_uring_or_fallback() {
        direct_pieces(true).await;
        direct_pieces(false).await;
    }

    /// One request over several files: all but the last are synced
    /// through the ring (or by hand without one), each exactly once.
    async fn many_files(uring: bool) {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<Arc<File>> = (0..5)
            .map(|i| {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(dir.path().join(format!("f{i}")))
                    .unwrap();
                Arc::new(f)
            })
            .collect();
        let stats = Arc::new(DiskStats::default());
        let t = thread("m", uring, stats.clone());
        let targets = files
            .iter()
            .enumerate()
            .map(|(i, f)| Target::new(f.clone(), vec![(3, Bytes::from(vec![i as u8; 50]))]))
            .collect();
        let permit = t.permit().await.unwrap();
        wait(t.send_multi(permit, targets, true, None))
            .await
            .unwrap();
        for i in 0..files.len() {
            let got = std::fs::read(dir.path().join(format!("f{i}"))).unwrap();
            assert_eq!(got.len(), 53);
            assert!(got[3..].iter().all(|&b| b == i as u8));
        }
        assert_eq!(stats.fsyncs.load(Ordering::Relaxed), files.len() as u64);
        t.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_files_sync_with_uring_or_fallback() {
        many_files(true).await;
        many_files(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writes_land_with_uring_or_fallback() {
        roundtrip(true).await;
        roundtrip(false).await;
    }

    /// After a failed sync (here the flag another thread would have set),
    /// a write that asks for durability fails even though its own
    /// fdatasync succeeded: the kernel reports a failed writeback once per
    /// open file, possibly to the other thread. Writes that ask for none
    /// still land.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_durable_after_a_failed_sync() {
        let dir = tempfile::tempdir().unwrap();
        let f = Arc::new(std::fs::File::create(dir.path().join("f")).unwrap());
        let poisoned = Arc::new(AtomicBool::new(false));
        let t = DiskThread::spawn(
            "p",
            probe_io_uring(),
            FsyncPolicy::Always,
            Duration::from_millis(10),
            Arc::new(DiskStats::default()),
            poisoned.clone(),
        )
        .unwrap();
        t.write(&f, vec![(0, Bytes::from_static(b"before"))], true)
            .await
            .unwrap();
        poisoned.store(true, Ordering::Release);
        let err = t
            .write(&f, vec![(6, Bytes::from_static(b"after"))], true)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nothing is made durable"), "{err}");
        t.write(&f, vec![(11, Bytes::from_static(b"!"))], false)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("f")).unwrap(),
            b"beforeafter!"
        );
        t.stop();
    }
}
