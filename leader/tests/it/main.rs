//! Leader integration tests: real `chorus-leader` processes on loopback,
//! killed with SIGKILL, dataservers simulated with `LeaderClient`.

mod harness;

use std::time::{Duration, Instant};

use harness::{promote_to_active, status_of, wall_ms, Cluster, FakeServer, Recorder};
use proto::cluster::{
    JoinRequest, LeaderMessage, LeaderRequest, LeaderRequestEnvelope, RaftRpcKind, ReplicationMode,
    ServerStatus,
};
use proto::frame::{FrameHeader, FrameReader, FrameWriter, PROTOCOL_VERSION};
use proto::ErrorCode;
use tokio::net::TcpStream;

const SEC: Duration = Duration::from_secs(1);

/// Every test is bounded.
async fn bounded<F: std::future::Future<Output = ()>>(limit: Duration, f: F) {
    tokio::time::timeout(limit, f)
        .await
        .expect("test exceeded its time limit");
}

/// (1) Three leaders: SIGKILL the Raft leader; a new one is elected, the map
/// is intact, subscribers follow to the new leader by themselves, and the
/// dataservers' heartbeats carry on (nobody goes OFFLINE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_leader_sigkill_keeps_map_and_subscribers() {
    bounded(60 * SEC, async {
        let mut cluster = Cluster::start(3, &[]);
        let first = cluster.wait_leader(15 * SEC).await;
        let client = cluster.client();
        let _s1 = FakeServer::start(cluster.client(), 1, "g1", SEC).await;
        let _s2 = FakeServer::start(cluster.client(), 2, "g1", SEC).await;
        let _s3 = FakeServer::start(cluster.client(), 3, "g2", SEC).await;
        let subs: Vec<Recorder> = (0..2)
            .map(|_| Recorder::new(cluster.client().subscribe()))
            .collect();
        for r in &subs {
            r.wait_for(5 * SEC, |m| m.servers.len() == 3).await;
        }
        let before = client.get_map(true).await.unwrap();
        assert_eq!(before.group("g1").unwrap().master, Some(1));

        cluster.kill(first);
        let t0 = Instant::now();
        let second = cluster.wait_leader(15 * SEC).await;
        assert_ne!(first, second);
        eprintln!("new leader elected in {:?}", t0.elapsed());

        let after = client.get_map(true).await.unwrap();
        assert_eq!(after.groups, before.groups);
        assert_eq!(after.servers, before.servers);

        // A change made through the new leader reaches the old subscriptions.
        let _s4 = FakeServer::start(cluster.client(), 4, "g2", SEC).await;
        for r in &subs {
            r.wait_for(10 * SEC, |m| m.server(4).is_some()).await;
        }
        // Heartbeats followed the new leader: after a full server timeout
        // past the election, every server is still ACTIVE or as it was.
        tokio::time::sleep(4 * SEC).await;
        let later = client.get_map(true).await.unwrap();
        for id in [1, 2, 3] {
            assert_eq!(status_of(&later, id), status_of(&before, id), "server {id}");
        }
        let st = client.status().await.unwrap();
        assert_eq!(st.peers.len(), 3);
    })
    .await;
}

