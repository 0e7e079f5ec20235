//! Every CLI file operation round-trips byte-exact through a real server.

use std::path::Path;

use crate::harness::{pattern, run_chorus, DataServer};

/// 0 B, 1 B, 4 KiB, 1 MiB + 1, and one above the server's 2 MiB
/// large-file threshold.
const SIZES: [usize; 5] = [0, 1, 4096, (1 << 20) + 1, 3 * (1 << 20) + 5];

const NOT_FOUND: i32 = 3;
const VERSION_MISMATCH: i32 = 4;

fn write(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_str().unwrap().to_string()
}

fn download(s: &DataServer, id: &str) -> Vec<u8> {
    s.chorus(&["download", id]).ok().stdout.clone()
}

fn stat_json(s: &DataServer, id: &str) -> serde_json::Value {
    s.chorus(&["stat", "--json", id]).ok().json()
}

#[test]
fn upload_download_stat_exists_delete_all_sizes() {
    let s = DataServer::start();
    let work = tempfile::tempdir().unwrap();
    for (i, &size) in SIZES.iter().enumerate() {
        let data = pattern(size, i as u8);
        let path = write(work.path(), &format!("in{i}.bin"), &data);

        let id = s.chorus(&["upload", &path]).ok().text();
        assert!(id.starts_with("group1/M"), "{id}");
        assert!(id.ends_with(".bin"), "ext from the path: {id}");
        assert!(!id.contains('\n'));

        // -o and stdout.
        let out = work.path().join(format!("out{i}"));
        let r = s.chorus(&["download", &id, "-o", out.to_str().unwrap()]);
        r.ok();
        assert!(r.stdout.is_empty());
        assert_eq!(std::fs::read(&out).unwrap(), data, "size {size} via -o");
        assert_eq!(download(&s, &id), data, "size {size} via stdout");

        let st = stat_json(&s, &id);
        assert_eq!(st["file_id"], id.as_str());
        assert_eq!(st["size"], size as u64);
        assert_eq!(st["crc32"], crc32fast::hash(&data) as u64);
        assert_eq!(st["appender"], false);
        assert!(st["version"].as_u64().unwrap() > 0);
        assert!(st["create_time_us"].as_u64().unwrap() > 0);
        assert!(st["modify_time_us"].as_u64().unwrap() >= st["create_time_us"].as_u64().unwrap());
        let human = s.chorus(&["stat", &id]).ok().text();
        assert!(human.contains(&format!("size:      {size}")), "{human}");

        let r = s.chorus(&["exists", &id]);
        assert_eq!((r.code, r.text().as_str()), (0, "true"));

        let del = s.chorus(&["delete", "--json", &id]).ok().json();
        assert_eq!(del["deleted"], true);
        let r = s.chorus(&["exists", &id]);
        assert_eq!((r.code, r.text().as_str()), (NOT_FOUND, "false"));
        assert!(r.stderr.is_empty(), "{}", r.stderr);
        assert_eq!(s.chorus(&["exists", "--json", &id]).json()["exists"], false);
        s.chorus(&["stat", &id]).fails_with(NOT_FOUND, "not_found");
        s.chorus(&["download", &id])
            .fails_with(NOT_FOUND, "not_found");
        let gone = work.path().join("gone");
        s.chorus(&["download", &id, "-o", gone.to_str().unwrap()])
            .fails_with(NOT_FOUND, "not_found");
        assert!(!gone.exists(), "a failed download leaves no file behind");
        s.chorus(&["delete", &id])
            .fails_with(NOT_FOUND, "not_found");
    }
}

#[test]
fn upload_from_stdin_with_ext_meta_and_json() {
    let s = DataServer::start();
    let data = pattern(100_000, 3);
    let up = s
        .chorus_stdin(
            &[
                "upload", "-", "--json", "--ext", "txt", "--meta", "a=1", "--meta", "b=x=y",
            ],
            &data,
        )
        .ok()
        .json();
    let id = up["file_id"].as_str().unwrap().to_string();
    assert!(id.ends_with(".txt"));
    assert_eq!(up["size"], data.len() as u64);
    assert!(up["version"].as_u64().unwrap() > 0);
    assert_eq!(download(&s, &id), data);
    let m = s.chorus(&["meta", "get", "--json", &id]).ok().json();
    assert_eq!(m["meta"]["a"], "1");
    assert_eq!(m["meta"]["b"], "x=y");
    let lines = s.chorus(&["meta", "get", &id]).ok().text();
    let mut lines: Vec<&str> = lines.lines().collect();
    lines.sort();
    assert_eq!(lines, ["a=1", "b=x=y"]);

    // Empty stdin makes an empty file.
    let id = s.chorus_stdin(&["upload", "-"], b"").ok().text();
    assert_eq!(stat_json(&s, &id)["size"], 0);
    assert_eq!(download(&s, &id), b"");
}

