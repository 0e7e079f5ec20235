//! Cluster mode against a fake leader and fake dataservers: routing by the
//! pushed map, group choice, and retries through master changes.

use std::time::{Duration, Instant};

use client::{Client, ClientConfig, ErrorCode, UploadGroupRule, UploadOptions};
use proto::cluster::{ClusterMap, ServerStatus};
use proto::Request;

use crate::bounded;
use crate::fake::{FakeServer, Fault};
use crate::fake_leader::{group, server, FakeLeader};

fn cfg() -> ClientConfig {
    crate::fast_cfg().cluster_wait(Duration::from_secs(5))
}

/// group1 with master 1 at `a` (epoch 1) and ACTIVE slave 2 at `b`.
fn two_server_map(a: &str, b: &str) -> ClusterMap {
    ClusterMap {
        version: 1,
        updated_ms: 0,
        groups: vec![group("group1", &[1, 2], Some(1), 1)],
        servers: vec![
            server(1, "group1", a, ServerStatus::Active),
            server(2, "group1", b, ServerStatus::Active),
        ],
    }
}

fn uploads(f: &FakeServer) -> Vec<proto::RequestEnvelope> {
    f.log()
        .into_iter()
        .filter(|e| matches!(e.op, Request::Upload { .. }))
        .collect()
}

/// Move group1's master to server 2 with epoch 2, after `after`.
async fn fail_over_later(leader: &FakeLeader, after: Duration) {
    tokio::time::sleep(after).await;
    leader.update(|m| {
        let g = m.group_mut("group1").unwrap();
        g.master = Some(2);
        g.epoch = 2;
    });
}

#[tokio::test]
async fn not_master_is_retried_on_the_new_master_with_the_same_seq() {
    bounded!(async {
        let a = FakeServer::start().await;
        let b = FakeServer::start().await;
        let leader = FakeLeader::start(two_server_map(&a.addr(), &b.addr())).await;
        let client = Client::connect_with([leader.addr()], cfg()).await.unwrap();
        assert_eq!(client.cluster_map().unwrap().version, 1);
        assert_eq!(client.leaders().unwrap(), [leader.addr()]);

        // The old master refuses until the map moves on.
        for _ in 0..50 {
            a.inject(Fault::Error(ErrorCode::NotMaster));
        }
        let start = Instant::now();
        let (stat, ()) = tokio::join!(
            client.upload(b"through a failover", UploadOptions::new()),
            fail_over_later(&leader, Duration::from_millis(300)),
        );
        let stat = stat.unwrap();
        let took = start.elapsed();
        println!("upload rode through NotMaster in {took:?}");

        let tried_a = uploads(&a);
        let done_b = uploads(&b);
        assert!(!tried_a.is_empty());
        assert_eq!(done_b.len(), 1);
        let seq = done_b[0].seq;
        assert!(tried_a.iter().all(|e| e.seq == seq && e.epoch == 1));
        assert!(tried_a.iter().all(|e| e.client_id == client.client_id()));
        assert_eq!(done_b[0].epoch, 2, "the new master gets the new epoch");
        assert_eq!(b.file_data(&stat.file_id).unwrap(), b"through a failover");
        assert_eq!(client.cluster_map().unwrap().version, 2);

        // Reads and writes of the file now go to the new master.
        assert_eq!(
            client.download(&stat.file_id).await.unwrap(),
            b"through a failover"
        );
        client.delete(&stat.file_id, None).await.unwrap();
        assert!(b.file_data(&stat.file_id).is_none());
        assert_eq!(uploads(&a).len(), tried_a.len(), "nothing more went to a");
    });
}

