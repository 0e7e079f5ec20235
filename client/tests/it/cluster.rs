//! Cluster mode against a fake leader and fake dataservers: routing by the
//! pushed map, group choice, and retries through master changes.

use std::time::{Duration, Instant};

use client::{Client, ClientConfig, ErrorCode, ReadRule, UploadGroupRule, UploadOptions};
use proto::cluster::{ClusterMap, ReplicationMode, ServerStatus};
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

/// An async group1 of fakes 1 and 2 (both ACTIVE, no master, epoch 0).
fn async_map(a: &str, b: &str) -> ClusterMap {
    let mut g = group("group1", &[1, 2], None, 0);
    g.mode = ReplicationMode::Async;
    ClusterMap {
        version: 1,
        updated_ms: 0,
        groups: vec![g],
        servers: vec![
            server(1, "group1", a, ServerStatus::Active),
            server(2, "group1", b, ServerStatus::Active),
        ],
    }
}

fn count(f: &FakeServer, pick: fn(&Request) -> bool) -> usize {
    f.log().into_iter().filter(|e| pick(&e.op)).count()
}

#[tokio::test]
async fn async_group_uploads_spread_writes_go_to_the_source_and_missing_reads_ask_it() {
    bounded!(async {
        let a = FakeServer::start_as(1).await;
        let b = FakeServer::start_as(2).await;
        let leader = FakeLeader::start(async_map(&a.addr(), &b.addr())).await;
        let client = Client::connect_with([leader.addr()], cfg().read_rule(ReadRule::Any))
            .await
            .unwrap();

        // Uploads go to both members (round robin), with epoch 0.
        let mut ids = Vec::new();
        for i in 0..4u8 {
            ids.push(
                client
                    .upload(&[i; 3], UploadOptions::new())
                    .await
                    .unwrap()
                    .file_id,
            );
        }
        let up = |f: &FakeServer| uploads(f);
        assert_eq!((up(&a).len(), up(&b).len()), (2, 2));
        assert!(up(&a).iter().chain(up(&b).iter()).all(|e| e.epoch == 0));

        // Nothing was pushed: every read of a file lands on its source,
        // directly or after the peer said not_found.
        for id in &ids {
            for _ in 0..4 {
                assert_eq!(client.download(id).await.unwrap().len(), 3);
                assert!(client.exists(id).await.unwrap());
                client.stat(id).await.unwrap();
            }
        }
        let is_read = |op: &Request| {
            matches!(
                op,
                Request::Download { .. } | Request::Exists { .. } | Request::Stat { .. }
            )
        };
        // Both members were asked (reads turn over the members).
        assert!(count(&a, is_read) > 0 && count(&b, is_read) > 0);

        // Writes go to the source only, whatever the read rule.
        let id_a = ids
            .iter()
            .find(|id| a.file_data(id).is_some())
            .unwrap()
            .clone();
        let before_b = b.log().len();
        for _ in 0..3 {
            client.modify(&id_a, 0, b"Z", None).await.unwrap();
        }
        client
            .set_meta(&id_a, vec![], client::MetaMode::Overwrite, None)
            .await
            .unwrap();
        assert_eq!(b.log().len(), before_b, "no write reached the peer");
        assert_eq!(a.file_data(&id_a).unwrap()[0], b'Z');

        // Once pushed, a peer answers reads itself, stale or not: copy the
        // file to b, change it on a, and read from both in turn.
        assert!(client.exists_on(&a.addr(), &id_a).await.unwrap());
        assert!(!client.exists_on(&b.addr(), &id_a).await.unwrap());
        b.copy_file_from(&a, &id_a);
        assert!(client.exists_on(&b.addr(), &id_a).await.unwrap());
        client.modify(&id_a, 0, b"Y", None).await.unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            seen.insert(client.download(&id_a).await.unwrap()[0]);
        }
        assert_eq!(
            seen,
            [b'Y', b'Z'].into_iter().collect(),
            "read_rule Any reads the stale peer copy too"
        );

        // A file nobody has: not_found, and the source was asked every
        // time (the peer's not_found is not believed alone).
        let nobody = proto::FileId::generate("group1", 0, 1, 1_700_000_000, 1, 0, "")
            .unwrap()
            .to_string();
        let (ra, rb) = (count(&a, is_read), count(&b, is_read));
        for _ in 0..2 {
            let e = client.download(&nobody).await.unwrap_err();
            assert!(e.is_not_found(), "{e}");
        }
        assert!(!client.exists(&nobody).await.unwrap());
        assert_eq!(count(&a, is_read) - ra, 3, "the source answered every read");
        assert!(count(&b, is_read) - rb >= 1, "the peer was tried too");

        // The source goes OFFLINE: writes wait for a newer map, then fail
        // unavailable; reads use the peer alone and believe its not_found.
        leader.update(|m| m.server_mut(1).unwrap().status = ServerStatus::Offline);
        let client = Client::connect_with(
            [leader.addr()],
            cfg()
                .read_rule(ReadRule::Any)
                .cluster_wait(Duration::from_millis(300)),
        )
        .await
        .unwrap();
        let only_on_a = ids
            .iter()
            .find(|id| a.file_data(id).is_some() && b.file_data(id).is_none())
            .unwrap()
            .clone();
        let e = client.modify(&only_on_a, 0, b"X", None).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
        let e = client.download(&only_on_a).await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(!client.exists(&only_on_a).await.unwrap());
        // Uploads go to the ACTIVE member only.
        let before = (up(&a).len(), up(&b).len());
        for _ in 0..3 {
            client.upload(b"x", UploadOptions::new()).await.unwrap();
        }
        assert_eq!((up(&a).len(), up(&b).len()), (before.0, before.1 + 3));
    });
}

#[tokio::test]
async fn async_group_read_rule_master_reads_the_source() {
    bounded!(async {
        let a = FakeServer::start_as(1).await;
        let b = FakeServer::start_as(2).await;
        let leader = FakeLeader::start(async_map(&a.addr(), &b.addr())).await;
        let client = Client::connect_with([leader.addr()], cfg()).await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..2 {
            ids.push(
                client
                    .upload(b"abc", UploadOptions::new())
                    .await
                    .unwrap()
                    .file_id,
            );
        }
        let downloads = |f: &FakeServer| {
            f.log()
                .into_iter()
                .filter(|e| matches!(e.op, Request::Download { .. }))
                .count()
        };
        // exists_on asks the named server alone, with the group's epoch
        // (0: async).
        let before = b.log().len();
        let on_b = client.exists_on(&b.addr(), &ids[0]).await.unwrap();
        assert_eq!(on_b, b.file_data(&ids[0]).is_some());
        let asked = b.log();
        assert_eq!(asked.len(), before + 1);
        assert_eq!(asked[before].epoch, 0);
        for id in &ids {
            let (da, db) = (downloads(&a), downloads(&b));
            for _ in 0..3 {
                assert_eq!(client.download(id).await.unwrap(), b"abc");
            }
            // Exactly one of them (the source) served all three, first try.
            let (na, nb) = (downloads(&a) - da, downloads(&b) - db);
            assert!((na, nb) == (3, 0) || (na, nb) == (0, 3), "{na} {nb}");
        }
    });
}
