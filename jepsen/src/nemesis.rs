//! Nemeses: faults on the hosts, scheduled at random from a seed, in
//! alternating quiet and fault windows of a few seconds, each recorded in
//! the history as `start-<fault>` / `stop-<fault>` (process
//! [`NEMESIS`], type `info`, the value describing the nodes), and all healed
//! at the end.
//!
//! * `partition`: iptables DROP rules inside the namespaces, one of:
//!   isolate one node; cut the group's master from the leaders; isolate
//!   the Raft leader; random halves; a majorities ring (every node sees a
//!   majority, no two the same one).
//! * `kill`: SIGKILL a node (random, the master or the Raft leader),
//!   restart it at the end of the window.
//! * `pause`: SIGSTOP, then SIGCONT.
//! * `netem`: `tc netem` delay, jitter and loss on one node's link (or
//!   every node's).
//! * `clock`: restart one node under libfaketime with a clock offset or a
//!   rate change; restart it with the true clock at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use client::leader::{ClientTimeouts, LeaderClient};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::json;
use tracing::{info, warn};

use crate::history::{OpType, NEMESIS};
use crate::hosts::{Hosts, HostsError, NodeInfo, Role, GROUP, LIBFAKETIME};
use crate::workload::Recorder;

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    Partition,
    Kill,
    Pause,
    Netem,
    Clock,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Partition,
        Fault::Kill,
        Fault::Pause,
        Fault::Netem,
        Fault::Clock,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Partition => "partition",
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Netem => "netem",
            Fault::Clock => "clock",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Parse `partition,kill` (empty or `none`: no faults).
    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "none" {
                continue;
            }
            let f = Fault::parse(part).ok_or_else(|| {
                format!("unknown nemesis {part:?} (partition, kill, pause, netem, clock, none)")
            })?;
            if !out.contains(&f) {
                out.push(f);
            }
        }
        Ok(out)
    }
}

/// Whether libfaketime is installed (needed by the clock nemesis).
pub fn faketime_available() -> bool {
    std::path::Path::new(LIBFAKETIME).is_file()
}

/// Nemesis timing.
#[derive(Debug, Clone)]
pub struct NemesisOpts {
    pub faults: Vec<Fault>,
    pub seed: u64,
    /// Seconds between faults: uniform in this range.
    pub quiet: (f64, f64),
    /// Seconds a fault lasts: uniform in this range.
    pub window: (f64, f64),
}

impl NemesisOpts {
    pub fn new(faults: Vec<Fault>, seed: u64) -> Self {
        NemesisOpts {
            faults,
            seed,
            quiet: (1.5, 4.0),
            window: (2.0, 6.0),
        }
    }
}

/// A fault in force, to heal.
#[derive(Debug, Clone)]
enum Active {
    Partition(String),
    Kill(String),
    Pause(String),
    Netem(Vec<String>),
    Clock(String),
}

impl Active {
    fn fault(&self) -> Fault {
        match self {
            Active::Partition(_) => Fault::Partition,
            Active::Kill(_) => Fault::Kill,
            Active::Pause(_) => Fault::Pause,
            Active::Netem(_) => Fault::Netem,
            Active::Clock(_) => Fault::Clock,
        }
    }
}

/// The nemesis of one run.
pub struct Nemesis {
    hosts: Arc<Hosts>,
    rec: Arc<Recorder>,
    rng: StdRng,
    opts: NemesisOpts,
    lc: LeaderClient,
    /// How many faults were started, by kind.
    pub started: Vec<(Fault, usize)>,
}

/// Run a blocking [`Hosts`] call off the runtime's worker threads.
async fn blocking<T: Send + 'static>(
    hosts: &Arc<Hosts>,
    f: impl FnOnce(&Hosts) -> Result<T, HostsError> + Send + 'static,
) -> Result<T, HostsError> {
    let h = hosts.clone();
    match tokio::task::spawn_blocking(move || f(&h)).await {
        Ok(r) => r,
        Err(e) => Err(HostsError::Command {
            cmd: "nemesis task".into(),
            msg: e.to_string(),
        }),
    }
}