#[test]
fn meta_set_merge_and_overwrite() {
    let s = DataServer::start();
    let id = s
        .chorus_stdin(
            &["upload", "-", "--meta", "keep=1", "--meta", "k=old"],
            b"m",
        )
        .ok()
        .text();
    let v0 = stat_json(&s, &id)["version"].as_u64().unwrap();
    let st = s
        .chorus(&["meta", "set", "--json", &id, "k=new", "extra=2", "--merge"])
        .ok()
        .json();
    assert!(st["version"].as_u64().unwrap() > v0);
    let m = s.chorus(&["meta", "get", "--json", &id]).ok().json();
    assert_eq!(
        m["meta"],
        serde_json::json!({"keep": "1", "k": "new", "extra": "2"})
    );
    assert_eq!(m["version"], st["version"]);

    s.chorus(&["meta", "set", &id, "only=this"]).ok();
    let m = s.chorus(&["meta", "get", "--json", &id]).ok().json();
    assert_eq!(m["meta"], serde_json::json!({"only": "this"}));
    assert_eq!(
        download(&s, &id),
        b"m",
        "metadata changes leave the content alone"
    );
}

#[test]
fn append_modify_truncate_across_the_threshold() {
    let s = DataServer::start();
    let work = tempfile::tempdir().unwrap();
    let first = pattern((1 << 20) + 1, 1);
    let path = write(work.path(), "first", &first);
    let id = s.chorus(&["upload", "--appender", &path]).ok().text();
    assert_eq!(stat_json(&s, &id)["appender"], true);
    let mut expect = first.clone();

    // Small append, then one that crosses the 2 MiB threshold.
    for (i, n) in [1usize, 4096, 2 << 20].into_iter().enumerate() {
        let more = pattern(n, 10 + i as u8);
        let p = write(work.path(), &format!("more{i}"), &more);
        let st = s.chorus(&["append", "--json", &id, &p]).ok().json();
        expect.extend_from_slice(&more);
        assert_eq!(st["size"], expect.len() as u64);
        assert_eq!(st["crc32"], crc32fast::hash(&expect) as u64);
        assert_eq!(download(&s, &id), expect);
    }
    // Append from stdin.
    s.chorus_stdin(&["append", &id, "-"], b"tail").ok();
    expect.extend_from_slice(b"tail");
    assert_eq!(download(&s, &id), expect);

    // Modify in the middle, and at the end (extends the file).
    let patch = pattern(5000, 77);
    let p = write(work.path(), "patch", &patch);
    let off = 1_000_000usize;
    let line = s
        .chorus(&["modify", &id, "--offset", &off.to_string(), &p])
        .ok()
        .text();
    assert!(line.starts_with("version="), "{line}");
    expect[off..off + patch.len()].copy_from_slice(&patch);
    assert_eq!(download(&s, &id), expect);
    let end = expect.len();
    s.chorus(&["modify", &id, "--offset", &end.to_string(), &p])
        .ok();
    expect.extend_from_slice(&patch);
    assert_eq!(download(&s, &id), expect);

    // Truncate down, then up (zero fill), then to nothing.
    s.chorus(&["truncate", &id, "--size", "1MiB"]).ok();
    expect.truncate(1 << 20);
    assert_eq!(download(&s, &id), expect);
    let st = s
        .chorus(&["truncate", "--json", &id, "--size", "1049000"])
        .ok()
        .json();
    expect.resize(1_049_000, 0);
    assert_eq!(st["size"], 1_049_000);
    assert_eq!(download(&s, &id), expect);
    s.chorus(&["truncate", &id, "--size", "0"]).ok();
    assert_eq!(download(&s, &id), b"");

    // Plain files refuse append and truncate.
    let plain = s.chorus_stdin(&["upload", "-"], b"plain").ok().text();
    s.chorus_stdin(&["append", &plain, "-"], b"x")
        .fails_with(1, "not_appender");
    s.chorus(&["truncate", &plain, "--size", "1"])
        .fails_with(1, "not_appender");
    // ... but accept modify.
    s.chorus_stdin(&["modify", &plain, "--offset", "0", "-"], b"P")
        .ok();
    assert_eq!(download(&s, &plain), b"Plain");
}

