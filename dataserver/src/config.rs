//! The dataserver's configuration: TOML file, command-line overrides and
//! documented defaults. With no configuration at all the server runs on
//! `127.0.0.1:23000` with its data under `./chorus-data`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use proto::units::serde_size;
use serde::{Deserialize, Serialize};

use crate::engine::{EngineConfig, FsyncPolicy};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Everything a dataserver needs to start. Field docs give the defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:23000`.
    pub listen: SocketAddr,
    /// Address to advertise to leaders and clients, when it differs from
    /// `listen` (NAT, containers). Default: `listen`.
    pub advertise: Option<SocketAddr>,
    /// Where to serve Prometheus metrics (`GET /metrics`). Default: off.
    pub metrics_listen: Option<SocketAddr>,
    /// Root of the server's state. Default `./chorus-data`.
    pub data_dir: PathBuf,
    /// Store paths (one per disk). Default: `[<data_dir>/store0]`.
    pub store_paths: Vec<PathBuf>,
    /// Group this server belongs to. Default `group1`.
    pub group: String,
    /// This server's id within the cluster (1..). Default 1.
    pub server_id: u32,
    /// Leader addresses (`host:port`). Empty (the default): run standalone,
    /// serving every request without a cluster map. Otherwise the server
    /// joins its group through these leaders, heartbeats and follows the
    /// map; only its group's master (holding a valid lease) serves files.
    pub leaders: Vec<String>,
    /// Interval between heartbeats to the leaders, in ms. Keep it well
    /// below the leaders' `master_lease_ms`. Default 1000.
    pub heartbeat_ms: u64,
    /// How the group replicates: `sync` (default; FastCFS-style master and
    /// slaves) or `async` (FastDFS-style: every member takes uploads and
    /// pushes its own files to the others afterwards). Fixed when the group
    /// is created: a server joining with another mode is refused.
    pub replication: proto::cluster::ReplicationMode,
    /// Sync groups: how long the master waits for a slave to have a change
    /// durable before reporting it (the leaders then drop it from the write
    /// set), in ms. Raise it for slow disks or links; a missed deadline
    /// costs the slave a catch-up. Default 2000.
    pub replication_deadline_ms: u64,
    /// Storage engine settings.
    pub storage: StorageConfig,
    /// Network limits.
    pub limits: LimitsConfig,
}

/// `[storage]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Files above this size are stored as single files. Default `64MiB`.
    #[serde(with = "serde_size")]
    pub large_file_threshold: u64,
    /// Size of one chunk file for small files. Default `256MiB`.
    #[serde(with = "serde_size")]
    pub chunk_file_size: u64,
    /// Extra room kept after each small file for in-place appends, as a
    /// fraction of its size. Default `0.2`.
    pub reserve_ratio: f64,
    /// Writes are refused (`no_space`) when they would leave less than this
    /// free on a store path. Default `1GiB`.
    #[serde(with = "serde_size")]
    pub reserved_space: u64,
    /// `always` (default): fdatasync before acknowledging, group-committed;
    /// `batch`: acknowledge at once, fdatasync every `fsync_interval_ms`;
    /// `never`: leave flushing to the OS.
    pub fsync: FsyncPolicy,
    /// Interval for `fsync = "batch"`. Default 10.
    pub fsync_interval_ms: u64,
    /// Use io_uring for disk I/O when the kernel allows. Default true.
    pub io_uring: bool,
    /// Per-file ordering lanes. Default 256.
    pub lanes: usize,
}

/// `[limits]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Concurrent client connections; more are answered `busy` and closed.
    /// Default 1024.
    pub max_connections: usize,
    /// Largest archive (request) in a frame. Default `1MiB`.
    #[serde(with = "serde_size")]
    pub max_frame: u64,
    /// Largest file (and body) accepted. Default `64GiB`.
    #[serde(with = "serde_size")]
    pub max_file_size: u64,
    /// A connection idle between requests this long is closed. Default 300.
    pub idle_timeout_secs: u64,
    /// A request whose next frame takes longer than this is abandoned and
    /// its connection closed. Default 30.
    pub frame_timeout_secs: u64,
    /// On SIGTERM, wait this long for requests in flight. Default 10.
    pub shutdown_grace_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 23000)),
            advertise: None,
            metrics_listen: None,
            data_dir: PathBuf::from("chorus-data"),
            store_paths: Vec::new(),
            group: "group1".to_string(),
            server_id: 1,
            leaders: Vec::new(),
            heartbeat_ms: 1000,
            replication: proto::cluster::ReplicationMode::Sync,
            replication_deadline_ms: 2000,
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            large_file_threshold: 64 << 20,
            chunk_file_size: 256 << 20,
            reserve_ratio: 0.2,
            reserved_space: 1 << 30,
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 10,
            io_uring: true,
            lanes: 256,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 1024,
            max_frame: 1 << 20,
            max_file_size: 64 << 30,
            idle_timeout_secs: 300,
            frame_timeout_secs: 30,
            shutdown_grace_secs: 10,
        }
    }
}