fn names(nodes: &[NodeInfo]) -> String {
    nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The pairs a majorities ring cuts: nodes on a ring (in `order`), each
/// connected to those within ring distance `k`, with `2k + 1` at least a
/// majority, so every node sees a majority but no two nodes the same one.
pub fn ring_cuts(order: &[String]) -> Vec<(String, String)> {
    let n = order.len();
    let majority = n / 2 + 1;
    let k = majority / 2;
    let mut cuts = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            let d = (j - i).min(n - (j - i));
            if d > k {
                cuts.push((order[i].clone(), order[j].clone()));
            }
        }
    }
    cuts
}

impl Nemesis {
    pub fn new(hosts: Arc<Hosts>, rec: Arc<Recorder>, opts: NemesisOpts) -> Nemesis {
        let lc = LeaderClient::with_timeouts(
            hosts.leader_addrs(),
            ClientTimeouts {
                connect: Duration::from_millis(300),
                request: Duration::from_secs(1),
                call: Duration::from_secs(2),
                backoff: Duration::from_millis(50),
                subscription_silence: Duration::from_secs(3),
            },
        );
        Nemesis {
            rng: StdRng::seed_from_u64(opts.seed ^ 0x006e_656d_6573_6973),
            hosts,
            rec,
            opts,
            lc,
            started: Vec::new(),
        }
    }

    fn record(&self, f: String, value: String) {
        info!(%f, %value, "nemesis");
        self.rec
            .record(NEMESIS, OpType::Info, &f, None, json!(value), None);
    }

    fn secs(&mut self, (lo, hi): (f64, f64)) -> Duration {
        Duration::from_secs_f64(if hi > lo {
            self.rng.random_range(lo..hi)
        } else {
            lo
        })
    }

    /// Inject faults until `stop_at`, then heal everything.
    pub async fn run(&mut self, stop_at: Instant) {
        if self.opts.faults.is_empty() {
            return;
        }
        loop {
            let quiet = self.secs(self.opts.quiet);
            if Instant::now() + quiet >= stop_at {
                break;
            }
            tokio::time::sleep(quiet).await;
            let Some(&fault) = self.opts.faults.choose(&mut self.rng) else {
                break;
            };
            let active = match self.start(fault).await {
                Ok(a) => a,
                Err(e) => {
                    warn!(fault = fault.name(), "could not start: {e}");
                    continue;
                }
            };
            match self.started.iter_mut().find(|(f, _)| *f == fault) {
                Some((_, n)) => *n += 1,
                None => self.started.push((fault, 1)),
            }
            let window = self.secs(self.opts.window);
            let left = stop_at.saturating_duration_since(Instant::now());
            tokio::time::sleep(window.min(left)).await;
            self.stop(active).await;
        }
    }

    async fn nodes(&self) -> Vec<NodeInfo> {
        let h = self.hosts.clone();
        tokio::task::spawn_blocking(move || h.nodes())
            .await
            .unwrap_or_default()
    }

    /// The node of the group's master, per the map.
    async fn master(&self, nodes: &[NodeInfo]) -> Option<NodeInfo> {
        let map = self.lc.get_map(false).await.ok()?;
        let id = map.master_of(GROUP)?.id;
        nodes
            .iter()
            .find(|n| n.role == Role::Dataserver && n.id == id)
            .cloned()
    }

    /// The node of the Raft leader.
    async fn raft_leader(&self, nodes: &[NodeInfo]) -> Option<NodeInfo> {
        let st = self.lc.status().await.ok()?;
        let id = st.raft_leader?.id;
        nodes
            .iter()
            .find(|n| n.role == Role::Leader && n.id == id)
            .cloned()
    }

    /// A target for kill/pause/clock: a random running node, the master
    /// or the Raft leader.
    async fn target(&mut self, nodes: &[NodeInfo]) -> Option<NodeInfo> {
        let running: Vec<NodeInfo> = nodes
            .iter()
            .filter(|n| n.running && !n.paused)
            .cloned()
            .collect();
        let pick = match self.rng.random_range(0..4) {
            0 => self.master(&running).await,
            1 => self.raft_leader(&running).await,
            _ => None,
        };
        pick.or_else(|| running.choose(&mut self.rng).cloned())
    }

