//! The cluster map and the leader protocol.
//!
//! Leaders (`chorus-leader`) listen on one TCP port that carries
//! [`LeaderMessage`] frames, in the same frame format as the data plane
//! ([`crate::frame`]). Three kinds of traffic share it:
//!
//! * **Requests** ([`LeaderMessage::Request`]): a connection carries one
//!   request at a time and each gets exactly one [`LeaderMessage::Response`]
//!   with the same `id`, except [`LeaderRequest::Subscribe`] (below).
//! * **Subscriptions**: after `Subscribe` the connection is push-only. The
//!   leader sends a [`LeaderMessage::MapUpdate`] with the current map at once,
//!   then one for every change of the map, in version order, as soon as the
//!   Raft leader applied it (no polling). A subscriber may skip nothing it
//!   needs: every update carries the whole map. When the leader stops being the
//!   Raft leader it sends a `Response` with a [`LeaderErrorKind::NotLeader`]
//!   error (and a redirect when it knows the new leader) and closes; a closed
//!   connection means the same, and so do 3 s without a frame: the leader
//!   sends a [`LeaderMessage::Keepalive`] every second on an idle
//!   subscription. The subscriber then resubscribes to the
//!   current Raft leader (`leader::client::LeaderClient` does this itself).
//! * **Raft RPCs between leaders** ([`LeaderMessage::Raft`] /
//!   [`LeaderMessage::RaftReply`]): openraft's serde types encoded with
//!   postcard in the frame *payload*; the archive only names the RPC.
//!
//! Writes (join, heartbeat, failover, remove, progress) and linearizable map
//! reads are served only by the Raft leader. Other leaders answer them with a
//! [`LeaderError`] whose `kind` is `NotLeader` and whose `redirect` names the
//! Raft leader when known; non-linearizable `GetMap` and `Status` are served by
//! every leader from its own applied map.

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};

/// A dataserver's id, unique in the cluster (configured on the server).
pub type ServerId = u64;
/// A leader's id (its Raft node id).
pub type LeaderNodeId = u64;

/// A dataserver's status within its group (FastDFS / FastCFS names).
///
/// Only the Raft leader moves a server between statuses; dataservers report
/// progress with [`LeaderRequest::ReportProgress`].
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum ServerStatus {
    /// Known but not yet placed (reserved: a dataserver's own status before
    /// its join is answered).
    Init = 0,
    /// A new member of a non-empty group, waiting to copy the group's data.
    WaitSync = 1,
    /// A new member copying everything from a peer.
    Syncing = 2,
    /// Silent for longer than the server timeout.
    Offline = 3,
    /// Back after being offline, catching up from the binlog.
    Recovering = 4,
    /// Receives live writes while finishing catch-up.
    Online = 5,
    /// In the synchronous write set; may be master, may serve reads.
    Active = 6,
    /// Removed by an operator.
    Deleted = 7,
}

impl ServerStatus {
    /// Upper-case name, as FastDFS's monitor prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerStatus::Init => "INIT",
            ServerStatus::WaitSync => "WAIT_SYNC",
            ServerStatus::Syncing => "SYNCING",
            ServerStatus::Offline => "OFFLINE",
            ServerStatus::Recovering => "RECOVERING",
            ServerStatus::Online => "ONLINE",
            ServerStatus::Active => "ACTIVE",
            ServerStatus::Deleted => "DELETED",
        }
    }

    /// Whether the leader expects heartbeats from a server in this status
    /// (everything but OFFLINE and DELETED).
    pub fn is_alive(self) -> bool {
        !matches!(self, ServerStatus::Offline | ServerStatus::Deleted)
    }
}

impl std::fmt::Display for ServerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a group replicates writes.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
)]
#[rkyv(derive(Debug))]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum ReplicationMode {
    /// FastCFS: the master replicates every write to every ACTIVE slave
    /// before answering.
    #[default]
    Sync = 0,
    /// FastDFS: any member accepts writes, binlog push afterwards.
    Async = 1,
}

impl ReplicationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationMode::Sync => "sync",
            ReplicationMode::Async => "async",
        }
    }
}

