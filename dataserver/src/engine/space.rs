//! Space inside chunk files (free list with best fit, extents handed out as
//! guards) and free space on the file system (statvfs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Free extents smaller than this are not split off an allocation.
const MIN_SPLIT: u64 = 256;
/// Free extents an aligned allocation looks at before it takes new space.
const ALIGNED_PROBES: usize = 64;

/// Free space of one store path's chunk files.
#[derive(Debug)]
pub(crate) struct FreeList {
    by_pos: BTreeMap<(u32, u64), u64>,
    by_size: BTreeSet<(u64, u32, u64)>,
    /// The chunk new space is appended to, and its end.
    pub active_chunk: u32,
    pub active_end: u64,
    chunk_size: u64,
}

/// Where an allocation landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Alloc {
    pub chunk: u32,
    pub offset: u64,
    pub len: u64,
}

impl FreeList {
    pub fn new(chunk_size: u64, active_chunk: u32, active_end: u64) -> Self {
        FreeList {
            by_pos: BTreeMap::new(),
            by_size: BTreeSet::new(),
            active_chunk,
            active_end,
            chunk_size,
        }
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Total bytes on the free list.
    pub fn free_bytes(&self) -> u64 {
        self.by_pos.values().sum()
    }

    /// Whether an allocation of `len` bytes can be served from freed space
    /// (and so needs no room on the file system).
    pub fn fits(&self, len: u64) -> bool {
        self.by_size.range((len, 0, 0)..).next().is_some()
    }

    /// Best fit from the free list, else the end of the active chunk, else
    /// a new chunk (`new_chunk` tells the caller to create its file).
    /// `len` must not exceed the chunk size.
    pub fn alloc(&mut self, len: u64) -> (Alloc, bool) {
        if let Some(&(flen, chunk, offset)) = self.by_size.range((len, 0, 0)..).next() {
            return (self.take_free((flen, chunk, offset), offset, len), false);
        }
        self.alloc_at_end(len)
    }

    /// `len` bytes at `start` out of the free extent `(flen, chunk,
    /// offset)` that holds them: the part in front goes back to the list,
    /// and the rest after them too unless it is under [`MIN_SPLIT`] (then
    /// the allocation keeps it).
    fn take_free(&mut self, (flen, chunk, offset): (u64, u32, u64), start: u64, len: u64) -> Alloc {
        self.remove(chunk, offset, flen);
        if start > offset {
            self.insert(chunk, offset, start - offset);
        }
        let rest = offset + flen - (start + len);
        let len = if rest >= MIN_SPLIT {
            self.insert(chunk, start + len, rest);
            len
        } else {
            len + rest
        };
        Alloc {
            chunk,
            offset: start,
            len,
        }
    }

    /// Space at the end of the active chunk, or at the start of a new one
    /// (never from the free list).
    pub fn alloc_at_end(&mut self, len: u64) -> (Alloc, bool) {
        let mut new_chunk = false;
        if self.active_end + len > self.chunk_size {
            if self.active_end < self.chunk_size {
                let (c, o, l) = (
                    self.active_chunk,
                    self.active_end,
                    self.chunk_size - self.active_end,
                );
                if l >= MIN_SPLIT {
                    self.release(c, o, l);
                }
            }
            self.active_chunk += 1;
            self.active_end = 0;
            new_chunk = true;
        }
        let a = Alloc {
            chunk: self.active_chunk,
            offset: self.active_end,
            len,
        };
        self.active_end += len;
        (a, new_chunk)
    }

    /// Like [`Self::alloc`], for an extent starting on an `align` boundary
    /// (a power of two; `len` a multiple of it), for records written with
    /// O_DIRECT. Free space is used when a free extent holds the aligned
    /// range (its unaligned front goes back to the list); the end of the
    /// active chunk is rounded up the same way.
    pub fn alloc_aligned(&mut self, len: u64, align: u64) -> (Alloc, bool) {
        debug_assert!(align.is_power_of_two() && len.is_multiple_of(align));
        let up = |o: u64| (o + align - 1) & !(align - 1);
        let fit = self
            .by_size
            .range((len, 0, 0)..)
            .take(ALIGNED_PROBES)
            .find(|&&(flen, _, off)| up(off) - off + len <= flen)
            .copied();
        if let Some(free @ (_, _, offset)) = fit {
            return (self.take_free(free, up(offset), len), false);
        }
        let start = up(self.active_end);
        if start + len <= self.chunk_size && start > self.active_end {
            let gap = (self.active_chunk, self.active_end, start - self.active_end);
            self.active_end = start;
            self.release(gap.0, gap.1, gap.2);
        }
        self.alloc_at_end(len)
    }

    fn insert(&mut self, chunk: u32, offset: u64, len: u64) {
        self.by_pos.insert((chunk, offset), len);
        self.by_size.insert((len, chunk, offset));
    }

    fn remove(&mut self, chunk: u32, offset: u64, len: u64) {
        self.by_pos.remove(&(chunk, offset));
        self.by_size.remove(&(len, chunk, offset));
    }

    /// Give an extent back, merging it with free neighbours.
    pub fn release(&mut self, chunk: u32, mut offset: u64, mut len: u64) {
        if len == 0 {
            return;
        }
        if let Some((&(c, o), &l)) = self.by_pos.range(..(chunk, offset)).next_back() {
            if c == chunk && o + l == offset {
                self.remove(c, o, l);
                offset = o;
                len += l;
            }
        }
        if let Some(&l) = self.by_pos.get(&(chunk, offset + len)) {
            self.remove(chunk, offset + len, l);
            len += l;
        }
        self.insert(chunk, offset, len);
    }
}

/// An allocated extent of a chunk file (record header + capacity). The
/// index entry and every reader hold an `Arc`; when the last one goes, the
/// extent returns to the free list. The index drops its reference only
/// after the record superseding it is durable.
#[derive(Debug)]
pub(crate) struct Extent {
    pub chunk: u32,
    pub offset: u64,
    pub len: u64,
    /// Highest committed length ever stored in this extent: in-place writes
    /// start at or after it, so no reader of an older length can see them.
    pub high_water: AtomicU64,
    free: Arc<Mutex<FreeList>>,
}

impl Extent {
    pub fn new(a: Alloc, committed: u64, free: Arc<Mutex<FreeList>>) -> Arc<Extent> {
        Arc::new(Extent {
            chunk: a.chunk,
            offset: a.offset,
            len: a.len,
            high_water: AtomicU64::new(committed),
            free,
        })
    }

