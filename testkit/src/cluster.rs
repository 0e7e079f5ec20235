//! Leaders and one group of dataservers joined to them: the cluster shape
//! the dataserver and CLI suites both test against.

use std::time::{Duration, Instant};

use client::leader::{ClientTimeouts, LeaderClient};
use proto::cluster::ClusterMap;

use crate::{process, Dataserver, DataserverOpts, Leaders};

/// How often [`Cluster::wait_map`] asks for the map.
const MAP_POLL: Duration = Duration::from_millis(50);

/// The shape of a [`Cluster`].
#[derive(Clone, Copy, Debug)]
pub struct ClusterOpts<'a> {
    /// How many leaders.
    pub leaders: usize,
    /// Extra flags for every leader (e.g. `--server-timeout-ms`).
    pub leader_args: &'a [&'a str],
    /// How many dataservers (ids 1.., group `group1`).
    pub dataservers: usize,
    /// Extra flags for every dataserver (e.g. `--heartbeat-ms`).
    pub dataserver_args: &'a [&'a str],
}

impl Default for ClusterOpts<'_> {
    /// 3 leaders and 3 dataservers with default flags.
    fn default() -> Self {
        ClusterOpts {
            leaders: 3,
            leader_args: &[],
            dataservers: 3,
            dataserver_args: &[],
        }
    }
}

/// Real `chorus-leader`s and one group of real `chorus-dataserver`s
/// started with `--leaders` pointing at all of them. Every process is
/// SIGKILLed on drop.
pub struct Cluster {
    pub leaders: Leaders,
    pub dataservers: Vec<Dataserver>,
    dataserver_args: Vec<String>,
}

impl Cluster {
    /// Start the leaders (each listening, an election may be under way),
    /// then the dataservers (each answering pings; joining is
    /// asynchronous: see [`wait_map`](Self::wait_map)).
    pub fn start(opts: ClusterOpts) -> Cluster {
        let mut c = Cluster::start_dataservers_first(opts);
        c.leaders.start_all();
        c
    }

    /// Choose the leaders' addresses without starting them, and start the
    /// dataservers pointing at them; start the leaders later with
    /// `cluster.leaders.start_all()`.
    pub fn start_dataservers_first(opts: ClusterOpts) -> Cluster {
        let leaders = Leaders::prepare(opts.leaders, opts.leader_args);
        let mut c = Cluster {
            leaders,
            dataservers: Vec::new(),
            dataserver_args: opts.dataserver_args.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..opts.dataservers {
            c.add_dataserver();
        }
        c
    }

    /// Start one more dataserver of the group (the next id, fresh data).
    pub fn add_dataserver(&mut self) -> &mut Dataserver {
        let ds = Dataserver::start(self.next_opts());
        self.push(ds)
    }

    /// Start one more dataserver of the group (the next id) on `data_dir`,
    /// which the caller prepared (and removes).
    pub fn add_dataserver_in(&mut self, data_dir: &std::path::Path) -> &mut Dataserver {
        let ds = Dataserver::start_in(data_dir, self.next_opts());
        self.push(ds)
    }

    fn next_opts(&self) -> DataserverOpts {
        DataserverOpts {
            server_id: self.dataservers.len() as u32 + 1,
            leaders: self.leaders.addrs(),
            extra_args: self.dataserver_args.clone(),
            ..DataserverOpts::default()
        }
    }

    fn push(&mut self, ds: Dataserver) -> &mut Dataserver {
        self.dataservers.push(ds);
        let last = self.dataservers.len() - 1;
        &mut self.dataservers[last]
    }

    /// A leader client with short timeouts (connect 300 ms, request 3 s,
    /// call 10 s), so that a poll never hides a bounded wait.
    pub fn leader_client(&self) -> LeaderClient {
        LeaderClient::with_timeouts(
            self.leaders.addrs(),
            ClientTimeouts {
                connect: Duration::from_millis(300),
                request: Duration::from_secs(3),
                call: Duration::from_secs(10),
                backoff: Duration::from_millis(50),
                subscription_silence: Duration::from_secs(3),
            },
        )
    }

    /// Poll the map through `lc` until `pred` holds; panics after `timeout`
    /// with the last map and every process's log tail.
    pub async fn wait_map(
        &self,
        lc: &LeaderClient,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&ClusterMap) -> bool,
    ) -> ClusterMap {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Ok(m) = lc.get_map(false).await {
                if pred(&m) {
                    return m;
                }
                last = Some(m);
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached within {timeout:?}; last map: {last:#?}\nlogs:\n{}",
                self.logs()
            );
            tokio::time::sleep(MAP_POLL).await;
        }
    }

    /// [`wait_map`](Self::wait_map) for sync tests (runs on its own thread
    /// and runtime, with a fresh [`leader_client`](Self::leader_client)).
    pub fn wait_map_blocking(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&ClusterMap) -> bool + Send + Sync,
    ) -> ClusterMap {
        crate::block_on(async {
            let lc = self.leader_client();
            self.wait_map(&lc, timeout, what, pred).await
        })
    }

    /// The current map (non-linearizable read through any leader), or
    /// `None` if no leader answers; callable from sync and async tests.
    pub fn map_blocking(&self) -> Option<ClusterMap> {
        crate::block_on(async { self.leader_client().get_map(false).await.ok() })
    }

    /// Run `chorus verify GROUP` against this cluster's leaders (blocking):
    /// its exit status and everything it printed.
    pub fn verify(&self, group: &str) -> (i32, String) {
        let out = std::process::Command::new(crate::bin("chorus"))
            .args([
                "--leaders",
                &self.leaders.addrs().join(","),
                "verify",
                group,
            ])
            .output()
            .expect("run chorus verify");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Every process's log (last 30 lines each), for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.leaders.procs.len() {
            out.push_str(&format!("--- leader {} (last 30 lines)\n", i + 1));
            out.push_str(&process::tail(&self.leaders.log(i), 30));
        }
        for (i, d) in self.dataservers.iter().enumerate() {
            out.push_str(&format!("--- dataserver {} (last 30 lines)\n", i + 1));
            out.push_str(&process::tail(&d.log_text(), 30));
        }
        out
    }
}
