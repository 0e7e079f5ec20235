//! Moving bytes: reading a request body exactly, buffering output into
//! disk-thread writes, reading and verifying stored bytes.

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use super::disk::DiskThread;
use super::error::{EngineError, IoContext};
use super::Body;

/// Output is handed to the disk thread in pieces of this size.
pub(crate) const FLUSH: usize = 1 << 20;
/// Reads up to this size run inline on the calling task (page-cache reads
/// of small records); larger ones go to the blocking pool.
const INLINE_READ: usize = 128 << 10;

/// The bytes of a body as they arrived, kept (shared, no copy) when a
/// change's bytes go to the slaves, so they need not be read back from disk.
#[derive(Debug, Clone, Default)]
pub(crate) struct Kept(Option<Arc<Mutex<Vec<Bytes>>>>);

impl Kept {
    /// A slot that keeps what it is given.
    pub fn on() -> Self {
        Kept(Some(Arc::default()))
    }

    fn push(&self, b: &Bytes) {
        if let Some(k) = &self.0 {
            k.lock().push(b.clone());
        }
    }

    /// What was kept, if this slot keeps anything.
    pub fn take(&self) -> Option<Vec<Bytes>> {
        self.0.as_ref().map(|k| std::mem::take(&mut *k.lock()))
    }
}

/// A body that must yield exactly `left` more bytes.
pub(crate) struct BodyIn<'a, B: Body> {
    body: &'a mut B,
    left: u64,
    cur: Bytes,
    kept: Kept,
}

impl<'a, B: Body> BodyIn<'a, B> {
    pub fn new(body: &'a mut B, size: u64) -> Self {
        BodyIn {
            body,
            left: size,
            cur: Bytes::new(),
            kept: Kept::default(),
        }
    }

    /// Keep every byte taken in `kept` too.
    pub fn keeping(mut self, kept: &Kept) -> Self {
        self.kept = kept.clone();
        self
    }

    /// Copy the next `n` body bytes into `sink`.
    pub async fn take(&mut self, mut n: u64, sink: &mut impl Out) -> Result<(), EngineError> {
        while n > 0 {
            if self.cur.is_empty() {
                match self.body.next_chunk().await? {
                    Some(c) => {
                        if c.len() as u64 > self.left {
                            return Err(EngineError::BadBody(
                                "body longer than declared".to_string(),
                            ));
                        }
                        self.left -= c.len() as u64;
                        self.cur = c;
                    }
                    None => {
                        return Err(EngineError::BadBody(
                            "body shorter than declared".to_string(),
                        ))
                    }
                }
                continue;
            }
            let k = (self.cur.len() as u64).min(n) as usize;
            let part = self.cur.split_to(k);
            self.kept.push(&part);
            sink.push_bytes(part).await?;
            n -= k as u64;
        }
        Ok(())
    }

    /// The body must end now.
    pub async fn finish(&mut self) -> Result<(), EngineError> {
        if !self.cur.is_empty() || self.left > 0 {
            return Err(EngineError::BadBody(
                "body longer than the operation consumed".to_string(),
            ));
        }
        loop {
            match self.body.next_chunk().await? {
                None => return Ok(()),
                Some(c) if c.is_empty() => continue,
                Some(_) => {
                    return Err(EngineError::BadBody(
                        "body longer than declared".to_string(),
                    ))
                }
            }
        }
    }
}

/// Where new content goes: bytes in order, with a crc32 kept on the way.
pub(crate) trait Out: Send {
    fn push(&mut self, data: &[u8]) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Like [`Self::push`], taking an owned buffer (which a sink may keep
    /// instead of copying).
    fn push_bytes(&mut self, data: Bytes) -> impl Future<Output = Result<(), EngineError>> + Send {
        async move { self.push(&data).await }
    }

    fn zeros(&mut self, mut n: u64) -> impl Future<Output = Result<(), EngineError>> + Send {
        async move {
            let z = vec![0u8; (n as usize).min(FLUSH)];
            while n > 0 {
                let k = (n as usize).min(z.len());
                self.push(&z[..k]).await?;
                n -= k as u64;
            }
            Ok(())
        }
    }

    /// Copy `len` bytes of `src` starting at `off`.
    fn copy_from(
        &mut self,
        src: &Arc<File>,
        off: u64,
        len: u64,
    ) -> impl Future<Output = Result<(), EngineError>> + Send {
        async move {
            let mut done = 0u64;
            while done < len {
                let k = (len - done).min(FLUSH as u64) as usize;
                let b = read_at(src, off + done, k).await?;
                self.push_bytes(b).await?;
                done += k as u64;
            }
            Ok(())
        }
    }
}

/// Pieces at least this big are handed to the disk thread as they are
/// (no copy); smaller ones are coalesced into one buffer.
const ZERO_COPY_MIN: usize = 64 << 10;

/// Buffers content written at `base + pos` of a file, computing its crc32.
/// Up to [`FLUSH`] bytes are held back (written out only when more
/// arrive), so a body of at most `FLUSH` bytes goes out whole with the
/// final, synced write.
pub(crate) struct Sink<'a> {
    disk: &'a DiskThread,
    file: Arc<File>,
    base: u64,
    flushed: u64,
    /// Held back, in order: sealed pieces, then `acc`.
    held: Vec<Bytes>,
    acc: BytesMut,
    held_len: usize,
    hasher: crc32fast::Hasher,
}

