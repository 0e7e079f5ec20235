//! Configuration: command-line flags, or a TOML file (`--config FILE`) whose
//! values flags override. With nothing given, a single local leader:
//! id 1 on 127.0.0.1:7100, data in `./chorus-leader-data`.
//!
//! ```toml
//! id = 1
//! listen = "127.0.0.1:7100"
//! # every member, this one included; the same list on every leader
//! peers = ["1=127.0.0.1:7100", "2=127.0.0.1:7101", "3=127.0.0.1:7102"]
//! data_dir = "/var/lib/chorus/leader1"
//! server_timeout_ms = 3000   # silent dataserver -> OFFLINE
//! master_lease_ms = 3000     # master lease granted with each heartbeat
//! election_timeout_ms = 400  # Raft election timeout (min; max is twice)
//! heartbeat_ms = 100         # Raft heartbeat between leaders
//! snapshot_logs = 1000       # snapshot after this many entries
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::node::Timing;
use crate::raft::RaftTuning;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7100";
pub const DEFAULT_DATA_DIR: &str = "chorus-leader-data";
pub const DEFAULT_SERVER_TIMEOUT_MS: u64 = 3000;
pub const DEFAULT_MASTER_LEASE_MS: u64 = 3000;

/// `chorus-leader` flags.
#[derive(Debug, Default, Clone, clap::Parser)]
#[command(
    name = "chorus-leader",
    about = "Chorus leader: the Raft-replicated cluster map"
)]
pub struct Args {
    /// TOML configuration file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This leader's Raft node id.
    #[arg(long)]
    pub id: Option<u64>,
    /// Address to listen on (clients, dataservers and peer leaders).
    #[arg(long)]
    pub listen: Option<String>,
    /// Every member as ID=ADDR, this one included, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Where the Raft log and state live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A dataserver silent this long is marked OFFLINE.
    #[arg(long)]
    pub server_timeout_ms: Option<u64>,
    /// Master lease granted with each heartbeat.
    #[arg(long)]
    pub master_lease_ms: Option<u64>,
    /// Raft election timeout (minimum; the maximum is twice this).
    #[arg(long)]
    pub election_timeout_ms: Option<u64>,
    /// Raft heartbeat interval between leaders.
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Build a snapshot after this many log entries.
    #[arg(long)]
    pub snapshot_logs: Option<u64>,
}

/// The TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<u64>,
    pub listen: Option<String>,
    pub peers: Option<Vec<String>>,
    pub data_dir: Option<PathBuf>,
    pub server_timeout_ms: Option<u64>,
    pub master_lease_ms: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    pub snapshot_logs: Option<u64>,
}

/// A bad configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("peer {0:?} is not ID=ADDR")]
    Peer(String),
    #[error("peer id {0} is listed twice")]
    DuplicatePeer(u64),
    #[error("the peers list does not name this leader (id {0})")]
    SelfMissing(u64),
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("heartbeat_ms ({heartbeat}) must be below election_timeout_ms ({election})")]
    Heartbeat { heartbeat: u64, election: u64 },
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub id: u64,
    pub listen: String,
    pub peers: BTreeMap<u64, String>,
    pub data_dir: PathBuf,
    pub timing: Timing,
    pub tuning: RaftTuning,
}

/// Parse `ID=ADDR` entries.
pub fn parse_peers(list: &[String]) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for p in list.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let (id, addr) = p
            .split_once('=')
            .ok_or_else(|| ConfigError::Peer(p.into()))?;
        let id: u64 = id.trim().parse().map_err(|_| ConfigError::Peer(p.into()))?;
        let addr = addr.trim();
        if addr.is_empty() {
            return Err(ConfigError::Peer(p.into()));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(ConfigError::DuplicatePeer(id));
        }
    }
    Ok(peers)
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source,
    })
}

fn positive(v: u64, name: &'static str) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(ConfigError::Zero(name))
    } else {
        Ok(v)
    }
}

impl LeaderConfig {
    /// Combine flags and the file they name (flags win) with the defaults.
    pub fn resolve(args: &Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let id = args.id.or(file.id).unwrap_or(1);
        let listen = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let peers = match args.peers.as_ref().or(file.peers.as_ref()) {
            Some(list) => parse_peers(list)?,
            None => BTreeMap::from([(id, listen.clone())]),
        };
        if !peers.contains_key(&id) {
            return Err(ConfigError::SelfMissing(id));
        }
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let server_timeout = positive(
            args.server_timeout_ms
                .or(file.server_timeout_ms)
                .unwrap_or(DEFAULT_SERVER_TIMEOUT_MS),
            "server_timeout_ms",
        )?;
        let lease = positive(
            args.master_lease_ms
                .or(file.master_lease_ms)
                .unwrap_or(DEFAULT_MASTER_LEASE_MS),
            "master_lease_ms",
        )?;
        let defaults = RaftTuning::default();
        let election = positive(
            args.election_timeout_ms
                .or(file.election_timeout_ms)
                .unwrap_or(defaults.election_min.as_millis() as u64),
            "election_timeout_ms",
        )?;
        let heartbeat = positive(
            args.heartbeat_ms
                .or(file.heartbeat_ms)
                .unwrap_or(defaults.heartbeat.as_millis() as u64),
            "heartbeat_ms",
        )?;
        if heartbeat >= election {
            return Err(ConfigError::Heartbeat {
                heartbeat,
                election,
            });
        }
        let snapshot_logs = positive(
            args.snapshot_logs
                .or(file.snapshot_logs)
                .unwrap_or(defaults.snapshot_logs),
            "snapshot_logs",
        )?;
        let tick = Duration::from_millis((server_timeout / 20).clamp(10, 100));
        Ok(LeaderConfig {
            id,
            listen,
            peers,
            data_dir,
            timing: Timing {
                server_timeout: Duration::from_millis(server_timeout),
                master_lease: Duration::from_millis(lease),
                tick,
            },
            tuning: RaftTuning {
                heartbeat: Duration::from_millis(heartbeat),
                election_min: Duration::from_millis(election),
                election_max: Duration::from_millis(election * 2),
                snapshot_logs,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_one_local_leader() {
        let c = LeaderConfig::resolve(&Args::default()).unwrap();
        assert_eq!(c.id, 1);
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.peers.get(&1).map(String::as_str), Some(DEFAULT_LISTEN));
        assert_eq!(c.timing.server_timeout, Duration::from_secs(3));
    }

    #[test]
    fn file_values_and_flag_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader.toml");
        std::fs::write(
            &path,
            "id = 2\nlisten = \"127.0.0.1:7101\"\npeers = [\"1=127.0.0.1:7100\", \"2=127.0.0.1:7101\"]\nserver_timeout_ms = 5000\n",
        )
        .unwrap();
        let args = Args {
            config: Some(path),
            server_timeout_ms: Some(1500),
            ..Args::default()
        };
        let c = LeaderConfig::resolve(&args).unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.timing.server_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(parse_peers(&["1=a:1".into(), "1=b:2".into()]).is_err());
        assert!(parse_peers(&["x=a:1".into()]).is_err());
        assert!(parse_peers(&["1".into()]).is_err());
        let args = Args {
            id: Some(3),
            peers: Some(vec!["1=127.0.0.1:1".into()]),
            ..Args::default()
        };
        assert!(matches!(
            LeaderConfig::resolve(&args),
            Err(ConfigError::SelfMissing(3))
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "idd = 1\n").unwrap();
        let args = Args {
            config: Some(path),
            ..Args::default()
        };
        assert!(matches!(
            LeaderConfig::resolve(&args),
            Err(ConfigError::Parse { .. })
        ));
    }
}
