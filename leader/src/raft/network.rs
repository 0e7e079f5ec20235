//! Raft RPCs between leaders, over the leaders' own port.
//!
//! A request is a [`LeaderMessage::Raft`] frame naming the RPC, with the
//! postcard-encoded openraft request as the frame payload; the answer is a
//! [`LeaderMessage::RaftReply`] with the postcard-encoded
//! `Result<response, RaftError<..>>` as payload. Each openraft network client
//! (one per replication stream or vote) keeps its own connection, used for
//! one RPC at a time, and reconnects after any error.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use proto::cluster::{LeaderMessage, RaftRpcKind};
use proto::frame::{FrameReader, FrameWriter};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::types::{Node, NodeId, Raft, TypeConfig};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Makes one [`PeerClient`] per target.
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            conn: None,
            next_id: 1,
        }
    }
}

struct Conn {
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
}

/// A connection to one other leader.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    conn: Option<Conn>,
    next_id: u64,
}

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("cannot reach {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("rpc to {0} failed: {1}")]
    Io(String, String),
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn exchange(
        &mut self,
        kind: RaftRpcKind,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<Vec<u8>, CallError> {
        if self.conn.is_none() {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
                .await
                .map_err(|_| {
                    CallError::Connect(
                        self.addr.clone(),
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                    )
                })?
                .map_err(|e| CallError::Connect(self.addr.clone(), e))?;
            let _ = stream.set_nodelay(true);
            let (r, w) = stream.into_split();
            self.conn = Some(Conn {
                reader: FrameReader::new(r),
                writer: FrameWriter::new(w),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let addr = self.addr.clone();
        let Some(conn) = self.conn.as_mut() else {
            return Err(CallError::Io(addr, "no connection".into()));
        };
        let round_trip = async {
            conn.writer
                .write(&LeaderMessage::Raft { id, kind }, &payload)
                .await
                .map_err(|e| e.to_string())?;
            match conn.reader.read::<LeaderMessage>().await {
                Ok(Some((LeaderMessage::RaftReply { id: got }, body))) if got == id => Ok(body),
                Ok(Some((LeaderMessage::Response(r), _))) => match r.result {
                    Err(e) => Err(format!("peer refused the rpc: {e}")),
                    Ok(_) => Err("unexpected answer to a raft rpc".to_string()),
                },
                Ok(Some((other, _))) => Err(format!("unexpected answer {other:?}")),
                Ok(None) => Err("connection closed".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        let res = match tokio::time::timeout(ttl, round_trip).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {ttl:?}")),
        };
        if res.is_err() {
            self.conn = None;
        }
        res.map_err(|e| CallError::Io(addr, e))
    }

    async fn call<Req, Resp, E>(
        &mut self,
        kind: RaftRpcKind,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload =
            postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let body = match self.exchange(kind, payload, option.hard_ttl()).await {
            Ok(b) => b,
            Err(e @ CallError::Connect(..)) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let res: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(RaftRpcKind::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RaftRpcKind::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(RaftRpcKind::Vote, &rpc, &option).await
    }
}

/// Why an incoming Raft RPC could not be served.
#[derive(Debug, thiserror::Error)]
pub enum RpcServeError {
    #[error("undecodable raft rpc: {0}")]
    Decode(#[from] postcard::Error),
}

/// Serve one incoming Raft RPC: decode, hand to openraft, encode the answer.
pub async fn serve_rpc(
    raft: &Raft,
    kind: RaftRpcKind,
    payload: &[u8],
) -> Result<Vec<u8>, RpcServeError> {
    let out = match kind {
        RaftRpcKind::AppendEntries => {
            let req: AppendEntriesRequest<TypeConfig> = postcard::from_bytes(payload)?;
            postcard::to_allocvec(&raft.append_entries(req).await)?
        }
        RaftRpcKind::Vote => {
            let req: VoteRequest<NodeId> = postcard::from_bytes(payload)?;
            postcard::to_allocvec(&raft.vote(req).await)?
        }
        RaftRpcKind::InstallSnapshot => {
            let req: InstallSnapshotRequest<TypeConfig> = postcard::from_bytes(payload)?;
            postcard::to_allocvec(&raft.install_snapshot(req).await)?
        }
    };
    Ok(out)
}
