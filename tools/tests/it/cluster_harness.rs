//! A real cluster for CLI tests: 3 `chorus-leader` processes and one group
//! of `chorus-dataserver`s joined to them, on free loopback ports, under one
//! temporary folder. Every process is SIGKILLed on drop.
//!
//! Binaries: next to the `chorus` binary under test (build them with
//! `cargo build -p chorus-leader -p chorus-dataserver`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::leader::LeaderClient;
use proto::cluster::{ClusterMap, ServerStatus};

use crate::harness::{chorus_bin, dataserver_bin, free_port, run_chorus_with, Run};

/// How long leaders may take to elect and dataservers to become ACTIVE.
pub const START_LIMIT: Duration = Duration::from_secs(60);

pub fn leader_bin() -> PathBuf {
    chorus_bin().with_file_name("chorus-leader")
}

/// Run an async leader call on its own thread and runtime (callable from
/// sync tests and from inside async ones alike).
pub fn block<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
    .join()
    .expect("leader call thread")
}

pub struct Proc {
    pub addr: String,
    child: Option<Child>,
}

impl Proc {
    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub leaders: Vec<Proc>,
    pub dataservers: Vec<Proc>,
    pub dir: tempfile::TempDir,
}

fn spawn(bin: &PathBuf, args: &[String], log: PathBuf) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
}

impl Cluster {
    /// 3 leaders and `n` dataservers in group1; returns once the group has
    /// a master and every dataserver is ACTIVE.
    pub fn start(n: usize) -> Cluster {
        for b in [leader_bin(), dataserver_bin()] {
            assert!(
                b.exists(),
                "{} not found: cargo build -p chorus-leader -p chorus-dataserver",
                b.display()
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let leaders = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let args = vec![
                    "--id".to_string(),
                    (i + 1).to_string(),
                    "--listen".into(),
                    a.clone(),
                    "--peers".into(),
                    peers.clone(),
                    "--data-dir".into(),
                    dir.path()
                        .join(format!("leader{}", i + 1))
                        .display()
                        .to_string(),
                ];
                let log = dir.path().join(format!("leader{}.log", i + 1));
                Proc {
                    addr: a.clone(),
                    child: Some(spawn(&leader_bin(), &args, log)),
                }
            })
            .collect();
        let mut c = Cluster {
            leaders,
            dataservers: Vec::new(),
            dir,
        };
        for i in 0..n {
            let a = format!("127.0.0.1:{}", free_port());
            let args = vec![
                "--data-dir".to_string(),
                c.dir
                    .path()
                    .join(format!("ds{}", i + 1))
                    .display()
                    .to_string(),
                "--listen".into(),
                a.clone(),
                "--advertise".into(),
                a.clone(),
                "--group".into(),
                "group1".into(),
                "--server-id".into(),
                (i + 1).to_string(),
                "--leaders".into(),
                c.leaders_arg(),
                "--reserved-space".into(),
                "16MiB".into(),
            ];
            let log = c.dir.path().join(format!("ds{}.log", i + 1));
            c.dataservers.push(Proc {
                addr: a,
                child: Some(spawn(&dataserver_bin(), &args, log)),
            });
        }
        c.wait_map("a master and every dataserver ACTIVE", START_LIMIT, |m| {
            m.master_of("group1").is_some()
                && m.servers.len() == n
                && m.servers.iter().all(|s| s.status == ServerStatus::Active)
        });
        c
    }

    pub fn leader_addrs(&self) -> Vec<String> {
        self.leaders.iter().map(|l| l.addr.clone()).collect()
    }

    /// The `--leaders` value.
    pub fn leaders_arg(&self) -> String {
        self.leader_addrs().join(",")
    }

    /// `chorus --leaders <all> <args>`.
    pub fn chorus(&self, args: &[&str]) -> Run {
        run_chorus_with(&["--leaders", &self.leaders_arg()], args, None)
    }

    /// `chorus --leaders <all> status --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        self.chorus(&["status", "--json"]).ok().json()
    }

    pub fn map(&self) -> Option<ClusterMap> {
        let lc = LeaderClient::new(self.leader_addrs());
        block(async move { lc.get_map(false).await.ok() })
    }

    /// Wait until the map satisfies `pred`; panics with the logs after
    /// `limit`.
    pub fn wait_map(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&ClusterMap) -> bool,
    ) -> ClusterMap {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.map();
            if let Some(m) = m.as_ref().filter(|m| pred(m)) {
                return m.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no {what} after {limit:?}; map: {m:#?}\nlogs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
            {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                out.push_str(&format!("--- {} (last 30 lines)\n", p.display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}