/// (2) Stop all three leaders and start them again from their data dirs:
/// the map comes back whole (through snapshots and the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_data_dirs_restores_the_map() {
    bounded(60 * SEC, async {
        let mut cluster = Cluster::start(
            3,
            &[
                "--snapshot-logs",
                "4",
                "--server-timeout-ms",
                "20000",
                "--master-lease-ms",
                "300",
            ],
        );
        let li = cluster.wait_leader(15 * SEC).await;
        let client = cluster.client();
        // One follower misses enough changes that the log it needs is
        // compacted away: it must catch up through InstallSnapshot.
        let lagging = (li + 1) % 3;
        cluster.kill(lagging);
        let servers = vec![
            FakeServer::start(cluster.client(), 1, "g1", SEC).await,
            FakeServer::start(cluster.client(), 2, "g1", SEC).await,
            FakeServer::start(cluster.client(), 3, "g2", SEC).await,
            FakeServer::start(cluster.client(), 4, "g2", SEC).await,
        ];
        promote_to_active(&client, 2, 0).await;
        let g = client.failover("g1", Some(2)).await.unwrap();
        assert_eq!((g.master, g.epoch), (Some(2), 2));
        client.remove_server(4).await.unwrap();
        let before = client.get_map(true).await.unwrap();
        drop(servers);
        cluster.spawn(lagging);
        let c = client::leader::LeaderClient::new(vec![cluster.procs[lagging].addr.clone()]);
        let deadline = Instant::now() + 10 * SEC;
        while c.get_map(false).await.ok().as_ref() != Some(&before) {
            assert!(
                Instant::now() < deadline,
                "the lagging leader never caught up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(cluster.log_of(lagging).contains("installed snapshot"));

        for i in 0..3 {
            cluster.kill(i);
        }
        for i in 0..3 {
            assert!(cluster.procs[i].dir().join("raft-log.redb").exists());
            assert!(cluster.procs[i].dir().join("state.redb").exists());
            cluster.spawn(i);
        }
        cluster.wait_leader(20 * SEC).await;
        let after = client.get_map(true).await.unwrap();
        assert_eq!(after, before);
        assert_eq!(status_of(&after, 4), Some(ServerStatus::Deleted));
        // Followers serve the same map (non-linearizable reads).
        for i in 0..3 {
            let c = client::leader::LeaderClient::new(vec![cluster.procs[i].addr.clone()]);
            let deadline = Instant::now() + 5 * SEC;
            loop {
                let m = c.get_map(false).await.unwrap();
                if m == before {
                    break;
                }
                assert!(Instant::now() < deadline, "leader {i} map differs: {m:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
}

/// (3) A dataserver that dies shows OFFLINE within server_timeout + 1 s, and
/// every subscriber receives the change within 100 ms of the leader
/// recording it; a dead master is replaced by the ACTIVE member with the
/// highest version once its lease ran out, with epoch + 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_dataserver_goes_offline_and_master_moves() {
    bounded(60 * SEC, async {
        let cluster = Cluster::start(3, &[]);
        cluster.wait_leader(15 * SEC).await;
        let client = cluster.client();
        let s1 = FakeServer::start(cluster.client(), 1, "g1", SEC).await;
        let s2 = FakeServer::start(cluster.client(), 2, "g1", SEC).await;
        let s3 = FakeServer::start(cluster.client(), 3, "g1", SEC).await;
        s1.data_version
            .store(10, std::sync::atomic::Ordering::Relaxed);
        s2.data_version
            .store(10, std::sync::atomic::Ordering::Relaxed);
        s3.data_version
            .store(10, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1200)).await; // heartbeats carry v10
        promote_to_active(&client, 2, 10).await;
        promote_to_active(&client, 3, 10).await;
        // 3 pulls ahead, so it is the one to promote.
        s3.data_version
            .store(12, std::sync::atomic::Ordering::Relaxed);
        let subs: Vec<Recorder> = (0..3)
            .map(|_| Recorder::new(cluster.client().subscribe()))
            .collect();
        for r in &subs {
            r.wait_for(5 * SEC, |m| status_of(m, 3) == Some(ServerStatus::Active))
                .await;
        }
        // The master holds a lease, the slaves none.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(s1.acks.lock().last().unwrap().lease_ms.is_some());
        assert!(s2.acks.lock().last().unwrap().lease_ms.is_none());

        // Kill a slave.
        s2.kill();
        let t0 = Instant::now();
        for r in &subs {
            let got = r
                .wait_for(6 * SEC, |m| status_of(m, 2) == Some(ServerStatus::Offline))
                .await;
            let detect = got.at - t0;
            assert!(detect <= 4 * SEC, "OFFLINE after {detect:?}");
            let push = got.wall_ms.saturating_sub(got.map.updated_ms);
            assert!(push <= 100, "pushed {push} ms after the leader recorded it");
            eprintln!("slave OFFLINE seen after {detect:?}, {push} ms after recording");
        }

        // Kill the master: 1 goes OFFLINE, then 3 (highest version) takes over.
        let epoch = client
            .get_map(true)
            .await
            .unwrap()
            .group("g1")
            .unwrap()
            .epoch;
        s1.kill();
        let t1 = Instant::now();
        for r in &subs {
            let got = r
                .wait_for(10 * SEC, |m| {
                    m.group("g1").and_then(|g| g.master) == Some(3)
                })
                .await;
            let g = got.map.group("g1").unwrap();
            assert_eq!(g.epoch, epoch + 1);
            assert_eq!(status_of(&got.map, 1), Some(ServerStatus::Offline));
            let push = got.wall_ms.saturating_sub(got.map.updated_ms);
            assert!(push <= 100, "pushed {push} ms after the leader recorded it");
            assert!(got.at - t1 <= 5 * SEC, "failover took {:?}", got.at - t1);
        }

        // The old slave comes back: RECOVERING, not ACTIVE.
        let back = FakeServer::start(cluster.client(), 2, "g1", SEC).await;
        let m = client.get_map(true).await.unwrap();
        assert_eq!(status_of(&m, 2), Some(ServerStatus::Recovering));
        drop(back);
    })
    .await;
}

async fn raw_exchange(addr: &str, bytes: &[u8]) -> Option<LeaderMessage> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (r, w) = stream.into_split();
    let mut w = FrameWriter::new(w);
    let mut r = FrameReader::new(r);
    w.write_raw(bytes).await.unwrap();
    match tokio::time::timeout(5 * SEC, r.read::<LeaderMessage>()).await {
        Ok(Ok(Some((m, _)))) => Some(m),
        _ => None,
    }
}

fn error_code(m: Option<LeaderMessage>) -> ErrorCode {
    match m {
        Some(LeaderMessage::Response(r)) => r.result.expect_err("expected an error").code(),
        other => panic!("expected an error response, got {other:?}"),
    }
}

fn frame(msg: &LeaderMessage, payload: &[u8]) -> Vec<u8> {
    let meta = proto::frame::encode(msg).unwrap();
    let h = FrameHeader {
        version: PROTOCOL_VERSION,
        flags: 0,
        meta_len: meta.len() as u32,
        payload_len: payload.len() as u32,
    };
    let mut b = h.encode().to_vec();
    b.extend_from_slice(&meta);
    b.extend_from_slice(payload);
    b
}

fn code<T>(r: Result<T, client::leader::LeaderClientError>) -> Option<ErrorCode> {
    r.err().and_then(|e| e.code())
}

/// (5) Bad input on the leader's port gets a clear error and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    bounded(60 * SEC, async {
        let cluster = Cluster::start(3, &[]);
        let li = cluster.wait_leader(15 * SEC).await;
        let leader_addr = cluster.procs[li].addr.clone();
        let client = cluster.client();
        let _s1 = FakeServer::start(cluster.client(), 1, "g1", SEC).await;
        let _s2 = FakeServer::start(cluster.client(), 2, "g1", SEC).await;
        let before = client.get_map(true).await.unwrap();
        assert_eq!(status_of(&before, 2), Some(ServerStatus::WaitSync));

        // Malformed frames.
        assert_eq!(
            error_code(raw_exchange(&leader_addr, b"GET / HTTP/1.1\r\n\r\n").await),
            ErrorCode::Protocol
        );
        let huge = FrameHeader {
            version: PROTOCOL_VERSION,
            flags: 0,
            meta_len: u32::MAX,
            payload_len: 0,
        };
        assert_eq!(
            error_code(raw_exchange(&leader_addr, &huge.encode()).await),
            ErrorCode::TooLarge
        );
        let mut junk = FrameHeader {
            version: PROTOCOL_VERSION,
            flags: 0,
            meta_len: 64,
            payload_len: 0,
        }
        .encode()
        .to_vec();
        junk.extend_from_slice(&[0xab; 64]);
        assert_eq!(
            error_code(raw_exchange(&leader_addr, &junk).await),
            ErrorCode::Protocol
        );
        let stray = frame(&LeaderMessage::Keepalive { map_version: 1 }, &[]);
        assert_eq!(
            error_code(raw_exchange(&leader_addr, &stray).await),
            ErrorCode::Protocol
        );
        let bad_rpc = frame(
            &LeaderMessage::Raft {
                id: 5,
                kind: RaftRpcKind::AppendEntries,
            },
            &[0xff; 16],
        );
        assert_eq!(
            error_code(raw_exchange(&leader_addr, &bad_rpc).await),
            ErrorCode::Protocol
        );
        let with_payload = frame(
            &LeaderMessage::Request(LeaderRequestEnvelope {
                id: 9,
                op: LeaderRequest::GetMap {
                    linearizable: false,
                },
            }),
            b"junk",
        );
        assert_eq!(
            error_code(raw_exchange(&leader_addr, &with_payload).await),
            ErrorCode::Protocol
        );

        // Bad requests.
        let join = |id, group: &str, port: u16| JoinRequest {
            id,
            addr: format!("127.0.0.1:{port}"),
            group: group.into(),
            mode: ReplicationMode::Sync,
            data_version: 0,
            disk_free: 1,
            disk_total: 2,
        };
        assert_eq!(
            code(client.join(join(1, "g2", 20001)).await),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(client.join(join(1, "g1", 29999)).await),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(client.join(join(5, "bad/name", 20005)).await),
            Some(ErrorCode::BadRequest)
        );
        let mut async_mode = join(6, "g1", 20006);
        async_mode.mode = ReplicationMode::Async;
        assert_eq!(
            code(client.join(async_mode).await),
            Some(ErrorCode::BadRequest)
        );
        let t = Instant::now();
        assert_eq!(
            code(client.failover("g1", Some(2)).await),
            Some(ErrorCode::BadRequest)
        );
        assert!(
            t.elapsed() < 2 * SEC,
            "a refused failover must not wait for the lease"
        );
        assert_eq!(
            code(client.failover("g1", Some(99)).await),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            code(client.failover("g1", None).await),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(client.failover("nope", None).await),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            code(client.remove_server(99).await),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            code(client.report_progress(2, ServerStatus::Active, 0).await),
            Some(ErrorCode::BadRequest)
        );
        let hb = proto::cluster::Heartbeat {
            id: 42,
            group: "g1".into(),
            status: ServerStatus::Active,
            data_version: 0,
            disk_free: 0,
            disk_total: 0,
            sync_delay_ms: 0,
        };
        assert_eq!(code(client.heartbeat(hb).await), Some(ErrorCode::NotFound));

        // A follower redirects writes to the Raft leader.
        let follower = (li + 1) % 3;
        let req = frame(
            &LeaderMessage::Request(LeaderRequestEnvelope {
                id: 1,
                op: LeaderRequest::RemoveServer { id: 2 },
            }),
            &[],
        );
        match raw_exchange(&cluster.procs[follower].addr, &req).await {
            Some(LeaderMessage::Response(r)) => {
                let e = r.result.unwrap_err();
                assert_eq!(e.code(), ErrorCode::NotLeader);
                assert_eq!(e.redirect.unwrap().addr, leader_addr);
            }
            other => panic!("expected a redirect, got {other:?}"),
        }

        // Nothing changed, and the leader still serves.
        let after = client.get_map(true).await.unwrap();
        assert_eq!(after, before);
        assert!(cluster.status_of(li).await.is_some());
    })
    .await;
}

