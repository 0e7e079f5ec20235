//! The engine's error type and its mapping to wire codes.

use proto::ErrorCode;

/// What the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("file {0} not found")]
    NotFound(String),
    #[error("version mismatch on {id}: expected {expected}, actual {actual}")]
    VersionMismatch {
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("file {0} is not an appender file")]
    NotAppender(String),
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("invalid file id {id}: {why}")]
    InvalidFileId { id: String, why: String },
    #[error("file {id} belongs to group {group}, this server stores group {ours}")]
    WrongGroup {
        id: String,
        group: String,
        ours: String,
    },
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request body broke its contract (shorter/longer than declared,
    /// or the network layer saw a protocol violation while reading it).
    #[error("bad body: {0}")]
    BadBody(String),
    #[error("i/o error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Stored bytes failed their checksum.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// An earlier fsync (or binlog write) failed; the engine refuses writes.
    #[error("storage engine poisoned after a failed disk write; restart required")]
    Poisoned,
    #[error("storage engine is shut down")]
    Closed,
    #[error("internal error: {0}")]
    Internal(String),
    /// A replicated change does not fit this server's copy.
    #[error("replica diverged: {0}")]
    Diverged(String),
    /// The change is durable here but could not be replicated; its outcome
    /// is unknown to the client.
    #[error("{0}")]
    Unavailable(String),
}

impl EngineError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::NotFound(_) => ErrorCode::NotFound,
            EngineError::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            EngineError::NotAppender(_) => ErrorCode::NotAppender,
            EngineError::NoSpace(_) => ErrorCode::NoSpace,
            EngineError::InvalidFileId { .. } => ErrorCode::InvalidFileId,
            EngineError::WrongGroup { .. } => ErrorCode::WrongGroup,
            EngineError::BadRequest(_) | EngineError::BadBody(_) => ErrorCode::BadRequest,
            EngineError::Io { .. } | EngineError::Corrupt(_) | EngineError::Poisoned => {
                ErrorCode::Io
            }
            EngineError::Closed => ErrorCode::Unavailable,
            EngineError::Internal(_) => ErrorCode::Internal,
            EngineError::Diverged(_) => ErrorCode::Diverged,
            EngineError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Attach context to io results.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, EngineError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, EngineError> {
        self.map_err(|e| EngineError::io(what(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let e = EngineError::VersionMismatch {
            id: "g/x".into(),
            expected: 3,
            actual: 5,
        };
        assert_eq!(e.code(), ErrorCode::VersionMismatch);
        let s = e.to_string();
        assert!(s.contains("expected 3") && s.contains("actual 5"), "{s}");
        assert_eq!(EngineError::Poisoned.code(), ErrorCode::Io);
        assert_eq!(
            EngineError::BadBody("x".into()).code(),
            ErrorCode::BadRequest
        );
        assert_eq!(EngineError::Closed.code(), ErrorCode::Unavailable);
    }
}
