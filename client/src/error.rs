//! The SDK's error type.

use proto::{ErrorCode, FileIdError, WireError};

/// Everything a client operation can fail with.
///
/// Server-side failures carry the server's stable [`ErrorCode`]; the other
/// variants say where on the client side (connecting, the connection, the
/// caller's own reader/writer) things went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{code}: {message}")]
    Server { code: ErrorCode, message: String },
    /// Cluster mode: the map names no server for the operation (the group
    /// has no ACTIVE master, or is unknown), or no map arrived yet.
    #[error("{code}: {message}")]
    NoRoute { code: ErrorCode, message: String },
    /// Could not open a connection to `addr`.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// An established connection failed (reset, closed by the peer).
    #[error("connection to {addr} failed: {message}")]
    Connection { addr: String, message: String },
    /// Connecting or waiting for the server took longer than configured.
    #[error("timed out after {after:?} {during} ({addr})")]
    Timeout {
        addr: String,
        during: &'static str,
        after: std::time::Duration,
    },
    /// The server sent something the protocol does not allow.
    #[error("protocol error from {addr}: {message}")]
    Protocol { addr: String, message: String },
    /// The caller's reader or writer failed.
    #[error("local i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The file id is not a valid Chorus file id (checked before sending).
    #[error("invalid file id: {0}")]
    InvalidFileId(#[from] FileIdError),
    /// An argument was refused before anything was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A reader ended before delivering the declared number of bytes.
    #[error("body ended after {got} of {expected} declared bytes")]
    ShortBody { expected: u64, got: u64 },
    /// Downloaded content does not match the crc32 the server reported.
    #[error("checksum mismatch: server says crc32 {expected:08x}, received data has {actual:08x}")]
    ChecksumMismatch { expected: u32, actual: u32 },
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Server {
            code: e.code,
            message: e.message,
        }
    }
}

impl ClientError {
    /// The server's error code, or the code that best describes a
    /// client-side failure (`None` when no code fits).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } | ClientError::NoRoute { code, .. } => Some(*code),
            ClientError::Timeout { .. } => Some(ErrorCode::Timeout),
            ClientError::Protocol { .. } => Some(ErrorCode::Protocol),
            ClientError::InvalidFileId(_) => Some(ErrorCode::InvalidFileId),
            ClientError::InvalidArgument(_) => Some(ErrorCode::BadRequest),
            _ => None,
        }
    }

    /// A short, stable, lower-case name for the error, for logs and the
    /// CLI: the server code's name when there is one, else `connect`,
    /// `connection`, `io`, `short_body` or `checksum`.
    pub fn kind_str(&self) -> &'static str {
        match self {
            ClientError::Connect { .. } => "connect",
            ClientError::Connection { .. } => "connection",
            ClientError::Io(_) => "io",
            ClientError::ShortBody { .. } => "short_body",
            ClientError::ChecksumMismatch { .. } => "checksum",
            other => other.code().map(ErrorCode::as_str).unwrap_or("error"),
        }
    }

    /// The human-readable part of the error, without the kind prefix that
    /// [`Display`](std::fmt::Display) adds for server errors.
    pub fn message(&self) -> String {
        match self {
            ClientError::Server { message, .. } | ClientError::NoRoute { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        }
    }

    /// The file does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(ErrorCode::NotFound)
    }

    /// An `if_version` precondition failed; nothing was changed.
    pub fn is_version_mismatch(&self) -> bool {
        self.code() == Some(ErrorCode::VersionMismatch)
    }

    /// Append or truncate on a file that is not an appender.
    pub fn is_not_appender(&self) -> bool {
        self.code() == Some(ErrorCode::NotAppender)
    }

    /// The failure happened on the network path (connect, connection,
    /// timeout): the server may or may not have applied the request.
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Connection { .. }
                | ClientError::Timeout { .. }
        )
    }

    /// Whether repeating the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Server { code, .. } | ClientError::NoRoute { code, .. } => {
                code.is_retryable()
            }
            other => other.is_network(),
        }
    }
}

impl ClientError {
    /// Cluster mode: whether the error means "this server is not (or no
    /// longer) the one to ask": a refusal naming another master, an old
    /// epoch, an unavailable master, or a failed connection. Such an
    /// operation is retried once the map names a usable master.
    pub(crate) fn wants_fresher_map(&self) -> bool {
        match self {
            ClientError::Server { code, .. } | ClientError::NoRoute { code, .. } => matches!(
                code,
                ErrorCode::NotMaster | ErrorCode::StaleEpoch | ErrorCode::Unavailable
            ),
            other => other.is_network(),
        }
    }
}

/// Shorthand for results of SDK calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
