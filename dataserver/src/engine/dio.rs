//! O_DIRECT writes of new small-file records: block-aligned buffers (kept
//! in a pool so they stay mapped) and the sink that fills them.
//!
//! Under `fsync = always` a new chunk record of at least [`DIRECT_MIN`]
//! bytes gets a block-aligned extent and is written through the chunk
//! file's O_DIRECT descriptor: the disk reads our buffers instead of the
//! kernel copying them into fresh page-cache pages first (that copy was
//! most of a CPU at 1 MiB uploads; fresh pages are expensive in a VM). The
//! record's layout is unchanged (header, then data at `HEADER_LEN`); the
//! first buffer holds the header's bytes too and is written last, with the
//! binlog record, once the header (which names the data version) is known.
//! The rest of the last block is zeros. Durability still comes from the
//! fdatasync of the paired commit, exactly as for buffered records.

use std::alloc::{alloc, dealloc, Layout};
use std::fs::File;
use std::ptr::NonNull;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::chunk::HEADER_LEN;
use super::content::{Out, FLUSH};
use super::disk::{DiskThread, Target, DIO_ALIGN};
use super::error::{EngineError, IoContext};

/// Records at least this big (data bytes) are written with O_DIRECT.
pub(crate) const DIRECT_MIN: u64 = 128 << 10;
/// Buffers kept for reuse (each [`FLUSH`] bytes).
const POOL_MAX: usize = 64;

/// Round `n` up to the O_DIRECT block size.
pub(crate) fn align_up(n: u64) -> u64 {
    let a = DIO_ALIGN as u64;
    n.div_ceil(a) * a
}

static POOL: Mutex<Vec<Raw>> = Mutex::new(Vec::new());

/// A [`FLUSH`]-byte allocation aligned to [`DIO_ALIGN`].
struct Raw(NonNull<u8>);

// SAFETY: `Raw` owns its allocation exclusively; nothing else aliases it.
unsafe impl Send for Raw {}

impl Raw {
    fn layout() -> Layout {
        Layout::from_size_align(FLUSH, DIO_ALIGN).expect("FLUSH and DIO_ALIGN are powers of two")
    }

    fn get() -> Raw {
        if let Some(r) = POOL.lock().pop() {
            return r;
        }
        let layout = Self::layout();
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc(layout) };
        match NonNull::new(p) {
            Some(p) => Raw(p),
            None => std::alloc::handle_alloc_error(layout),
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let mut pool = POOL.lock();
        if pool.len() < POOL_MAX {
            pool.push(Raw(self.0));
            // The pool owns the allocation now.
            return;
        }
        drop(pool);
        // SAFETY: allocated in `Raw::get` with this layout and not freed.
        unsafe { dealloc(self.0.as_ptr(), Self::layout()) }
    }
}

/// A pooled aligned buffer of [`FLUSH`] bytes of which the first `len` are
/// in use (content is whatever was written; never read uninitialised:
/// `len` only grows by writes).
pub(crate) struct AlignedBuf {
    raw: Raw,
    len: usize,
}

impl AlignedBuf {
    pub fn new() -> Self {
        AlignedBuf {
            raw: Raw::get(),
            len: 0,
        }
    }

    fn full(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is FLUSH bytes and owned by `self`; the
        // bytes may be stale but are plain `u8`s we only write through this.
        unsafe { std::slice::from_raw_parts_mut(self.raw.0.as_ptr(), FLUSH) }
    }

    /// Write `data` at `at` (within the buffer); bytes between the old end
    /// and `at` must have been written before.
    pub fn write_at(&mut self, at: usize, data: &[u8]) {
        debug_assert!(at <= self.len || self.len == 0);
        self.full()[at..at + data.len()].copy_from_slice(data);
        self.len = self.len.max(at + data.len());
    }

    /// Zero-fill up to the next block boundary.
    pub fn pad(&mut self) {
        let end = align_up(self.len as u64) as usize;
        let len = self.len;
        self.full()[len..end].fill(0);
        self.len = end;
    }

    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written (see `write_at`).
        unsafe { std::slice::from_raw_parts(self.raw.0.as_ptr(), self.len) }
    }
}

/// A chunk file's two descriptors: the buffered one (reads, fdatasync,
/// fallback) and the O_DIRECT one.
#[derive(Clone)]
pub(crate) struct DirectFile {
    pub file: Arc<File>,
    pub dio: Arc<File>,
}

