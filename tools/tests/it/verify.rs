//! `chorus verify GROUP` and the SDK listing behind it, on real leaders and
//! dataservers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use client::{Client, FileSummary, UploadOptions};
use proto::cluster::ServerStatus;
use serde_json::Value;
use testkit::{Cluster, ClusterOpts, Dataserver, DataserverOpts};

use crate::cluster_harness::{Cli, START_LIMIT};
use crate::harness::{pattern, Run};

/// How long a new member may take to hold the group's files once
/// replication exists.
const CONVERGE_LIMIT: Duration = Duration::from_secs(30);

/// One leader (elections are not under test here) and `n` dataservers of
/// group1; returns once the group has an ACTIVE master.
fn start(n: usize) -> Cluster {
    let c = Cluster::start(ClusterOpts {
        leaders: 1,
        dataservers: n,
        ..ClusterOpts::default()
    });
    c.wait_map_blocking(START_LIMIT, "group1 with an ACTIVE master", |m| {
        m.master_of("group1")
            .is_some_and(|s| s.status == ServerStatus::Active)
    });
    c
}

/// Upload `n` files of assorted sizes through the SDK (cluster mode);
/// returns what each member should list, sorted by id.
fn upload(c: &Cluster, n: usize) -> Vec<FileSummary> {
    let leaders = c.leaders.addrs();
    testkit::block_on(async move {
        let client = Client::connect(leaders).await.unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            let data = pattern(i * 1000 + 1, i as u8);
            let st = client
                .upload(&data, UploadOptions::new().ext("bin"))
                .await
                .unwrap();
            assert_eq!(st.crc32, crc32fast::hash(&data));
            out.push(FileSummary {
                file_id: st.file_id,
                size: st.size,
                crc32: st.crc32,
                version: st.version,
            });
        }
        out.sort_by(|a, b| a.file_id.cmp(&b.file_id));
        out
    })
}

fn verify(c: &Cluster, extra: &[&str]) -> Run {
    let mut args = vec!["verify", "group1"];
    args.extend_from_slice(extra);
    c.chorus(&args)
}

fn member(report: &Value, id: u64) -> &Value {
    report["members"]
        .as_array()
        .expect("members array")
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no member {id} in {report}"))
}

/// Every difference in `report` says `server` lacks a file of `files`.
fn assert_only_missing_on(report: &Value, server: u64, files: &[FileSummary]) {
    let diffs = report["differences"].as_array().expect("differences");
    assert!(!diffs.is_empty(), "{report}");
    assert_eq!(report["difference_count"], diffs.len(), "{report}");
    let by_id: BTreeMap<&str, &FileSummary> =
        files.iter().map(|f| (f.file_id.as_str(), f)).collect();
    for d in diffs {
        assert_eq!(d["server"], server, "{d}");
        assert_eq!(d["kind"], "missing", "{d}");
        let id = d["file_id"].as_str().unwrap();
        let f = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{id} was never uploaded: {d}"));
        assert_eq!(d["expected"]["size"], f.size, "{d}");
        assert_eq!(d["expected"]["crc32"], f.crc32, "{d}");
        assert_eq!(d["expected"]["version"], f.version, "{d}");
        assert!(d["found"].is_null(), "{d}");
    }
    assert_eq!(
        member(report, server)["differences"],
        diffs.len(),
        "{report}"
    );
}

