//! Stable error codes carried on the wire.

use rkyv::{Archive, Deserialize, Serialize};

/// A stable, typed error code. The numeric values are part of the wire
/// protocol: never renumber, only add.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
#[repr(u16)]
pub enum ErrorCode {
    /// The request is well-formed but its arguments are not acceptable.
    BadRequest = 1,
    /// The peer broke the protocol (bad frame, unexpected message).
    Protocol = 2,
    /// A frame or a declared body exceeds the server's limits.
    TooLarge = 3,
    /// The file id could not be parsed or names something outside the store.
    InvalidFileId = 4,
    /// The file id belongs to a group this server does not serve.
    WrongGroup = 5,
    /// No such file.
    NotFound = 6,
    /// `if_version` did not match the file's current version.
    VersionMismatch = 7,
    /// Append or truncate on a file that was not uploaded as an appender.
    NotAppender = 8,
    /// The store has reached its reserved-space limit.
    NoSpace = 9,
    /// A disk operation failed on the server.
    Io = 10,
    /// The server is overloaded or shutting down; retry later.
    Busy = 11,
    /// This server is not the master of the group.
    NotMaster = 12,
    /// The request carried an epoch older than the group's.
    StaleEpoch = 13,
    /// The server cannot serve now (no lease, recovering).
    Unavailable = 14,
    /// A bug or an unexpected state on the server.
    Internal = 15,
    /// The leader is not the Raft leader; the message names the leader.
    NotLeader = 16,
    /// Timed out waiting for a peer or a disk.
    Timeout = 17,
    /// A replica's data does not match its master's (replication only).
    Diverged = 18,
}

impl ErrorCode {
    /// A short, stable, lower-case name for logs and `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Protocol => "protocol",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::InvalidFileId => "invalid_file_id",
            ErrorCode::WrongGroup => "wrong_group",
            ErrorCode::NotFound => "not_found",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::NotAppender => "not_appender",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::Io => "io",
            ErrorCode::Busy => "busy",
            ErrorCode::NotMaster => "not_master",
            ErrorCode::StaleEpoch => "stale_epoch",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Diverged => "diverged",
        }
    }

    /// Whether a client may retry the same request (possibly elsewhere).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Busy
                | ErrorCode::NotMaster
                | ErrorCode::StaleEpoch
                | ErrorCode::Unavailable
                | ErrorCode::NotLeader
                | ErrorCode::Timeout
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as sent on the wire: a code and a human-readable message.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[rkyv(derive(Debug))]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}
