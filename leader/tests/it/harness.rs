//! Real `chorus-leader` processes on loopback, fake dataservers, and map
//! recorders.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use client::leader::{ClientTimeouts, LeaderClient, Subscription};
use proto::cluster::{
    ClusterMap, Heartbeat, JoinRequest, LeaderStatus, ReplicationMode, ServerId, ServerStatus,
};

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A group of real leader processes (started by `testkit`), with the
/// leader tests' own queries on top.
pub struct Cluster {
    ls: testkit::Leaders,
}

impl std::ops::Deref for Cluster {
    type Target = testkit::Leaders;
    fn deref(&self) -> &testkit::Leaders {
        &self.ls
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut testkit::Leaders {
        &mut self.ls
    }
}

impl Cluster {
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster {
            ls: testkit::Leaders::start(n, extra),
        }
    }

    pub fn client(&self) -> LeaderClient {
        LeaderClient::with_timeouts(
            self.addrs(),
            ClientTimeouts {
                connect: Duration::from_millis(300),
                request: Duration::from_secs(8),
                call: Duration::from_secs(15),
                backoff: Duration::from_millis(50),
                subscription_silence: Duration::from_secs(3),
            },
        )
    }

    pub async fn status_of(&self, i: usize) -> Option<LeaderStatus> {
        LeaderClient::status_of(&self.procs[i].addr, Duration::from_millis(500))
            .await
            .ok()
    }

    /// Wait until exactly one running leader says it is the Raft leader and
    /// the others agree; returns its index.
    pub async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leader = None;
            let mut agree = true;
            for (i, l) in self.procs.iter().enumerate() {
                if !l.is_running() {
                    continue;
                }
                match self.status_of(i).await {
                    Some(s) if s.role == "leader" => leader = Some(i),
                    Some(s) => {
                        if s.raft_leader.is_none() {
                            agree = false;
                        }
                    }
                    None => agree = false,
                }
            }
            if let (Some(i), true) = (leader, agree) {
                let want = &self.procs[i].addr;
                let mut all = true;
                for (j, l) in self.procs.iter().enumerate() {
                    if l.is_running() && j != i {
                        let s = self.status_of(j).await;
                        all &= s
                            .and_then(|s| s.raft_leader)
                            .is_some_and(|r| &r.addr == want);
                    }
                }
                if all {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no Raft leader within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_of(&self, i: usize) -> String {
        self.log(i)
    }
}

/// A simulated dataserver: joins, then heartbeats every `period`.
pub struct FakeServer {
    pub data_version: Arc<AtomicU64>,
    pub acks: Arc<parking_lot::Mutex<Vec<proto::cluster::HeartbeatAck>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(
        client: LeaderClient,
        id: ServerId,
        group: &str,
        period: Duration,
    ) -> FakeServer {
        let req = JoinRequest {
            id,
            addr: format!("127.0.0.1:{}", 20000 + id),
            group: group.into(),
            mode: ReplicationMode::Sync,
            data_version: 0,
            disk_free: 1 << 30,
            disk_total: 1 << 31,
        };
        client.join(req).await.unwrap();
        let data_version = Arc::new(AtomicU64::new(0));
        let acks = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (dv, a, g) = (data_version.clone(), acks.clone(), group.to_string());
        let task = tokio::spawn(async move {
            loop {
                let hb = Heartbeat {
                    id,
                    group: g.clone(),
                    status: ServerStatus::Active,
                    data_version: dv.load(Ordering::Relaxed),
                    disk_free: 1 << 30,
                    disk_total: 1 << 31,
                    sync_delay_ms: 0,
                };
                if let Ok(ack) = client.heartbeat(hb).await {
                    a.lock().push(ack);
                }
                tokio::time::sleep(period).await;
            }
        });
        FakeServer {
            data_version,
            acks,
            task,
        }
    }

    /// Stop heartbeating, as if the process died.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One received map and when it arrived.
#[derive(Clone)]
pub struct Received {
    pub at: Instant,
    pub wall_ms: u64,
    pub map: ClusterMap,
}

/// Drains a subscription into a list, in the background.
pub struct Recorder {
    pub got: Arc<parking_lot::Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub fn new(mut sub: Subscription) -> Recorder {
        let got = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let g = got.clone();
        let task = tokio::spawn(async move {
            while let Some(map) = sub.next().await {
                g.lock().push(Received {
                    at: Instant::now(),
                    wall_ms: wall_ms(),
                    map,
                });
            }
        });
        Recorder { got, task }
    }

    /// The first received map satisfying `pred`, waiting up to `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&ClusterMap) -> bool,
    ) -> Received {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.got.lock().iter().find(|r| pred(&r.map)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no matching map within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn status_of(map: &ClusterMap, id: ServerId) -> Option<ServerStatus> {
    map.server(id).map(|s| s.status)
}

/// Bring a WAIT_SYNC server to ACTIVE: the progress ladder to ONLINE, then
/// its group's master vouches for it (as a real master does after its
/// barrier).
pub async fn promote_to_active(client: &LeaderClient, id: ServerId, data_version: u64) {
    let map = client.get_map(true).await.unwrap();
    if status_of(&map, id) == Some(ServerStatus::WaitSync) {
        client
            .report_progress(id, ServerStatus::Syncing, data_version)
            .await
            .unwrap();
    }
    client
        .report_progress(id, ServerStatus::Online, data_version)
        .await
        .unwrap();
    let map = client.get_map(true).await.unwrap();
    let group = map.server(id).unwrap().group.clone();
    let g = map.group(&group).unwrap();
    client
        .activate(&group, g.master.unwrap(), id, g.epoch, data_version)
        .await
        .unwrap();
}
