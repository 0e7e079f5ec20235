//! A fake leader over real TCP: answers `Subscribe` with the current map and
//! pushes every map the test publishes, like the Raft leader does; answers
//! `GetMap` too. Enough to drive the SDK's cluster mode.

use std::net::SocketAddr;
use std::time::Duration;

use proto::cluster::{
    ClusterMap, GroupInfo, LeaderError, LeaderMessage, LeaderReply, LeaderRequest,
    LeaderResponseEnvelope, ReplicationMode, ServerInfo, ServerStatus,
};
use proto::{ErrorCode, FrameReader, FrameWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct FakeLeader {
    pub addr: SocketAddr,
    map: watch::Sender<ClusterMap>,
    task: JoinHandle<()>,
}

impl Drop for FakeLeader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeLeader {
    pub async fn start(map: ClusterMap) -> FakeLeader {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(map);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((sock, _)) = listener.accept().await {
                conns.spawn(serve(rx.clone(), sock));
            }
        });
        FakeLeader {
            addr,
            map: tx,
            task,
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Change the map (its version is raised) and push it to subscribers.
    pub fn update(&self, change: impl FnOnce(&mut ClusterMap)) {
        self.map.send_modify(|m| {
            change(m);
            m.version += 1;
        });
    }
}

async fn serve(mut map: watch::Receiver<ClusterMap>, sock: TcpStream) {
    let (r, w) = sock.into_split();
    let mut r = FrameReader::new(r);
    let mut w = FrameWriter::new(w);
    loop {
        let Ok(Some((LeaderMessage::Request(env), _))) = r.read::<LeaderMessage>().await else {
            return;
        };
        let result = match env.op {
            LeaderRequest::Subscribe => break,
            LeaderRequest::GetMap { .. } => Ok(LeaderReply::Map(map.borrow().clone())),
            _ => Err(LeaderError::new(ErrorCode::BadRequest, "not faked")),
        };
        let resp = LeaderMessage::Response(LeaderResponseEnvelope { id: env.id, result });
        if w.write(&resp, &[]).await.is_err() {
            return;
        }
    }
    // A subscription: the current map, then every change; keepalives
    // while idle.
    loop {
        let current = map.borrow_and_update().clone();
        if w.write(&LeaderMessage::MapUpdate(current), &[])
            .await
            .is_err()
        {
            return;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(1), map.changed()).await {
                Ok(Ok(())) => break,
                Ok(Err(_)) => return,
                Err(_) => {
                    let version = map.borrow().version;
                    let ka = LeaderMessage::Keepalive {
                        map_version: version,
                    };
                    if w.write(&ka, &[]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A server entry for `addr`.
pub fn server(id: u64, group: &str, addr: &str, status: ServerStatus) -> ServerInfo {
    ServerInfo {
        id,
        addr: addr.to_string(),
        group: group.to_string(),
        status,
        data_version: 0,
        disk_free: 1 << 30,
        disk_total: 1 << 31,
        status_changed_ms: 0,
    }
}

/// A group entry.
pub fn group(name: &str, members: &[u64], master: Option<u64>, epoch: u64) -> GroupInfo {
    GroupInfo {
        name: name.to_string(),
        mode: ReplicationMode::Sync,
        members: members.to_vec(),
        master,
        epoch,
        master_lease_ms: 3000,
        epoch_starts: Vec::new(),
    }
}
