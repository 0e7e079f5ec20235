//! Cluster mode end to end: real leaders and dataservers, the real `chorus`
//! CLI (`status`, `failover`, `dev`, file commands with `--leaders`) and the
//! SDK in cluster mode.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Client, ClientConfig, UploadOptions};
use serde_json::Value;

use crate::cluster_harness::{self, Cli};
use crate::harness::{chorus_bin, pattern, run_chorus_with};

/// The leaders' default `server_timeout`.
const SERVER_TIMEOUT: Duration = Duration::from_secs(3);

fn servers(st: &Value) -> &Vec<Value> {
    st["servers"].as_array().expect("servers array")
}

fn server(st: &Value, id: u64) -> &Value {
    servers(st)
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no server {id} in {st}"))
}

#[test]
fn status_json_shows_leaders_groups_and_servers() {
    let c = cluster_harness::start(3);
    let st = c.status_json();
    let leaders = st["leaders"].as_array().unwrap();
    assert_eq!(leaders.len(), 3, "{st}");
    assert!(leaders.iter().all(|l| l["reachable"] == true), "{st}");
    assert_eq!(
        leaders
            .iter()
            .filter(|l| l["is_raft_leader"] == true)
            .count(),
        1,
        "{st}"
    );
    assert_eq!(
        leaders.iter().filter(|l| l["role"] == "leader").count(),
        1,
        "{st}"
    );
    let groups = st["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["name"], "group1");
    let master = groups[0]["master"].as_u64().expect("group1 has a master");
    assert!(groups[0]["epoch"].as_u64().unwrap() >= 1);
    let ss = servers(&st);
    assert_eq!(ss.len(), 3);
    for s in ss {
        assert_eq!(s["status"], "active", "{s}");
        assert_eq!(s["group"], "group1");
        let addr = s["address"].as_str().unwrap();
        assert!(
            c.dataservers.iter().any(|d| d.addr.to_string() == addr),
            "{addr}"
        );
        let role = if s["id"] == master { "master" } else { "slave" };
        assert_eq!(s["role"], role, "{s}");
        assert!(s["disk_total"].as_u64().unwrap() > 0);
    }

    // The human form names the same things.
    let text = c.chorus(&["status"]).ok().text();
    println!("{text}");
    for want in [
        "LEADERS", "GROUPS", "SERVERS", "leader *", "ACTIVE", "master",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    // One unreachable leader is shown as such, the rest still answer.
    let dead = format!("127.0.0.1:{}", crate::harness::free_port());
    let r = run_chorus_with(
        &["--leaders", &format!("{},{dead}", c.leaders_arg())],
        &["status", "--json"],
        None,
    );
    let st = r.ok().json();
    let row = st["leaders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["address"] == dead.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["reachable"], false, "{row}");
    // Without leaders, cluster commands are a usage error.
    let r = crate::harness::run_chorus("127.0.0.1:1", &["status"], None);
    r.fails_with(2, "usage");
}

#[test]
fn killed_dataserver_shows_offline_within_the_server_timeout() {
    let mut c = cluster_harness::start(3);
    let st = c.status_json();
    let master = st["groups"][0]["master"].as_u64().unwrap();
    // Kill a slave (a master would be replaced: another story).
    let victim = (1..=3u64).find(|id| *id != master).unwrap();
    c.dataservers[victim as usize - 1].kill();
    let killed = Instant::now();
    let limit = SERVER_TIMEOUT + Duration::from_secs(1);
    let seen = loop {
        let st = c.status_json();
        if server(&st, victim)["status"] == "offline" {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < limit + Duration::from_secs(5),
            "server {victim} not offline after {:?}: {st}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("server {victim} SIGKILLed -> \"offline\" in chorus status after {seen:?}");
    assert!(seen <= limit, "offline after {seen:?}, limit {limit:?}");
    let st = c.status_json();
    let others: Vec<&Value> = servers(&st).iter().filter(|s| s["id"] != victim).collect();
    assert!(others.iter().all(|s| s["status"] == "active"), "{st}");
    // The Raft leader's last heartbeat record, when it still has one, is
    // older than the timeout.
    if let Some(ms) = server(&st, victim)["last_heartbeat_ms"].as_u64() {
        assert!(ms >= SERVER_TIMEOUT.as_millis() as u64, "{st}");
    }
}

#[test]
fn failover_moves_the_master_while_cluster_uploads_keep_succeeding() {
    let c = cluster_harness::start(3);
    let before = c.status_json();
    let old_master = before["groups"][0]["master"].as_u64().unwrap();
    let old_epoch = before["groups"][0]["epoch"].as_u64().unwrap();
    let leaders = c.leaders.addrs();

    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    // The SDK uploads in a loop on its own runtime while the CLI fails over.
    let uploader = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let cfg = ClientConfig::default().request_timeout(Duration::from_secs(10));
                let client = Client::connect_with(leaders, cfg).await.unwrap();
                let data = pattern(4096, 7);
                let (mut ok, mut failed, mut longest) = (0u64, 0u64, Duration::ZERO);
                let mut errors = Vec::new();
                while !stop2.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    match client.upload(&data, UploadOptions::new()).await {
                        Ok(_) => ok += 1,
                        Err(e) => {
                            failed += 1;
                            errors.push(e.to_string());
                        }
                    }
                    longest = longest.max(t.elapsed());
                }
                let epoch = client
                    .cluster_map()
                    .and_then(|m| m.group("group1").map(|g| g.epoch));
                (ok, failed, longest, errors, epoch)
            })
    });

    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let out = c.chorus(&["failover", "group1", "--json"]).ok().json();
    let took = t.elapsed();
    let new_master = out["master"].as_u64().unwrap();
    let new_epoch = out["epoch"].as_u64().unwrap();
    assert_ne!(new_master, old_master, "{out}");
    assert!(new_epoch > old_epoch, "{out}");
    // Keep uploading for a while after the switch.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let (ok, failed, longest, errors, sdk_epoch) = uploader.join().unwrap();
    println!(
        "failover {old_master} -> {new_master} (epoch {old_epoch} -> {new_epoch}) took {took:?}; \
         uploads during it: {ok} ok, {failed} failed, longest stall {longest:?}"
    );
    assert_eq!(failed, 0, "uploads failed during the failover: {errors:?}");
    assert!(ok > 10, "only {ok} uploads");
    assert_eq!(sdk_epoch, Some(new_epoch), "the SDK follows the pushed map");

    let after = c.status_json();
    assert_eq!(after["groups"][0]["master"], new_master);
    assert_eq!(after["groups"][0]["epoch"], new_epoch);
    assert_eq!(server(&after, new_master)["role"], "master");
    assert_eq!(server(&after, old_master)["role"], "slave");

    // The CLI in cluster mode writes and reads through the new master.
    let work = tempfile::tempdir().unwrap();
    let p = work.path().join("f.bin");
    std::fs::write(&p, pattern(1000, 3)).unwrap();
    let id = c.chorus(&["upload", p.to_str().unwrap()]).ok().text();
    assert!(id.starts_with("group1/"), "{id}");
    assert_eq!(c.chorus(&["download", &id]).ok().stdout, pattern(1000, 3));
    // Refusals are reported with the leaders' code.
    c.chorus(&["failover", "nosuchgroup"])
        .fails_with(3, "not_found");
    let map = c.map_blocking().unwrap();
    assert_eq!(map.group("group1").unwrap().epoch, new_epoch);
}

