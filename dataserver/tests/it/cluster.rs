//! Cluster membership with real processes: three `chorus-leader`s and real
//! `chorus-dataserver`s started with `--leaders` (`testkit::Cluster`).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::cluster::{ClusterMap, ServerId, ServerStatus};
use proto::{ErrorCode, Message, ReplOp, ReplRecord, Reply, Request, RequestEnvelope, WireError};
use testkit::{Cluster, ClusterOpts, DataserverOpts};

use crate::bad_input::{mount_tmpfs, Unmount};
use crate::raw::RawConn;

/// Leader flags that make failure detection and leases fast.
const FAST: &[&str] = &["--server-timeout-ms", "1000", "--master-lease-ms", "1500"];
const FAST_LEASE: Duration = Duration::from_millis(1500);

/// 3 [`FAST`] leaders and `dataservers` dataservers heartbeating often.
fn fast(dataservers: usize) -> ClusterOpts<'static> {
    ClusterOpts {
        leaders: 3,
        leader_args: FAST,
        dataservers,
        dataserver_args: &["--heartbeat-ms", "300"],
    }
}

fn status_of(m: &ClusterMap, id: ServerId) -> Option<ServerStatus> {
    m.server(id).map(|s| s.status)
}

fn all_active(m: &ClusterMap, ids: &[ServerId]) -> bool {
    ids.iter()
        .all(|id| status_of(m, *id) == Some(ServerStatus::Active))
        && m.group("group1").is_some_and(|g| g.master.is_some())
}

/// Send one request without a body, carrying `epoch`.
pub(crate) async fn call_epoch(
    addr: SocketAddr,
    op: Request,
    epoch: u64,
) -> Result<Reply, WireError> {
    let mut c = RawConn::connect(addr).await;
    let env = RequestEnvelope {
        id: 7,
        client_id: 0,
        seq: 0,
        epoch,
        op,
    };
    c.w.write(&Message::Request(env), &[]).await.expect("send");
    c.response(7).await
}

async fn try_upload(addr: SocketAddr, data: &[u8]) -> Result<Reply, WireError> {
    let mut c = RawConn::connect(addr).await;
    c.call(
        Request::Upload {
            size: data.len() as u64,
            ext: "txt".into(),
            meta: vec![],
            appender: false,
        },
        data,
    )
    .await
}

async fn upload_ok(addr: SocketAddr, data: &[u8]) -> String {
    match try_upload(addr, data).await {
        Ok(Reply::Stat(s)) => s.file_id,
        other => panic!("upload to {addr} failed: {other:?}"),
    }
}

fn addr_of(m: &ClusterMap, id: ServerId) -> SocketAddr {
    m.server(id)
        .and_then(|s| s.addr.parse().ok())
        .expect("server address in the map")
}

/// Default leader timings (3 s): join, routing, OFFLINE detection within
/// server_timeout + 1 s, rejoin as RECOVERING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_route_to_the_master_and_go_offline() {
    let t0 = Instant::now();
    let mut c = Cluster::start(ClusterOpts::default());
    let lc = c.leader_client();
    let map = c
        .wait_map(&lc, Duration::from_secs(15), "three ACTIVE members", |m| {
            all_active(m, &[1, 2, 3])
        })
        .await;
    println!("cluster up, 3 dataservers ACTIVE after {:?}", t0.elapsed());
    let g = map.group("group1").expect("group1");
    let master = g.master.expect("a master");
    assert_eq!(g.members, vec![1, 2, 3]);
    let master_addr = addr_of(&map, master);
    let slave = (1..=3).find(|id| *id != master).expect("a slave");
    let slave_addr = addr_of(&map, slave);
    // The advertised address is the listen address.
    assert_eq!(master_addr, c.dataservers[master as usize - 1].addr);

    // Writes go through the master...
    let file = upload_ok(master_addr, b"hello cluster").await;
    let mut conn = RawConn::connect(master_addr).await;
    assert_eq!(
        conn.download(&file).await.expect("read back"),
        b"hello cluster"
    );
    // ...a slave points at it, and still answers pings.
    let e = try_upload(slave_addr, b"nope").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotMaster, "{e}");
    assert!(e.message.contains(&format!("master={master_addr}")), "{e}");
    let e = call_epoch(
        slave_addr,
        Request::Stat {
            file_id: file.clone(),
        },
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotMaster, "reads too: {e}");
    assert!(matches!(
        call_epoch(slave_addr, Request::Ping, 0).await,
        Ok(Reply::Pong { .. })
    ));
    // Epochs: the current one passes, a newer one means this server's map
    // is behind (stale ones: see the failover test).
    let stat = |epoch| {
        call_epoch(
            master_addr,
            Request::Stat {
                file_id: file.clone(),
            },
            epoch,
        )
    };
    assert!(matches!(stat(g.epoch).await, Ok(Reply::Stat(_))));
    let e = stat(g.epoch + 1).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");

    // SIGKILL a slave: OFFLINE within server_timeout (3 s) + 1 s.
    let killed = slave;
    c.dataservers[killed as usize - 1].kill();
    let t_kill = Instant::now();
    c.wait_map(&lc, Duration::from_secs(4), "killed slave OFFLINE", |m| {
        status_of(m, killed) == Some(ServerStatus::Offline)
    })
    .await;
    let detected = t_kill.elapsed();
    println!("OFFLINE detected {detected:?} after SIGKILL (server_timeout 3 s)");
    assert!(detected <= Duration::from_secs(4));

    // It comes back RECOVERING, copies the master's write and climbs to
    // ACTIVE (`replication.rs` covers this under load).
    c.dataservers[killed as usize - 1].restart();
    let m = c
        .wait_map(&lc, Duration::from_secs(15), "back to ACTIVE", |m| {
            status_of(m, killed) == Some(ServerStatus::Active)
        })
        .await;
    assert_eq!(m.group("group1").and_then(|g| g.master), Some(master));
    let e = try_upload(c.dataservers[killed as usize - 1].addr, b"x")
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotMaster, "{e}");
}

