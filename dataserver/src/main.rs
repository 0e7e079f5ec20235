//! `chorus-dataserver`: runs one dataserver.
//!
//! With no flags it serves `127.0.0.1:23000` with its data under
//! `./chorus-data`. `--config FILE` reads a TOML file (see
//! `docs/ARCHITECTURE.md`); flags override the file.
//!
//! `--leaders A,B,C` (or `CHORUS_LEADERS`) makes it a cluster member: it
//! joins its `--group` as `--server-id`, announcing `--advertise` (default:
//! the listen address), heartbeats and follows the map; see
//! `dataserver::cluster`. Without leaders it runs standalone.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use dataserver::config::Config;
use dataserver::engine::FsyncPolicy;
use dataserver::server::Server;
use tracing::info;

#[derive(Parser, Debug)]
#[command(name = "chorus-dataserver", version, about = "Chorus dataserver")]
struct Args {
    /// TOML configuration file; flags below override it.
    #[arg(long, env = "CHORUS_DATASERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Root of the server's state (default ./chorus-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:23000).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address to serve Prometheus metrics on (GET /metrics).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// A store path (disk); repeat for several. Default <data-dir>/store0.
    #[arg(long = "store-path")]
    store_paths: Vec<PathBuf>,
    /// Group this server belongs to (default group1).
    #[arg(long)]
    group: Option<String>,
    /// This server's id (default 1).
    #[arg(long)]
    server_id: Option<u32>,
    /// Leader addresses, comma-separated (HOST:PORT,...). Without leaders the
    /// server runs standalone.
    #[arg(long, env = "CHORUS_LEADERS", value_delimiter = ',')]
    leaders: Option<Vec<String>>,
    /// Address announced to leaders and clients (default: the listen address).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Interval between heartbeats to the leaders, in ms (default 1000).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Group replication mode: sync (default) or async (FastDFS-style).
    #[arg(long)]
    replication: Option<proto::cluster::ReplicationMode>,
    /// Sync groups: how long a slave has to make a change durable before
    /// the master reports it, in ms (default 2000).
    #[arg(long)]
    replication_deadline_ms: Option<u64>,
    /// Files above this size are stored as single files (e.g. 64MiB).
    #[arg(long, value_parser = parse_size)]
    large_file_threshold: Option<u64>,
    /// Refuse writes that would leave less than this free (e.g. 1GiB).
    #[arg(long, value_parser = parse_size)]
    reserved_space: Option<u64>,
    /// Durability: always (default), batch or never.
    #[arg(long, value_parser = parse_fsync)]
    fsync: Option<FsyncPolicy>,
    /// Most concurrent client connections (default 1024).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Disable io_uring (use pwrite + fdatasync).
    #[arg(long)]
    no_io_uring: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    proto::units::parse_size(s).map_err(|e| e.to_string())
}

fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    match s {
        "always" => Ok(FsyncPolicy::Always),
        "batch" => Ok(FsyncPolicy::Batch),
        "never" => Ok(FsyncPolicy::Never),
        _ => Err(format!("{s:?}: expected always, batch or never")),
    }
}

fn build_config(args: &Args) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = &args.data_dir {
        cfg.data_dir = v.clone();
    }
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = args.metrics_listen {
        cfg.metrics_listen = Some(v);
    }
    if !args.store_paths.is_empty() {
        cfg.store_paths = args.store_paths.clone();
    }
    if let Some(v) = &args.group {
        cfg.group = v.clone();
    }
    if let Some(v) = args.server_id {
        cfg.server_id = v;
    }
    if let Some(v) = &args.leaders {
        cfg.leaders = v
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    if let Some(v) = args.advertise {
        cfg.advertise = Some(v);
    }
    if let Some(v) = args.heartbeat_ms {
        cfg.heartbeat_ms = v;
    }
    if let Some(v) = args.replication {
        cfg.replication = v;
    }
    if let Some(v) = args.replication_deadline_ms {
        cfg.replication_deadline_ms = v;
    }
    if let Some(v) = args.large_file_threshold {
        cfg.storage.large_file_threshold = v;
    }
    if let Some(v) = args.reserved_space {
        cfg.storage.reserved_space = v;
    }
    if let Some(v) = args.fsync {
        cfg.storage.fsync = v;
    }
    if let Some(v) = args.max_connections {
        cfg.limits.max_connections = v;
    }
    if args.no_io_uring {
        cfg.storage.io_uring = false;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => info!("SIGTERM received"),
                _ = i.recv() => info!("SIGINT received"),
            }
        }
        _ => {
            // Without signal handlers, run until killed.
            std::future::pending::<()>().await;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_json);
    let cfg = build_config(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("chorus-net")
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let server = Server::start(cfg.clone()).await?;
        let addr = server.local_addr().context("reading the bound address")?;
        info!(
            %addr,
            group = %cfg.group,
            server_id = cfg.server_id,
            data_dir = %cfg.data_dir.display(),
            metrics = ?server.metrics_addr(),
            leaders = ?cfg.leaders,
            mode = if cfg.clustered() { "cluster" } else { "standalone" },
            "dataserver listening"
        );
        server.run(stop_signal()).await?;
        anyhow::Ok(())
    })
}
