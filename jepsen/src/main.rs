//! `chorus-jepsen`: run the consistency suite against real processes in
//! network namespaces (root needed), re-check saved histories, clean up
//! leftovers.
//!
//! Exit codes: 0 valid, 1 invalid, 2 unknown, 3 error.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use jepsen::nemesis::Fault;
use jepsen::runner::{self, Cancel, Mode, RunOpts, RunOutcome, EXIT_ERROR};
use jepsen::workload::Kind;

#[derive(Parser)]
#[command(
    name = "chorus-jepsen",
    about = "Jepsen-style consistency suite for Chorus"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One run: start a cluster in namespaces, run a workload under faults,
    /// judge the history.
    Run(RunArgs),
    /// Re-check a saved history (writes the results next to it).
    Check {
        /// A history.jsonl file.
        history: PathBuf,
        /// register, list-append or set (default: detected from the history).
        #[arg(long)]
        workload: Option<String>,
    },
    /// A set of runs and a summary table.
    Suite {
        /// The short set CI runs (under 10 minutes). Sync runs must be valid
        /// and converge; the async register run must find stale reads and
        /// converge.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "jepsen-runs")]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Remove namespaces, links and rules left by interrupted runs.
    Clean,
}

#[derive(clap::Args)]
struct RunArgs {
    /// register, list-append or set.
    #[arg(long, default_value = "register")]
    workload: String,
    /// Comma-separated faults: partition, kill, pause, netem, clock (or none).
    #[arg(long, default_value = "partition")]
    nemesis: String,
    /// The group's replication mode: sync or async (async: reads from any
    /// member; the register is expected to show stale reads, reported as an
    /// invalid verdict with their count; convergence must still pass).
    #[arg(long, default_value = "sync")]
    mode: String,
    /// Seconds of workload and faults.
    #[arg(long, default_value_t = 30)]
    time_limit: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Dataservers in the group.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where run folders go.
    #[arg(long, default_value = "jepsen-runs")]
    out: PathBuf,
    /// Concurrent client processes.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Operations per second, all clients together.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Keys (files) for register and list-append.
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// The run folder's name (default: derived from the options and time).
    #[arg(long)]
    name: Option<String>,
}

impl RunArgs {
    fn opts(&self) -> anyhow::Result<RunOpts> {
        let kind = Kind::parse(&self.workload).ok_or_else(|| {
            anyhow!(
                "unknown workload {:?} (register, list-append, set)",
                self.workload
            )
        })?;
        let faults = Fault::parse_list(&self.nemesis).map_err(|e| anyhow!(e))?;
        let mode = Mode::parse(&self.mode)
            .ok_or_else(|| anyhow!("unknown mode {:?} (sync, async)", self.mode))?;
        if self.nodes == 0 || self.concurrency == 0 || self.keys == 0 {
            bail!("--nodes, --concurrency and --keys must be at least 1");
        }
        let mut o = RunOpts::new(kind, faults);
        o.mode = mode;
        if mode == Mode::Async && kind == Kind::Register {
            // Reported beside the verdict (the exit code stays the
            // checker's: invalid, as async mode is not linearizable).
            o.expectation = runner::Expectation::StaleReadsAndConverged;
        }
        o.time_limit = Duration::from_secs(self.time_limit);
        o.seed = self.seed;
        o.nodes = self.nodes;
        o.out = self.out.clone();
        o.concurrency = self.concurrency;
        o.rate = self.rate;
        o.keys = self.keys;
        o.name = self.name.clone();
        Ok(o)
    }
}

/// A flag set on the first SIGINT or SIGTERM.
fn cancel_on_signals() -> anyhow::Result<Cancel> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, cancel) = Cancel::new();
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("chorus-jepsen: interrupted; healing and tearing down");
        let _ = tx.send(true);
    });
    Ok(cancel)
}

fn print_outcome(o: &RunOutcome) {
    println!(
        "{}: {} ({} events, {} nemesis)",
        o.label, o.verdict, o.events, o.nemesis_events
    );
    for n in &o.notes {
        println!("  {n}");
    }
    println!("  report: {}", o.dir.display());
}

async fn real_main(cli: Cli) -> anyhow::Result<i32> {
    match cli.cmd {
        Cmd::Run(args) => {
            let opts = args.opts()?;
            let cancel = cancel_on_signals()?;
            let o = runner::run(&opts, &cancel).await?;
            print_outcome(&o);
            println!("\n{}", runner::summary(std::slice::from_ref(&o)));
            Ok(o.exit_code)
        }
        Cmd::Check { history, workload } => {
            let ops = jepsen::history::read(&history)?;
            let dir = history
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            let w = workload.unwrap_or_default();
            let r = runner::judge(&dir, &w, &ops)?;
            let label = history.display().to_string();
            println!("{}", jepsen::report::summary_table(&[(label, &r)]));
            println!("{}", r.summary);
            println!("report: {}", dir.display());
            Ok(r.verdict.exit_code())
        }
        Cmd::Suite { quick, out, seed } => {
            let cancel = cancel_on_signals()?;
            let mut outcomes = Vec::new();
            for opts in runner::suite_runs(quick, &out, seed) {
                if cancel.is_set() {
                    break;
                }
                if opts.faults.contains(&Fault::Clock) && !jepsen::nemesis::faketime_available() {
                    println!(
                        "{}: skipped (libfaketime not installed: apt-get install libfaketime)",
                        opts.label()
                    );
                    continue;
                }
                match runner::run(&opts, &cancel).await {
                    Ok(o) => {
                        print_outcome(&o);
                        outcomes.push(o);
                    }
                    Err(e) => {
                        eprintln!("{}: {e}", opts.label());
                        outcomes.push(RunOutcome::failed(&opts, e.to_string()));
                    }
                }
            }
            println!("\n{}", runner::summary(&outcomes));
            let codes: Vec<i32> = outcomes.iter().map(RunOutcome::suite_exit).collect();
            Ok(runner::combined_exit(&codes))
        }
        Cmd::Clean => {
            let removed = jepsen::hosts::clean().context("cleaning")?;
            if removed.is_empty() {
                println!("nothing to clean");
            }
            for r in removed {
                println!("removed {r}");
            }
            Ok(0)
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chorus-jepsen: tokio runtime: {e}");
            std::process::exit(EXIT_ERROR);
        }
    };
    let code = match rt.block_on(real_main(cli)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chorus-jepsen: {e:#}");
            EXIT_ERROR
        }
    };
    drop(rt);
    std::process::exit(code);
}