/// Fast timings: SIGKILL the master, a slave takes over at a higher epoch
/// and accepts writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_master_appoints_a_new_one() {
    let mut c = Cluster::start(fast(3));
    let lc = c.leader_client();
    let map = c
        .wait_map(&lc, Duration::from_secs(15), "three ACTIVE members", |m| {
            all_active(m, &[1, 2, 3])
        })
        .await;
    let g = map.group("group1").expect("group1").clone();
    let old = g.master.expect("a master");
    upload_ok(addr_of(&map, old), b"before failover").await;

    c.dataservers[old as usize - 1].kill();
    let t_kill = Instant::now();
    let m = c
        .wait_map(&lc, Duration::from_secs(10), "a new master", |m| {
            m.group("group1")
                .is_some_and(|ng| ng.master.is_some_and(|x| x != old) && ng.epoch > g.epoch)
        })
        .await;
    let appointed = t_kill.elapsed();
    let ng = m.group("group1").expect("group1");
    let new = ng.master.expect("new master");
    let new_addr = addr_of(&m, new);
    // The new master serves once it holds its lease.
    let deadline = Instant::now() + Duration::from_secs(5);
    let file = loop {
        match try_upload(new_addr, b"after failover").await {
            Ok(Reply::Stat(s)) => break s.file_id,
            Err(e) if Instant::now() < deadline => {
                assert!(
                    matches!(e.code, ErrorCode::Unavailable | ErrorCode::NotMaster),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("new master refused writes: {other:?}"),
        }
    };
    println!(
        "failover: new master {new} (epoch {} -> {}) appointed {appointed:?} after SIGKILL, \
         writable after {:?} (server_timeout 1 s, lease 1.5 s)",
        g.epoch,
        ng.epoch,
        t_kill.elapsed()
    );
    assert!(file.starts_with("group1/"));
    // The remaining slave follows the new master.
    let other = (1..=3).find(|id| *id != old && *id != new).expect("slave");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let e = try_upload(addr_of(&m, other), b"x").await.unwrap_err();
        if e.code == ErrorCode::NotMaster && e.message.contains(&format!("master={new_addr}")) {
            break;
        }
        assert!(Instant::now() < deadline, "slave still says {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A request still carrying the old epoch is stale at the new master.
    let e = call_epoch(new_addr, Request::Stat { file_id: file }, g.epoch)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::StaleEpoch);
    assert_eq!(
        e.message,
        format!("stale epoch {}, current {}", g.epoch, ng.epoch)
    );
}

/// A master whose disk fails under it (its binlog's file system fills up
/// behind the engine's back) poisons its engine, stops heartbeating, and
/// the leaders appoint its slave, which has every write the master
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_disk_fails_is_replaced_by_its_slave() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("ds1");
    let meta = data.join("meta");
    std::fs::create_dir_all(&meta).expect("meta dir");
    // The binlog's own small file system (root is required; CI runs as root).
    assert!(
        mount_tmpfs(&meta, "8m"),
        "mounting a tmpfs needs root: run the tests as root"
    );
    let _unmount = Unmount(meta.clone());
    let mut c = Cluster::start(fast(0));
    let lc = c.leader_client();
    c.add_dataserver_in(&data);
    c.wait_map(&lc, Duration::from_secs(15), "server 1 master", |m| {
        all_active(m, &[1]) && m.group("group1").and_then(|g| g.master) == Some(1)
    })
    .await;
    c.add_dataserver();
    let map = c
        .wait_map(&lc, Duration::from_secs(20), "both ACTIVE", |m| {
            all_active(m, &[1, 2])
        })
        .await;
    let first = addr_of(&map, 1);
    let mut acked = Vec::new();
    for i in 0..10 {
        let body = format!("before the disk failed {i}");
        acked.push((upload_ok(first, body.as_bytes()).await, body));
    }

    // Fill the binlog's file system; the store path still has room, so the
    // engine's space check lets writes through, and once the records have
    // used the space the binlog had zeroed ahead (up to ~1.25 MiB), an
    // append fails. Writers keep going until one is refused.
    let mut filler = std::fs::File::create(meta.join("filler")).expect("filler");
    let mb = vec![1u8; 1 << 20];
    while std::io::Write::write_all(&mut filler, &mb).is_ok() {}
    drop(filler);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..16 {
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                i += 1;
                let body = format!("while the disk fails {w}/{i}");
                match try_upload(first, body.as_bytes()).await {
                    Ok(Reply::Stat(s)) => acked.push((s.file_id, body)),
                    Ok(other) => panic!("unexpected answer {other:?}"),
                    Err(e) => {
                        stop.store(true, Ordering::Release);
                        return (acked, Some(e));
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "the full disk never failed a write"
                );
            }
            (acked, None)
        }));
    }
    let mut refused = None;
    for w in writers {
        let (mut a, e) = w.await.expect("writer");
        acked.append(&mut a);
        refused = refused.or(e);
    }
    let refused = refused.expect("a write was refused");
    println!(
        "the master refused a write once its binlog's disk was full, after {} writes: {refused}",
        acked.len()
    );
    c.dataservers[0].wait_log("storage engine poisoned", Duration::from_secs(5));

    // Silent now: the slave takes over, with everything acknowledged.
    let t = Instant::now();
    c.wait_map(&lc, Duration::from_secs(15), "server 2 master", |m| {
        m.group("group1").and_then(|g| g.master) == Some(2)
            && status_of(m, 1) == Some(ServerStatus::Offline)
    })
    .await;
    println!(
        "server 2 appointed {:?} after the first refused write",
        t.elapsed()
    );
    c.dataservers[0].wait_log("no more heartbeats", Duration::from_secs(1));
    let sdk = client::Client::connect_with(
        c.leaders.addrs(),
        client::ClientConfig::default().cluster_wait(Duration::from_secs(10)),
    )
    .await
    .expect("connect the SDK");
    for (id, body) in &acked {
        let got = sdk
            .download(id)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(got, body.as_bytes(), "{id}");
    }
    let s = sdk
        .upload(b"after the takeover", client::UploadOptions::default())
        .await
        .expect("the new master takes writes");
    assert!(s.file_id.starts_with("group1/"));
}