    async fn start(&mut self, fault: Fault) -> Result<Active, HostsError> {
        let nodes = self.nodes().await;
        let none = || HostsError::NoSuchNode("no suitable node".into());
        match fault {
            Fault::Partition => {
                let all: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
                let (desc, cuts): (String, Vec<(String, String)>) =
                    match self.rng.random_range(0..5) {
                        0 => {
                            let m = self.master(&nodes).await;
                            match m {
                                Some(m) => {
                                    let leaders: Vec<&NodeInfo> =
                                        nodes.iter().filter(|n| n.role == Role::Leader).collect();
                                    (
                                        format!("master {} from the leaders", m.name),
                                        leaders
                                            .iter()
                                            .map(|l| (m.name.clone(), l.name.clone()))
                                            .collect(),
                                    )
                                }
                                None => self.isolate(&nodes, None),
                            }
                        }
                        1 => {
                            let l = self.raft_leader(&nodes).await;
                            match l {
                                Some(l) => {
                                    let (d, c) = self.isolate(&nodes, Some(&l.name));
                                    (format!("raft leader: {d}"), c)
                                }
                                None => self.isolate(&nodes, None),
                            }
                        }
                        2 => {
                            let mut order = all.clone();
                            order.shuffle(&mut self.rng);
                            let (a, b) = order.split_at(order.len() / 2);
                            let cuts = a
                                .iter()
                                .flat_map(|x| b.iter().map(move |y| (x.clone(), y.clone())))
                                .collect();
                            (format!("halves {} | {}", a.join(","), b.join(",")), cuts)
                        }
                        3 => {
                            let mut order = all.clone();
                            order.shuffle(&mut self.rng);
                            let cuts = ring_cuts(&order);
                            (format!("majorities ring {}", order.join("-")), cuts)
                        }
                        _ => self.isolate(&nodes, None),
                    };
                self.record("start-partition".into(), desc.clone());
                let res = blocking(&self.hosts, move |h| {
                    for (a, b) in &cuts {
                        h.cut(a, b)?;
                    }
                    Ok(())
                })
                .await;
                if let Err(e) = res {
                    // Whatever was cut is healed by stop().
                    warn!("partition: {e}");
                }
                Ok(Active::Partition(desc))
            }
            Fault::Kill => {
                let t = self.target(&nodes).await.ok_or_else(none)?;
                self.record("start-kill".into(), t.name.clone());
                let name = t.name.clone();
                if let Err(e) = blocking(&self.hosts, move |h| h.kill(&name)).await {
                    // Recorded as started: stop() heals whatever state it left.
                    warn!(fault = fault.name(), "applying: {e}");
                }
                Ok(Active::Kill(t.name))
            }
            Fault::Pause => {
                let t = self.target(&nodes).await.ok_or_else(none)?;
                self.record("start-pause".into(), t.name.clone());
                let name = t.name.clone();
                if let Err(e) = blocking(&self.hosts, move |h| h.pause(&name)).await {
                    // Recorded as started: stop() heals whatever state it left.
                    warn!(fault = fault.name(), "applying: {e}");
                }
                Ok(Active::Pause(t.name))
            }
            Fault::Netem => {
                let (delay, jitter, loss) = (
                    self.rng.random_range(20..200u32),
                    self.rng.random_range(5..50u32),
                    self.rng.random_range(0..20u32),
                );
                let targets: Vec<String> = if self.rng.random_bool(0.5) {
                    nodes.iter().map(|n| n.name.clone()).collect()
                } else {
                    nodes
                        .choose(&mut self.rng)
                        .map(|n| vec![n.name.clone()])
                        .unwrap_or_default()
                };
                let t = targets.clone();
                let applied = blocking(&self.hosts, move |h| {
                    let mut what = String::new();
                    for n in &t {
                        what = h.netem(n, delay, jitter, loss)?;
                    }
                    Ok(what)
                })
                .await;
                let applied = match applied {
                    Ok(a) => a,
                    Err(e) => {
                        blocking(&self.hosts, |h| {
                            h.heal_netem();
                            Ok(())
                        })
                        .await
                        .ok();
                        return Err(e);
                    }
                };
                self.record(
                    "start-netem".into(),
                    format!("{}: {applied}", targets.join(",")),
                );
                Ok(Active::Netem(targets))
            }
            Fault::Clock => {
                let t = self.target(&nodes).await.ok_or_else(none)?;
                let ft = *[
                    "+30s", "-30s", "+5m", "-2m", "+0 x2", "+0 x0.5", "+1h", "-10s",
                ]
                .choose(&mut self.rng)
                .unwrap_or(&"+30s");
                self.record(
                    "start-clock".into(),
                    format!("{}: FAKETIME={ft:?} (restarted under libfaketime)", t.name),
                );
                let name = t.name.clone();
                if let Err(e) = blocking(&self.hosts, move |h| h.restart(&name, Some(ft))).await {
                    // Recorded as started: stop() heals whatever state it left.
                    warn!(fault = fault.name(), "applying: {e}");
                }
                Ok(Active::Clock(t.name))
            }
        }
    }