impl<'a> Sink<'a> {
    pub fn new(disk: &'a DiskThread, file: Arc<File>, base: u64) -> Self {
        Sink {
            disk,
            file,
            base,
            flushed: 0,
            held: Vec::new(),
            acc: BytesMut::new(),
            held_len: 0,
            hasher: crc32fast::Hasher::new(),
        }
    }

    fn seal_acc(&mut self) {
        if !self.acc.is_empty() {
            self.held.push(self.acc.split().freeze());
        }
    }

    /// The held-back bytes as write pieces at their offsets.
    fn take_held(&mut self) -> Vec<(u64, Bytes)> {
        self.seal_acc();
        let mut off = self.base + self.flushed;
        let mut out = Vec::with_capacity(self.held.len());
        for b in self.held.drain(..) {
            let len = b.len() as u64;
            out.push((off, b));
            off += len;
        }
        self.flushed += self.held_len as u64;
        self.held_len = 0;
        out
    }

    /// Write out what is held back if `incoming` more bytes would exceed
    /// [`FLUSH`].
    async fn make_room(&mut self, incoming: usize) -> Result<(), EngineError> {
        if self.held_len == 0 || self.held_len + incoming <= FLUSH {
            return Ok(());
        }
        let pieces = self.take_held();
        self.disk
            .write(&self.file, pieces, false)
            .await
            .ctx(|| "writing data".to_string())
    }

    /// crc32 and length of everything pushed, and the not yet written
    /// tail as a write piece (to go out with the final, synced write).
    pub fn finish(mut self) -> (u32, u64, Vec<(u64, Bytes)>) {
        let tail = self.take_held();
        (self.hasher.finalize(), self.flushed, tail)
    }
}

impl Out for Sink<'_> {
    /// Big buffers are kept as they are, not copied.
    async fn push_bytes(&mut self, data: Bytes) -> Result<(), EngineError> {
        if data.len() < ZERO_COPY_MIN {
            return self.push(&data).await;
        }
        self.make_room(data.len()).await?;
        self.hasher.update(&data);
        self.seal_acc();
        self.held_len += data.len();
        self.held.push(data);
        Ok(())
    }

    async fn push(&mut self, mut data: &[u8]) -> Result<(), EngineError> {
        while !data.is_empty() {
            let k = data.len().min(FLUSH);
            self.make_room(k).await?;
            let (now, rest) = data.split_at(k);
            self.hasher.update(now);
            self.acc.extend_from_slice(now);
            self.held_len += k;
            data = rest;
        }
        Ok(())
    }
}

fn pread(file: &File, off: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off)?;
    Ok(Bytes::from(buf))
}

/// Read exactly `len` bytes at `off`.
pub(crate) async fn read_at(file: &Arc<File>, off: u64, len: usize) -> Result<Bytes, EngineError> {
    if len <= INLINE_READ {
        return pread(file, off, len).ctx(|| format!("reading {len} bytes at {off}"));
    }
    let f = file.clone();
    blocking(move || pread(&f, off, len))
        .await?
        .ctx(|| format!("reading {len} bytes at {off}"))
}

/// crc32 hasher state of `len` bytes at `off` (length-aware, for combine).
pub(crate) async fn crc_range(
    file: &Arc<File>,
    off: u64,
    len: u64,
) -> Result<crc32fast::Hasher, EngineError> {
    let f = file.clone();
    blocking(move || crc_of(&f, off, len))
        .await?
        .ctx(|| format!("reading {len} bytes at {off} for a checksum"))
}

/// crc32 hasher state of `len` bytes at `off`, read here (blocking).
pub(crate) fn crc_of(f: &File, off: u64, len: u64) -> std::io::Result<crc32fast::Hasher> {
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; FLUSH.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let k = (len - done).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..k], off + done)?;
        h.update(&buf[..k]);
        done += k as u64;
    }
    Ok(h)
}

/// A hasher for `len` bytes whose crc is `crc` (for `combine`).
pub(crate) fn hasher_of(crc: u32, len: u64) -> crc32fast::Hasher {
    crc32fast::Hasher::new_with_initial_len(crc, len)
}

/// crc32 of the concatenation of two pieces.
pub(crate) fn crc_concat(a: u32, a_len: u64, b: u32, b_len: u64) -> u32 {
    let mut h = hasher_of(a, a_len);
    h.combine(&hasher_of(b, b_len));
    h.finalize()
}

/// crc32 state of `n` zero bytes.
pub(crate) fn crc_zeros(n: u64) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    let z = vec![0u8; (n as usize).min(FLUSH)];
    let mut left = n;
    while left > 0 {
        let k = (left as usize).min(z.len());
        h.update(&z[..k]);
        left -= k as u64;
    }
    h
}

/// Check that `size` bytes at `off` have crc32 `crc`.
pub(crate) async fn verify(
    file: &Arc<File>,
    off: u64,
    size: u64,
    crc: u32,
    what: &str,
) -> Result<(), EngineError> {
    let got = crc_range(file, off, size).await?.finalize();
    if got != crc {
        return Err(EngineError::Corrupt(format!(
            "{what}: stored crc32 {crc:08x}, data has {got:08x}"
        )));
    }
    Ok(())
}

/// Run blocking file-system work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Internal(format!("blocking task failed: {e}")))
}
