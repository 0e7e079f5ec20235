//! Downloads. Small files are crc-checked against the index before any
//! byte is served: up to `INLINE_VERIFY` the whole record is read and
//! checked in `open_read`; bigger records are checked while streaming and
//! the last piece is held back until the checksum matched, so a corrupt
//! record never reaches the client complete. Large files are served with
//! pread from an fd opened at `open_read` (a concurrent delete does not
//! cut the stream).

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use proto::FileId;

use super::chunk::HEADER_LEN;
use super::content::{blocking, read_at};
use super::error::{EngineError, IoContext};
use super::index::Loc;
use super::space::Extent;
use super::{Engine, FileRead};

/// Small records up to this size are verified in `open_read`.
pub(crate) const INLINE_VERIFY: u64 = 4 << 20;

pub(crate) enum Src {
    /// Already verified bytes of the requested range.
    Mem(Bytes),
    /// A big small-file record, verified while streaming.
    Verify(Box<VerifyStream>),
    /// A large file.
    Large(Arc<File>),
}

pub(crate) struct VerifyStream {
    file: Arc<File>,
    data_off: u64,
    size: u64,
    crc: u32,
    hasher: crc32fast::Hasher,
    scanned: u64,
    held: Option<Bytes>,
    verified: bool,
    what: String,
    _extent: Arc<Extent>,
}

impl Engine {
    pub(crate) async fn do_open_read(
        &self,
        id: &FileId,
        offset: u64,
        length: Option<u64>,
    ) -> Result<FileRead, EngineError> {
        self.check_id(id)?;
        let entry = {
            let idx = self.index.read();
            idx.get(id)
                .cloned()
                .ok_or_else(|| EngineError::NotFound(id.to_string()))?
        };
        if offset > entry.size {
            return Err(EngineError::BadRequest(format!(
                "offset {offset} is beyond the end of {id} ({} bytes)",
                entry.size
            )));
        }
        let avail = entry.size - offset;
        let length = length.map_or(avail, |l| l.min(avail));
        let stat = entry.stat(id);
        let src = match entry.loc {
            Loc::Small {
                store,
                chunk,
                offset: rec,
                ..
            } => {
                let ext = entry
                    .extent
                    .clone()
                    .ok_or_else(|| EngineError::Internal(format!("{id}: no extent")))?;
                let file = self.stores[store as usize]
                    .chunk(chunk)
                    .ctx(|| format!("opening the chunk of {id}"))?;
                let data_off = rec + HEADER_LEN;
                if entry.size <= INLINE_VERIFY {
                    let all = read_at(&file, data_off, entry.size as usize).await?;
                    let got = crc32fast::hash(&all);
                    if got != entry.crc32 {
                        tracing::error!(%id, want = entry.crc32, got, "small file failed its checksum");
                        return Err(EngineError::Corrupt(format!(
                            "{id}: stored crc32 {:08x}, data has {got:08x}",
                            entry.crc32
                        )));
                    }
                    Src::Mem(all.slice(offset as usize..(offset + length) as usize))
                } else {
                    Src::Verify(Box::new(VerifyStream {
                        file,
                        data_off,
                        size: entry.size,
                        crc: entry.crc32,
                        hasher: crc32fast::Hasher::new(),
                        scanned: 0,
                        held: None,
                        verified: false,
                        what: id.to_string(),
                        _extent: ext,
                    }))
                }
            }
            Loc::Large { store } => {
                let path = self.stores[store as usize].large_path(id);
                let f = blocking(move || File::open(path)).await?.map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        EngineError::NotFound(id.to_string())
                    } else {
                        EngineError::io(format!("opening {id}"), e)
                    }
                })?;
                Src::Large(Arc::new(f))
            }
        };
        Ok(FileRead {
            stat,
            offset,
            length,
            src,
            served: 0,
        })
    }
}

impl FileRead {
    pub(crate) async fn next_piece(&mut self, max: usize) -> Result<Option<Bytes>, EngineError> {
        let max = max.max(1);
        let (offset, length) = (self.offset, self.length);
        match &mut self.src {
            Src::Mem(b) => {
                if b.is_empty() {
                    return Ok(None);
                }
                let n = b.len().min(max);
                let out = b.split_to(n);
                self.served += n as u64;
                Ok(Some(out))
            }
            Src::Large(f) => {
                if self.served >= length {
                    return Ok(None);
                }
                let n = (length - self.served).min(max as u64) as usize;
                let b = read_at(f, offset + self.served, n).await?;
                self.served += n as u64;
                Ok(Some(b))
            }
            Src::Verify(v) => {
                let end = offset + length;
                loop {
                    if v.scanned >= v.size {
                        if v.verified {
                            return Ok(None);
                        }
                        let got = v.hasher.clone().finalize();
                        if got != v.crc {
                            tracing::error!(id = %v.what, want = v.crc, got, "small file failed its checksum");
                            return Err(EngineError::Corrupt(format!(
                                "{}: stored crc32 {:08x}, data has {got:08x}",
                                v.what, v.crc
                            )));
                        }
                        v.verified = true;
                        let out = v.held.take();
                        if let Some(b) = &out {
                            self.served += b.len() as u64;
                        }
                        return Ok(out);
                    }
                    // Before the range, read big pieces; inside it, pieces
                    // of at most `max` so each fits one answer.
                    let big = super::content::FLUSH as u64;
                    let piece = if v.scanned < offset {
                        (offset - v.scanned).min(big)
                    } else if v.scanned < end {
                        (max as u64).min(end - v.scanned)
                    } else {
                        big
                    };
                    let piece = piece.min(v.size - v.scanned).max(1);
                    let b = read_at(&v.file, v.data_off + v.scanned, piece as usize).await?;
                    v.hasher.update(&b);
                    let (s, e) = (v.scanned, v.scanned + piece);
                    v.scanned = e;
                    let lo = s.max(offset);
                    let hi = e.min(end);
                    if lo < hi {
                        let part = b.slice((lo - s) as usize..(hi - s) as usize);
                        if let Some(prev) = v.held.replace(part) {
                            self.served += prev.len() as u64;
                            return Ok(Some(prev));
                        }
                    }
                }
            }
        }
    }
}
