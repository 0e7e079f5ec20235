//! Chunk files (`<store>/chunks/chunk.<8 hex digits>`) holding small files
//! as records, and the per-store-path state.
//!
//! Record = 128-byte header + `capacity` data bytes. Header (LE):
//! ```text
//! 0   magic "CHRC"        4
//! 4   format = 1          u8
//! 5   flags (bit0 appender) u8
//! 6   file id length      u16   (<= 88)
//! 8   data version        u64   (of the binlog record written with it)
//! 16  data length         u64   (length when the record was written)
//! 24  capacity            u64
//! 32  crc32 of the data   u32   (over `data length` bytes)
//! 36  crc32 of the header u32   (bytes 0..36 and 40..128)
//! 40  file id, zero padded to 128
//! ```
//! The index (binlog/checkpoint) is authoritative: in-place appends grow a
//! record's committed length beyond the header's `data length`; the header
//! serves offline inspection. Reads verify the index's crc32.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::dio::DirectFile;
use super::disk::{self, DiskThread, DIO_ALIGN};
use super::space::{Alloc, Extent, FreeList, FsSpace};

pub(crate) const HEADER_LEN: u64 = 128;
const MAGIC: &[u8; 4] = b"CHRC";
const MAX_ID: usize = 88;

pub(crate) fn encode_header(
    file_id: &str,
    version: u64,
    len: u64,
    capacity: u64,
    data_crc: u32,
    appender: bool,
) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    let id = file_id.as_bytes();
    let idn = id.len().min(MAX_ID);
    h[0..4].copy_from_slice(MAGIC);
    h[4] = 1;
    h[5] = u8::from(appender);
    h[6..8].copy_from_slice(&(idn as u16).to_le_bytes());
    h[8..16].copy_from_slice(&version.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h[24..32].copy_from_slice(&capacity.to_le_bytes());
    h[32..36].copy_from_slice(&data_crc.to_le_bytes());
    h[40..40 + idn].copy_from_slice(&id[..idn]);
    let mut c = crc32fast::Hasher::new();
    c.update(&h[0..36]);
    c.update(&h[40..]);
    let crc = c.finalize();
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decoded header fields (for inspection and tests).
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub file_id: String,
    pub version: u64,
    pub len: u64,
    pub capacity: u64,
    pub data_crc: u32,
    pub appender: bool,
}

#[cfg(test)]
pub(crate) fn decode_header(h: &[u8]) -> Option<Header> {
    if h.len() < HEADER_LEN as usize || &h[0..4] != MAGIC || h[4] != 1 {
        return None;
    }
    let mut c = crc32fast::Hasher::new();
    c.update(&h[0..36]);
    c.update(&h[40..HEADER_LEN as usize]);
    if c.finalize() != u32::from_le_bytes([h[36], h[37], h[38], h[39]]) {
        return None;
    }
    let u64at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let idn = u16::from_le_bytes([h[6], h[7]]) as usize;
    if idn > MAX_ID {
        return None;
    }
    Some(Header {
        file_id: String::from_utf8(h[40..40 + idn].to_vec()).ok()?,
        version: u64at(8),
        len: u64at(16),
        capacity: u64at(24),
        data_crc: u32::from_le_bytes([h[32], h[33], h[34], h[35]]),
        appender: h[5] & 1 == 1,
    })
}

/// One store path: its directories, chunk files, free list and disk thread.
pub(crate) struct Store {
    pub index: u8,
    pub root: PathBuf,
    pub chunks_dir: PathBuf,
    pub data_dir: PathBuf,
    pub tmp_dir: PathBuf,
    pub chunks: RwLock<Vec<Option<Arc<File>>>>,
    /// The chunk files opened with O_DIRECT (on first use).
    pub dio: RwLock<Vec<Option<Arc<File>>>>,
    /// Cleared when this file system refuses O_DIRECT: buffered from then on.
    pub dio_ok: AtomicBool,
    /// A [`Store::prefill`] is writing its zeros.
    pub prefilling: Arc<AtomicBool>,
    pub free: Arc<Mutex<FreeList>>,
    pub disk: DiskThread,
    /// Cached free space of the file system.
    pub space: FsSpace,
}

/// Chunk space zero-filled ahead at a time (see [`Store::prefill`]), at
/// most an eighth of a chunk file.
pub(crate) const PREFILL: u64 = 8 << 20;

pub(crate) fn chunk_name(n: u32) -> String {
    format!("chunk.{n:08X}")
}

