//! The durable state machine: the cluster map in a redb database
//! (`state.redb`).
//!
//! Table `sm`: `state` → postcard [`SmState`] (map, last applied log id,
//! membership), rewritten and committed (fsync) after every applied batch, so
//! `applied_state()` never claims more than the disk holds; `snapshot` →
//! postcard [`StoredSnapshot`], the last snapshot built or installed.
//! Installing a snapshot writes both keys in one transaction: a crash leaves
//! either the old state or the new one, never half of it.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use proto::cluster::ClusterMap;
use redb::{Database, Durability, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use super::StoreError;
use crate::map::{self, Applied, Response};

const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("sm");
const KEY_STATE: &str = "state";
const KEY_SNAPSHOT: &str = "snapshot";

/// Everything the state machine holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SmState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub map: ClusterMap,
}

/// A snapshot as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    /// postcard-encoded [`SmState`].
    pub data: Vec<u8>,
}

/// Where applied maps are published.
#[derive(Clone)]
pub struct MapPublisher {
    /// The latest applied map.
    pub latest: watch::Sender<Arc<ClusterMap>>,
    /// Every applied map, in order (subscribers that lag fall back to
    /// `latest`).
    pub updates: broadcast::Sender<Arc<ClusterMap>>,
}

impl MapPublisher {
    pub fn new(initial: ClusterMap) -> Self {
        let (latest, _) = watch::channel(Arc::new(initial));
        let (updates, _) = broadcast::channel(1024);
        MapPublisher { latest, updates }
    }

    fn publish(&self, map: &ClusterMap) {
        if self.latest.borrow().version == map.version && **self.latest.borrow() == *map {
            return;
        }
        let m = Arc::new(map.clone());
        self.latest.send_replace(m.clone());
        // No receivers is fine.
        let _ = self.updates.send(m);
    }
}

/// The state machine store.
pub struct StateMachineStore {
    db: Arc<Database>,
    state: SmState,
    publisher: MapPublisher,
    snapshot_seq: Arc<AtomicU64>,
}

fn write_keys(db: &Database, keys: &[(&str, &[u8])]) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(redb::Error::from)?;
    txn.set_durability(Durability::Immediate);
    {
        let mut t = txn.open_table(SM).map_err(redb::Error::from)?;
        for (k, v) in keys {
            t.insert(*k, *v).map_err(redb::Error::from)?;
        }
    }
    txn.commit().map_err(redb::Error::from)?;
    Ok(())
}

fn read_key<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read().map_err(redb::Error::from)?;
    let t = txn.open_table(SM).map_err(redb::Error::from)?;
    match t.get(key).map_err(redb::Error::from)? {
        Some(v) => Ok(Some(postcard::from_bytes(v.value())?)),
        None => Ok(None),
    }
}

async fn blocking<T, F>(db: &Arc<Database>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
{
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
}

impl StateMachineStore {
    /// Open (or create) the state database at `path` and load its state.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = super::open_database(path, |txn| {
            txn.open_table(SM).map_err(redb::Error::from)?;
            Ok(())
        })?;
        let state: SmState = read_key(&db, KEY_STATE)?.unwrap_or_default();
        let publisher = MapPublisher::new(state.map.clone());
        Ok(StateMachineStore {
            db: Arc::new(db),
            state,
            publisher,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Where this store publishes applied maps.
    pub fn publisher(&self) -> MapPublisher {
        self.publisher.clone()
    }

    async fn persist_state(&self) -> Result<(), StoreError> {
        let bytes = postcard::to_allocvec(&self.state)?;
        blocking(&self.db, move |db| write_keys(db, &[(KEY_STATE, &bytes)])).await
    }
}

/// Builds snapshots from a copy of the state taken when it was asked for.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    state: SmState,
    seq: Arc<AtomicU64>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let data = postcard::to_allocvec(&self.state)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &self.state.last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let bytes = postcard::to_allocvec(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        blocking(&self.db, move |db| {
            write_keys(db, &[(KEY_SNAPSHOT, &bytes)])
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.state.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Ok(Applied::Nothing),
                EntryPayload::Normal(cmd) => map::apply(&mut self.state.map, &cmd),
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(Applied::Nothing)
                }
            };
            if let Err(e) = &outcome {
                tracing::debug!(log = %entry.log_id, error = %e, "command refused");
            }
            replies.push(Response {
                map_version: self.state.map.version,
                outcome,
            });
        }
        self.persist_state()
            .await
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        self.publisher.publish(&self.state.map);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            state: self.state.clone(),
            seq: self.snapshot_seq.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let mut state: SmState = postcard::from_bytes(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let snap_bytes = postcard::to_allocvec(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let state_bytes = postcard::to_allocvec(&state)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        blocking(&self.db, move |db| {
            write_keys(
                db,
                &[(KEY_SNAPSHOT, &snap_bytes), (KEY_STATE, &state_bytes)],
            )
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.state = state;
        tracing::info!(snapshot = %meta.snapshot_id, map_version = self.state.map.version, "installed snapshot");
        self.publisher.publish(&self.state.map);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored: Option<StoredSnapshot> = blocking(&self.db, |db| read_key(db, KEY_SNAPSHOT))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
