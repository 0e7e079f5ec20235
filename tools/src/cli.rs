//! Command-line types (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit statuses, shown at the end of `--help`.
pub const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  any other error
  2  usage error (bad arguments)
  3  not found (also: `exists` for a missing file)
  4  version mismatch (--if-version did not match; nothing changed)
  5  server unreachable or timed out (verify: a member could not be listed)
  6  verify: the replicas of the group differ

Errors are reported as one line on stderr: `error: <code>: <message>`.";

#[derive(Parser, Debug)]
#[command(
    name = "chorus",
    version,
    about = "Chorus command-line client: file operations, benchmarks and cluster admin",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Leader addresses (host:port, comma-separated): file commands and
    /// bench run in cluster mode, routed to each group's master; needed by
    /// status, failover and server. Without it, --server is used.
    #[arg(
        long,
        global = true,
        env = "CHORUS_LEADERS",
        value_delimiter = ',',
        value_name = "ADDRS"
    )]
    pub leaders: Option<Vec<String>>,
    /// Dataserver address (host:port), when --leaders is not given.
    #[arg(
        long,
        global = true,
        env = "CHORUS_SERVER",
        default_value = "127.0.0.1:23000",
        value_name = "ADDR"
    )]
    pub server: String,
    /// Print results as JSON (one object) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for a connection or for any step of a request.
    #[arg(long, global = true, default_value_t = 30.0, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: f64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Store a file; prints its new id.
    Upload(UploadArgs),
    /// Fetch a file (to stdout, or to a file with -o).
    Download(DownloadArgs),
    /// Delete a file.
    Delete(DeleteArgs),
    /// Append a local file's content to an appender file.
    Append(AppendArgs),
    /// Overwrite part of a file with a local file's content.
    Modify(ModifyArgs),
    /// Set the size of an appender file.
    Truncate(TruncateArgs),
    /// Show a file's size, crc32, version and times.
    Stat(IdArgs),
    /// Read or change a file's metadata.
    #[command(subcommand)]
    Meta(MetaCommand),
    /// Say whether a file exists (exit status 0 if it does, 3 if not).
    Exists(IdArgs),
    /// Measure throughput and latency against a server or a cluster.
    Bench(BenchArgs),
    /// Show the leaders, groups and servers (like fdfs_monitor).
    Status(StatusArgs),
    /// Move a group's master to another ACTIVE member (raises the epoch).
    Failover(FailoverArgs),
    /// Dataserver administration.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Compare the files every member of a group holds (ids, sizes,
    /// crc32, versions) and report each difference (exit status 6).
    Verify(VerifyArgs),
    /// Run a local cluster in the foreground: 3 leaders and one group of
    /// dataservers. Ctrl-C stops it.
    Dev(DevArgs),
}