impl std::str::FromStr for ReplicationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(ReplicationMode::Sync),
            "async" => Ok(ReplicationMode::Async),
            other => Err(format!(
                "unknown replication mode {other:?} (expected sync or async)"
            )),
        }
    }
}

impl std::fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One dataserver as the map records it.
///
/// `data_version` and the disk figures are those reported with the server's
/// last recorded change (join, status change, failover): heartbeats stay in
/// the Raft leader's memory, so live figures are in [`LeaderStatus::live`].
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
#[rkyv(derive(Debug))]
pub struct ServerInfo {
    pub id: ServerId,
    /// The address clients and peers reach it at (its advertised address).
    pub addr: String,
    pub group: String,
    pub status: ServerStatus,
    pub data_version: u64,
    pub disk_free: u64,
    pub disk_total: u64,
    /// When the status last changed, ms since the Unix epoch (leader clock).
    pub status_changed_ms: u64,
}

/// One group of mirrored dataservers.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
#[rkyv(derive(Debug))]
pub struct GroupInfo {
    pub name: String,
    pub mode: ReplicationMode,
    /// Member server ids (not DELETED ones), ascending.
    pub members: Vec<ServerId>,
    /// The server that applies every write, when one is appointed.
    pub master: Option<ServerId>,
    /// Raised at every master change; replication messages carry it.
    pub epoch: u64,
    /// How long a master lease granted in a heartbeat answer lasts, in ms.
    /// The leader promotes a new master only after the old one's expired.
    pub master_lease_ms: u32,
    /// The most recent epochs (at most [`EPOCH_HISTORY`]), ascending, each
    /// with the data version its master had when appointed: every record
    /// up to that version is the same on all servers that have it, so a
    /// server that last wrote in an older epoch and has more than the next
    /// epoch's start version holds writes nobody acknowledged, and must
    /// re-copy before it may serve.
    pub epoch_starts: Vec<EpochStart>,
}

/// How many [`EpochStart`]s a group keeps.
pub const EPOCH_HISTORY: usize = 64;

/// When an epoch began.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
)]
#[rkyv(derive(Debug))]
pub struct EpochStart {
    pub epoch: u64,
    /// The new master's data version when it was appointed (as the leader
    /// last heard it; never above the true figure).
    pub version: u64,
}

impl GroupInfo {
    /// The version up to which a server whose last written epoch is
    /// `last_epoch` is known to agree with the current master: `None` when
    /// it agrees with all of it (no master change since), `Some(0)` when
    /// the history no longer reaches back that far.
    pub fn divergence_point(&self, last_epoch: u64) -> Option<u64> {
        if last_epoch >= self.epoch {
            return None;
        }
        match self.epoch_starts.iter().find(|e| e.epoch > last_epoch) {
            Some(e) if e.epoch == last_epoch + 1 => Some(e.version),
            // The epoch right after the server's is no longer recorded
            // (or never was): assume nothing in common.
            _ => Some(0),
        }
    }
}

/// The whole cluster map: the leaders' Raft state machine.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
    Default,
)]
#[rkyv(derive(Debug))]
pub struct ClusterMap {
    /// Raised by every change.
    pub version: u64,
    /// When the last change was proposed, ms since the Unix epoch, by the
    /// Raft leader's clock.
    pub updated_ms: u64,
    /// Groups, ascending by name.
    pub groups: Vec<GroupInfo>,
    /// Servers (DELETED ones included), ascending by id.
    pub servers: Vec<ServerInfo>,
}

impl ClusterMap {
    pub fn group(&self, name: &str) -> Option<&GroupInfo> {
        self.groups
            .binary_search_by(|g| g.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.groups[i])
    }

    pub fn group_mut(&mut self, name: &str) -> Option<&mut GroupInfo> {
        match self.groups.binary_search_by(|g| g.name.as_str().cmp(name)) {
            Ok(i) => Some(&mut self.groups[i]),
            Err(_) => None,
        }
    }

    pub fn server(&self, id: ServerId) -> Option<&ServerInfo> {
        self.servers
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .map(|i| &self.servers[i])
    }

