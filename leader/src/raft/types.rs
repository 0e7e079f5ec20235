//! The openraft type configuration.

// `declare_raft_types!` names `Cursor` unqualified for the default
// snapshot data type.
use std::io::Cursor;

use crate::map::{Command, Response};

openraft::declare_raft_types!(
    /// Chorus leaders' Raft types: commands on the cluster map, node ids
    /// `u64`, nodes with their address, in-memory snapshot data.
    pub TypeConfig:
        D = Command,
        R = Response,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;

/// Keeps `Cursor` in use for the macro above even if its expansion changes.
pub type SnapshotData = Cursor<Vec<u8>>;
