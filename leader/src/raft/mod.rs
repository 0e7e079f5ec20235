//! Everything that touches openraft lives in this module, so an upgrade stays
//! local. The rest of the crate sees [`RaftHandle`]: write a command, check
//! leadership, read a [`RaftView`], serve a peer's RPC.
//!
//! On-disk layout of a leader's data dir:
//!
//! * `raft-log.redb`: the Raft log and vote ([`log_store`]).
//! * `state.redb`: the cluster map, last applied log id, membership, and the
//!   last snapshot ([`state_machine`]).

pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use proto::cluster::{LeaderRedirect, RaftRpcKind};

pub use state_machine::MapPublisher;
use types::{NodeId, Raft};

use crate::map::{Command, Response};

/// Storage failures below openraft.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(Box<redb::Error>),
    #[error("encoding: {0}")]
    Codec(#[from] postcard::Error),
    #[error("storage task: {0}")]
    Join(String),
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Db(Box::new(e))
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Db(Box::new(redb::Error::Io(e)))
    }
}

/// Open the redb database at `path`, creating it atomically when it does
/// not exist: it is built as `<path>.new` with `init` run in one committed
/// transaction, fsynced, renamed into place and the directory fsynced. A
/// process killed while creating leaves only a `.new` file behind, which the
/// next start discards, never a half-written database.
pub(crate) fn open_database(
    path: &Path,
    init: impl Fn(&redb::WriteTransaction) -> Result<(), StoreError>,
) -> Result<redb::Database, StoreError> {
    if !path.exists() {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".new");
        let tmp = std::path::PathBuf::from(tmp);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        {
            let db = redb::Database::create(&tmp).map_err(redb::Error::from)?;
            let txn = db.begin_write().map_err(redb::Error::from)?;
            init(&txn)?;
            txn.commit().map_err(redb::Error::from)?;
        }
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    let db = redb::Database::create(path).map_err(redb::Error::from)?;
    let txn = db.begin_write().map_err(redb::Error::from)?;
    init(&txn)?;
    txn.commit().map_err(redb::Error::from)?;
    Ok(db)
}

/// Starting or running the Raft node failed.
#[derive(Debug, thiserror::Error)]
pub enum RaftStartError {
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error("raft configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// A write or a linearizable check did not go through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("not the Raft leader")]
    NotLeader(Option<LeaderRedirect>),
    #[error("raft: {0}")]
    Raft(String),
}

/// Timing knobs of the Raft group.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Build a snapshot after this many applied entries.
    pub snapshot_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(400),
            election_max: Duration::from_millis(800),
            snapshot_logs: 1000,
        }
    }
}

/// One leader's Raft role, as the rest of the crate needs it.
#[derive(Debug, Clone)]
pub struct RaftView {
    pub role: &'static str,
    pub is_leader: bool,
    pub leader: Option<LeaderRedirect>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// Every member: id, address, matched index (leader only).
    pub members: Vec<(NodeId, String, Option<u64>)>,
}

/// The running Raft node.
#[derive(Clone)]
pub struct RaftHandle {
    id: NodeId,
    raft: Raft,
}

impl RaftHandle {
    /// Open the stores in `dir`, start Raft, and initialise the group when
    /// this is the lowest-id member and its store is fresh (idempotent on
    /// restart: a store with any vote or entry is never initialised again).
    pub async fn start(
        id: NodeId,
        peers: &BTreeMap<NodeId, String>,
        dir: &Path,
        tuning: &RaftTuning,
    ) -> Result<(RaftHandle, MapPublisher), RaftStartError> {
        let log = log_store::LogStore::open(&dir.join("raft-log.redb"))?;
        let sm = state_machine::StateMachineStore::open(&dir.join("state.redb"))?;
        let publisher = sm.publisher();
        let fresh = log.is_fresh().await?;
        let config = Config {
            cluster_name: "chorus".into(),
            heartbeat_interval: tuning.heartbeat.as_millis() as u64,
            election_timeout_min: tuning.election_min.as_millis() as u64,
            election_timeout_max: tuning.election_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_logs),
            max_in_snapshot_log_to_keep: tuning.snapshot_logs.min(1000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftStartError::Config(e.to_string()))?;
        let raft = Raft::new(id, Arc::new(config), network::Network, log, sm)
            .await
            .map_err(|e| RaftStartError::Raft(e.to_string()))?;
        let lowest = peers.keys().next().copied();
        if fresh && lowest == Some(id) {
            let members: BTreeMap<NodeId, BasicNode> = peers
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(id, "initialised the Raft group"),
                Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                    tracing::info!(id, "already initialised: {e}")
                }
                Err(e) => return Err(RaftStartError::Raft(e.to_string())),
            }
        }
        Ok((RaftHandle { id, raft }, publisher))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    fn redirect_to(&self, leader: Option<NodeId>) -> Option<LeaderRedirect> {
        let leader = leader?;
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| LeaderRedirect {
                id: leader,
                addr: n.addr.clone(),
            })
    }

    /// Propose a command; answers once it is committed and applied here.
    pub async fn write(&self, cmd: Command) -> Result<Response, WriteError> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let redirect = match (f.leader_id, f.leader_node) {
                    (Some(id), Some(n)) => Some(LeaderRedirect { id, addr: n.addr }),
                    (id, _) => self.redirect_to(id),
                };
                Err(WriteError::NotLeader(redirect))
            }
            Err(e) => Err(WriteError::Raft(e.to_string())),
        }
    }

    /// Confirm leadership with a quorum and wait until everything committed
    /// before now is applied here.
    pub async fn ensure_linearizable(&self) -> Result<(), WriteError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(WriteError::NotLeader(match (f.leader_id, f.leader_node) {
                    (Some(id), Some(n)) => Some(LeaderRedirect { id, addr: n.addr }),
                    (id, _) => self.redirect_to(id),
                }))
            }
            Err(e) => Err(WriteError::Raft(e.to_string())),
        }
    }

    /// This leader's current view (from openraft's metrics, no I/O).
    pub fn view(&self) -> RaftView {
        let m = self.raft.metrics();
        let m = m.borrow();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let is_leader = m.state == ServerState::Leader && m.current_leader == Some(self.id);
        let leader = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| LeaderRedirect {
                    id: l,
                    addr: n.addr.clone(),
                })
        });
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let members = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| voters.contains(id))
            .map(|(id, n)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index);
                (*id, n.addr.clone(), matched)
            })
            .collect();
        RaftView {
            role,
            is_leader,
            leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            members,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.view().is_leader
    }

    /// Resolves when this node is no longer the Raft leader (or Raft stopped).
    pub async fn leadership_lost(&self) {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if !(m.state == ServerState::Leader && m.current_leader == Some(self.id)) {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Serve a Raft RPC from a peer leader (postcard in, postcard out).
    pub async fn serve_rpc(
        &self,
        kind: RaftRpcKind,
        payload: &[u8],
    ) -> Result<Vec<u8>, network::RpcServeError> {
        network::serve_rpc(&self.raft, kind, payload).await
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

#[cfg(test)]
mod suite_tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::log_store::LogStore;
    use super::state_machine::StateMachineStore;
    use super::types::{StorageError, TypeConfig};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
            let log = LogStore::open(&dir.path().join("raft-log.redb"))
                .map_err(|e| openraft::StorageIOError::write(&e))?;
            let sm = StateMachineStore::open(&dir.path().join("state.redb"))
                .map_err(|e| openraft::StorageIOError::write(&e))?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's storage conformance suite against the redb stores.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
