//! The durable Raft log: a redb database (`raft-log.redb`).
//!
//! Tables: `log` (index → postcard `Entry`) and `meta` (`vote`,
//! `last_purged` → postcard). Every call is one write transaction committed
//! with `Durability::Immediate` (fsync) before it returns, and redb runs write
//! transactions one after another, so the vote and the entries reach the disk
//! in the order openraft issued them; `append` calls its `LogFlushed`
//! callback only after the commit.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableTable, TableDefinition};

use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use super::StoreError;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged";

/// The Raft log and vote. Clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Open (or create) the log database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = super::open_database(path, |txn| {
            txn.open_table(LOG).map_err(redb::Error::from)?;
            txn.open_table(META).map_err(redb::Error::from)?;
            Ok(())
        })?;
        Ok(LogStore { db: Arc::new(db) })
    }

    /// Run a blocking database job off the async workers.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))?
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        db: &Database,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = db.begin_read().map_err(redb::Error::from)?;
        let t = txn.open_table(META).map_err(redb::Error::from)?;
        match t.get(key).map_err(redb::Error::from)? {
            Some(v) => Ok(Some(postcard::from_bytes(v.value())?)),
            None => Ok(None),
        }
    }

    fn last_entry_id(db: &Database) -> Result<Option<LogId>, StoreError> {
        let txn = db.begin_read().map_err(redb::Error::from)?;
        let t = txn.open_table(LOG).map_err(redb::Error::from)?;
        let last = match t.last().map_err(redb::Error::from)? {
            Some((_, v)) => {
                let e: Entry = postcard::from_bytes(v.value())?;
                Some(*e.get_log_id())
            }
            None => None,
        };
        Ok(last)
    }

    /// True when neither a vote nor a log entry was ever stored.
    pub async fn is_fresh(&self) -> Result<bool, StoreError> {
        self.run(|db| {
            let vote: Option<Vote> = Self::read_meta(db, KEY_VOTE)?;
            let purged: Option<LogId> = Self::read_meta(db, KEY_PURGED)?;
            Ok(vote.is_none() && purged.is_none() && Self::last_entry_id(db)?.is_none())
        })
        .await
    }
}

fn range_bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds = range_bounds(&range);
        self.run(move |db| {
            let txn = db.begin_read().map_err(redb::Error::from)?;
            let t = txn.open_table(LOG).map_err(redb::Error::from)?;
            let mut out = Vec::new();
            for item in t.range(bounds).map_err(redb::Error::from)? {
                let (_, v) = item.map_err(redb::Error::from)?;
                out.push(postcard::from_bytes::<Entry>(v.value())?);
            }
            Ok(out)
        })
        .await
        .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.run(|db| {
            let last_purged: Option<LogId> = Self::read_meta(db, KEY_PURGED)?;
            let last = Self::last_entry_id(db)?.or(last_purged);
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        })
        .await
        .map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = postcard::to_allocvec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.run(move |db| {
            let mut txn = db.begin_write().map_err(redb::Error::from)?;
            txn.set_durability(Durability::Immediate);
            {
                let mut t = txn.open_table(META).map_err(redb::Error::from)?;
                t.insert(KEY_VOTE, bytes.as_slice())
                    .map_err(redb::Error::from)?;
            }
            txn.commit().map_err(redb::Error::from)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.run(|db| Self::read_meta(db, KEY_VOTE))
            .await
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            let bytes =
                postcard::to_allocvec(&e).map_err(|err| StorageIOError::write_logs(&err))?;
            encoded.push((e.get_log_id().index, bytes));
        }
        let res = self
            .run(move |db| {
                let mut txn = db.begin_write().map_err(redb::Error::from)?;
                txn.set_durability(Durability::Immediate);
                {
                    let mut t = txn.open_table(LOG).map_err(redb::Error::from)?;
                    for (index, bytes) in &encoded {
                        t.insert(*index, bytes.as_slice())
                            .map_err(redb::Error::from)?;
                    }
                }
                txn.commit().map_err(redb::Error::from)?;
                Ok(())
            })
            .await;
        match res {
            Ok(()) => {
                // Only now are the entries on disk.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        self.run(move |db| {
            let mut txn = db.begin_write().map_err(redb::Error::from)?;
            txn.set_durability(Durability::Immediate);
            {
                let mut t = txn.open_table(LOG).map_err(redb::Error::from)?;
                t.retain_in(from.., |_, _| false)
                    .map_err(redb::Error::from)?;
            }
            txn.commit().map_err(redb::Error::from)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = postcard::to_allocvec(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        let upto = log_id.index;
        self.run(move |db| {
            let mut txn = db.begin_write().map_err(redb::Error::from)?;
            txn.set_durability(Durability::Immediate);
            {
                let mut m = txn.open_table(META).map_err(redb::Error::from)?;
                m.insert(KEY_PURGED, bytes.as_slice())
                    .map_err(redb::Error::from)?;
                let mut t = txn.open_table(LOG).map_err(redb::Error::from)?;
                t.retain_in(..=upto, |_, _| false)
                    .map_err(redb::Error::from)?;
            }
            txn.commit().map_err(redb::Error::from)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
