//! The in-memory index: file id → location, size, crc32, times, version,
//! appender flag, metadata. The same "file state" encoding is used by
//! binlog records and index checkpoints, so replaying a record simply sets
//! the file's state (idempotent, order-preserving).

use std::collections::HashMap;
use std::sync::Arc;

use proto::{FileId, FileStat, MetaEntry};

use super::codec::{Dec, DecodeError, Enc};
use super::space::Extent;

/// Where a file's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loc {
    /// A record in a chunk file: the record header starts at `offset`, the
    /// data follows the header, `capacity` bytes are reserved for data.
    Small {
        store: u8,
        chunk: u32,
        offset: u64,
        capacity: u64,
    },
    /// A single file at `<store>/data/<FileId::relative_path()>`.
    Large { store: u8 },
}

impl Loc {
    pub fn store(&self) -> u8 {
        match *self {
            Loc::Small { store, .. } | Loc::Large { store } => store,
        }
    }
}

/// One file's committed state.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub loc: Loc,
    pub size: u64,
    pub crc32: u32,
    pub create_us: u64,
    pub modify_us: u64,
    pub version: u64,
    pub appender: bool,
    pub meta: Vec<MetaEntry>,
    /// For small files: the extent (reference-counted space guard).
    pub extent: Option<Arc<Extent>>,
}

impl Entry {
    pub fn stat(&self, id: &FileId) -> FileStat {
        FileStat {
            file_id: id.to_string(),
            size: self.size,
            crc32: self.crc32,
            create_time_us: self.create_us,
            modify_time_us: self.modify_us,
            version: self.version,
            appender: self.appender,
        }
    }

    /// Encode the state (everything but the extent guard).
    pub fn encode(&self, e: &mut Enc) {
        let (kind, store, chunk, offset, capacity) = match self.loc {
            Loc::Small {
                store,
                chunk,
                offset,
                capacity,
            } => (0u8, store, chunk, offset, capacity),
            Loc::Large { store } => (1u8, store, 0, 0, 0),
        };
        e.u8(kind);
        e.u8(store);
        e.u8(u8::from(self.appender));
        e.u32(chunk);
        e.u64(offset);
        e.u64(capacity);
        e.u64(self.size);
        e.u32(self.crc32);
        e.u64(self.create_us);
        e.u64(self.modify_us);
        e.u64(self.version);
        e.u16(self.meta.len() as u16);
        for m in &self.meta {
            e.str16(&m.key);
            e.str16(&m.value);
        }
    }

    pub fn decode(d: &mut Dec<'_>) -> Result<Entry, DecodeError> {
        let kind = d.u8()?;
        let store = d.u8()?;
        let appender = d.u8()? & 1 == 1;
        let chunk = d.u32()?;
        let offset = d.u64()?;
        let capacity = d.u64()?;
        let loc = match kind {
            0 => Loc::Small {
                store,
                chunk,
                offset,
                capacity,
            },
            1 => Loc::Large { store },
            _ => return Err(DecodeError("unknown location kind")),
        };
        let size = d.u64()?;
        let crc32 = d.u32()?;
        let create_us = d.u64()?;
        let modify_us = d.u64()?;
        let version = d.u64()?;
        let n = d.u16()?;
        let mut meta = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let key = d.str16()?;
            let value = d.str16()?;
            meta.push(MetaEntry { key, value });
        }
        if let Loc::Small { capacity, .. } = loc {
            if size > capacity {
                return Err(DecodeError("size beyond capacity"));
            }
        }
        Ok(Entry {
            loc,
            size,
            crc32,
            create_us,
            modify_us,
            version,
            appender,
            meta,
            extent: None,
        })
    }
}

/// The index proper.
pub(crate) type IndexMap = HashMap<FileId, Entry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip() {
        let e = Entry {
            loc: Loc::Small {
                store: 1,
                chunk: 7,
                offset: 4096,
                capacity: 5000,
            },
            size: 4000,
            crc32: 0xabcd,
            create_us: 1,
            modify_us: 2,
            version: 99,
            appender: true,
            meta: vec![MetaEntry::new("k", "v"), MetaEntry::new("ключ", "")],
            extent: None,
        };
        let mut enc = Enc::default();
        e.encode(&mut enc);
        let mut d = Dec::new(&enc.buf);
        let back = Entry::decode(&mut d).unwrap();
        assert_eq!(d.remaining(), 0);
        assert_eq!(back.loc, e.loc);
        assert_eq!(back.size, 4000);
        assert_eq!(back.meta, e.meta);
        assert!(back.appender);
        assert_eq!(back.version, 99);
    }
}
