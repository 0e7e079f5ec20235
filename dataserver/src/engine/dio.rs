//! O_DIRECT writes of new small-file records: block-aligned buffers (kept
//! in a pool so they stay mapped) and the sink that fills them.
//!
//! Under `fsync = always` a new chunk record of at least [`DIRECT_MIN`]
//! bytes gets a block-aligned extent and is written through the chunk
//! file's O_DIRECT descriptor: the disk reads our buffers instead of the
//! kernel copying them into fresh page-cache pages first (that copy was
//! most of a CPU at 1 MiB uploads; fresh pages are expensive in a VM). The
//! record's layout is unchanged (header, then data at `HEADER_LEN`); the
//! first block holds the header's bytes too and is written last, with the
//! binlog record, once the header (which names the data version) is known.
//! The rest of the last block is zeros. Durability still comes from the
//! fdatasync of the paired commit, exactly as for buffered records. Body
//! frames received into a [`RecvBuf`] sit in memory as they will on disk,
//! so most of their bytes are written from there without being copied.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::File;
use std::ptr::NonNull;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::chunk::HEADER_LEN;
use super::content::{Out, FLUSH};
use super::disk::{DiskThread, Pieces, Target, DIO_ALIGN};
use super::error::{EngineError, IoContext};

/// Records at least this big (data bytes) are written with O_DIRECT.
pub(crate) const DIRECT_MIN: u64 = 128 << 10;
/// Buffers kept for reuse (64 MiB at most; a larger pool measured no
/// faster with 16 concurrent 1 MiB uploads).
const POOL_MAX: usize = 64;
/// Bytes of one pooled buffer: a [`FLUSH`] window of a record, or a body
/// frame of up to [`FLUSH`] bytes placed at [`RECV_AT`].
const CAP: usize = FLUSH + DIO_ALIGN;
/// Where a received body frame starts in its buffer: the offset of a
/// record's data from its (block-aligned) start, so the frame's bytes sit
/// in memory as they will on disk.
const RECV_AT: usize = HEADER_LEN as usize;
/// Body pieces at least this big are written from where they were
/// received when their memory lines up with the record (see [`RecvBuf`]).
const ZERO_COPY_MIN: usize = 64 << 10;
/// Frames at least this big are received into a pooled [`CAP`]-byte
/// buffer: a frame never holds more than 4× its size.
const RECV_MIN: usize = CAP / 4;
const BLOCK: u64 = DIO_ALIGN as u64;
/// Most bytes of a record held back to be written with its commit.
const DEFER_MAX: usize = 4 << 20;

/// Bytes written without a copy (tests check the path is taken).
#[cfg(test)]
pub(crate) static ZERO_COPIED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Round `n` up to the O_DIRECT block size.
pub(crate) fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

static POOL: Mutex<Vec<Raw>> = Mutex::new(Vec::new());

/// An allocation of `cap` bytes ([`CAP`], pooled, or one block) aligned to
/// [`DIO_ALIGN`], zeroed when first allocated (so every byte of it is
/// always initialised).
struct Raw {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: `Raw` owns its allocation exclusively; nothing else aliases it.
unsafe impl Send for Raw {}

impl Raw {
    fn layout(cap: usize) -> Layout {
        Layout::from_size_align(cap, DIO_ALIGN).expect("sizes and DIO_ALIGN are valid")
    }