#[test]
fn single_member_group_verifies_and_lists_in_pages() {
    let c = start(1);
    let files = upload(&c, 7);

    // The SDK listing of the one member: pages in id order, then all.
    let addr = c.dataservers[0].addr.to_string();
    let leaders = c.leaders.addrs();
    let (pages, all, data_version) = testkit::block_on(async move {
        let client = Client::connect(leaders).await.unwrap();
        let mut pages = Vec::new();
        let mut after = String::new();
        loop {
            let (page, _, done) = client.list_files(&addr, &after, 3).await.unwrap();
            assert!(page.len() <= 3);
            if let Some(last) = page.last() {
                after = last.file_id.clone();
            }
            pages.push(page);
            if done {
                break;
            }
            assert!(pages.len() < 10, "listing did not end");
        }
        let (all, v) = client.list_all_files(&addr).await.unwrap();
        (pages, all, v)
    });
    assert_eq!(pages.len(), 3, "7 files in pages of 3");
    assert_eq!(pages.concat(), files);
    assert_eq!(all, files);
    assert!(data_version >= 7, "data version {data_version}");

    // verify: one member listed, 7 files, agreement.
    let r = verify(&c, &["--json"]).ok().json();
    assert_eq!(r["group"], "group1", "{r}");
    assert_eq!(r["agree"], true, "{r}");
    assert_eq!(r["compared"], 1, "{r}");
    assert_eq!(r["skipped"], 0, "{r}");
    assert_eq!(r["unreachable"], 0, "{r}");
    assert_eq!(r["difference_count"], 0, "{r}");
    assert_eq!(r["reference"], 1, "{r}");
    let m = member(&r, 1);
    assert_eq!(m["files"], 7, "{r}");
    assert_eq!(m["status"], "active", "{r}");
    assert_eq!(m["role"], "master", "{r}");
    assert_eq!(m["data_version"], data_version, "{r}");
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    assert_eq!(m["bytes"], bytes, "{r}");

    let text = verify(&c, &[]).ok().text();
    assert!(
        text.contains("1 of 1 members listed agree: 7 files"),
        "{text}"
    );
    assert!(text.contains("server 1 "), "{text}");

    // An unknown group is "not found"; without leaders it is a usage error.
    let r = c.chorus(&["verify", "nosuchgroup"]);
    r.fails_with(3, "not_found");
    crate::harness::run_chorus("127.0.0.1:1", &["verify", "group1"], None).fails_with(2, "usage");
}

