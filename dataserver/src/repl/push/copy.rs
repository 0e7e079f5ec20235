//! A new member's full copy (WAIT_SYNC → SYNCING → ACTIVE in an async
//! group): every file of one ACTIVE member (the lowest id), taken with
//! [`Engine::apply_pushed`] so what this server already has is skipped.
//!
//! `ListFiles` pages the member's files; each file is fetched with
//! `ReplFetch` (whole, up to 8 MiB) or, above that, streamed in ranged
//! `Download`s that must all see the same file version (and the install
//! checks the result against the stated size and crc32). [`PARALLEL`]
//! files are in flight. A file that keeps failing is left to the pushers
//! (every source pushes its own files to a new ACTIVE member from the
//! start of its log).

use std::time::Duration;

use bytes::Bytes;
use client::peer::PeerBody;
use futures::stream::{self, StreamExt};
use proto::{FileId, FileSummary, ReplOp, ReplRecord, ReplState, Reply, Request};
use tracing::{info, warn};

use crate::engine::{Body, Engine, EngineError};
use crate::repl::payload::INLINE_MAX;
use crate::repl::peers::PeerPool;
use crate::repl::pull::BytesBody;

/// Files copied at once.
pub const PARALLEL: usize = 16;
/// Files listed per page.
const PAGE: u32 = 512;
/// Bytes per ranged download of a big file.
const PIECE: u64 = 4 << 20;
/// Attempts per file before leaving it to the pushers.
const ATTEMPTS: u32 = 3;

/// Why the copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("talking to {addr}: {source}")]
    Peer {
        addr: String,
        source: client::ClientError,
    },
    #[error("{addr} refused {what}: {err}")]
    Refused {
        addr: String,
        what: String,
        err: proto::WireError,
    },
    #[error("unexpected answer from {addr} to {what}")]
    Unexpected { addr: String, what: &'static str },
    #[error("taking {file}: {source}")]
    Apply { file: String, source: EngineError },
}

/// Copies from one member.
pub struct Copier<'a> {
    engine: &'a Engine,
    addr: &'a str,
    member: PeerPool,
}

/// What a copy did.
#[derive(Debug, Default, Clone, Copy)]
pub struct CopyStats {
    pub listed: u64,
    pub copied: u64,
    /// Files that kept failing (left to the pushers).
    pub left: u64,
}

impl<'a> Copier<'a> {
    pub fn new(engine: &'a Engine, addr: &'a str) -> Self {
        Copier {
            engine,
            addr,
            member: PeerPool::new(
                addr,
                Duration::from_secs(2),
                Duration::from_secs(60),
                usize::MAX,
            ),
        }
    }

    /// One exchange; the connection goes back to the pool after a clean one.
    async fn call(
        &self,
        op: Request,
        data: Option<&mut Vec<u8>>,
    ) -> Result<Result<Reply, proto::WireError>, CopyError> {
        self.member
            .call(op, 0, PeerBody::None, data)
            .await
            .map_err(|source| CopyError::Peer {
                addr: self.addr.to_string(),
                source,
            })
    }

    fn refused(&self, what: impl Into<String>, err: proto::WireError) -> CopyError {
        CopyError::Refused {
            addr: self.addr.to_string(),
            what: what.into(),
            err,
        }
    }

    fn unexpected(&self, what: &'static str) -> CopyError {
        CopyError::Unexpected {
            addr: self.addr.to_string(),
            what,
        }
    }

    /// Copy every file the member lists.
    pub async fn run(&self) -> Result<CopyStats, CopyError> {
        let mut stats = CopyStats::default();
        let mut after = String::new();
        loop {
            let page = self
                .call(
                    Request::ListFiles {
                        after: after.clone(),
                        limit: PAGE,
                    },
                    None,
                )
                .await?;
            let (files, done) = match page {
                Ok(Reply::Files { files, done, .. }) => (files, done),
                Ok(_) => return Err(self.unexpected("ListFiles")),
                Err(e) => return Err(self.refused("ListFiles", e)),
            };
            stats.listed += files.len() as u64;
            if let Some(last) = files.last() {
                after = last.file_id.clone();
            }
            let work: Vec<_> = files.iter().map(|f| self.one(f)).collect();
            let mut results = stream::iter(work).buffer_unordered(PARALLEL);
            while let Some(r) = results.next().await {
                match r {
                    Ok(true) => stats.copied += 1,
                    Ok(false) => {}
                    Err(_) => stats.left += 1,
                }
            }
            if done || after.is_empty() {
                info!(listed = stats.listed, copied = stats.copied, left = stats.left, from = %self.addr, "full copy finished");
                return Ok(stats);
            }
        }
    }

