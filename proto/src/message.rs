//! Data-plane messages: what a client (or a peer) sends a dataserver and
//! what it answers.
//!
//! A connection carries one request at a time. Operations with a body
//! (upload, append, modify) send the request, then [`Message::Data`] frames
//! whose payloads add up to exactly the declared size, the last one flagged.
//! A download is answered with [`Reply::Download`] and then `Data` frames the
//! same way. Every other request gets exactly one [`Message::Response`].

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::WireError;
use crate::repl::{AsyncItem, FileSummary, LogRef, ReplRecord, ReplState};

/// One metadata entry (`key=value`) attached to a file.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[rkyv(derive(Debug))]
pub struct MetaEntry {
    pub key: String,
    pub value: String,
}

impl MetaEntry {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        MetaEntry {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// How `SetMeta` combines new entries with the existing ones.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum MetaMode {
    /// Replace all metadata with the given entries.
    Overwrite,
    /// Add or replace the given keys, keep the others.
    Merge,
}

/// What a stat returns, and what most mutations answer with.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FileStat {
    /// The canonical file id.
    pub file_id: String,
    /// Current size in bytes.
    pub size: u64,
    /// crc32 (IEEE) of the whole current content.
    pub crc32: u32,
    /// Creation time, microseconds since the Unix epoch.
    pub create_time_us: u64,
    /// Last change time, microseconds since the Unix epoch.
    pub modify_time_us: u64,
    /// The file's version: raised by every change (it is the data version of
    /// the file's last change, so it only grows).
    pub version: u64,
    /// Whether the file accepts append and truncate.
    pub appender: bool,
}

/// A data-plane request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Request {
    /// Liveness and identity check.
    Ping,
    /// Create a file; `size` bytes of `Data` frames follow.
    Upload {
        size: u64,
        /// File extension without the dot (may be empty).
        ext: String,
        meta: Vec<MetaEntry>,
        /// Appender files accept append and truncate.
        appender: bool,
    },
    /// Read `length` bytes (to the end when `None`) from `offset`.
    Download {
        file_id: String,
        offset: u64,
        length: Option<u64>,
    },
    Delete {
        file_id: String,
        if_version: Option<u64>,
    },
    /// Append `size` bytes (`Data` frames follow) to an appender file.
    Append {
        file_id: String,
        size: u64,
        if_version: Option<u64>,
    },
    /// Write `size` bytes (`Data` frames follow) at `offset`; may extend
    /// the file when `offset` is at most its size.
    Modify {
        file_id: String,
        offset: u64,
        size: u64,
        if_version: Option<u64>,
    },
    /// Set the size of an appender file (shrink, or extend with zeros).
    Truncate {
        file_id: String,
        size: u64,
        if_version: Option<u64>,
    },
    Stat {
        file_id: String,
    },
    SetMeta {
        file_id: String,
        meta: Vec<MetaEntry>,
        mode: MetaMode,
        if_version: Option<u64>,
    },
    GetMeta {
        file_id: String,
    },
    Exists {
        file_id: String,
    },
    /// Master → slave: one change to apply at its data version; `body_len`
    /// bytes of `Data` frames follow. See [`crate::repl`].
    Replicate(ReplRecord),
    /// Master → slave: several changes at once, each applied as if sent
    /// alone by `Replicate`; their bodies follow back to back as `Data`
    /// frames (`body_len` bytes each, in order). Answered with
    /// [`Reply::ReplicatedBatch`].
    ReplicateBatch {
        records: Vec<ReplRecord>,
    },
    /// Catch-up: binlog records from `from` (inclusive), at most `max`.
    ReplLog {
        from: u64,
        max: u32,
    },
    /// Catch-up: a file's current state and content.
    ReplFetch {
        file_id: String,
    },
    /// An ONLINE slave that caught up asks the master to make it ACTIVE.
    ReplReady {
        server_id: u64,
        data_version: u64,
    },
    /// Files in id order after `after` (exclusive), at most `limit`.
    ListFiles {
        after: String,
        limit: u32,
    },
    /// Async mode, source → peer: changes of the source's own files the
    /// peer may lack; answered with [`Reply::AsyncWanted`].
    AsyncOffer {
        source: u64,
        items: Vec<AsyncItem>,
    },
    /// Async mode, source → peer: one of the source's own files, to take
    /// at the peer's next data version; `rec.body_len` bytes of `Data`
    /// frames follow (the file's whole content for `Install`).
    AsyncPush {
        source: u64,
        rec: ReplRecord,
        /// When the source applied the change (µs since the epoch), for
        /// the replica-lag figures.
        source_time_us: u64,
    },
}