/// A base port with BASE..BASE+2 and BASE+10..BASE+12 free.
fn free_base_port() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (rand::random::<u16>() % 30_000);
        let ports = [0u16, 1, 2, 10, 11, 12].map(|o| base + o);
        let free = ports
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free port block");
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Sends SIGTERM to a process when dropped (a no-op once it has exited),
/// then waits up to 15 s for it to go.
struct StopOnDrop(i32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !pid_alive(self.0) {
            return;
        }
        // SAFETY: kill(2) on the test's own child.
        unsafe { libc::kill(self.0, libc::SIGTERM) };
        let t = Instant::now();
        while pid_alive(self.0) && t.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Start `chorus dev --json` (plus `extra`) in `dir`; returns the child,
/// a guard that stops it, and the JSON line it printed once up.
fn start_dev(dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, StopOnDrop, Value) {
    let base = free_base_port();
    let mut dev = Command::new(chorus_bin())
        .args(["dev", "--json", "--base-port", &base.to_string()])
        .args(extra)
        .arg("--dir")
        .arg(dir.join("cluster"))
        .env_remove("CHORUS_LEADERS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = dev.id() as i32;
    // If an assertion fails, the dev cluster still stops (SIGTERM makes it
    // stop its children).
    let guard = StopOnDrop(pid);
    let stdout = dev.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let started = Instant::now();
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(l) if !l.is_empty() => l,
        other => {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let out = dev.wait_with_output().unwrap();
            panic!(
                "chorus dev printed nothing ({other:?}); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    println!("chorus dev up in {:?}", started.elapsed());
    (dev, guard, serde_json::from_str(&line).unwrap())
}

#[test]
fn dev_runs_an_async_group_too() {
    let dir = tempfile::tempdir().unwrap();
    let (_dev, _guard, info) = start_dev(dir.path(), &["--replication", "async"]);
    assert_eq!(info["mode"], "async", "{info}");
    assert!(info["master"].is_null(), "{info}");
    let leaders = info["leaders"].as_str().unwrap().to_string();
    let data = pattern(3000, 7);
    let id = run_chorus_with(&["--leaders", &leaders], &["upload", "-"], Some(&data))
        .ok()
        .text();
    let back = run_chorus_with(&["--leaders", &leaders], &["download", &id], None);
    assert_eq!(back.ok().stdout, data);
    let st = run_chorus_with(&["--leaders", &leaders], &["status", "--json"], None)
        .ok()
        .json();
    assert_eq!(st["groups"][0]["mode"], "async", "{st}");
    // The guard stops the cluster (SIGTERM) and waits for it.
}

#[test]
fn dev_runs_a_cluster_that_serves_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, _guard, info) = start_dev(dir.path(), &[]);
    let pid = dev.id() as i32;
    let leaders = info["leaders"].as_str().unwrap().to_string();
    assert_eq!(leaders.split(',').count(), 3);
    let pids: Vec<i32> = info["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(pids.len(), 6, "{info}");
    assert!(pids.iter().all(|p| pid_alive(*p)));

    let data = pattern(5000, 1);
    let r = run_chorus_with(&["--leaders", &leaders], &["upload", "-"], Some(&data));
    let id = r.ok().text();
    let back = run_chorus_with(&["--leaders", &leaders], &["download", &id], None);
    assert_eq!(back.ok().stdout, data);
    let st = run_chorus_with(&["--leaders", &leaders], &["status", "--json"], None)
        .ok()
        .json();
    assert_eq!(st["servers"].as_array().unwrap().len(), 3);

    // A slave killed while the cluster runs is restarted and climbs back
    // to ACTIVE (processes: 3 leaders, then dataservers 1..3).
    let master = info["master"].as_u64().unwrap();
    let slave = (1..=3u64).find(|id| *id != master).unwrap();
    let victim = pids[2 + slave as usize];
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // SAFETY: a child of the dev process, alive (checked above).
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let t = Instant::now();
    loop {
        let st = run_chorus_with(&["--leaders", &leaders], &["status", "--json"], None)
            .ok()
            .json();
        // ACTIVE again, by a status change after the kill (it went through
        // RECOVERING).
        let back = st["servers"].as_array().unwrap().iter().any(|s| {
            s["id"] == slave
                && s["status"] == "active"
                && s["status_changed_ms"]
                    .as_u64()
                    .is_some_and(|ms| ms > killed_ms)
        });
        if back {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(45),
            "dataserver {slave} not back to ACTIVE: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "killed dataserver {slave} back to ACTIVE in {:?}",
        t.elapsed()
    );
    let back = run_chorus_with(&["--leaders", &leaders], &["download", &id], None);
    assert_eq!(back.ok().stdout, data);

    // SAFETY: our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = dev.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = dev.kill();
            panic!("chorus dev did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("chorus dev stopped in {:?} after SIGTERM", t.elapsed());
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut dev.stderr.take().unwrap(), &mut err);
    assert!(status.success(), "exit {status}; stderr:\n{err}");
    let left: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(left.is_empty(), "children still running: {left:?}");
    assert!(err.contains("restarting it"), "stderr:\n{err}");
}
