//! `chorus bench --replica-lag`: how long after an upload is acknowledged
//! the other members of its group have the file.
//!
//! The bench tasks hand a sample (file id, moment of the acknowledgement)
//! to the prober over an unbounded channel and go on at once; the prober
//! runs outside the measured request path, with a client and connections
//! of its own: for each sample, one task per *other* ACTIVE member of the
//! file's group (from the map; the file's source server is the one that
//! took the upload) asks that member directly
//! ([`Client::exists_on`], with the group's epoch) every [`POLL_EVERY`]
//! until it says yes, for at most [`GIVE_UP_AFTER`]. The lag of a (file, member) pair is
//! the time from the acknowledgement to the first `exists = true` (so it
//! includes up to one poll interval and one round trip).
//!
//! In a sync group every ACTIVE member has the file when the upload is
//! acknowledged, so the lag is one round trip; in an async group it is the
//! push delay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Client, FileId};
use hdrhistogram::Histogram;
use proto::cluster::ServerStatus;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::output::{exit, CliError, CliResult};

/// One upload in how many is sampled.
pub const SAMPLE_EVERY: u64 = 20;
/// Pause between two `exists` polls of one member.
pub const POLL_EVERY: Duration = Duration::from_millis(1);
/// A member that does not have the file after this long is counted as
/// timed out (and not in the percentiles).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(10);
/// Largest lag the histogram tracks (µs).
const MAX_LAG_US: u64 = 60_000_000;

/// One sampled upload.
#[derive(Debug)]
pub struct Sample {
    pub file_id: String,
    /// When the upload's answer arrived.
    pub acked: Instant,
}

/// Replica lag over every (sampled file, other member) pair.
#[derive(Debug, Clone, PartialEq)]
pub struct LagSummary {
    /// Uploads sampled.
    pub files: u64,
    /// (file, member) pairs that got the file.
    pub samples: u64,
    /// Pairs still without the file after [`GIVE_UP_AFTER`].
    pub timeouts: u64,
    /// Pairs whose polls failed (member unreachable, refused).
    pub errors: u64,
    /// Sampled files whose group had no other ACTIVE member.
    pub no_peer: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LagSummary {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "files": self.files,
            "samples": self.samples,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "no_peer": self.no_peer,
            "p50": self.p50_ms,
            "p90": self.p90_ms,
            "p99": self.p99_ms,
            "max": self.max_ms,
        })
    }

    pub fn to_text(&self) -> String {
        format!(
            "replica lag  ms p50 {:.2}   p90 {:.2}   p99 {:.2}   max {:.2}   \
             ({} files x peers = {} samples, {} timed out, {} errors)",
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.files,
            self.samples,
            self.timeouts,
            self.errors
        )
    }
}

/// How one (file, member) pair ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairOutcome {
    /// The member had the file this long after the acknowledgement.
    Seen(Duration),
    TimedOut,
    Failed,
}

/// What the prober collected.
struct Tally {
    hist: Histogram<u64>,
    files: u64,
    timeouts: u64,
    errors: u64,
    no_peer: u64,
}

impl Tally {
    fn new() -> CliResult<Tally> {
        Ok(Tally {
            hist: Histogram::new_with_bounds(1, MAX_LAG_US, 3)
                .map_err(|e| CliError::new("internal", e.to_string(), exit::OTHER))?,
            files: 0,
            timeouts: 0,
            errors: 0,
            no_peer: 0,
        })
    }

    fn add(&mut self, o: PairOutcome) {
        match o {
            PairOutcome::Seen(d) => {
                let us = (d.as_micros() as u64).clamp(1, MAX_LAG_US);
                self.hist.saturating_record(us);
            }
            PairOutcome::TimedOut => self.timeouts += 1,
            PairOutcome::Failed => self.errors += 1,
        }
    }

    fn summary(&self) -> LagSummary {
        let n = self.hist.len();
        let q = |p: f64| {
            if n == 0 {
                0.0
            } else {
                self.hist.value_at_quantile(p) as f64 / 1000.0
            }
        };
        LagSummary {
            files: self.files,
            samples: n,
            timeouts: self.timeouts,
            errors: self.errors,
            no_peer: self.no_peer,
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            max_ms: if n == 0 {
                0.0
            } else {
                self.hist.max() as f64 / 1000.0
            },
        }
    }
}

/// The members other than the file's source that should get it: every
/// ACTIVE member of the file's group in `map` but the file's source server
/// (the one that took the upload; in a sync group, the master then).
pub fn peers_of(map: &client::ClusterMap, file: &FileId) -> Vec<String> {
    let Some(g) = map.group(file.group()) else {
        return Vec::new();
    };
    let source = u64::from(file.source_server());
    g.members
        .iter()
        .filter(|id| **id != source)
        .filter_map(|id| map.server(*id))
        .filter(|s| s.status == ServerStatus::Active && s.group == g.name)
        .map(|s| s.addr.clone())
        .collect()
}