pub(crate) fn parse_chunk_name(s: &str) -> Option<u32> {
    let hex = s.strip_prefix("chunk.")?;
    if hex.len() != 8
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

pub(crate) fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

impl Store {
    pub fn chunk(&self, n: u32) -> io::Result<Arc<File>> {
        self.chunks
            .read()
            .get(n as usize)
            .and_then(|c| c.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("chunk {n} missing")))
    }

    /// Allocate `len` bytes of chunk space (creating a chunk file if needed).
    /// The flag says the space came from the end of the chunks (nothing
    /// freed was big enough): the file grows.
    pub fn alloc(&self, len: u64, committed: u64) -> io::Result<(Arc<Extent>, Arc<File>, bool)> {
        let (a, at_end) = {
            let mut free = self.free.lock();
            let at_end = !free.fits(len);
            (free.alloc(len).0, at_end)
        };
        let (ext, file) = self.take(a, committed)?;
        Ok((ext, file, at_end))
    }

    /// Make [`PREFILL`] bytes at the end of the chunks into free space that
    /// holds zeros, durably: small records written there later overwrite
    /// allocated blocks inside the file, so their fdatasync flushes data
    /// only, where a record that grows the file must also commit the file
    /// system's journal (measured here: 4 KiB write+fdatasync about 1.5x
    /// faster). The space is owned by an extent while the zeros are written
    /// (nothing else can be placed there), then freed. One at a time; only
    /// an optimisation, so any failure just leaves records growing the file.
    pub fn prefill(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.prefilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let (a, _) = {
            let mut free = self.free.lock();
            let len = PREFILL.min(free.chunk_size() / 8);
            free.alloc_at_end(len)
        };
        let taken = self.take(a, 0);
        let permit = self.disk.try_permit();
        let (Ok((ext, file)), Some(permit)) = (taken, permit) else {
            self.prefilling.store(false, Ordering::Release);
            return;
        };
        self.space.charge(ext.len);
        let rx = self.disk.send(
            permit,
            file,
            disk::zeros(ext.offset, ext.offset + ext.len),
            true,
        );
        let flag = self.prefilling.clone();
        rt.spawn(async move {
            if let Err(e) = disk::wait(rx).await {
                tracing::debug!(error = %e, "zero-filling chunk space failed");
            }
            // Frees the space (zeroed, or partly: still free space).
            drop(ext);
            flag.store(false, Ordering::Release);
        });
    }

    /// Allocate a block-aligned extent of at least `len` bytes (a multiple
    /// of [`DIO_ALIGN`]) and open its chunk for O_DIRECT; `None` when this
    /// file system cannot do O_DIRECT (use [`Self::alloc`] then).
    pub fn alloc_direct(
        &self,
        len: u64,
        committed: u64,
    ) -> io::Result<Option<(Arc<Extent>, DirectFile)>> {
        if !self.dio_ok.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let (a, _) = self.free.lock().alloc_aligned(len, DIO_ALIGN as u64);
        let (ext, file) = self.take(a, committed)?;
        Self::prepare(&file, ext.offset, ext.offset + len);
        match self.direct_fd(ext.chunk) {
            Some(dio) => Ok(Some((ext, DirectFile { file, dio }))),
            // The extent goes back to the free list when `ext` drops.
            None => Ok(None),
        }
    }

    /// Allocate the blocks of an O_DIRECT record's extent `[offset, end)`
    /// before writing it: an O_DIRECT write into allocated blocks below the
    /// end of file runs concurrently with others, where an extending one
    /// waits for its completion under the inode lock (ext4). Only the
    /// extent itself, so the file system loses no more than the write
    /// would take (allocating ahead measured a little faster but ate into
    /// the reserve unseen). A hint only: a failure leaves the write
    /// extending.
    fn prepare(file: &File, offset: u64, end: u64) {
        // SAFETY: plain syscall on an open descriptor; no memory passed.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                0,
                offset as libc::off_t,
                (end - offset) as libc::off_t,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            tracing::debug!(error = %e, "preallocating an O_DIRECT record failed");
        }
    }

    fn direct_fd(&self, chunk: u32) -> Option<Arc<File>> {
        if let Some(f) = self.dio.read().get(chunk as usize).and_then(|f| f.clone()) {
            return Some(f);
        }
        let mut dio = self.dio.write();
        if let Some(f) = dio.get(chunk as usize).and_then(|f| f.clone()) {
            return Some(f);
        }
        let path = self.chunks_dir.join(chunk_name(chunk));
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path);
        match opened {
            Ok(f) => {
                let f = Arc::new(f);
                if dio.len() <= chunk as usize {
                    dio.resize(chunk as usize + 1, None);
                }
                dio[chunk as usize] = Some(f.clone());
                Some(f)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "O_DIRECT unavailable; new records are written through the page cache");
                self.dio_ok.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// The extent `a` as a guard, with its chunk file (created if new).
    fn take(&self, a: Alloc, committed: u64) -> io::Result<(Arc<Extent>, Arc<File>)> {
        let present = self
            .chunks
            .read()
            .get(a.chunk as usize)
            .is_some_and(|c| c.is_some());
        if !present {
            let mut chunks = self.chunks.write();
            if chunks
                .get(a.chunk as usize)
                .and_then(|c| c.as_ref())
                .is_none()
            {
                let path = self.chunks_dir.join(chunk_name(a.chunk));
                let f = open_rw(&path, true)?;
                disk::sync_dir(&self.chunks_dir)?;
                if chunks.len() <= a.chunk as usize {
                    chunks.resize(a.chunk as usize + 1, None);
                }
                chunks[a.chunk as usize] = Some(Arc::new(f));
            }
        }
        let ext = Extent::new(a, committed, self.free.clone());
        let file = self.chunk(a.chunk)?;
        Ok((ext, file))
    }

    /// Path of a large file.
    pub fn large_path(&self, id: &proto::FileId) -> PathBuf {
        self.data_dir.join(id.relative_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_crc() {
        let h = encode_header("g/M00/AB/CD/xyz.jpg", 7, 100, 120, 0x1234, true);
        let d = decode_header(&h).unwrap();
        assert_eq!(d.file_id, "g/M00/AB/CD/xyz.jpg");
        assert_eq!(
            (d.version, d.len, d.capacity, d.data_crc, d.appender),
            (7, 100, 120, 0x1234, true)
        );
        let mut bad = h;
        bad[17] ^= 1;
        assert!(decode_header(&bad).is_none());
        assert_eq!(parse_chunk_name(&chunk_name(0x1F)), Some(0x1F));
        assert_eq!(parse_chunk_name("chunk.0000001f"), None);
    }
}
