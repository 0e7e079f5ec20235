//! Chorus client SDK.
//!
//! An async (tokio) client for Chorus: upload, download (whole, ranges,
//! streamed), append, modify, truncate, delete, metadata, stat.
//!
//! [`Client::connect`] takes the leaders' addresses and routes every
//! operation by the cluster map, which the leaders push on every change
//! (sync groups: to the group's master; async groups: uploads to any
//! ACTIVE member, changes to the file's source server, reads by the
//! [`ReadRule`]); it rides through master failovers by waiting for
//! the next map and resending (see [`Client::connect`] for which operations
//! are resent). [`Client::connect_direct`] talks to one dataserver.
//! Connections are pooled per server; bodies and downloads stream in
//! [`STREAM_CHUNK`](proto::frame::STREAM_CHUNK) pieces, so multi-GiB files
//! never sit in memory unless you ask for a `Vec`.
//!
//! Every request carries this client's random id and a per-operation
//! sequence number (reused when the operation is retried), so the servers
//! can apply a retried operation once.
//!
//! ```no_run
//! use client::{Client, ClientConfig, MetaMode, MetaEntry, UploadOptions};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), client::ClientError> {
//! let cfg = ClientConfig::default().request_timeout(Duration::from_secs(10));
//! let client = Client::connect_direct_with("127.0.0.1:23000", cfg).await?;
//!
//! let stat = client.upload(b"hello, world", UploadOptions::new().ext("txt")).await?;
//! let id = stat.file_id;
//! assert_eq!(client.download(&id).await?, b"hello, world");
//! assert_eq!(client.download_range(&id, 7, 5).await?, b"world");
//!
//! // Change it only if nobody else did.
//! client.modify(&id, 0, b"HELLO", Some(stat.version)).await?;
//! client.set_meta(&id, vec![MetaEntry::new("lang", "en")], MetaMode::Merge, None).await?;
//!
//! client.delete(&id, None).await?;
//! assert!(!client.exists(&id).await?);
//! # Ok(()) }
//! ```
//!
//! Errors are [`ClientError`]s; server refusals carry a stable
//! [`ErrorCode`] with helpers such as [`ClientError::is_not_found`].

mod client;
mod cluster;
mod config;
mod conn;
mod error;
pub mod leader;
mod listing;
mod options;
pub mod peer;
mod pool;
mod route;

pub use client::{Client, ClientStats};
pub use cluster::{ReadRule, UploadGroupRule};
pub use config::ClientConfig;
pub use error::{ClientError, Result};
pub use listing::LIST_PAGE;
pub use options::{ByteRange, FileMeta, PingInfo, UploadOptions};
pub use proto::cluster::ClusterMap;
pub use proto::{ErrorCode, FileId, FileStat, FileSummary, MetaEntry, MetaMode};
