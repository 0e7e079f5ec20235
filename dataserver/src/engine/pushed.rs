//! The engine's side of async (FastDFS-style) replication.
//!
//! * Every member of an async group takes uploads; a file is only ever
//!   changed at its source server ([`proto::FileId::source_server`]), so a
//!   file's versions all come from one numbering and compare across
//!   members.
//! * A pushed change ([`Engine::apply_pushed`], origin
//!   [`Origin::Pushed`]) is an `Install` of the file's state and content or
//!   a `Delete`. Under the file's lane it is taken only when it is news:
//!   an install when the file is missing here or older than
//!   `rec.file_version`, a delete when the file is here at a version
//!   `<= rec.file_version`. It takes this server's next data version as a
//!   lower-case record and keeps the source's file version; otherwise
//!   nothing changes and no version is used.
//! * Local changes are upper-case records; only those are pushed
//!   ([`BinlogRecord::is_local`]), which is what keeps changes from looping.

use proto::{AsyncItem, FileId, ReplOp, ReplRecord, ReplState};

use super::binlog::LogPos;
use super::replica::{repl_state, Origin};
use super::{BinlogRecord, Body, Content, Engine, EngineError};

/// What [`Engine::apply_pushed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Taken at this server's next data version.
    Taken,
    /// Nothing to do: this server has that version or a newer one (or, for
    /// a delete, not the file).
    Unchanged,
}

/// A file's current state and a handle on its content, taken under its
/// lane (the content of a small file stays reserved while the handle
/// lives; a large file's may change under a reader, which the receiver's
/// crc32 check catches).
pub struct Snapshot {
    pub version: u64,
    pub state: ReplState,
    pub content: Content,
}

/// A file id named by a peer's record.
pub(crate) fn parse_id(s: &str) -> Result<FileId, EngineError> {
    FileId::parse(s).map_err(|e| EngineError::InvalidFileId {
        id: s.to_string(),
        why: e.to_string(),
    })
}

impl Engine {
    /// The file's version here, if it exists.
    pub fn file_version(&self, id: &FileId) -> Option<u64> {
        self.index.read().get(id).map(|e| e.version)
    }

    /// Whether this server lacks the offered change: an install of a file
    /// missing here or older than offered; a delete of a file here at the
    /// offered version or older. A malformed or foreign id is never wanted.
    pub fn wants(&self, item: &AsyncItem) -> bool {
        let Ok(id) = FileId::parse(&item.file_id) else {
            return false;
        };
        if self.check_id(&id).is_err() {
            return false;
        }
        let have = self.file_version(&id);
        if item.delete {
            have.is_some_and(|h| h <= item.file_version)
        } else {
            have.is_none_or(|h| h < item.file_version)
        }
    }

    /// Take a change pushed by the file's source (`Install` with the whole
    /// content in `body`, or `Delete`), by the rules in the module docs.
    pub async fn apply_pushed(
        &self,
        rec: &ReplRecord,
        body: &mut impl Body,
    ) -> Result<PushOutcome, EngineError> {
        let id = parse_id(&rec.file_id)?;
        self.check_id(&id)?;
        let took = std::sync::atomic::AtomicU64::new(0);
        let origin = Origin::Pushed(rec, &took);
        let _lane = self.lanes.lock(&id).await;
        let have = self.file_version(&id);
        match rec.op {
            ReplOp::Delete => {
                if have.is_none_or(|h| h > rec.file_version) {
                    return Ok(PushOutcome::Unchanged);
                }
                let _g = self.gate.read().await;
                self.delete_in_lane(&id, None, origin).await?;
                Ok(PushOutcome::Taken)
            }
            ReplOp::Install => {
                let st = rec.state.as_ref().ok_or_else(|| {
                    EngineError::BadRequest(format!("pushed install of {id} without a state"))
                })?;
                if st.size != rec.body_len {
                    return Err(EngineError::BadRequest(format!(
                        "pushed install of {id}: {} bytes follow, the state says {}",
                        rec.body_len, st.size
                    )));
                }
                if have.is_some_and(|h| h >= rec.file_version) {
                    return Ok(PushOutcome::Unchanged);
                }
                self.upload_as_in_lane(
                    &id,
                    rec.body_len,
                    st.meta.clone(),
                    st.appender,
                    body,
                    origin,
                )
                .await?;
                Ok(PushOutcome::Taken)
            }
            other => Err(EngineError::BadRequest(format!(
                "a pushed change is an install or a delete, not {}",
                other.name()
            ))),
        }
    }

    /// The file's current version, state and content handle (`None`: no
    /// such file).
    pub async fn snapshot_file(&self, id: &FileId) -> Result<Option<Snapshot>, EngineError> {
        self.check_id(id)?;
        let _lane = self.lanes.lock(id).await;
        let Some(entry) = self.index.read().get(id).cloned() else {
            return Ok(None);
        };
        let content = self.content_of(id, &entry, 0, entry.size)?;
        Ok(Some(Snapshot {
            version: entry.version,
            state: repl_state(&entry),
            content,
        }))
    }

    /// Rises whenever a change is published (watch for new local commits).
    pub fn published(&self) -> tokio::sync::watch::Receiver<u64> {
        self.binlog.published()
    }

    /// Every version up to this one is durable and visible in the index.
    pub fn settled_version(&self) -> u64 {
        self.binlog.safe_version().min(self.data_version())
    }

    /// Binlog records above `after` up to [`Self::settled_version`], at most
    /// `max`, reading on from `hint` when it is where the last call for
    /// `after` stopped. Returns where this call stopped.
    pub fn records_after(
        &self,
        after: u64,
        max: usize,
        hint: Option<LogPos>,
    ) -> Result<(Vec<BinlogRecord>, Option<LogPos>), EngineError> {
        let settled = self.settled_version();
        if after >= settled {
            return Ok((Vec::new(), None));
        }
        self.binlog
            .records_after(after, settled, max, hint)
            .map_err(|e| EngineError::io("reading the binlog", e))
    }
}