#[test]
fn a_new_member_differs_until_it_holds_the_files() {
    let mut c = start(1);
    let files = upload(&c, 5);
    let r = verify(&c, &["--json"]).ok().json();
    assert_eq!(r["agree"], true, "{r}");
    assert_eq!(member(&r, 1)["files"], 5, "{r}");

    // A second member with an empty store joins the group.
    c.dataservers.push(Dataserver::start(DataserverOpts {
        server_id: 2,
        leaders: c.leaders.addrs(),
        ..DataserverOpts::default()
    }));
    c.wait_map_blocking(START_LIMIT, "server 2 in group1", |m| {
        m.group("group1").is_some_and(|g| g.members.contains(&2))
    });

    // Right after joining: either it already agrees (replication copied
    // everything) or it is reported as lacking some of the files.
    let first = verify(&c, &["--json"]);
    let report = first.json();
    println!("first verify after the join: exit {}: {report}", first.code);
    assert_eq!(report["compared"], 2, "{report}");
    match first.code {
        0 => {
            assert_eq!(report["agree"], true, "{report}");
            assert_eq!(member(&report, 2)["files"], 5, "{report}");
        }
        6 => {
            assert_eq!(report["agree"], false, "{report}");
            assert_eq!(member(&report, 1)["reference"], true, "{report}");
            assert_only_missing_on(&report, 2, &files);
            assert!(
                first.stderr.starts_with("error: replicas_differ: "),
                "{}",
                first.stderr
            );
            // The same in text (unless replication finished meanwhile).
            let run = verify(&c, &[]);
            let text = run.text();
            if run.code == 6 {
                assert!(text.contains("server 2: missing group1/"), "{text}");
                assert!(text.contains("replicas differ"), "{text}");
            } else {
                assert_eq!(run.code, 0, "{}", run.stderr);
            }
        }
        other => panic!("verify exited {other}: {}\n{report}", first.stderr),
    }

    // Converges within CONVERGE_LIMIT once replication copies the files;
    // until then a member that still differs must not be ACTIVE.
    let deadline = Instant::now() + CONVERGE_LIMIT;
    let last = loop {
        let run = verify(&c, &["--json"]);
        let report = run.json();
        match run.code {
            0 => {
                assert_eq!(member(&report, 2)["files"], 5, "{report}");
                break report;
            }
            6 => assert_only_missing_on(&report, 2, &files),
            other => panic!("verify exited {other}: {}\n{report}", run.stderr),
        }
        if Instant::now() >= deadline {
            break report;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("last verify: {last}");
    if last["agree"] == false {
        // No replication yet: the new member waits, it is not ACTIVE.
        let status = member(&last, 2)["status"].as_str().unwrap().to_string();
        assert_ne!(status, "active", "an ACTIVE member differs: {last}");
        assert_eq!(member(&last, 2)["files"], 0, "{last}");
        assert_eq!(last["difference_count"], 5, "{last}");
    }

    let converged = last["agree"] == true;

    // An OFFLINE member is skipped, not a difference; with --all it is
    // listed, and unreachable.
    c.dataservers[1].kill();
    c.wait_map_blocking(Duration::from_secs(15), "server 2 OFFLINE", |m| {
        m.server(2)
            .is_some_and(|s| s.status == ServerStatus::Offline)
    });
    let r = verify(&c, &["--json"]).ok().json();
    assert_eq!(r["agree"], true, "{r}");
    assert_eq!(
        (r["compared"].as_u64(), r["skipped"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(member(&r, 2)["skipped"], true, "{r}");
    assert_eq!(member(&r, 2)["status"], "offline", "{r}");
    let text = verify(&c, &[]).ok().text();
    assert!(text.contains("skipped (offline"), "{text}");
    let all = verify(&c, &["--all", "--json"]);
    let r = all.json();
    assert_eq!(all.code, 5, "{}\n{r}", all.stderr);
    assert_eq!(r["unreachable"], 1, "{r}");
    assert!(member(&r, 2)["error"].is_string(), "{r}");

    // Writes go on without it; it comes back on its old data and address,
    // but alone (no leaders), so it stays OFFLINE in the map and cannot
    // catch up: `--all` lists it and finds exactly what it missed.
    let more = upload(&c, 3);
    let mut everything = files.clone();
    everything.extend(more.iter().cloned());
    everything.sort_by(|a, b| a.file_id.cmp(&b.file_id));
    c.dataservers[1].restart_with(DataserverOpts {
        server_id: 2,
        ..DataserverOpts::default()
    });
    let r = verify(&c, &["--json"]).ok().json();
    assert_eq!(member(&r, 1)["files"], 8, "{r}");
    assert_eq!(member(&r, 2)["skipped"], true, "{r}");
    let run = verify(&c, &["--all", "--json"]);
    let r = run.json();
    println!("verify --all with a stale member: {r}");
    assert_eq!(run.code, 6, "{}\n{r}", run.stderr);
    assert!(
        run.stderr.starts_with("error: replicas_differ: "),
        "{}",
        run.stderr
    );
    assert_eq!(r["compared"], 2, "{r}");
    assert_only_missing_on(&r, 2, &everything);
    let missing: Vec<&str> = r["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["file_id"].as_str().unwrap())
        .collect();
    for f in &more {
        assert!(
            missing.contains(&f.file_id.as_str()),
            "{} not reported: {r}",
            f.file_id
        );
    }
    if converged {
        assert_eq!(missing.len(), 3, "{r}");
        assert_eq!(member(&r, 2)["files"], 5, "{r}");
    } else {
        assert_eq!(missing.len(), 8, "{r}");
    }
    let text = verify(&c, &["--all"]).text();
    assert!(text.contains("server 2: missing group1/"), "{text}");
    assert!(text.contains("replicas differ: "), "{text}");
}
