//! Wire types shared by every Chorus process.
//!
//! * [`frame`]: the length-prefixed frame format and its async reader/writer.
//! * [`message`]: the data-plane requests and replies carried in frames.
//! * [`error`]: typed, stable error codes sent on the wire.
//! * [`file_id`]: self-describing file ids and their strict parser.
//! * [`cluster`]: the cluster map and the leader protocol.
//! * [`repl`]: replication between the dataservers of a group.
//!
//! Every frame body is an rkyv archive, validated with bytecheck before use;
//! file data travels beside it as a raw payload so large files stream in
//! chunks without passing through the archive.

pub mod cluster;
pub mod error;
pub mod file_id;
pub mod frame;
pub mod message;
pub mod repl;
pub mod units;

pub use error::{ErrorCode, WireError};
pub use file_id::{FileId, FileIdError};
pub use frame::{FrameError, FrameReader, FrameWriter};
pub use message::*;
pub use repl::{AsyncItem, FileSummary, LogRef, ReplOp, ReplRecord, ReplState};
