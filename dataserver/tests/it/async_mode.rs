//! Async (FastDFS-style) replication with real processes: a leader and an
//! async group whose members take writes directly (each client talks to
//! one member, `Client::connect_direct`); each member pushes its own
//! changes to the others. Checked: convergence (own listing comparison and
//! `chorus verify`), byte-exact files on every member, no change looping
//! (data versions stay put and add up), push marks surviving a restart,
//! and a fresh member climbing WAIT_SYNC → SYNCING → ACTIVE and converging.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use client::{Client, ClientConfig, UploadOptions};
use proto::cluster::{ClusterMap, ServerId, ServerStatus};
use proto::{ErrorCode, MetaEntry, MetaMode};
use testkit::{Cluster, ClusterOpts, Dataserver, DataserverOpts};

const LEADER_ARGS: &[&str] = &["--server-timeout-ms", "1500"];
const CONVERGE: Duration = Duration::from_secs(30);

/// Start async member `id` with its own metrics port.
fn add_member(c: &mut Cluster, id: u32) -> SocketAddr {
    let metrics = testkit::free_addr();
    let ds = Dataserver::start(DataserverOpts {
        server_id: id,
        leaders: c.leaders.addrs(),
        extra_args: [
            "--replication",
            "async",
            "--heartbeat-ms",
            "300",
            "--large-file-threshold",
            "1MiB",
            "--metrics-listen",
            &metrics.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..DataserverOpts::default()
    });
    c.dataservers.push(ds);
    metrics
}

fn status(m: &ClusterMap, id: ServerId) -> Option<ServerStatus> {
    m.server(id).map(|s| s.status)
}

fn all_active(m: &ClusterMap, n: u64) -> bool {
    (1..=n).all(|id| status(m, id) == Some(ServerStatus::Active))
        && m.group("group1").is_some_and(|g| g.master.is_none())
}

fn piece(seed: u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (seed.wrapping_mul(131).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

/// What a file should be: content and metadata (None: deleted).
type Model = BTreeMap<String, Option<(Vec<u8>, Vec<MetaEntry>)>>;

async fn direct(addr: SocketAddr) -> Client {
    let cfg = ClientConfig::default().request_timeout(Duration::from_secs(30));
    Client::connect_direct_with(addr.to_string(), cfg)
        .await
        .expect("direct client")
}

/// Writes on one member, each of its own files; returns how many changes
/// (data versions) it made there.
async fn write_on(c: &Client, seed: u64, files: usize, model: &mut Model) -> u64 {
    let mut changes = 0u64;
    let mut mine = Vec::new();
    for i in 0..files as u64 {
        let s = seed * 10_000 + i;
        let size = match i {
            0 => 1_500_000,              // a large file
            1 if seed == 1 => 9_500_000, // streamed on push (above 8 MiB)
            _ => 100 + (s % 20_000) as usize,
        };
        let data = piece(s, size);
        let appender = i % 5 == 0;
        let opts = UploadOptions {
            appender,
            meta: vec![MetaEntry::new("n", i.to_string())],
            ..Default::default()
        };
        let st = c.upload(&data, opts).await.expect("upload");
        changes += 1;
        model.insert(
            st.file_id.clone(),
            Some((data, vec![MetaEntry::new("n", i.to_string())])),
        );
        mine.push((st.file_id, appender));
    }
    for (k, (id, appender)) in mine.iter().enumerate() {
        let Some(Some((data, meta))) = model.get_mut(id) else {
            unreachable!()
        };
        match k % 7 {
            0 if *appender => {
                let more = piece(k as u64 + seed, 333);
                c.append(id, &more, None).await.expect("append");
                data.extend_from_slice(&more);
                changes += 1;
            }
            1 => {
                let patch = piece(k as u64 * 3 + seed, 50);
                let at = (data.len() / 2) as u64;
                c.modify(id, at, &patch, None).await.expect("modify");
                let at = at as usize;
                let end = (at + patch.len()).min(data.len());
                data[at..end].copy_from_slice(&patch[..end - at]);
                if at + patch.len() > end {
                    data.extend_from_slice(&patch[end - at..]);
                }
                changes += 1;
            }
            2 => {
                c.set_meta(id, vec![MetaEntry::new("tag", "x")], MetaMode::Merge, None)
                    .await
                    .expect("set_meta");
                meta.push(MetaEntry::new("tag", "x"));
                changes += 1;
            }
            3 => {
                c.delete(id, None).await.expect("delete");
                model.insert(id.clone(), None);
                changes += 1;
            }
            _ => {}
        }
    }
    changes
}

/// Every member lists the same files, with the same size, crc32 and
/// version; those include the model's live files, and (`exact`) nothing
/// else — without `exact`, writes with an unknown outcome may be there.
async fn converged_with(
    c: &Client,
    addrs: &[SocketAddr],
    model: &Model,
    exact: bool,
) -> Result<(), String> {
    let live: Vec<&String> = model
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k)
        .collect();
    let mut first: Option<Vec<(String, u64, u32, u64)>> = None;
    for a in addrs {
        let (files, _) = c
            .list_all_files(&a.to_string())
            .await
            .map_err(|e| format!("listing {a}: {e}"))?;
        let l: Vec<(String, u64, u32, u64)> = files
            .into_iter()
            .map(|f| (f.file_id, f.size, f.crc32, f.version))
            .collect();
        let ids: Vec<&String> = l.iter().map(|f| &f.0).collect();
        if !exact {
            let have: std::collections::BTreeSet<&String> = ids.iter().copied().collect();
            if let Some(missing) = live.iter().find(|id| !have.contains(**id)) {
                return Err(format!("{a} lacks {missing}"));
            }
        } else if ids != live {
            return Err(format!(
                "{a} lists {} files, the model has {} live",
                ids.len(),
                live.len()
            ));
        }
        match &first {
            None => first = Some(l),
            Some(f) if *f != l => return Err(format!("{a} differs from {}", addrs[0])),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Every dataserver's warnings and errors, for failure messages.
fn warnings(c: &Cluster) -> String {
    let mut out = String::new();
    for (i, d) in c.dataservers.iter().enumerate() {
        for l in d.log_text().lines() {
            if l.contains("WARN")
                || l.contains("ERROR")
                || l.contains("push")
                || l.contains("offer")
                || l.contains("panick")
            {
                out.push_str(&format!("#{}: {l}\n", i + 1));
            }
        }
    }
    out
}

async fn wait_converged(c: &Cluster, lister: &Client, addrs: &[SocketAddr], model: &Model) {
    wait_converged_with(c, lister, addrs, model, true).await
}

async fn wait_converged_with(
    c: &Cluster,
    lister: &Client,
    addrs: &[SocketAddr],
    model: &Model,
    exact: bool,
) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match converged_with(lister, addrs, model, exact).await {
            Ok(()) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "not converged within {CONVERGE:?}: {e}\n{}\nwarnings:\n{}",
                c.logs(),
                warnings(c)
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file byte-exact (content and metadata) on every member; deleted
/// ones gone everywhere.
async fn check_files(clients: &[&Client], model: &Model) {
    for (id, want) in model {
        for (i, c) in clients.iter().enumerate() {
            match want {
                Some((data, meta)) => {
                    let got = c
                        .download(id)
                        .await
                        .unwrap_or_else(|e| panic!("{id} on #{i}: {e}"));
                    assert!(got == *data, "{id} on member #{i}: content differs");
                    let mut m = c.get_meta(id).await.expect("get_meta").entries;
                    let mut w = meta.clone();
                    m.sort_by(|a, b| a.key.cmp(&b.key));
                    w.sort_by(|a, b| a.key.cmp(&b.key));
                    assert_eq!(m, w, "{id} on member #{i}: metadata");
                }
                None => assert!(
                    !c.exists(id).await.expect("exists"),
                    "{id} on #{i}: deleted but present"
                ),
            }
        }
    }
}

async fn data_version(c: &Client) -> u64 {
    c.ping().await.expect("ping").data_version
}

/// One figure from a member's Prometheus metrics.
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(addr).expect("metrics connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("metrics read");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics:\n{text}"))
}

fn mark(ds: &Dataserver, peer: ServerId) -> Option<u64> {
    std::fs::read_to_string(ds.data_dir.join("meta/marks").join(peer.to_string()))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// `chorus verify group1` exits 0 (retrying briefly while the map settles).
async fn verify_passes(c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out) = tokio::task::block_in_place(|| c.verify("group1"));
        if code == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "verify exit {code}:\n{out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_members_take_writes_everywhere_and_converge() {
    let mut c = Cluster::start(ClusterOpts {
        leaders: 1,
        leader_args: LEADER_ARGS,
        dataservers: 0,
        dataserver_args: &[],
    });
    let ma = add_member(&mut c, 1);
    let mb = add_member(&mut c, 2);
    let lc = c.leader_client();
    c.wait_map(&lc, Duration::from_secs(20), "both members ACTIVE", |m| {
        all_active(m, 2)
    })
    .await;
    let (a_addr, b_addr) = (c.dataservers[0].addr, c.dataservers[1].addr);
    let a = direct(a_addr).await;
    let b = direct(b_addr).await;

    // Writes on both members at once, each on its own files.
    let mut model_a = Model::new();
    let mut model_b = Model::new();
    let (own_a, own_b) = tokio::join!(
        write_on(&a, 1, 40, &mut model_a),
        write_on(&b, 2, 40, &mut model_b)
    );
    let mut model = model_a.clone();
    model.extend(model_b.clone());

    // A member changes only its own files: B's file on A is refused and
    // names B.
    let (b_file, _) = model_b.iter().find(|(_, v)| v.is_some()).unwrap();
    wait_converged(&c, &a, &[a_addr, b_addr], &model).await;
    let err = a
        .set_meta(
            b_file,
            vec![MetaEntry::new("no", "no")],
            MetaMode::Merge,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotMaster), "{err}");
    assert!(err.to_string().contains(&b_addr.to_string()), "{err}");
    check_files(&[&a, &b], &model).await;

    // Nothing loops: versions stay put, and each member's data version is
    // its own changes plus the pushed ones it took.
    let (va, vb) = (data_version(&a).await, data_version(&b).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((data_version(&a).await, data_version(&b).await), (va, vb));
    let took_a =
        tokio::task::block_in_place(|| metric(ma, "chorus_async_replica_lag_seconds_count"));
    let took_b =
        tokio::task::block_in_place(|| metric(mb, "chorus_async_replica_lag_seconds_count"));
    assert_eq!(va, own_a + took_a as u64, "A: own {own_a}, took {took_a}");
    assert_eq!(vb, own_b + took_b as u64, "B: own {own_b}, took {took_b}");
    assert!(took_a as u64 <= own_b && took_b as u64 <= own_a);
    let lag_sum =
        tokio::task::block_in_place(|| metric(ma, "chorus_async_replica_lag_seconds_sum"));
    let lag_max =
        tokio::task::block_in_place(|| metric(ma, "chorus_async_replica_lag_max_seconds"));
    eprintln!(
        "replica lag on A: {took_a} pushes, mean {:.1} ms, max {:.1} ms",
        lag_sum * 1000.0 / took_a.max(1.0),
        lag_max * 1000.0
    );
    verify_passes(&c).await;

    // Marks survive a restart: stop B, its mark for A is on disk; restart.
    let mark_b_for_a = {
        let ds = &mut c.dataservers[1];
        assert!(tokio::task::block_in_place(|| ds.stop()), "clean stop");
        mark(ds, 1).expect("B's mark for A on disk")
    };
    assert!(mark_b_for_a > 0);
    let mark_a_for_b = mark(&c.dataservers[0], 2).expect("A's mark for B on disk");
    // A takes writes while B is away (OFFLINE in the map: otherwise the
    // wait for ACTIVE below could see B's status from before it stopped,
    // and write to it before it has joined again).
    let away = write_on(&a, 3, 10, &mut model_a).await;
    model.extend(model_a.clone());
    c.wait_map(&lc, Duration::from_secs(20), "B OFFLINE", |m| {
        status(m, 2) == Some(ServerStatus::Offline)
    })
    .await;
    tokio::task::block_in_place(|| c.dataservers[1].restart());
    c.wait_map(&lc, Duration::from_secs(20), "B back to ACTIVE", |m| {
        all_active(m, 2)
    })
    .await;
    let b = direct(b_addr).await;
    let more_b = write_on(&b, 4, 10, &mut model_b).await;
    model.extend(model_b.clone());
    wait_converged(&c, &a, &[a_addr, b_addr], &model).await;
    check_files(&[&a, &b], &model).await;
    assert!(away > 0 && more_b > 0);
    let later_b = mark(&c.dataservers[1], 1).unwrap_or(0);
    let later_a = mark(&c.dataservers[0], 2).unwrap_or(0);
    assert!(
        later_b >= mark_b_for_a,
        "B's mark went back: {later_b} < {mark_b_for_a}"
    );
    assert!(
        later_a > mark_a_for_b,
        "A's mark did not move: {later_a} <= {mark_a_for_b}"
    );
    verify_passes(&c).await;

    // A fresh member: WAIT_SYNC → SYNCING → ACTIVE, then it has everything
    // and takes writes of its own.
    let mc = add_member(&mut c, 3);
    let c_addr = c.dataservers[2].addr;
    c.wait_map(&lc, Duration::from_secs(60), "C ACTIVE", |m| {
        all_active(m, 3)
    })
    .await;
    // The line is logged once the leaders answered, just after the map shows it.
    let log = c.dataservers[2].wait_log("SYNCING -> ACTIVE", Duration::from_secs(5));
    assert!(log.contains("WAIT_SYNC -> SYNCING"), "{log}");
    let cc = direct(c_addr).await;
    let mut model_c = Model::new();
    write_on(&cc, 5, 8, &mut model_c).await;
    model.extend(model_c);
    wait_converged(&c, &a, &[a_addr, b_addr, c_addr], &model).await;
    check_files(&[&a, &b, &cc], &model).await;
    let took_c =
        tokio::task::block_in_place(|| metric(mc, "chorus_async_replica_lag_seconds_count"));
    // The copy brought everything: the offers from mark 0 skipped it all.
    assert_eq!(took_c, 0.0, "C took {took_c} pushes after its copy");
    verify_passes(&c).await;

    // Versions stay put once converged.
    let before = (
        data_version(&a).await,
        data_version(&b).await,
        data_version(&cc).await,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = (
        data_version(&a).await,
        data_version(&b).await,
        data_version(&cc).await,
    );
    assert_eq!(before, after);
    drop(c);
}

/// Uploads and appends on one member until `stop`: what it acknowledged,
/// the appender files whose last append has an unknown outcome, and how
/// many writes failed.
async fn keep_writing(
    c: Client,
    seed: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Model, Vec<String>, u64) {
    let mut model = Model::new();
    let mut unknown = Vec::new();
    let mut app: Option<String> = None;
    let mut failed = 0u64;
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        n += 1;
        let s = seed * 1_000_000 + n;
        if n.is_multiple_of(4) {
            if let Some(id) = &app {
                let more = piece(s, 200 + (s % 500) as usize);
                match c.append(id, &more, None).await {
                    Ok(_) => {
                        if let Some(Some((data, _))) = model.get_mut(id) {
                            data.extend_from_slice(&more);
                        }
                    }
                    // An unknown outcome: this file gets no more appends
                    // and its content is left out of the check.
                    Err(_) => {
                        model.remove(id);
                        unknown.push(id.clone());
                        app = None;
                        failed += 1;
                    }
                }
                continue;
            }
        }
        let data = piece(s, 500 + (s % 30_000) as usize);
        let opts = UploadOptions {
            appender: app.is_none(),
            ..Default::default()
        };
        match c.upload(&data, opts).await {
            Ok(st) => {
                if app.is_none() {
                    app = Some(st.file_id.clone());
                }
                model.insert(st.file_id, Some((data, Vec::new())));
            }
            Err(_) => failed += 1,
        }
    }
    (model, unknown, failed)
}

/// SIGKILL a member while both take writes (so pushes to and from it are
/// cut mid-way), restart it; then SIGKILL the other. Every acknowledged
/// write ends up on both members, byte-exact, and they converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_killed_mid_push_lose_nothing_and_converge() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut c = Cluster::start(ClusterOpts {
        leaders: 1,
        leader_args: LEADER_ARGS,
        dataservers: 0,
        dataserver_args: &[],
    });
    add_member(&mut c, 1);
    add_member(&mut c, 2);
    let lc = c.leader_client();
    c.wait_map(&lc, Duration::from_secs(20), "both members ACTIVE", |m| {
        all_active(m, 2)
    })
    .await;
    let addrs = [c.dataservers[0].addr, c.dataservers[1].addr];
    let mut model = Model::new();
    for (victim, survivor) in [(1usize, 0usize), (0, 1)] {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let (a, stop) = (*a, stop.clone());
                tokio::spawn(async move {
                    keep_writing(direct(a).await, (victim * 2 + i) as u64 + 10, stop).await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::block_in_place(|| c.dataservers[victim].kill());
        // The survivor goes on alone for a while.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        tokio::task::block_in_place(|| c.dataservers[victim].restart());
        c.wait_map(
            &lc,
            Duration::from_secs(20),
            "the killed member ACTIVE",
            |m| all_active(m, 2),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Release);
        for w in writers {
            let (m, unknown, failed) = tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("a writer did not stop")
                .expect("a writer panicked");
            eprintln!(
                "writer: {} files acknowledged, {failed} writes failed ({} appends unknown)",
                m.len(),
                unknown.len()
            );
            model.extend(m);
        }
        // Writes that failed when a member died may have been applied:
        // they may be listed too, the same on both members.
        let survivor_client = direct(addrs[survivor]).await;
        wait_converged_with(&c, &survivor_client, &addrs, &model, false).await;
    }
    let a = direct(addrs[0]).await;
    let b = direct(addrs[1]).await;
    check_files(&[&a, &b], &model).await;
    verify_passes(&c).await;
    drop(c);
}

/// Forged or malformed async traffic is refused with a clear error and
/// changes nothing: a push of a file whose source is not the sender, a push
/// from a server that is not an ACTIVE member, an install whose body does
/// not match its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_and_malformed_pushes_are_refused() {
    use client::peer::{PeerBody, PeerConn};
    use proto::{FileId, ReplOp, ReplRecord, ReplState, Reply, Request};

    let mut c = Cluster::start(ClusterOpts {
        leaders: 1,
        leader_args: LEADER_ARGS,
        dataservers: 0,
        dataserver_args: &[],
    });
    add_member(&mut c, 1);
    add_member(&mut c, 2);
    let lc = c.leader_client();
    c.wait_map(&lc, Duration::from_secs(20), "both members ACTIVE", |m| {
        all_active(m, 2)
    })
    .await;
    let a_addr = c.dataservers[0].addr;
    let a = direct(a_addr).await;
    let before = data_version(&a).await;
    // A file of server 1 (A itself) that exists nowhere.
    let id = FileId::new("group1", 0, 1, 1_800_000_000, 4, 0, 42, "bin").unwrap();
    let data = b"evil";
    let install = |body_len: u64| ReplRecord {
        version: 7,
        file_id: id.to_string(),
        op: ReplOp::Install,
        prev_version: 0,
        file_version: 7,
        state: Some(ReplState {
            size: 4,
            crc32: crc32fast::hash(data),
            create_time_us: 1,
            modify_time_us: 1,
            appender: false,
            meta: Vec::new(),
        }),
        body_len,
        client_id: 0,
        seq: 0,
    };
    let mut conn = PeerConn::connect(
        &a_addr.to_string(),
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .await
    .expect("connect");
    let cases = [
        // Server 2 is an ACTIVE member, but the file's source is server 1.
        (2, install(4), ErrorCode::BadRequest),
        // Server 99 is no member.
        (99, install(4), ErrorCode::Unavailable),
    ];
    for (source, rec, want) in cases {
        let op = Request::AsyncPush {
            source,
            rec,
            source_time_us: 1,
        };
        let r = conn
            .call(op, 0, (0, 0), PeerBody::Slice(data), None)
            .await
            .expect("exchange");
        assert_eq!(r.as_ref().err().map(|e| e.code), Some(want), "{r:?}");
    }
    // A push whose state disagrees with its body length (from the member
    // that is the file's source: a server-2 file).
    let id2 = FileId::new("group1", 0, 2, 1_800_000_000, 4, 0, 43, "bin").unwrap();
    let mut bad = install(4);
    bad.file_id = id2.to_string();
    bad.body_len = 3;
    let op = Request::AsyncPush {
        source: 2,
        rec: bad,
        source_time_us: 1,
    };
    let r = conn
        .call(op, 0, (0, 0), PeerBody::Slice(&data[..3]), None)
        .await
        .expect("exchange");
    assert_eq!(
        r.as_ref().err().map(|e| e.code),
        Some(ErrorCode::BadRequest),
        "{r:?}"
    );
    // Nothing changed, and A still serves.
    assert!(!a.exists(&id.to_string()).await.expect("exists"));
    assert!(!a.exists(&id2.to_string()).await.expect("exists"));
    assert_eq!(data_version(&a).await, before);
    let ok = conn
        .call(Request::Ping, 0, (0, 0), PeerBody::None, None)
        .await
        .expect("exchange");
    assert!(matches!(ok, Ok(Reply::Pong { .. })), "{ok:?}");
    drop(c);
}