/// Poll the member at `addr` until it has `file_id`.
async fn poll(client: Client, addr: String, file_id: Arc<str>, acked: Instant) -> PairOutcome {
    let deadline = acked + GIVE_UP_AFTER;
    let mut failures = 0u32;
    loop {
        match client.exists_on(&addr, &file_id).await {
            Ok(true) => return PairOutcome::Seen(acked.elapsed()),
            Ok(false) => failures = 0,
            // A member may refuse for a moment (busy, its map behind):
            // 50 failures in a row make the pair an error.
            Err(e) => {
                failures += 1;
                if failures >= 50 {
                    tracing::debug!(%file_id, "replica lag: polls fail: {e}");
                    return PairOutcome::Failed;
                }
            }
        }
        if Instant::now() >= deadline {
            return PairOutcome::TimedOut;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The prober: takes samples until the channel closes, then waits for the
/// polls under way (each bounded by [`GIVE_UP_AFTER`]).
pub struct Prober {
    tx: mpsc::UnboundedSender<Sample>,
    task: tokio::task::JoinHandle<CliResult<LagSummary>>,
}

impl Prober {
    /// Start probing with `client`, a cluster-mode client of its own: its
    /// map names each file's group members, and it asks them directly
    /// ([`Client::exists_on`]).
    pub fn start(client: Client) -> Prober {
        let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
        let task = tokio::spawn(async move {
            let mut tally = Tally::new()?;
            let mut polls: JoinSet<PairOutcome> = JoinSet::new();
            loop {
                tokio::select! {
                    sample = rx.recv() => {
                        let Some(sample) = sample else { break };
                        let Ok(file) = FileId::parse(&sample.file_id) else { continue };
                        tally.files += 1;
                        let peers = client
                            .cluster_map()
                            .map(|m| peers_of(&m, &file))
                            .unwrap_or_default();
                        if peers.is_empty() {
                            tally.no_peer += 1;
                            continue;
                        }
                        let id: Arc<str> = sample.file_id.into();
                        for addr in peers {
                            polls.spawn(poll(client.clone(), addr, id.clone(), sample.acked));
                        }
                    }
                    Some(done) = polls.join_next(), if !polls.is_empty() => {
                        tally.add(done.unwrap_or(PairOutcome::Failed));
                    }
                }
            }
            while let Some(done) = polls.join_next().await {
                tally.add(done.unwrap_or(PairOutcome::Failed));
            }
            Ok(tally.summary())
        });
        Prober { tx, task }
    }

    /// A handle for the bench tasks.
    pub fn sender(&self) -> mpsc::UnboundedSender<Sample> {
        self.tx.clone()
    }

    /// Stop taking samples (every sender must be gone too) and wait for the
    /// polls under way.
    pub async fn finish(self) -> CliResult<LagSummary> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| CliError::new("internal", e.to_string(), exit::OTHER))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::cluster::{ClusterMap, GroupInfo, ReplicationMode, ServerInfo};

    fn server(id: u64, group: &str, status: ServerStatus) -> ServerInfo {
        ServerInfo {
            id,
            addr: format!("127.0.0.1:{}", 23000 + id),
            group: group.into(),
            status,
            data_version: 0,
            disk_free: 1,
            disk_total: 2,
            status_changed_ms: 0,
        }
    }

    #[test]
    fn peers_are_the_other_active_members_of_the_files_group() {
        let map = ClusterMap {
            version: 3,
            updated_ms: 0,
            groups: vec![GroupInfo {
                name: "a1".into(),
                mode: ReplicationMode::Async,
                members: vec![1, 2, 3, 4],
                master: None,
                epoch: 0,
                master_lease_ms: 3000,
                epoch_starts: Vec::new(),
            }],
            servers: vec![
                server(1, "a1", ServerStatus::Active),
                server(2, "a1", ServerStatus::Active),
                server(3, "a1", ServerStatus::Syncing),
                server(4, "a1", ServerStatus::Active),
            ],
        };
        let f = FileId::generate("a1", 0, 2, 1_700_000_000, 1, 0, "").unwrap();
        assert_eq!(peers_of(&map, &f), ["127.0.0.1:23001", "127.0.0.1:23004"]);
        let other = FileId::generate("zz", 0, 2, 1_700_000_000, 1, 0, "").unwrap();
        assert!(peers_of(&map, &other).is_empty());
    }

    #[test]
    fn tally_reports_percentiles_in_ms_and_counts_the_rest() {
        let mut t = Tally::new().unwrap();
        t.files = 3;
        for ms in [1u64, 2, 3, 4, 100] {
            t.add(PairOutcome::Seen(Duration::from_millis(ms)));
        }
        t.add(PairOutcome::TimedOut);
        t.add(PairOutcome::Failed);
        let s = t.summary();
        assert_eq!((s.files, s.samples, s.timeouts, s.errors), (3, 5, 1, 1));
        assert!((s.p50_ms - 3.0).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        assert!(s.p90_ms >= 4.0 && s.p99_ms <= s.max_ms, "{s:?}");
        let v = s.to_json();
        assert_eq!(v["samples"], 5);
        assert!(s.to_text().contains("p50 3.00"), "{}", s.to_text());
        // Nothing seen: zeros, not a panic.
        let s = Tally::new().unwrap().summary();
        assert_eq!((s.samples, s.p99_ms, s.max_ms), (0, 0.0, 0.0));
    }
}