/// Admin operations: failover with and without a target waits out the old
/// master's lease and raises the epoch; remove marks DELETED and the removed
/// server's heartbeats are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_remove() {
    bounded(60 * SEC, async {
        let cluster = Cluster::start(1, &["--master-lease-ms", "1000"]);
        cluster.wait_leader(15 * SEC).await;
        let client = cluster.client();
        let s1 = FakeServer::start(cluster.client(), 1, "g1", Duration::from_millis(200)).await;
        let _s2 = FakeServer::start(cluster.client(), 2, "g1", Duration::from_millis(200)).await;
        promote_to_active(&client, 2, 0).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(s1.acks.lock().last().unwrap().lease_ms.is_some());

        let t = Instant::now();
        let g = client.failover("g1", None).await.unwrap();
        assert_eq!((g.master, g.epoch), (Some(2), 2));
        // The old master's lease (1 s, renewed every 200 ms) had to run out.
        assert!(
            t.elapsed() >= Duration::from_millis(700),
            "failover took {:?}",
            t.elapsed()
        );
        // The old master must recheck its history against the new one
        // before it takes writes again: RECOVERING until vouched for.
        let m = client.get_map(true).await.unwrap();
        assert_eq!(status_of(&m, 1), Some(ServerStatus::Recovering));
        assert!(client.failover("g1", Some(1)).await.is_err());
        promote_to_active(&client, 1, 0).await;
        let g = client.failover("g1", Some(1)).await.unwrap();
        assert_eq!((g.master, g.epoch), (Some(1), 3));

        let removed = client.remove_server(2).await.unwrap();
        assert_eq!(removed.status, ServerStatus::Deleted);
        let hb = proto::cluster::Heartbeat {
            id: 2,
            group: "g1".into(),
            status: ServerStatus::Active,
            data_version: 0,
            disk_free: 0,
            disk_total: 0,
            sync_delay_ms: 0,
        };
        let e = client.heartbeat(hb).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::BadRequest));
        let m = client.get_map(true).await.unwrap();
        assert_eq!(m.group("g1").unwrap().members, vec![1]);
        assert!(m.updated_ms <= wall_ms());
        assert!(cluster.log_of(0).contains("failover done"));
    })
    .await;
}

/// A leader SIGKILLed at any moment of its first start (while it creates
/// its stores) starts again from what it left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_first_start_restarts_cleanly() {
    let mut c = harness::Cluster::start(1, &[]);
    for delay_ms in [1u64, 3, 6, 10, 15, 25, 40, 80] {
        c.kill(0);
        let _ = std::fs::remove_dir_all(c.procs[0].dir());
        c.spawn(0);
        std::thread::sleep(Duration::from_millis(delay_ms));
        c.kill(0);
        c.spawn(0);
        bounded(Duration::from_secs(20), async {
            c.wait_leader(Duration::from_secs(15)).await;
        })
        .await;
        let map = c.client().get_map(true).await;
        assert!(
            map.is_ok(),
            "leader killed {delay_ms} ms into its first start did not recover: {map:?}\n{}",
            c.log_of(0)
        );
    }
}
