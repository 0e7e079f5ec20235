//! Replication between dataservers of one group (sync mode).
//!
//! These ride the data-plane protocol ([`crate::Request`]) on the same port:
//!
//! * **Live writes** ([`crate::Request::Replicate`]): the master sends each
//!   change, with the data version it assigned, to every ACTIVE and ONLINE
//!   slave, then `Data` frames with the change's bytes. The envelope's
//!   `epoch` must be the group's current epoch (older ones are refused
//!   `stale_epoch`). A slave applies changes in data-version order and
//!   answers once the change is durable.
//! * **Catch-up** ([`crate::Request::ReplLog`] and
//!   [`crate::Request::ReplFetch`]): a RECOVERING / SYNCING server lists the
//!   master's binlog from its own version and fetches the current state and
//!   content of each file the log names.
//! * **Activation** ([`crate::Request::ReplReady`]): an ONLINE slave that has
//!   caught up asks the master to make it ACTIVE; the master checks that the
//!   slave has every version it assigned and asks the leaders.
//! * **Listing** ([`crate::Request::ListFiles`]): every file with its size,
//!   crc32 and version, in id order, for `chorus verify`.
//!
//! Async mode (FastDFS) uses two more:
//!
//! * **Offer** ([`crate::Request::AsyncOffer`]): a source server lists, in
//!   binlog order, its own files' changes (upper-case records) past its
//!   mark for a peer; the peer answers which it lacks.
//! * **Push** ([`crate::Request::AsyncPush`]): the wanted ones, each as the
//!   file's current state and content (`Install`) or a `Delete`; the peer
//!   takes it at its own next data version as a lower-case record, which is
//!   never pushed again (nothing loops).

use rkyv::{Archive, Deserialize, Serialize};

use crate::message::MetaEntry;

/// A file's complete state after a replicated change (everything but where
/// the bytes live, which each server decides for itself).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ReplState {
    pub size: u64,
    pub crc32: u32,
    pub create_time_us: u64,
    pub modify_time_us: u64,
    pub appender: bool,
    pub meta: Vec<MetaEntry>,
}

/// What a replicated change does. The bytes (if any) follow as `Data`
/// frames: `Create` and `Install` carry the whole content, `Append` and
/// `Modify` the bytes written at `offset`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ReplOp {
    Create,
    Append {
        offset: u64,
    },
    Modify {
        offset: u64,
    },
    Truncate,
    SetMeta,
    Delete,
    /// The version is used up by nothing (a voided record, or a change a
    /// later one supersedes during catch-up).
    Noop,
    /// Catch-up: replace the file with this state and content.
    Install,
}

impl ReplOp {
    pub fn name(&self) -> &'static str {
        match self {
            ReplOp::Create => "create",
            ReplOp::Append { .. } => "append",
            ReplOp::Modify { .. } => "modify",
            ReplOp::Truncate => "truncate",
            ReplOp::SetMeta => "set_meta",
            ReplOp::Delete => "delete",
            ReplOp::Noop => "noop",
            ReplOp::Install => "install",
        }
    }
}

/// One replicated change.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ReplRecord {
    /// The group data version the master gave the change.
    pub version: u64,
    /// The file (empty for `Noop`).
    pub file_id: String,
    pub op: ReplOp,
    /// The file's version before the change (0: it did not exist). For
    /// `Install` the slave's copy is replaced whatever it was.
    pub prev_version: u64,
    /// The file's version after the change (its data version).
    pub file_version: u64,
    /// The state after the change (`None` for `Delete` and `Noop`).
    pub state: Option<ReplState>,
    /// Bytes that follow as `Data` frames.
    pub body_len: u64,
    /// The client request the change answers (0, 0: none), remembered for
    /// exactly-once retries.
    pub client_id: u64,
    pub seq: u64,
}

/// One binlog record as catch-up sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LogRef {
    pub version: u64,
    /// Empty for a voided record.
    pub file_id: String,
    pub delete: bool,
}

/// One file as `ListFiles` reports it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FileSummary {
    pub file_id: String,
    pub size: u64,
    pub crc32: u32,
    pub version: u64,
}

/// One change a source server offers a peer in async mode.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AsyncItem {
    pub file_id: String,
    /// The file's version after the change (set by its source server).
    pub file_version: u64,
    pub delete: bool,
}
