//! A real cluster for CLI tests: 3 `chorus-leader` processes and one group
//! of `chorus-dataserver`s joined to them, on free loopback ports, started
//! by `testkit` (every process is SIGKILLed on drop).
//!
//! Binaries: `testkit::bin` (build them with `cargo build --workspace --bins`).

use std::time::{Duration, Instant};

use client::leader::LeaderClient;
use proto::cluster::{ClusterMap, ServerStatus};
use testkit::{Dataserver, DataserverOpts, Leaders};

use crate::harness::{run_chorus_with, Run};

/// How long leaders may take to elect and dataservers to become ACTIVE.
pub const START_LIMIT: Duration = Duration::from_secs(60);

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

pub struct Cluster {
    pub leaders: Leaders,
    pub dataservers: Vec<Dataserver>,
}

impl Cluster {
    /// 3 leaders and `n` dataservers in group1; returns once the group has
    /// a master and every dataserver is ACTIVE.
    pub fn start(n: usize) -> Cluster {
        let leaders = Leaders::start(3, &[]);
        let dataservers = (0..n)
            .map(|i| {
                Dataserver::start(DataserverOpts {
                    server_id: i as u32 + 1,
                    leaders: leaders.addrs(),
                    ..DataserverOpts::default()
                })
            })
            .collect();
        let c = Cluster {
            leaders,
            dataservers,
        };
        c.wait_map("a master and every dataserver ACTIVE", START_LIMIT, |m| {
            m.master_of("group1").is_some()
                && m.servers.len() == n
                && m.servers.iter().all(|s| s.status == ServerStatus::Active)
        });
        c
    }

    pub fn leader_addrs(&self) -> Vec<String> {
        self.leaders.addrs()
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

    /// Every process's log (last 30 lines each), for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut add = |name: String, text: String| {
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {name} (last 30 lines)\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        };
        for i in 0..self.leaders.procs.len() {
            add(format!("leader {}", i + 1), self.leaders.log(i));
        }
        for (i, d) in self.dataservers.iter().enumerate() {
            add(format!("dataserver {}", i + 1), d.log_text());
        }
        out
    }
}