#[test]
fn if_version_mismatch_changes_nothing() {
    let s = DataServer::start();
    let work = tempfile::tempdir().unwrap();
    let data = pattern(10_000, 5);
    let path = write(work.path(), "f", &data);
    let id = s
        .chorus(&["upload", "--appender", "--meta", "a=1", &path])
        .ok()
        .text();
    let st = stat_json(&s, &id);
    let v = st["version"].as_u64().unwrap();
    let wrong = (v + 1000).to_string();

    let attempts: Vec<Vec<&str>> = vec![
        vec!["delete", &id, "--if-version", &wrong],
        vec!["append", &id, &path, "--if-version", &wrong],
        vec![
            "modify",
            &id,
            "--offset",
            "0",
            &path,
            "--if-version",
            &wrong,
        ],
        vec!["truncate", &id, "--size", "1", "--if-version", &wrong],
        vec!["meta", "set", &id, "a=2", "--if-version", &wrong],
    ];
    for args in &attempts {
        s.chorus(args)
            .fails_with(VERSION_MISMATCH, "version_mismatch");
        assert_eq!(stat_json(&s, &id), st, "{args:?} changed the file");
        assert_eq!(download(&s, &id), data);
    }
    let m = s.chorus(&["meta", "get", "--json", &id]).ok().json();
    assert_eq!(m["meta"], serde_json::json!({"a": "1"}));

    // The right version works, and raises the version.
    let vs = v.to_string();
    let st2 = s
        .chorus(&["append", "--json", &id, &path, "--if-version", &vs])
        .ok()
        .json();
    let v2 = st2["version"].as_u64().unwrap();
    assert!(v2 > v);
    s.chorus(&["delete", &id, "--if-version", &vs])
        .fails_with(VERSION_MISMATCH, "version_mismatch");
    s.chorus(&["delete", &id, "--if-version", &v2.to_string()])
        .ok();
    assert_eq!(s.chorus(&["exists", &id]).code, NOT_FOUND);
}

#[test]
fn bench_reports_json() {
    let s = DataServer::start();
    for op in ["upload", "download", "mixed"] {
        let r = s.chorus(&[
            "bench",
            "--op",
            op,
            "--size",
            "4KiB",
            "--concurrency",
            "2",
            "--duration",
            "0.5",
            "--files",
            "4",
            "--json",
        ]);
        let j = r.ok().json();
        assert_eq!(j["op"], op);
        assert_eq!(j["size"], 4096);
        assert_eq!(j["errors"], 0, "{}", r.stderr);
        assert!(j["ops"].as_u64().unwrap() > 0);
        let lat = &j["latency_us"];
        assert!(lat["p50"].as_u64().unwrap() <= lat["p99"].as_u64().unwrap());
        assert!(lat["p99"].as_u64().unwrap() <= lat["max"].as_u64().unwrap());
        assert!(j["mib_per_sec"].as_f64().unwrap() > 0.0);
    }
    let human = s
        .chorus(&[
            "bench",
            "--op",
            "upload",
            "--size",
            "1KiB",
            "--concurrency",
            "1",
            "--duration",
            "0.2",
        ])
        .ok()
        .text();
    assert!(human.contains("ops/s") && human.contains("p99"), "{human}");
}

#[test]
fn usage_errors_and_unreachable_server() {
    // No server needed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let r = run_chorus(&addr, &["stat"], None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = run_chorus(&addr, &["truncate", "x", "--size", "lots"], None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    run_chorus(&addr, &["stat", "group1/M00/00/00/x"], None).fails_with(5, "connect");
    let r = run_chorus(&addr, &["--help"], None);
    assert_eq!(r.code, 0);
    assert!(r.text().contains("version mismatch"));
}

#[test]
fn invalid_ids_are_refused() {
    let s = DataServer::start();
    s.chorus(&["stat", "group1/../../etc/passwd"])
        .fails_with(1, "invalid_file_id");
    s.chorus(&["download", "nonsense"])
        .fails_with(1, "invalid_file_id");
}