    pub fn server_mut(&mut self, id: ServerId) -> Option<&mut ServerInfo> {
        match self.servers.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => Some(&mut self.servers[i]),
            Err(_) => None,
        }
    }

    /// The master of a group, when it has one.
    pub fn master_of(&self, group: &str) -> Option<&ServerInfo> {
        self.group(group)
            .and_then(|g| g.master)
            .and_then(|id| self.server(id))
    }
}

/// A dataserver announcing itself (at every start).
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
#[rkyv(derive(Debug))]
pub struct JoinRequest {
    pub id: ServerId,
    /// Advertised address (may differ from the one the server binds).
    pub addr: String,
    pub group: String,
    /// The group's replication mode as configured on the server; must match
    /// the group's when the group exists.
    pub mode: ReplicationMode,
    pub data_version: u64,
    pub disk_free: u64,
    pub disk_total: u64,
}

/// Sent by every dataserver once a second.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
#[rkyv(derive(Debug))]
pub struct Heartbeat {
    pub id: ServerId,
    pub group: String,
    /// The status the server believes it has (informational).
    pub status: ServerStatus,
    pub data_version: u64,
    pub disk_free: u64,
    pub disk_total: u64,
    /// Async mode: how far (ms) this server's pushes to its peers are
    /// behind, the oldest unpushed change's age (0: all pushed; always 0
    /// in sync mode).
    pub sync_delay_ms: u64,
}

/// A leader request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum LeaderRequest {
    /// Join (or rejoin) a group. Raft leader only. Answer: [`LeaderReply::Joined`].
    Join(JoinRequest),
    /// Liveness and figures. Raft leader only. Answer: [`LeaderReply::HeartbeatAck`].
    Heartbeat(Heartbeat),
    /// Turn this connection into a push stream of [`LeaderMessage::MapUpdate`].
    /// Raft leader only.
    Subscribe,
    /// Read the map. `linearizable` reads are Raft leader only (they go
    /// through `ensure_linearizable`); others are served by any leader.
    /// Answer: [`LeaderReply::Map`].
    GetMap { linearizable: bool },
    /// Move a group's master (to `to`, or to the best ACTIVE member), raising
    /// the epoch. Waits for the old master's lease to run out. Raft leader
    /// only. Answer: [`LeaderReply::FailedOver`].
    Failover { group: String, to: Option<ServerId> },
    /// Mark a server DELETED. Raft leader only. Answer: [`LeaderReply::Removed`].
    RemoveServer { id: ServerId },
    /// A dataserver reports it reached `status` (SYNCING, ONLINE, ACTIVE) at
    /// `data_version`. Raft leader only. Answer: [`LeaderReply::Progress`].
    ReportProgress {
        id: ServerId,
        status: ServerStatus,
        data_version: u64,
    },
    /// This leader's view of the Raft group. Any leader.
    /// Answer: [`LeaderReply::Status`].
    Status,
    /// The master of `group` at `epoch` reports that `slave` missed a
    /// replication deadline; the leader marks it OFFLINE (if it still is
    /// ACTIVE or ONLINE) before answering, so the master may then complete
    /// writes without it. Raft leader only. Answer: [`LeaderReply::Progress`].
    SlaveFailed {
        group: String,
        master: ServerId,
        slave: ServerId,
        epoch: u64,
    },
    /// The master of `group` at `epoch` reports the data version its epoch
    /// starts after (every version up to it came from earlier masters): the
    /// leader records it exactly in the group's `epoch_starts`. The master
    /// accepts writes only after this is recorded. Raft leader only.
    /// Answer: [`LeaderReply::FailedOver`] (the group).
    EpochStarted {
        group: String,
        master: ServerId,
        epoch: u64,
        version: u64,
    },
    /// The master of `group` at `epoch` vouches that ONLINE `slave` has
    /// every version it assigned (up to `data_version`) and receives every
    /// new one: the leader makes it ACTIVE. Raft leader only.
    /// Answer: [`LeaderReply::Progress`].
    Activate {
        group: String,
        master: ServerId,
        slave: ServerId,
        epoch: u64,
        data_version: u64,
    },
}