impl Request {
    /// Short operation name for logs and metrics.
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Upload { .. } => "upload",
            Request::Download { .. } => "download",
            Request::Delete { .. } => "delete",
            Request::Append { .. } => "append",
            Request::Modify { .. } => "modify",
            Request::Truncate { .. } => "truncate",
            Request::Stat { .. } => "stat",
            Request::SetMeta { .. } => "set_meta",
            Request::GetMeta { .. } => "get_meta",
            Request::Exists { .. } => "exists",
            Request::Replicate(_) => "replicate",
            Request::ReplicateBatch { .. } => "replicate_batch",
            Request::ReplLog { .. } => "repl_log",
            Request::ReplFetch { .. } => "repl_fetch",
            Request::ReplReady { .. } => "repl_ready",
            Request::ListFiles { .. } => "list_files",
            Request::AsyncOffer { .. } => "async_offer",
            Request::AsyncPush { .. } => "async_push",
        }
    }

    /// The size of the body that follows this request, if any.
    pub fn body_len(&self) -> Option<u64> {
        match self {
            Request::Upload { size, .. }
            | Request::Append { size, .. }
            | Request::Modify { size, .. } => Some(*size),
            Request::Replicate(r) | Request::AsyncPush { rec: r, .. } => Some(r.body_len),
            // An overflowing sum is refused as too large.
            Request::ReplicateBatch { records } => Some(
                records
                    .iter()
                    .try_fold(0u64, |sum, r| sum.checked_add(r.body_len))
                    .unwrap_or(u64::MAX),
            ),
            _ => None,
        }
    }

    /// The file id the request names, if any.
    pub fn file_id(&self) -> Option<&str> {
        match self {
            Request::Download { file_id, .. }
            | Request::Delete { file_id, .. }
            | Request::Append { file_id, .. }
            | Request::Modify { file_id, .. }
            | Request::Truncate { file_id, .. }
            | Request::Stat { file_id }
            | Request::SetMeta { file_id, .. }
            | Request::GetMeta { file_id }
            | Request::Exists { file_id }
            | Request::ReplFetch { file_id } => Some(file_id),
            Request::Replicate(r) | Request::AsyncPush { rec: r, .. } => Some(&r.file_id),
            Request::Ping
            | Request::ReplicateBatch { .. }
            | Request::AsyncOffer { .. }
            | Request::Upload { .. }
            | Request::ReplLog { .. }
            | Request::ReplReady { .. }
            | Request::ListFiles { .. } => None,
        }
    }
}

/// A request with its envelope.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RequestEnvelope {
    /// Chosen by the sender, echoed in the response and in `Data` frames.
    pub id: u64,
    /// Identifies the client process, for exactly-once retries (0: none).
    pub client_id: u64,
    /// The client's sequence number for this operation (0: none). A retry
    /// of the same operation reuses it.
    pub seq: u64,
    /// The group epoch the client believes current (0: don't check).
    pub epoch: u64,
    pub op: Request,
}

/// A successful answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Reply {
    Pong {
        server_id: u32,
        group: String,
        data_version: u64,
    },
    /// Upload, append, modify, truncate and set-meta answer with the file's
    /// new state.
    Stat(FileStat),
    /// Answer to a download; `length` bytes of `Data` frames follow.
    Download {
        stat: FileStat,
        offset: u64,
        length: u64,
    },
    Deleted {
        version: u64,
    },
    Meta {
        meta: Vec<MetaEntry>,
        version: u64,
    },
    Exists(bool),
    /// A replicated change is durable here; `data_version` is this
    /// server's version after it.
    Replicated {
        data_version: u64,
    },
    /// Answer to `ReplicateBatch`: per record, in order, `None` when it is
    /// durable here, else why not; `data_version` after them.
    ReplicatedBatch {
        results: Vec<Option<WireError>>,
        data_version: u64,
    },
    ReplLog {
        records: Vec<LogRef>,
        /// The master's data version when it answered.
        last_version: u64,
    },
    /// Answer to `ReplFetch`: `None` when the file does not exist; else
    /// `state.size` bytes of `Data` frames follow.
    ReplFile {
        file_version: u64,
        state: Option<ReplState>,
    },
    /// Answer to `ReplReady`: the slave is ACTIVE in the map.
    Activated {
        map_version: u64,
    },
    /// Answer to `AsyncOffer`: one flag per offered item, true when the
    /// peer wants it pushed.
    AsyncWanted {
        want: Vec<bool>,
    },
    Files {
        files: Vec<FileSummary>,
        /// The server's data version when it answered.
        data_version: u64,
        /// Set when there are no more files after these.
        done: bool,
    },
}

/// A response with its envelope.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ResponseEnvelope {
    pub id: u64,
    pub result: Result<Reply, WireError>,
}

/// One chunk of a streamed body; the bytes travel as the frame payload.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DataChunk {
    /// The request this body belongs to.
    pub id: u64,
    /// Set on the final chunk of the body.
    pub last: bool,
}

/// Everything a dataserver connection carries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Message {
    Request(RequestEnvelope),
    Response(ResponseEnvelope),
    Data(DataChunk),
}