/// A slave takes replication batches only at its master's epoch, and
/// refuses malformed ones (a body over the batch limit, sizes that overflow)
/// without changing anything or going down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_refuses_bad_replication_batches_and_changes_nothing() {
    let c = Cluster::start(fast(2));
    let lc = c.leader_client();
    let map = c
        .wait_map(&lc, Duration::from_secs(20), "both ACTIVE", |m| {
            all_active(m, &[1, 2])
        })
        .await;
    let g = map.group("group1").expect("group1");
    let (master, epoch) = (g.master.expect("a master"), g.epoch);
    let slave = if master == 1 { 2 } else { 1 };
    let (maddr, saddr) = (addr_of(&map, master), addr_of(&map, slave));
    let kept = upload_ok(maddr, b"kept").await;
    let version = |addr| async move {
        match call_epoch(addr, Request::Ping, 0).await {
            Ok(Reply::Pong { data_version, .. }) => data_version,
            other => panic!("ping: {other:?}"),
        }
    };
    let before = version(saddr).await;
    let rec = |v: u64, body_len: u64| ReplRecord {
        version: v,
        file_id: kept.clone(),
        op: ReplOp::Noop,
        prev_version: 0,
        file_version: v,
        state: None,
        body_len,
        client_id: 0,
        seq: 0,
    };
    let mut conn = RawConn::connect(saddr).await;
    // An old epoch: refused, the body drained, the connection in step.
    let batch = Request::ReplicateBatch {
        records: vec![rec(before + 1, 3), rec(before + 2, 0)],
    };
    let e = conn
        .try_call_at(0, batch, b"abc")
        .await
        .expect("answered")
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::StaleEpoch, "{e}");
    // Over the batch limit at the right epoch: refused before applying.
    let half = 5 << 20;
    let batch = Request::ReplicateBatch {
        records: vec![rec(before + 1, half), rec(before + 2, half)],
    };
    let big = vec![0u8; 2 * half as usize];
    let e = conn
        .try_call_at(epoch, batch, &big)
        .await
        .expect("answered")
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    assert!(matches!(
        conn.try_call_at(epoch, Request::Ping, &[]).await,
        Ok(Ok(Reply::Pong { .. }))
    ));
    // Sizes that overflow: too large, and the connection is closed.
    let batch = Request::ReplicateBatch {
        records: vec![
            rec(before + 1, u64::MAX / 2 + 1),
            rec(before + 2, u64::MAX / 2 + 1),
        ],
    };
    let e = conn
        .try_call_at(epoch, batch, &[])
        .await
        .expect("answered")
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLarge, "{e}");

    // Nothing changed; the slave is still ACTIVE and takes the next write.
    assert_eq!(version(saddr).await, before);
    let next = upload_ok(maddr, b"after").await;
    let map = lc.get_map(true).await.expect("map");
    assert_eq!(status_of(&map, slave), Some(ServerStatus::Active));
    assert_eq!(version(saddr).await, before + 1);
    let mut m = RawConn::connect(maddr).await;
    assert_eq!(m.download(&kept).await.expect("kept"), b"kept");
    assert_eq!(m.download(&next).await.expect("next"), b"after");
}