#[derive(Args, Debug, Clone, Copy)]
pub struct StatusArgs {
    /// Redraw on every change of the cluster map, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// The group, e.g. group1.
    pub group: String,
    /// The server id to promote (default: the ACTIVE member with the
    /// highest data version).
    #[arg(long, value_name = "SERVER")]
    pub to: Option<u64>,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Every member that is not DELETED is listed directly (masters and slaves \
alike) and compared file by file with the master's listing (without a \
listed master, the member with the highest data version). OFFLINE members \
are shown as skipped unless --all is given. In an async group (no master) \
only ACTIVE members are listed unless --all, and each file is compared \
across every listed member with its source server's copy (or, when the \
source is not listed, with the copy most members hold); pushes run behind \
writes, so --wait SECS lists again every second while they differ. Run it \
when writes have stopped: a listing taken during writes is not a snapshot. \
Text output shows a line per member and at most 50 differences; --json has \
them all. Exit status: 0 all listed members agree, 6 they differ, 5 they \
agree but a member could not be listed (or none could), 3 no such group.")]
pub struct VerifyArgs {
    /// The group, e.g. group1.
    pub group: String,
    /// Also list OFFLINE members (and, in an async group, members that are
    /// not ACTIVE); they are skipped by default.
    #[arg(long)]
    pub all: bool,
    /// Async groups: while the members differ, list again every second for
    /// up to this many seconds (pushes still under way). Sync groups are
    /// listed once.
    #[arg(long, default_value_t = 0.0, value_parser = parse_secs, value_name = "SECS")]
    pub wait: f64,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ServerCommand {
    /// Mark a server DELETED and take it out of its group.
    Remove {
        /// The server id.
        id: u64,
    },
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Leaders listen on BASE, BASE+1, BASE+2 and dataservers on BASE+10, \
BASE+11, ...; all on 127.0.0.1. Data and logs go under --dir (leaderN/, dsN/, \
logs/). Restarting on the same --dir and --base-port resumes the same \
cluster. The chorus-leader and chorus-dataserver binaries are looked up next \
to this executable (or in $CHORUS_BIN_DIR).")]
pub struct DevArgs {
    /// Folder for all data and logs.
    #[arg(long, default_value = "./chorus-dev", value_name = "DIR")]
    pub dir: PathBuf,
    /// First port (leaders use BASE..BASE+2, dataservers BASE+10..).
    #[arg(long, default_value_t = 7100, value_name = "P")]
    pub base_port: u16,
    /// Dataservers in the group.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub dataservers: u16,
    /// The group's replication: sync (master and slaves) or async
    /// (FastDFS-style: every member takes uploads, pushes afterwards).
    #[arg(long, default_value = "sync", value_name = "MODE")]
    pub replication: proto::cluster::ReplicationMode,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// File id, e.g. group1/M00/AB/CD/<name>.jpg
    pub id: String,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct IfVersion {
    /// Apply only if the file's current version is V (else exit status 4).
    #[arg(long = "if-version", value_name = "V")]
    pub if_version: Option<u64>,
}

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// Local file to upload; `-` reads stdin.
    pub path: PathBuf,
    /// Extension of the stored file (default: the path's extension).
    #[arg(long)]
    pub ext: Option<String>,
    /// Metadata entry key=value; repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub meta: Vec<(String, String)>,
    /// Create an appender file (accepts append and truncate).
    #[arg(long)]
    pub appender: bool,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    pub id: String,
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    pub id: String,
    #[command(flatten)]
    pub if_version: IfVersion,
}

#[derive(Args, Debug)]
pub struct AppendArgs {
    pub id: String,
    /// Local file whose content is appended; `-` reads stdin.
    pub path: PathBuf,
    #[command(flatten)]
    pub if_version: IfVersion,
}

#[derive(Args, Debug)]
pub struct ModifyArgs {
    pub id: String,
    /// Byte offset to write at (at most the file's size).
    #[arg(long, value_parser = parse_bytes)]
    pub offset: u64,
    /// Local file whose content is written; `-` reads stdin.
    pub path: PathBuf,
    #[command(flatten)]
    pub if_version: IfVersion,
}

#[derive(Args, Debug)]
pub struct TruncateArgs {
    pub id: String,
    /// New size (e.g. 0, 4096, 1MiB).
    #[arg(long, value_parser = parse_bytes)]
    pub size: u64,
    #[command(flatten)]
    pub if_version: IfVersion,
}

#[derive(Subcommand, Debug)]
pub enum MetaCommand {
    /// Print a file's metadata (key=value lines).
    Get(IdArgs),
    /// Replace a file's metadata (or update it with --merge).
    Set(MetaSetArgs),
}

#[derive(Args, Debug)]
pub struct MetaSetArgs {
    pub id: String,
    /// Entries key=value.
    #[arg(value_name = "KEY=VALUE", value_parser = parse_kv, required = true)]
    pub entries: Vec<(String, String)>,
    /// Add or replace these keys and keep the others (default: replace all).
    #[arg(long)]
    pub merge: bool,
    #[command(flatten)]
    pub if_version: IfVersion,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchOp {
    /// Every operation uploads a new file of --size bytes.
    Upload,
    /// Every operation downloads one of --files pre-uploaded files.
    Download,
    /// Each operation is an upload or a download with equal chance.
    Mixed,
}

impl BenchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            BenchOp::Upload => "upload",
            BenchOp::Download => "download",
            BenchOp::Mixed => "mixed",
        }
    }
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Each of the --concurrency tasks has its own connection and runs operations \
back to back for --duration seconds (after --warmup seconds that are not \
counted). `download` and `mixed` first upload --files files of --size bytes \
and then read them round-robin; `mixed` picks upload or download with \
probability 1/2 per operation. Downloads are checked against the file's crc32. \
Latencies are per operation, in microseconds. With --leaders, uploads follow \
the cluster's routing (an async group spreads them over its ACTIVE members); \
--replica-lag adds the time until the other members have a sampled upload \
(the push delay of an async group; about one round trip in a sync group).")]
pub struct BenchArgs {
    /// Workload.
    #[arg(long, value_enum, default_value_t = BenchOp::Upload)]
    pub op: BenchOp,
    /// Bytes per file (accepts 4096, 4KiB, 1MiB, ...).
    #[arg(long, default_value = "4KiB", value_parser = parse_bytes)]
    pub size: u64,
    /// Concurrent tasks (one connection each).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0, value_parser = parse_secs)]
    pub duration: f64,
    /// Seconds to run before measuring.
    #[arg(long, default_value_t = 0.0, value_parser = parse_secs)]
    pub warmup: f64,
    /// Files to pre-upload for download and mixed.
    #[arg(long, default_value_t = 64)]
    pub files: usize,
    /// Cluster mode: also measure replica lag. One measured upload in 20 is
    /// sampled; every other ACTIVE member of its group is then asked
    /// directly (`exists`, every ~1 ms, up to 10 s) until it has the file,
    /// on separate tasks. Reports p50/p90/p99/max in ms.
    #[arg(long)]
    pub replica_lag: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    proto::units::parse_size(s).map_err(|e| e.to_string())
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..1e9).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: expected a number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_sizes_and_meta() {
        let cli = Cli::try_parse_from([
            "chorus",
            "bench",
            "--op",
            "mixed",
            "--size",
            "1MiB",
            "--duration",
            "2.5",
        ])
        .unwrap();
        match cli.command {
            Command::Bench(b) => {
                assert_eq!(b.op, BenchOp::Mixed);
                assert_eq!(b.size, 1 << 20);
                assert_eq!(b.duration, 2.5);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "chorus", "upload", "a.txt", "--meta", "k=v=w", "--meta", "e=", "--json",
        ])
        .unwrap();
        assert!(cli.json);
        match cli.command {
            Command::Upload(u) => assert_eq!(
                u.meta,
                vec![("k".into(), "v=w".into()), ("e".into(), String::new())]
            ),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["chorus", "upload", "a", "--meta", "novalue"]).is_err());
        let cli = Cli::try_parse_from([
            "chorus",
            "--leaders",
            "127.0.0.1:1,127.0.0.1:2",
            "failover",
            "group1",
            "--to",
            "3",
        ])
        .unwrap();
        assert_eq!(
            cli.leaders.as_deref(),
            Some(&["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()][..])
        );
        match cli.command {
            Command::Failover(f) => assert_eq!((f.group.as_str(), f.to), ("group1", Some(3))),
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["chorus", "verify", "group2", "--all", "--json"]).unwrap();
        assert!(cli.json);
        match cli.command {
            Command::Verify(v) => assert_eq!((v.group.as_str(), v.all), ("group2", true)),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["chorus", "verify"]).is_err());
        let cli = Cli::try_parse_from(["chorus", "dev", "--base-port", "9000"]).unwrap();
        match cli.command {
            Command::Dev(d) => assert_eq!((d.base_port, d.dataservers), (9000, 3)),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["chorus", "dev", "--dataservers", "0"]).is_err());
        assert!(Cli::try_parse_from(["chorus", "truncate", "x", "--size", "12Q"]).is_err());
    }
}