    pub fn raise_high_water(&self, v: u64) {
        self.high_water.fetch_max(v, Ordering::AcqRel);
    }
}

impl Drop for Extent {
    fn drop(&mut self) {
        self.free.lock().release(self.chunk, self.offset, self.len);
    }
}

/// How long a statvfs result is trusted.
const SPACE_TTL: Duration = Duration::from_millis(10);

/// Free space of one store path's file system, cached for [`SPACE_TTL`]:
/// space granted since the last statvfs is subtracted from the cached
/// figure, so a burst of writes cannot overshoot the reserve by more than
/// what it writes within one TTL.
#[derive(Debug)]
pub(crate) struct FsSpace {
    root: PathBuf,
    cached: Mutex<Option<(Instant, u64)>>,
}

impl FsSpace {
    pub fn new(root: &Path) -> Self {
        FsSpace {
            root: root.to_path_buf(),
            cached: Mutex::new(None),
        }
    }

    /// Available bytes (statvfs at most every [`SPACE_TTL`]).
    pub fn avail(&self) -> std::io::Result<u64> {
        let mut c = self.cached.lock();
        if let Some((at, avail)) = *c {
            if at.elapsed() < SPACE_TTL {
                return Ok(avail);
            }
        }
        let (_, avail) = fs_space(&self.root)?;
        *c = Some((Instant::now(), avail));
        Ok(avail)
    }

    /// `n` bytes were granted to a write.
    pub fn charge(&self, n: u64) {
        if let Some((_, avail)) = self.cached.lock().as_mut() {
            *avail = avail.saturating_sub(n);
        }
    }
}

/// Total and available bytes of the file system holding `path`.
pub(crate) fn fs_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid C string and `st` points to writable memory of
    // the right type.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded, so it filled the struct.
    let st = unsafe { st.assume_init() };
    // Field widths differ between targets.
    #[allow(clippy::unnecessary_cast)]
    let (frsize, blocks, avail) = (st.f_frsize as u64, st.f_blocks as u64, st.f_bavail as u64);
    Ok((blocks * frsize, avail * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_split_merge() {
        let mut f = FreeList::new(10_000, 0, 0);
        let (a, n) = f.alloc(1000);
        assert!(!n);
        assert_eq!((a.chunk, a.offset), (0, 0));
        let (b, _) = f.alloc(2000);
        let (c, _) = f.alloc(1000);
        assert_eq!(b.offset, 1000);
        assert_eq!(c.offset, 3000);
        f.release(b.chunk, b.offset, b.len);
        f.release(a.chunk, a.offset, a.len);
        // Merged into one 3000-byte extent at 0.
        assert_eq!(f.free_bytes(), 3000);
        let (d, _) = f.alloc(2900);
        assert_eq!(
            (d.chunk, d.offset, d.len),
            (0, 0, 3000),
            "remainder below MIN_SPLIT"
        );
        let (e, _) = f.alloc(500);
        assert_eq!(e.offset, 4000);
        // A request that does not fit the active chunk opens a new one.
        let (g, n) = f.alloc(9000);
        assert!(n);
        assert_eq!((g.chunk, g.offset), (1, 0));
        assert_eq!(f.free_bytes(), 10_000 - 4500);
    }

    #[test]
    fn aligned_allocations_start_on_block_boundaries_and_lose_nothing() {
        let mut f = FreeList::new(64 << 10, 0, 0);
        let (a, _) = f.alloc(1000);
        let (b, _) = f.alloc_aligned(8192, 4096);
        assert_eq!((b.chunk, b.offset, b.len), (0, 4096, 8192));
        // The gap in front went to the free list.
        assert_eq!(f.free_bytes(), 4096 - 1000);
        // Freed unaligned space: the aligned part is used, its front kept.
        let (c, _) = f.alloc(20_000);
        f.release(c.chunk, c.offset, c.len);
        let (d, _) = f.alloc_aligned(8192, 4096);
        assert_eq!(d.offset % 4096, 0);
        assert!(d.offset >= c.offset && d.offset + d.len <= c.offset + c.len);
        // Nothing is lost: everything handed out plus the free list is the
        // used part of the chunk.
        let handed = a.len + b.len + d.len;
        assert_eq!(handed + f.free_bytes(), f.active_end);
        // A request that does not fit the active chunk opens a new one.
        let (g, new) = f.alloc_aligned(40 << 10, 4096);
        assert!(new);
        assert_eq!((g.chunk, g.offset), (1, 0));
    }

    #[test]
    fn extent_guard_frees_on_last_drop() {
        let free = Arc::new(Mutex::new(FreeList::new(1 << 20, 0, 0)));
        let (a, _) = free.lock().alloc(4096);
        let e = Extent::new(a, 0, free.clone());
        let reader = e.clone();
        drop(e);
        assert_eq!(free.lock().free_bytes(), 0);
        drop(reader);
        assert_eq!(free.lock().free_bytes(), 4096);
    }
}
