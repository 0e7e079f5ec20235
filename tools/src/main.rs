//! `chorus`: the Chorus command-line client.
//!
//! File operations (`upload`, `download`, `delete`, `append`, `modify`,
//! `truncate`, `stat`, `meta`, `exists`) and `bench`, against one
//! dataserver (`--server`) or a cluster (`--leaders`); cluster commands
//! `status`, `failover`, `server remove` (module `admin`), `verify` (module
//! `verify`) and `dev`, a local cluster in the foreground (module `dev`).

mod admin;
mod bench;
mod cli;
mod dev;
mod endpoint;
mod files;
mod lag;
mod output;
mod progress;
mod verify;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use client::{Client, ClientConfig};

use cli::{Cli, Command};
use endpoint::Endpoint;
use output::{CliResult, Output};

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(cli: Cli) -> CliResult {
    let out = Output { json: cli.json };
    let timeout = Duration::from_secs_f64(cli.timeout);
    let cfg = ClientConfig::default()
        .connect_timeout(timeout)
        .request_timeout(timeout);
    let ep = Endpoint::from_args(&cli.server, cli.leaders.as_deref());
    match cli.command {
        Command::Bench(args) => bench::run(&ep, cfg, args, out).await,
        Command::Status(args) => admin::status(ep.leaders("status")?, timeout, args, out).await,
        Command::Failover(args) => {
            admin::failover(ep.leaders("failover")?, timeout, args, out).await
        }
        Command::Server(cmd) => admin::server(ep.leaders("server")?, timeout, cmd, out).await,
        Command::Verify(args) => verify::run(ep.leaders("verify")?, cfg, timeout, args, out).await,
        Command::Dev(args) => dev::run(args, out).await,
        cmd => {
            let client: Client = ep.connect(cfg).await?;
            files::run(&client, out, cmd).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::CliError::from(e).report();
            return ExitCode::from(output::exit::OTHER);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.report();
            ExitCode::from(e.exit)
        }
    }
}
