//! A real cluster for CLI tests: a `testkit::Cluster` (3 `chorus-leader`
//! processes and one group of `chorus-dataserver`s joined to them, every
//! process SIGKILLed on drop), and the CLI pointed at it.
//!
//! Binaries: `testkit::bin` (build them with `cargo build --workspace --bins`).

use std::time::Duration;

use proto::cluster::ServerStatus;
use testkit::{Cluster, ClusterOpts};

use crate::harness::{run_chorus_with, Run};

/// How long leaders may take to elect and dataservers to become ACTIVE.
pub const START_LIMIT: Duration = Duration::from_secs(60);

/// 3 leaders and `n` dataservers in group1; returns once the group has a
/// master and every dataserver is ACTIVE.
pub fn start(n: usize) -> Cluster {
    let c = Cluster::start(ClusterOpts {
        dataservers: n,
        ..ClusterOpts::default()
    });
    c.wait_map_blocking(START_LIMIT, "a master and every dataserver ACTIVE", |m| {
        m.master_of("group1").is_some()
            && m.servers.len() == n
            && m.servers.iter().all(|s| s.status == ServerStatus::Active)
    });
    c
}

/// The CLI against a cluster.
pub trait Cli {
    /// The `--leaders` value.
    fn leaders_arg(&self) -> String;
    /// `chorus --leaders <all> <args>`.
    fn chorus(&self, args: &[&str]) -> Run;
    /// `chorus --leaders <all> status --json`, parsed.
    fn status_json(&self) -> serde_json::Value;
}

impl Cli for Cluster {
    fn leaders_arg(&self) -> String {
        self.leaders.addrs().join(",")
    }

    fn chorus(&self, args: &[&str]) -> Run {
        run_chorus_with(&["--leaders", &self.leaders_arg()], args, None)
    }

    fn status_json(&self) -> serde_json::Value {
        self.chorus(&["status", "--json"]).ok().json()
    }
}
