//! An async (FastDFS-style) group of 3 real dataservers behind one real
//! leader: SDK routing (uploads spread over the members, changes at each
//! file's source server, reads from any member), `chorus status` (mode and
//! sync delays), `chorus bench --replica-lag` and `chorus verify --wait`.

use std::collections::BTreeMap;

use client::{Client, ClientConfig, FileId, ReadRule, UploadOptions};
use proto::cluster::{ReplicationMode, ServerStatus};
use testkit::{Cluster, ClusterOpts};

use crate::cluster_harness::{Cli, START_LIMIT};
use crate::harness::pattern;

/// One leader and 3 async dataservers; returns once all are ACTIVE.
fn start() -> Cluster {
    let c = Cluster::start(ClusterOpts {
        leaders: 1,
        dataservers: 3,
        dataserver_args: &["--replication", "async"],
        ..ClusterOpts::default()
    });
    c.wait_map_blocking(START_LIMIT, "3 ACTIVE members of async group1", |m| {
        m.group("group1")
            .is_some_and(|g| g.mode == ReplicationMode::Async && g.master.is_none())
            && m.servers.len() == 3
            && m.servers.iter().all(|s| s.status == ServerStatus::Active)
    });
    c
}

#[test]
fn async_group_routes_reports_benches_and_converges() {
    let c = start();
    let leaders = c.leaders.addrs();

    // SDK: uploads spread over the three members (each the source of what
    // it took); modifies reach the source; reads from any member.
    let ids = testkit::block_on(async move {
        let cfg = ClientConfig::default().read_rule(ReadRule::Any);
        let client = Client::connect_with(leaders, cfg).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..12 {
            let data = pattern(100 + i, i as u8);
            let st = client.upload(&data, UploadOptions::new()).await.unwrap();
            ids.push(st.file_id);
        }
        let mut sources = BTreeMap::<u32, usize>::new();
        for id in &ids {
            *sources
                .entry(FileId::parse(id).unwrap().source_server())
                .or_default() += 1;
        }
        assert_eq!(sources.len(), 3, "uploads spread: {sources:?}");
        for id in &ids {
            let st = client.modify(id, 0, b"HEAD", None).await.unwrap();
            assert_eq!(
                st.size as usize,
                100 + (ids.iter().position(|x| x == id).unwrap())
            );
            // A read from any member: the new content, or (a peer not yet
            // pushed to) an older one; never an error.
            let got = client.download(id).await.unwrap();
            assert_eq!(got.len() as u64, st.size);
        }
        ids
    });

    // status: the mode, peers, and every server's sync delay.
    let st = c.status_json();
    assert_eq!(st["groups"][0]["mode"], "async", "{st}");
    assert!(st["groups"][0]["master"].is_null(), "{st}");
    for s in st["servers"].as_array().unwrap() {
        assert_eq!(s["role"], "peer", "{st}");
        assert!(s["lag"].is_null(), "{st}");
        assert!(s["sync_delay_ms"].is_u64(), "{st}");
    }
    let text = c.chorus(&["status"]).ok().text();
    assert!(text.contains("SYNC DELAY"), "{text}");

    // bench --replica-lag: uploads spread, lag measured on the peers.
    let b = c
        .chorus(&[
            "bench",
            "--op",
            "upload",
            "--size",
            "4KiB",
            "--concurrency",
            "4",
            "--duration",
            "1",
            "--replica-lag",
            "--json",
        ])
        .ok()
        .json();
    let lag = &b["replica_lag_ms"];
    assert!(lag["files"].as_u64().unwrap() > 0, "{b}");
    assert_eq!(lag["no_peer"], 0, "{b}");
    assert!(lag["samples"].as_u64().unwrap() > 0, "{b}");
    assert!(
        lag["p50"].as_f64().unwrap() <= lag["max"].as_f64().unwrap(),
        "{b}"
    );

    // verify: every member holds every file, the same way, once pushes
    // settle.
    let r = c.chorus(&["verify", "group1", "--wait", "30", "--json"]);
    let v = r.ok().json();
    assert_eq!(v["mode"], "async", "{v}");
    assert_eq!(v["agree"], true, "{v}");
    assert_eq!(v["compared"], 3, "{v}");
    let files = v["members"][0]["files"].as_u64().unwrap();
    assert!(files >= ids.len() as u64, "{v}");
}