/// The answer to a heartbeat.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HeartbeatAck {
    pub map_version: u64,
    /// The server's status in the map.
    pub status: ServerStatus,
    /// The group's epoch.
    pub epoch: u64,
    /// Set when the server is its group's master and holds the lease: the
    /// lease lasts this many ms from when the server *sent* the heartbeat.
    pub lease_ms: Option<u32>,
}

/// One leader of the Raft group as another sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LeaderPeer {
    pub id: LeaderNodeId,
    pub addr: String,
    /// Last log index known replicated to it (filled by the Raft leader).
    pub matched_index: Option<u64>,
}

/// Heartbeat figures held in the Raft leader's memory.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ServerLive {
    pub id: ServerId,
    pub ms_since_heartbeat: u64,
    pub data_version: u64,
    pub disk_free: u64,
    pub disk_total: u64,
    /// Async mode: the server's last reported sync delay (see
    /// [`Heartbeat::sync_delay_ms`]).
    pub sync_delay_ms: u64,
}

/// A leader's view, for `chorus status`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LeaderStatus {
    pub id: LeaderNodeId,
    pub addr: String,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub role: String,
    pub raft_leader: Option<LeaderRedirect>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub map_version: u64,
    pub peers: Vec<LeaderPeer>,
    /// Live heartbeat figures (only the Raft leader has them).
    pub live: Vec<ServerLive>,
}

/// A successful answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum LeaderReply {
    Joined {
        server: ServerInfo,
        map: ClusterMap,
    },
    HeartbeatAck(HeartbeatAck),
    Map(ClusterMap),
    FailedOver {
        group: GroupInfo,
        map_version: u64,
    },
    Removed {
        server: ServerInfo,
        map_version: u64,
    },
    Progress {
        server: ServerInfo,
        map_version: u64,
    },
    Status(LeaderStatus),
}

/// Where the Raft leader is.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LeaderRedirect {
    pub id: LeaderNodeId,
    pub addr: String,
}

/// A failed request: a wire error, plus the Raft leader's address when the
/// error is `NotLeader` and the leader is known.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[rkyv(derive(Debug))]
#[error("{error}")]
pub struct LeaderError {
    pub error: WireError,
    pub redirect: Option<LeaderRedirect>,
}

/// Convenience classification of [`LeaderError`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderErrorKind {
    NotLeader,
    Other(ErrorCode),
}