    /// Copy one file, retrying; true if something was taken.
    async fn one(&self, f: &FileSummary) -> Result<bool, CopyError> {
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            match self.copy_file(f).await {
                Ok(taken) => return Ok(taken),
                Err(e) => {
                    warn!(file = %f.file_id, attempt, error = %e, "copying a file failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| self.unexpected("a file copy")))
    }

    async fn copy_file(&self, f: &FileSummary) -> Result<bool, CopyError> {
        let Ok(id) = FileId::parse(&f.file_id) else {
            return Err(self.unexpected("ListFiles (a malformed file id)"));
        };
        if self
            .engine
            .file_version(&id)
            .is_some_and(|v| v >= f.version)
        {
            return Ok(false);
        }
        if f.size <= INLINE_MAX {
            let mut data = Vec::new();
            let r = self
                .call(
                    Request::ReplFetch {
                        file_id: f.file_id.clone(),
                    },
                    Some(&mut data),
                )
                .await?;
            let (file_version, state) = match r {
                Ok(Reply::ReplFile { state: None, .. }) => return Ok(false),
                Ok(Reply::ReplFile {
                    file_version,
                    state: Some(st),
                }) => (file_version, st),
                Ok(_) => return Err(self.unexpected("ReplFetch")),
                Err(e) => return Err(self.refused(format!("ReplFetch {}", f.file_id), e)),
            };
            let rec = install(&f.file_id, file_version, state);
            return self
                .apply(&rec, &mut BytesBody(Some(Bytes::from(data))))
                .await;
        }
        // Big: the state first, then the content in ranges of that version.
        let stat = match self
            .call(
                Request::Stat {
                    file_id: f.file_id.clone(),
                },
                None,
            )
            .await?
        {
            Ok(Reply::Stat(s)) => s,
            Err(e) if e.code == proto::ErrorCode::NotFound => return Ok(false),
            Ok(_) => return Err(self.unexpected("Stat")),
            Err(e) => return Err(self.refused(format!("Stat {}", f.file_id), e)),
        };
        let meta = match self
            .call(
                Request::GetMeta {
                    file_id: f.file_id.clone(),
                },
                None,
            )
            .await?
        {
            Ok(Reply::Meta { meta, version }) if version == stat.version => meta,
            Ok(Reply::Meta { .. }) => return Err(self.unexpected("GetMeta (the file changed)")),
            Err(e) if e.code == proto::ErrorCode::NotFound => return Ok(false),
            Ok(_) => return Err(self.unexpected("GetMeta")),
            Err(e) => return Err(self.refused(format!("GetMeta {}", f.file_id), e)),
        };
        let state = ReplState {
            size: stat.size,
            crc32: stat.crc32,
            create_time_us: stat.create_time_us,
            modify_time_us: stat.modify_time_us,
            appender: stat.appender,
            meta,
        };
        let rec = install(&f.file_id, stat.version, state);
        let mut body = RangedBody {
            copier: self,
            file_id: f.file_id.clone(),
            version: stat.version,
            at: 0,
            size: stat.size,
        };
        self.apply(&rec, &mut body).await
    }

    async fn apply(&self, rec: &ReplRecord, body: &mut impl Body) -> Result<bool, CopyError> {
        self.engine
            .apply_pushed(rec, body)
            .await
            .map(|o| o == crate::engine::PushOutcome::Taken)
            .map_err(|source| CopyError::Apply {
                file: rec.file_id.clone(),
                source,
            })
    }
}

fn install(file_id: &str, file_version: u64, state: ReplState) -> ReplRecord {
    ReplRecord {
        version: file_version,
        file_id: file_id.to_string(),
        op: ReplOp::Install,
        prev_version: 0,
        file_version,
        body_len: state.size,
        state: Some(state),
        client_id: 0,
        seq: 0,
    }
}

/// A big file's content, downloaded [`PIECE`] bytes at a time; every
/// piece must come from the same file version.
struct RangedBody<'c, 'a> {
    copier: &'c Copier<'a>,
    file_id: String,
    version: u64,
    at: u64,
    size: u64,
}

impl Body for RangedBody<'_, '_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, EngineError> {
        if self.at >= self.size {
            return Ok(None);
        }
        let want = PIECE.min(self.size - self.at);
        let mut data = Vec::with_capacity(want as usize);
        let r = self
            .copier
            .call(
                Request::Download {
                    file_id: self.file_id.clone(),
                    offset: self.at,
                    length: Some(want),
                },
                Some(&mut data),
            )
            .await
            .map_err(|e| EngineError::BadBody(e.to_string()))?;
        match r {
            Ok(Reply::Download { stat, .. }) if stat.version == self.version => {}
            Ok(Reply::Download { stat, .. }) => {
                return Err(EngineError::BadBody(format!(
                    "{} changed while being copied (version {} → {})",
                    self.file_id, self.version, stat.version
                )))
            }
            Ok(_) => return Err(EngineError::BadBody("unexpected answer to Download".into())),
            Err(e) => return Err(EngineError::BadBody(format!("download refused: {e}"))),
        }
        if data.len() as u64 != want {
            return Err(EngineError::BadBody(format!(
                "{}: asked {want} bytes at {}, got {}",
                self.file_id,
                self.at,
                data.len()
            )));
        }
        self.at += want;
        Ok(Some(Bytes::from(data)))
    }
}
