//! The leader's TCP port: client requests, subscriptions and Raft RPCs, all
//! as [`LeaderMessage`] frames (see `proto::cluster` for the protocol).

use std::sync::Arc;
use std::time::Duration;

use proto::cluster::{
    LeaderError, LeaderMessage, LeaderRequest, LeaderRequestEnvelope, LeaderResponseEnvelope,
};
use proto::frame::{FrameError, FrameReader, FrameWriter};
use proto::ErrorCode;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::RecvError;

use crate::node::Node;

/// How often an idle subscription gets a keepalive.
pub const KEEPALIVE: Duration = Duration::from_secs(1);

/// Accept connections until the listener fails.
pub async fn serve(listener: TcpListener, node: Arc<Node>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(node, stream).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

type Reader = FrameReader<OwnedReadHalf>;
type Writer = FrameWriter<OwnedWriteHalf>;

async fn respond(
    w: &mut Writer,
    id: u64,
    result: Result<proto::cluster::LeaderReply, LeaderError>,
) -> Result<(), FrameError> {
    w.write(
        &LeaderMessage::Response(LeaderResponseEnvelope { id, result }),
        &[],
    )
    .await
}

async fn connection(node: Arc<Node>, stream: TcpStream) -> Result<(), FrameError> {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    loop {
        let (msg, payload) = match reader.read::<LeaderMessage>().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(e) if e.is_disconnect() => return Ok(()),
            Err(e) => {
                // Malformed input: say why, then close (the stream can no
                // longer be trusted to be in step).
                tracing::info!("bad frame from a client: {e}");
                let code = match e {
                    FrameError::MetaTooLarge { .. } | FrameError::PayloadTooLarge { .. } => {
                        ErrorCode::TooLarge
                    }
                    _ => ErrorCode::Protocol,
                };
                let _ = respond(&mut writer, 0, Err(LeaderError::new(code, e.to_string()))).await;
                return Err(e);
            }
        };
        match msg {
            LeaderMessage::Request(LeaderRequestEnvelope {
                id,
                op: LeaderRequest::Subscribe,
            }) => return subscription(node, reader, writer, id).await,
            LeaderMessage::Request(LeaderRequestEnvelope { id, op }) => {
                let result = if payload.is_empty() {
                    node.handle(op).await
                } else {
                    Err(LeaderError::new(
                        ErrorCode::Protocol,
                        "leader requests carry no payload",
                    ))
                };
                respond(&mut writer, id, result).await?;
            }
            LeaderMessage::Raft { id, kind } => match node.raft().serve_rpc(kind, &payload).await {
                Ok(body) => {
                    writer
                        .write(&LeaderMessage::RaftReply { id }, &body)
                        .await?
                }
                Err(e) => {
                    let _ = respond(
                        &mut writer,
                        id,
                        Err(LeaderError::new(ErrorCode::Protocol, e.to_string())),
                    )
                    .await;
                    return Ok(());
                }
            },
            other => {
                let what = match other {
                    LeaderMessage::Response(_) => "a response",
                    LeaderMessage::MapUpdate(_) => "a map update",
                    LeaderMessage::Keepalive { .. } => "a keepalive",
                    _ => "a raft reply",
                };
                let _ = respond(
                    &mut writer,
                    0,
                    Err(LeaderError::new(
                        ErrorCode::Protocol,
                        format!("a leader does not accept {what}"),
                    )),
                )
                .await;
                return Ok(());
            }
        }
    }
}

/// Push the map now and at every change until the subscriber leaves or this
/// node stops being the Raft leader.
async fn subscription(
    node: Arc<Node>,
    mut reader: Reader,
    mut writer: Writer,
    id: u64,
) -> Result<(), FrameError> {
    if !node.raft().is_leader() {
        let redirect = node.raft().view().leader;
        return respond(&mut writer, id, Err(LeaderError::not_leader(redirect))).await;
    }
    // Subscribe before reading the current map so no change falls between.
    let mut updates = node.maps().updates.subscribe();
    if let Err(e) = node.raft().ensure_linearizable().await {
        let err = match e {
            crate::raft::WriteError::NotLeader(r) => LeaderError::not_leader(r),
            crate::raft::WriteError::Raft(m) => LeaderError::new(ErrorCode::Unavailable, m),
        };
        return respond(&mut writer, id, Err(err)).await;
    }
    let first = node.current_map();
    let mut sent = first.version;
    writer
        .write(&LeaderMessage::MapUpdate((*first).clone()), &[])
        .await?;
    tracing::debug!(version = sent, "subscriber attached");
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.reset();
    loop {
        tokio::select! {
            update = updates.recv() => {
                let map = match update {
                    Ok(m) => m,
                    Err(RecvError::Lagged(_)) => node.current_map(),
                    Err(RecvError::Closed) => return Ok(()),
                };
                if map.version > sent {
                    sent = map.version;
                    writer.write(&LeaderMessage::MapUpdate((*map).clone()), &[]).await?;
                    keepalive.reset();
                }
            }
            _ = keepalive.tick() => {
                writer.write(&LeaderMessage::Keepalive { map_version: sent }, &[]).await?;
            }
            _ = node.raft().leadership_lost() => {
                let redirect = node.raft().view().leader;
                return respond(&mut writer, id, Err(LeaderError::not_leader(redirect))).await;
            }
            // A subscriber sends nothing more; anything (or EOF) ends it.
            _ = reader.read_header() => return Ok(()),
        }
    }
}