impl Config {
    /// Read a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// The store paths in effect.
    pub fn effective_store_paths(&self) -> Vec<PathBuf> {
        if self.store_paths.is_empty() {
            vec![self.data_dir.join("store0")]
        } else {
            self.store_paths.clone()
        }
    }

    /// Check everything that can be checked before touching the disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        proto::file_id::validate_group(&self.group)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let paths = self.effective_store_paths();
        if paths.len() > 256 {
            return Err(ConfigError::Invalid("at most 256 store paths".into()));
        }
        if self.server_id == 0 {
            return Err(ConfigError::Invalid("server_id must be at least 1".into()));
        }
        for l in &self.leaders {
            let ok = l.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
            });
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "leader address {l:?} is not host:port"
                )));
            }
        }
        if !self.leaders.is_empty() {
            if !(50..=60_000).contains(&self.heartbeat_ms) {
                return Err(ConfigError::Invalid(
                    "heartbeat_ms must be between 50 and 60000".into(),
                ));
            }
            if !(100..=600_000).contains(&self.replication_deadline_ms) {
                return Err(ConfigError::Invalid(
                    "replication_deadline_ms must be between 100 and 600000".into(),
                ));
            }
            let advertised = self.advertise.unwrap_or(self.listen);
            if advertised.ip().is_unspecified() {
                return Err(ConfigError::Invalid(format!(
                    "listening on {} with leaders configured: set advertise to the address \
                     clients and peers reach this server at",
                    self.listen
                )));
            }
        }
        let s = &self.storage;
        if !(0.0..=4.0).contains(&s.reserve_ratio) {
            return Err(ConfigError::Invalid(
                "storage.reserve_ratio must be between 0 and 4".into(),
            ));
        }
        if s.large_file_threshold == 0 || s.large_file_threshold > s.chunk_file_size {
            return Err(ConfigError::Invalid(
                "storage.large_file_threshold must be > 0 and <= storage.chunk_file_size".into(),
            ));
        }
        if s.lanes == 0 {
            return Err(ConfigError::Invalid("storage.lanes must be > 0".into()));
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_connections must be > 0".into(),
            ));
        }
        if self.limits.max_frame < 4096 || self.limits.max_frame > u32::MAX as u64 {
            return Err(ConfigError::Invalid(
                "limits.max_frame must be between 4KiB and 4GiB".into(),
            ));
        }
        Ok(())
    }

    /// Whether the server runs in a cluster (leaders configured).
    pub fn clustered(&self) -> bool {
        !self.leaders.is_empty()
    }

    /// The engine's share of the configuration.
    pub fn engine_config(&self) -> EngineConfig {
        let s = &self.storage;
        EngineConfig {
            group: self.group.clone(),
            server_id: self.server_id,
            store_paths: self.effective_store_paths(),
            meta_dir: self.data_dir.join("meta"),
            large_file_threshold: s.large_file_threshold,
            chunk_file_size: s.chunk_file_size,
            reserve_ratio: s.reserve_ratio,
            reserved_space: s.reserved_space,
            fsync: s.fsync,
            fsync_interval_ms: s.fsync_interval_ms,
            io_uring: s.io_uring,
            lanes: s.lanes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn parses_toml_with_sizes() {
        let c: Config = toml::from_str(
            r#"
            listen = "0.0.0.0:24000"
            data_dir = "/tmp/x"
            group = "g2"
            [storage]
            large_file_threshold = "8MiB"
            reserved_space = 1048576
            fsync = "batch"
            "#,
        )
        .unwrap();
        assert_eq!(c.storage.large_file_threshold, 8 << 20);
        assert_eq!(c.storage.reserved_space, 1 << 20);
        assert_eq!(c.storage.fsync, FsyncPolicy::Batch);
        c.validate().unwrap();
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        let c = Config {
            group: "../etc".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn replication_deadline_is_bounded() {
        let c: Config = toml::from_str(
            r#"
            leaders = ["127.0.0.1:7100"]
            replication_deadline_ms = 5000
            "#,
        )
        .unwrap();
        assert_eq!(c.replication_deadline_ms, 5000);
        c.validate().unwrap();
        for bad in [0, 99, 600_001] {
            let c = Config {
                replication_deadline_ms: bad,
                ..c.clone()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("replication_deadline_ms"), "{e}");
        }
    }

    #[test]
    fn leaders_and_advertise() {
        let c: Config = toml::from_str(
            r#"
            leaders = ["127.0.0.1:7100", "leader2.example:7100"]
            advertise = "10.0.0.5:23000"
            listen = "0.0.0.0:23000"
            "#,
        )
        .unwrap();
        assert!(c.clustered());
        c.validate().unwrap();
        // Advertising 0.0.0.0 to the leaders would be useless.
        let c = Config {
            advertise: None,
            ..c
        };
        assert!(c.validate().is_err());
        let c = Config {
            leaders: vec!["no-port".into()],
            ..Config::default()
        };
        assert!(c.validate().is_err());
        assert!(!Config::default().clustered());
    }
}