#[tokio::test]
async fn stale_epoch_unavailable_and_a_dead_master_are_ridden_through() {
    bounded!(async {
        let b = FakeServer::start().await;
        // Nothing listens at the old master's address.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let leader = FakeLeader::start(two_server_map(&dead, &b.addr())).await;
        let client = Client::connect_with([leader.addr()], cfg()).await.unwrap();
        let (stat, ()) = tokio::join!(
            client.upload(b"x", UploadOptions::new()),
            fail_over_later(&leader, Duration::from_millis(200)),
        );
        let stat = stat.unwrap();

        // The server has not caught up with the map yet: it refuses once
        // with each code, and the client retries after a backoff.
        b.inject(Fault::Error(ErrorCode::StaleEpoch));
        b.inject(Fault::Error(ErrorCode::Unavailable));
        let st = client.append(&stat.file_id, b"", None).await;
        // (The fake's files are not appenders: the retried append reached
        // the file and got the file's own answer.)
        assert_eq!(st.unwrap_err().code(), Some(ErrorCode::NotAppender));
        let appends: Vec<_> = b
            .log()
            .into_iter()
            .filter(|e| matches!(e.op, Request::Append { .. }))
            .collect();
        assert_eq!(appends.len(), 3);
        assert!(appends
            .iter()
            .all(|e| e.seq == appends[0].seq && e.epoch == 2));
    });
}

#[tokio::test]
async fn gives_up_after_cluster_wait_when_no_group_has_a_master() {
    bounded!(async {
        let a = FakeServer::start().await;
        let mut map = two_server_map(&a.addr(), "127.0.0.1:9");
        map.groups[0].master = None;
        let leader = FakeLeader::start(map).await;
        let wait = Duration::from_millis(400);
        let client = Client::connect_with([leader.addr()], cfg().cluster_wait(wait))
            .await
            .unwrap();
        let start = Instant::now();
        let e = client.upload(b"x", UploadOptions::new()).await.unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
        assert!(
            took >= wait && took < wait + Duration::from_secs(2),
            "{took:?}"
        );
        assert!(a.log().is_empty());

        // A master appearing during the wait lets the operation through.
        let client = Client::connect_with([leader.addr()], cfg()).await.unwrap();
        let (stat, ()) = tokio::join!(client.upload(b"late", UploadOptions::new()), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            leader.update(|m| {
                let g = m.group_mut("group1").unwrap();
                g.master = Some(1);
                g.epoch = 1;
            });
        });
        assert_eq!(a.file_data(&stat.unwrap().file_id).unwrap(), b"late");
    });
}

#[tokio::test]
async fn uploads_spread_over_groups_with_an_active_master() {
    bounded!(async {
        let a = FakeServer::start().await;
        let b = FakeServer::start().await;
        let c = FakeServer::start().await;
        let map = ClusterMap {
            version: 4,
            updated_ms: 0,
            groups: vec![
                group("group1", &[1], Some(1), 1),
                group("group2", &[2], Some(2), 1),
                group("group3", &[3], Some(3), 1),
            ],
            servers: vec![
                server(1, "group1", &a.addr(), ServerStatus::Active),
                server(2, "group2", &b.addr(), ServerStatus::Active),
                // group3's master is OFFLINE: never chosen.
                server(3, "group3", &c.addr(), ServerStatus::Offline),
            ],
        };
        let leader = FakeLeader::start(map).await;
        let client = Client::connect_with([leader.addr()], cfg()).await.unwrap();
        for _ in 0..6 {
            client.upload(b"rr", UploadOptions::new()).await.unwrap();
        }
        assert_eq!(
            (uploads(&a).len(), uploads(&b).len(), uploads(&c).len()),
            (3, 3, 0)
        );

        // Most free space: group2 has more.
        leader.update(|m| m.server_mut(2).unwrap().disk_free = 2 << 30);
        let client = Client::connect_with(
            [leader.addr()],
            cfg().upload_group_rule(UploadGroupRule::MostFreeSpace),
        )
        .await
        .unwrap();
        for _ in 0..3 {
            client.upload(b"free", UploadOptions::new()).await.unwrap();
        }
        assert_eq!((uploads(&a).len(), uploads(&b).len()), (3, 6));
    });
}

#[tokio::test]
async fn connect_fails_in_bounded_time_without_leaders() {
    bounded!(async {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let cfg = cfg()
            .connect_timeout(Duration::from_millis(300))
            .cluster_wait(Duration::from_millis(500));
        let start = Instant::now();
        let e = Client::connect_with([dead.as_str()], cfg)
            .await
            .unwrap_err();
        assert!(e.is_network(), "{e}");
        assert!(start.elapsed() < Duration::from_secs(3));
        let e = Client::connect(Vec::<String>::new()).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::BadRequest));
    });
}