    /// Cut `who` (or a random node) from every other node.
    fn isolate(
        &mut self,
        nodes: &[NodeInfo],
        who: Option<&str>,
    ) -> (String, Vec<(String, String)>) {
        let victim = who
            .map(str::to_string)
            .or_else(|| nodes.choose(&mut self.rng).map(|n| n.name.clone()));
        let Some(v) = victim else {
            return ("nobody".into(), Vec::new());
        };
        let cuts = nodes
            .iter()
            .filter(|n| n.name != v)
            .map(|n| (v.clone(), n.name.clone()))
            .collect();
        let others: Vec<NodeInfo> = nodes.iter().filter(|n| n.name != v).cloned().collect();
        (format!("isolate {v} from {}", names(&others)), cuts)
    }

    async fn stop(&mut self, active: Active) {
        let fault = active.fault();
        let (desc, res) = match active {
            Active::Partition(d) => (d, blocking(&self.hosts, |h| h.heal_network()).await),
            Active::Kill(n) => {
                let m = n.clone();
                (n, blocking(&self.hosts, move |h| h.restart(&m, None)).await)
            }
            Active::Pause(n) => {
                let m = n.clone();
                (n, blocking(&self.hosts, move |h| h.resume(&m)).await)
            }
            Active::Netem(ns) => (
                ns.join(","),
                blocking(&self.hosts, |h| {
                    h.heal_netem();
                    Ok(())
                })
                .await,
            ),
            Active::Clock(n) => {
                let m = n.clone();
                (n, blocking(&self.hosts, move |h| h.restart(&m, None)).await)
            }
        };
        if let Err(e) = res {
            warn!(fault = fault.name(), "healing: {e}");
        }
        self.record(format!("stop-{}", fault.name()), desc);
    }

    /// Undo every fault that may be in force: network rules, netem,
    /// paused, dead or clock-shifted processes. Returns the nodes found
    /// dead although no fault was killing them (they exited by
    /// themselves: worth a look at their logs).
    pub async fn heal_all(&self) -> Vec<String> {
        let res = blocking(&self.hosts, |h| {
            h.heal_network()?;
            h.heal_netem();
            let mut died = Vec::new();
            for n in h.nodes() {
                if n.paused {
                    h.resume(&n.name)?;
                }
                if !n.running {
                    died.push(n.name.clone());
                }
                if !n.running || n.faketime.is_some() {
                    h.restart(&n.name, None)?;
                }
            }
            Ok(died)
        })
        .await;
        res.unwrap_or_else(|e| {
            warn!("final heal: {e}");
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fault_lists() {
        assert_eq!(
            Fault::parse_list("partition,kill").unwrap(),
            vec![Fault::Partition, Fault::Kill]
        );
        assert_eq!(Fault::parse_list("none").unwrap(), vec![]);
        assert_eq!(Fault::parse_list("kill,kill").unwrap(), vec![Fault::Kill]);
        assert!(Fault::parse_list("flood").is_err());
    }

    #[test]
    fn a_majorities_ring_leaves_each_node_a_distinct_majority() {
        for n in 3..=9 {
            let order: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            let cuts = ring_cuts(&order);
            assert!(!cuts.is_empty() || n <= 4, "n={n}: nothing cut");
            let mut views = Vec::new();
            for x in &order {
                let view: Vec<&String> = order
                    .iter()
                    .filter(|y| {
                        !cuts
                            .iter()
                            .any(|(a, b)| (a == x && b == *y) || (b == x && a == *y))
                    })
                    .collect();
                assert!(view.len() > n / 2, "n={n}: {x} sees {view:?}");
                views.push(view);
            }
            if !cuts.is_empty() {
                for i in 0..n {
                    for j in i + 1..n {
                        assert_ne!(views[i], views[j], "n={n}");
                    }
                }
            }
        }
    }
}