/// A master that cannot reach the leaders stops serving within its lease,
/// and serves again once they are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_cut_off_from_the_leaders_stops_within_its_lease() {
    let mut c = Cluster::start(fast(1));
    let lc = c.leader_client();
    let ds_addr = c.dataservers[0].addr;
    c.wait_map(&lc, Duration::from_secs(15), "single master", |m| {
        all_active(m, &[1])
    })
    .await;
    // Serving (wait for the first lease).
    let deadline = Instant::now() + Duration::from_secs(5);
    while try_upload(ds_addr, b"x").await.is_err() {
        assert!(Instant::now() < deadline, "master never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    c.leaders.suspend_all();
    let t_cut = Instant::now();
    let refused = loop {
        match try_upload(ds_addr, b"while cut off").await {
            Ok(_) => {}
            Err(e) => break e,
        }
        assert!(
            t_cut.elapsed() < FAST_LEASE + Duration::from_secs(2),
            "still serving long after the lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let stopped = t_cut.elapsed();
    println!("master stopped serving {stopped:?} after the leaders were cut off (lease 1.5 s)");
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
    assert!(
        refused.message.contains("master lease expired"),
        "{refused}"
    );
    // The lease counts from the last heartbeat sent, which is before the cut.
    assert!(
        stopped <= FAST_LEASE + Duration::from_millis(100),
        "{stopped:?}"
    );
    // Pings still answer.
    assert!(matches!(
        call_epoch(ds_addr, Request::Ping, 0).await,
        Ok(Reply::Pong { .. })
    ));

    c.leaders.resume_all();
    let t_back = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_upload(ds_addr, b"back").await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "never served again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    println!(
        "serving again {:?} after the leaders resumed",
        t_back.elapsed()
    );
    // SIGTERM stops heartbeats and the server cleanly.
    let ds = &mut c.dataservers[0];
    assert!(ds.stop(), "clean exit on SIGTERM: {}", ds.log_text());
    assert!(ds.log_text().contains("stopped"));
}

/// A server starts before any leader: it retries, refuses data requests
/// meanwhile, and joins once they are up. A duplicate id is refused and the
/// process exits non-zero with the leader's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_once_leaders_appear_and_a_refused_join_is_fatal() {
    // Reserve the leaders' addresses, start the dataserver first.
    let mut c = Cluster::start_dataservers_first(fast(1));
    let lc = c.leader_client();
    let ds_addr = c.dataservers[0].addr;
    let e = try_upload(ds_addr, b"too early").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(e.message.contains("not joined"), "{e}");
    c.leaders.start_all();
    c.wait_map(
        &lc,
        Duration::from_secs(15),
        "joined after leaders came up",
        |m| all_active(m, &[1]),
    )
    .await;
    assert!(
        c.dataservers[0].log_text().contains("joined the cluster"),
        "{}",
        c.dataservers[0].log_text()
    );

    // Same id, another address: refused, exit non-zero.
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("refused.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = DataserverOpts {
        server_id: 1,
        leaders: c.leaders.addrs(),
        ..DataserverOpts::default()
    }
    .command(dir.path(), testkit::free_addr())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .expect("spawn");
    let Some(status) = testkit::wait_exit(&mut child, Duration::from_secs(20)) else {
        panic!("a refused join did not end the process");
    };
    let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!status.success(), "a refused join must fail: {stderr}");
    assert!(stderr.contains("duplicate server id 1"), "{stderr}");
}