impl LeaderError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        LeaderError {
            error: WireError::new(code, message),
            redirect: None,
        }
    }

    pub fn not_leader(redirect: Option<LeaderRedirect>) -> Self {
        let message = match &redirect {
            Some(r) => format!("not the Raft leader; the leader is {} at {}", r.id, r.addr),
            None => "not the Raft leader; no leader is known yet".to_string(),
        };
        LeaderError {
            error: WireError::new(ErrorCode::NotLeader, message),
            redirect,
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.error.code
    }

    pub fn kind(&self) -> LeaderErrorKind {
        match self.error.code {
            ErrorCode::NotLeader => LeaderErrorKind::NotLeader,
            c => LeaderErrorKind::Other(c),
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LeaderRequestEnvelope {
    pub id: u64,
    pub op: LeaderRequest,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LeaderResponseEnvelope {
    pub id: u64,
    pub result: Result<LeaderReply, LeaderError>,
}

/// Which Raft RPC a [`LeaderMessage::Raft`] frame carries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum RaftRpcKind {
    AppendEntries = 0,
    Vote = 1,
    InstallSnapshot = 2,
}

/// Everything a leader connection carries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum LeaderMessage {
    Request(LeaderRequestEnvelope),
    Response(LeaderResponseEnvelope),
    /// Pushed on a subscription.
    MapUpdate(ClusterMap),
    /// Pushed on an idle subscription every second, so a subscriber can tell
    /// a silent leader from a dead link (resubscribe after ~3 s of silence).
    Keepalive {
        map_version: u64,
    },
    /// A Raft RPC from another leader; the postcard-encoded openraft request
    /// is the frame payload.
    Raft {
        id: u64,
        kind: RaftRpcKind,
    },
    /// The answer to a Raft RPC; the postcard-encoded
    /// `Result<response, openraft::error::RaftError<..>>` is the payload.
    RaftReply {
        id: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameReader, FrameWriter};

    fn sample_map() -> ClusterMap {
        ClusterMap {
            version: 9,
            updated_ms: 1_700_000_000_000,
            groups: vec![GroupInfo {
                name: "g1".into(),
                mode: ReplicationMode::Sync,
                members: vec![1, 2],
                master: Some(1),
                epoch: 3,
                master_lease_ms: 3000,
                epoch_starts: vec![EpochStart {
                    epoch: 3,
                    version: 7,
                }],
            }],
            servers: vec![
                ServerInfo {
                    id: 1,
                    addr: "127.0.0.1:1".into(),
                    group: "g1".into(),
                    status: ServerStatus::Active,
                    data_version: 10,
                    disk_free: 1,
                    disk_total: 2,
                    status_changed_ms: 5,
                },
                ServerInfo {
                    id: 2,
                    addr: "127.0.0.1:2".into(),
                    group: "g1".into(),
                    status: ServerStatus::Offline,
                    data_version: 8,
                    disk_free: 1,
                    disk_total: 2,
                    status_changed_ms: 6,
                },
            ],
        }
    }

    #[tokio::test]
    async fn leader_messages_round_trip() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b);
        let msgs = vec![
            LeaderMessage::Request(LeaderRequestEnvelope {
                id: 1,
                op: LeaderRequest::Failover {
                    group: "g1".into(),
                    to: Some(2),
                },
            }),
            LeaderMessage::Response(LeaderResponseEnvelope {
                id: 1,
                result: Err(LeaderError::not_leader(Some(LeaderRedirect {
                    id: 2,
                    addr: "127.0.0.1:9".into(),
                }))),
            }),
            LeaderMessage::MapUpdate(sample_map()),
            LeaderMessage::Raft {
                id: 4,
                kind: RaftRpcKind::Vote,
            },
        ];
        for m in &msgs {
            w.write(m, b"xy").await.unwrap();
        }
        for m in &msgs {
            let (got, payload) = r.read::<LeaderMessage>().await.unwrap().unwrap();
            assert_eq!(&got, m);
            assert_eq!(payload, b"xy");
        }
    }

    #[test]
    fn map_lookups() {
        let m = sample_map();
        assert_eq!(m.group("g1").map(|g| g.epoch), Some(3));
        assert!(m.group("g2").is_none());
        assert_eq!(m.server(2).map(|s| s.status), Some(ServerStatus::Offline));
        assert_eq!(m.master_of("g1").map(|s| s.id), Some(1));
        assert!(!ServerStatus::Offline.is_alive());
        assert!(ServerStatus::Recovering.is_alive());
    }

    #[test]
    fn divergence_point_follows_the_epoch_history() {
        let mut g = sample_map().groups.remove(0);
        g.epoch = 5;
        g.epoch_starts = vec![
            EpochStart {
                epoch: 3,
                version: 7,
            },
            EpochStart {
                epoch: 4,
                version: 20,
            },
            EpochStart {
                epoch: 5,
                version: 31,
            },
        ];
        assert_eq!(g.divergence_point(5), None);
        assert_eq!(g.divergence_point(6), None);
        assert_eq!(g.divergence_point(4), Some(31));
        assert_eq!(g.divergence_point(3), Some(20));
        // Epoch 2's successor is recorded (3), but epoch 1's is not.
        assert_eq!(g.divergence_point(2), Some(7));
        assert_eq!(g.divergence_point(1), Some(0));
    }

    #[test]
    fn not_leader_names_the_leader() {
        let e = LeaderError::not_leader(Some(LeaderRedirect {
            id: 3,
            addr: "10.0.0.3:7100".into(),
        }));
        assert_eq!(e.kind(), LeaderErrorKind::NotLeader);
        assert!(e.to_string().contains("10.0.0.3:7100"));
    }
}
