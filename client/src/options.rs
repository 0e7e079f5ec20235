//! Argument and result types of the API.

use std::ops::{Range, RangeFrom, RangeFull};

use proto::MetaEntry;

/// How a file is created by [`Client::upload`](crate::Client::upload).
///
/// ```
/// let opts = client::UploadOptions::new()
///     .ext("jpg")
///     .meta("width", "640")
///     .meta("height", "480");
/// assert_eq!(opts.meta.len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadOptions {
    /// File extension without the dot; empty for none. Up to 16
    /// alphanumeric characters.
    pub ext: String,
    /// Initial metadata.
    pub meta: Vec<MetaEntry>,
    /// Appender files accept `append` and `truncate`.
    pub appender: bool,
}

impl UploadOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the extension (without the dot).
    pub fn ext(mut self, ext: impl Into<String>) -> Self {
        self.ext = ext.into();
        self
    }

    /// Add one metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.push(MetaEntry::new(key, value));
        self
    }

    /// Create an appender file.
    pub fn appender(mut self, on: bool) -> Self {
        self.appender = on;
        self
    }
}

/// A byte range of a file: `offset` and an optional `length` (to the end
/// when `None`). Converts from `..`, `a..` and `a..b`.
///
/// ```
/// use client::ByteRange;
/// assert_eq!(ByteRange::from(..), ByteRange::all());
/// assert_eq!(ByteRange::from(10..), ByteRange { offset: 10, length: None });
/// assert_eq!(ByteRange::from(10..15), ByteRange::new(10, 5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteRange {
    pub offset: u64,
    pub length: Option<u64>,
}

impl ByteRange {
    /// The whole file.
    pub fn all() -> Self {
        ByteRange::default()
    }

    /// `length` bytes from `offset`.
    pub fn new(offset: u64, length: u64) -> Self {
        ByteRange {
            offset,
            length: Some(length),
        }
    }

    /// Whether this names the whole file.
    pub fn is_all(&self) -> bool {
        self.offset == 0 && self.length.is_none()
    }
}

impl From<RangeFull> for ByteRange {
    fn from(_: RangeFull) -> Self {
        ByteRange::all()
    }
}

impl From<RangeFrom<u64>> for ByteRange {
    fn from(r: RangeFrom<u64>) -> Self {
        ByteRange {
            offset: r.start,
            length: None,
        }
    }
}

impl From<Range<u64>> for ByteRange {
    fn from(r: Range<u64>) -> Self {
        ByteRange::new(r.start, r.end.saturating_sub(r.start))
    }
}

/// A file's metadata and the file version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub entries: Vec<MetaEntry>,
    pub version: u64,
}

impl FileMeta {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }
}

/// What a server says about itself in answer to a ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingInfo {
    pub server_id: u32,
    pub group: String,
    pub data_version: u64,
}