    fn get(cap: usize) -> Raw {
        if cap == CAP {
            if let Some(r) = POOL.lock().pop() {
                return r;
            }
        }
        let layout = Self::layout(cap);
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        match NonNull::new(p) {
            Some(ptr) => Raw { ptr, cap },
            None => std::alloc::handle_alloc_error(layout),
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if self.cap == CAP {
            let mut pool = POOL.lock();
            if pool.len() < POOL_MAX {
                pool.push(Raw {
                    ptr: self.ptr,
                    cap: self.cap,
                });
                // The pool owns the allocation now.
                return;
            }
        }
        // SAFETY: allocated in `Raw::get` with this layout and not freed.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}

/// An aligned buffer of which the first `len` bytes are in use.
pub(crate) struct AlignedBuf {
    raw: Raw,
    len: usize,
}

impl AlignedBuf {
    /// A pooled buffer of [`CAP`] bytes.
    pub fn new() -> Self {
        AlignedBuf {
            raw: Raw::get(CAP),
            len: 0,
        }
    }

    /// A one-block buffer (a record's first block).
    pub fn block() -> Self {
        AlignedBuf {
            raw: Raw::get(DIO_ALIGN),
            len: 0,
        }
    }

    fn full(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `cap` bytes, initialised (zeroed when
        // allocated) and owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.raw.ptr.as_ptr(), self.raw.cap) }
    }

    /// Write `data` at `at`; the buffer is in use up to its end at least.
    pub fn write_at(&mut self, at: usize, data: &[u8]) {
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
        // SAFETY: `len <= cap` and the allocation is initialised.
        unsafe { std::slice::from_raw_parts(self.raw.ptr.as_ptr(), self.len) }
    }
}

/// A buffer to receive one body frame of `len` bytes into, from the pool,
/// placed so that a new record's data written from it is block-aligned in
/// memory as on disk: [`DirectSink`] then writes most of it with O_DIRECT
/// straight from here instead of copying it.
pub struct RecvBuf {
    buf: AlignedBuf,
    len: usize,
}

impl RecvBuf {
    /// `None` for a frame too small to gain from it or too big to fit.
    pub fn new(len: usize) -> Option<RecvBuf> {
        (RECV_MIN..=CAP - RECV_AT).contains(&len).then(|| RecvBuf {
            buf: AlignedBuf::new(),
            len,
        })
    }

    /// The `len` bytes to fill.
    pub fn space(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.buf.full()[RECV_AT..RECV_AT + len]
    }

    pub fn freeze(mut self) -> Bytes {
        self.buf.len = RECV_AT + self.len;
        self.buf.freeze().slice(RECV_AT..)
    }
}

/// A chunk file's two descriptors: the buffered one (reads, fdatasync,
/// fallback) and the O_DIRECT one.
#[derive(Clone)]
pub(crate) struct DirectFile {
    pub file: Arc<File>,
    pub dio: Arc<File>,
}

impl DirectFile {
    /// A disk-thread target writing `pieces` through the O_DIRECT descriptor.
    fn target(&self, pieces: Pieces) -> Target {
        Target {
            file: self.file.clone(),
            pieces: Vec::new(),
            direct: Some((self.dio.clone(), pieces)),
        }
    }
}

/// Fills a new record at the block-aligned extent start `base`. The
/// record's first block (with the header) is copied into `head`. Later
/// bytes are copied into `pending` buffers, held back as each fills up,
/// or, for a body piece whose memory lines up with the record (received
/// into a [`RecvBuf`]), taken straight from where it was received but for
/// its unaligned ends. Up to [`DEFER_MAX`] bytes are held back and go out
/// with the paired commit ([`DirectTail`]), so a record costs one disk
/// round trip (measured: a third more 1 MiB uploads in a sync group than
/// writing them ahead of the commit); beyond that they are written as
/// they come, to bound the memory a record holds.
pub(crate) struct DirectSink<'a> {
    disk: &'a DiskThread,
    target: DirectFile,
    base: u64,
    /// Record position of the next byte (data starts at `HEADER_LEN`).
    pos: u64,
    head: AlignedBuf,
    /// Record bytes `[start, pos)` not written yet (`start` on a block
    /// boundary); `None` only while `pos` is on one.
    pending: Option<(u64, AlignedBuf)>,
    /// Full pieces held back to go out with the paired commit (one disk
    /// round trip for the whole record), up to [`DEFER_MAX`] bytes.
    deferred: Pieces,
    deferred_len: usize,
    hasher: crc32fast::Hasher,
}

/// What a [`DirectSink`] leaves for the paired commit: the record's first
/// block, where the header goes, and the pieces held back.
pub(crate) struct DirectTail {
    target: DirectFile,
    base: u64,
    head: AlignedBuf,
    deferred: Pieces,
}

impl DirectTail {
    /// The record's header goes into its first block; the piece to write.
    pub fn seal(mut self, header: &[u8]) -> Target {
        self.head.write_at(0, header);
        let mut pieces = self.deferred;
        pieces.push((self.base, self.head.freeze()));
        self.target.target(pieces)
    }
}

impl<'a> DirectSink<'a> {
    pub fn new(disk: &'a DiskThread, target: DirectFile, base: u64) -> Self {
        debug_assert!(base.is_multiple_of(BLOCK));
        let mut head = AlignedBuf::block();
        // Placeholder for the header (written in `DirectTail::seal`).
        head.write_at(0, &[0u8; HEADER_LEN as usize]);
        DirectSink {
            disk,
            target,
            base,
            pos: HEADER_LEN,
            head,
            pending: None,
            deferred: Vec::new(),
            deferred_len: 0,
            hasher: crc32fast::Hasher::new(),
        }
    }

    /// Hold `pieces` back for the commit, writing out what is held back
    /// once it passes [`DEFER_MAX`].
    async fn out(&mut self, pieces: Pieces) -> Result<(), EngineError> {
        self.deferred_len += pieces.iter().map(|p| p.1.len()).sum::<usize>();
        self.deferred.extend(pieces);
        if self.deferred_len > DEFER_MAX {
            let all = std::mem::take(&mut self.deferred);
            self.deferred_len = 0;
            write(self.disk, &self.target, all).await?;
        }
        Ok(())
    }

    /// Copy `data` into the head block or the pending buffer.
    async fn copy(&mut self, mut data: &[u8]) -> Result<(), EngineError> {
        while !data.is_empty() {
            if self.pos < BLOCK {
                let k = data.len().min((BLOCK - self.pos) as usize);
                self.head.write_at(self.pos as usize, &data[..k]);
                self.pos += k as u64;
                data = &data[k..];
                continue;
            }
            let pos = self.pos;
            let (start, buf) = self.pending.get_or_insert_with(|| (pos, AlignedBuf::new()));
            let within = (pos - *start) as usize;
            let k = data.len().min(FLUSH - within);
            buf.write_at(within, &data[..k]);
            self.pos += k as u64;
            data = &data[k..];
            if within + k == FLUSH {
                if let Some((start, full)) = self.pending.take() {
                    write(
                        self.disk,
                        &self.target,
                        vec![(self.base + start, full.freeze())],
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Hand over what is left for the paired commit: the record's first
    /// block and the pieces held back (a bigger record had the rest
    /// written already, unsynced, like any data ahead of its binlog record:
    /// recovery ignores a record no durable binlog record names); with the
    /// crc32 and length of the data.
    pub async fn finish(mut self) -> Result<(u32, u64, DirectTail), EngineError> {
        if let Some((start, mut last)) = self.pending.take() {
            last.pad();
            self.out(vec![(self.base + start, last.freeze())]).await?;
        }
        self.head.pad();
        let tail = DirectTail {
            target: self.target,
            base: self.base,
            head: self.head,
            deferred: self.deferred,
        };
        Ok((self.hasher.finalize(), self.pos - HEADER_LEN, tail))
    }
}

/// Write `pieces` through `target`'s O_DIRECT descriptor, unsynced.
async fn write(disk: &DiskThread, target: &DirectFile, pieces: Pieces) -> Result<(), EngineError> {
    disk.write_target(target.target(pieces), false)
        .await
        .ctx(|| "writing data".to_string())
}

impl Out for DirectSink<'_> {
    async fn push(&mut self, data: &[u8]) -> Result<(), EngineError> {
        self.hasher.update(data);
        self.copy(data).await
    }

    /// Written from where it is when its memory lines up with the record.
    async fn push_bytes(&mut self, data: Bytes) -> Result<(), EngineError> {
        self.hasher.update(&data);
        // Bytes to copy before the record position reaches a block
        // boundary past the head block.
        let lead = (align_up(self.pos.max(BLOCK)) - self.pos) as usize;
        let lines_up = (data.as_ptr() as usize + lead).is_multiple_of(DIO_ALIGN);
        if data.len() < ZERO_COPY_MIN || data.len() < lead + DIO_ALIGN || !lines_up {
            return self.copy(&data).await;
        }
        self.copy(&data[..lead]).await?;
        let mid = (data.len() - lead) / DIO_ALIGN * DIO_ALIGN;
        let mut pieces = Vec::with_capacity(2);
        if let Some((start, buf)) = self.pending.take() {
            pieces.push((self.base + start, buf.freeze()));
        }
        pieces.push((self.base + self.pos, data.slice(lead..lead + mid)));
        self.out(pieces).await?;
        #[cfg(test)]
        ZERO_COPIED.fetch_add(mid as u64, std::sync::atomic::Ordering::Relaxed);
        self.pos += mid as u64;
        self.copy(&data[lead + mid..]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_padded() {
        let mut b = AlignedBuf::new();
        assert_eq!(b.raw.ptr.as_ptr() as usize % DIO_ALIGN, 0);
        b.write_at(0, b"abc");
        b.pad();
        assert_eq!(b.as_ref().len(), DIO_ALIGN);
        assert_eq!(&b.as_ref()[..4], b"abc\0");
        let bytes = b.freeze();
        assert_eq!(bytes.len(), DIO_ALIGN);
        drop(bytes);
        // Back in the pool (or freed); a new buffer is aligned again.
        let again = AlignedBuf::new();
        assert_eq!(again.raw.ptr.as_ptr() as usize % DIO_ALIGN, 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(0), 0);
    }
}