/// Fills a new record at the aligned extent start `base`, record bytes
/// `[k * FLUSH, (k + 1) * FLUSH)` per buffer. Every buffer but the first
/// is written as soon as it is full, the rest at [`Self::finish`] but for
/// the record's first block (holding the header), which goes out with the
/// paired commit ([`DirectTail`]): the bulk of the data is on its way
/// before the commit, and the commit's batch stays small.
pub(crate) struct DirectSink<'a> {
    disk: &'a DiskThread,
    target: DirectFile,
    base: u64,
    /// Record position of the next byte (data starts at `HEADER_LEN`).
    pos: u64,
    first: AlignedBuf,
    cur: Option<AlignedBuf>,
    hasher: crc32fast::Hasher,
}

/// What a [`DirectSink`] leaves for the paired commit: the record's first
/// block, where the header goes.
pub(crate) struct DirectTail {
    target: DirectFile,
    base: u64,
    head: AlignedBuf,
}

impl DirectTail {
    /// The record's header goes into its first block; the piece to write.
    pub fn seal(mut self, header: &[u8]) -> Target {
        self.head.write_at(0, header);
        Target {
            file: self.target.file,
            pieces: Vec::new(),
            direct: Some((self.target.dio, vec![(self.base, self.head.freeze())])),
        }
    }
}

impl<'a> DirectSink<'a> {
    pub fn new(disk: &'a DiskThread, target: DirectFile, base: u64) -> Self {
        debug_assert!(base.is_multiple_of(DIO_ALIGN as u64));
        let mut first = AlignedBuf::new();
        // Placeholder for the header (written in `DirectTail::seal`).
        first.write_at(0, &[0u8; HEADER_LEN as usize]);
        DirectSink {
            disk,
            target,
            base,
            pos: HEADER_LEN,
            first,
            cur: None,
            hasher: crc32fast::Hasher::new(),
        }
    }

    /// Write everything but the record's first block (unsynced, like any
    /// data ahead of its binlog record: recovery ignores a record no
    /// durable binlog record names); returns the crc32 and length of the
    /// data and the first block for the paired commit.
    pub async fn finish(self) -> Result<(u32, u64, DirectTail), EngineError> {
        let DirectSink {
            disk,
            target,
            base,
            pos,
            mut first,
            cur,
            hasher,
        } = self;
        let flush = FLUSH as u64;
        let mut pieces = Vec::with_capacity(2);
        if pos <= flush {
            first.pad();
        }
        let block = DIO_ALIGN.min(first.as_ref().len());
        let mut head = AlignedBuf::new();
        head.write_at(0, &first.as_ref()[..block]);
        let first = first.freeze();
        if first.len() > block {
            pieces.push((base + block as u64, first.slice(block..)));
        }
        if let Some(mut last) = cur {
            last.pad();
            pieces.push((base + pos / flush * flush, last.freeze()));
        }
        if !pieces.is_empty() {
            write(disk, &target, pieces).await?;
        }
        let tail = DirectTail { target, base, head };
        Ok((hasher.finalize(), pos - HEADER_LEN, tail))
    }
}

/// Write `pieces` through `target`'s O_DIRECT descriptor, unsynced.
async fn write(
    disk: &DiskThread,
    target: &DirectFile,
    pieces: Vec<(u64, Bytes)>,
) -> Result<(), EngineError> {
    let t = Target {
        file: target.file.clone(),
        pieces: Vec::new(),
        direct: Some((target.dio.clone(), pieces)),
    };
    disk.write_target(t, false)
        .await
        .ctx(|| "writing data".to_string())
}

impl Out for DirectSink<'_> {
    async fn push(&mut self, mut data: &[u8]) -> Result<(), EngineError> {
        let flush = FLUSH as u64;
        while !data.is_empty() {
            let (block, within) = (self.pos / flush, (self.pos % flush) as usize);
            let k = data.len().min(FLUSH - within);
            let (now, rest) = data.split_at(k);
            let buf = if block == 0 {
                &mut self.first
            } else {
                self.cur.get_or_insert_with(AlignedBuf::new)
            };
            buf.write_at(within, now);
            self.hasher.update(now);
            self.pos += k as u64;
            data = rest;
            if block > 0 && self.pos.is_multiple_of(flush) {
                if let Some(full) = self.cur.take() {
                    let at = self.base + block * flush;
                    write(self.disk, &self.target, vec![(at, full.freeze())]).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_padded() {
        let mut b = AlignedBuf::new();
        assert_eq!(b.raw.0.as_ptr() as usize % DIO_ALIGN, 0);
        b.write_at(0, b"abc");
        b.pad();
        assert_eq!(b.as_ref().len(), DIO_ALIGN);
        assert_eq!(&b.as_ref()[..4], b"abc\0");
        let bytes = b.freeze();
        assert_eq!(bytes.len(), DIO_ALIGN);
        drop(bytes);
        // Back in the pool (or freed); a new buffer is aligned again.
        let again = AlignedBuf::new();
        assert_eq!(again.raw.0.as_ptr() as usize % DIO_ALIGN, 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(0), 0);
    }
}
