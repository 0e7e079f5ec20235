//! One run end to end, and the suites.
//!
//! [`run`]: make the hosts, start 3 leaders and the dataservers, wait for a
//! group master, create the workload's files, run the workload and the
//! nemesis for the time limit, heal, wait for a master again, do the final
//! reads, check convergence (`chorus verify`, when the CLI has it), stop
//! everything and tear the hosts down, save the history, judge it and
//! write the report into `<out>/<run name>/`.
//!
//! Interrupting (the [`Cancel`] flag, set on SIGINT/SIGTERM by the CLI)
//! ends the run early; the hosts are torn down either way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::leader::{ClientTimeouts, LeaderClient};
use proto::cluster::ServerStatus;
use tracing::{info, warn};

use crate::checker::{self, Budget, CheckResult, Verdict};
use crate::history::{self, Op, NEMESIS};
use crate::hosts::{self, Hosts, HostsError, HostsOpts, GROUP};
use crate::nemesis::{self, Fault, Nemesis, NemesisOpts};
use crate::report;
use crate::workload::{self, Kind, Recorder, Workload, WorkloadError, WorkloadOpts};

/// Exit code of a run that could not be carried out or judged.
pub const EXIT_ERROR: i32 = 3;

/// How long the cluster may take to elect a Raft leader and a master.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// Quiet time after healing, before the final reads.
const QUIET: Duration = Duration::from_secs(3);
/// Bound on the final reads.
const FINAL_READS_LIMIT: Duration = Duration::from_secs(30);
/// Bound on `chorus verify`.
const VERIFY_LIMIT: Duration = Duration::from_secs(60);

/// A group's replication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sync,
    Async,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "sync" => Some(Mode::Sync),
            "async" => Some(Mode::Async),
            _ => None,
        }
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct RunOpts {
    pub workload: Kind,
    pub faults: Vec<Fault>,
    pub mode: Mode,
    pub time_limit: Duration,
    pub seed: u64,
    /// Dataservers in the group.
    pub nodes: usize,
    /// Runs go to `<out>/<name>/`.
    pub out: PathBuf,
    pub concurrency: usize,
    /// Operations per second, all clients together.
    pub rate: f64,
    /// Keys for register and list-append.
    pub keys: usize,
    /// The run folder's name; default `<workload>-<faults>-<mode>-s<seed>-<time>`.
    pub name: Option<String>,
}

impl RunOpts {
    pub fn new(workload: Kind, faults: Vec<Fault>) -> RunOpts {
        RunOpts {
            workload,
            faults,
            mode: Mode::Sync,
            time_limit: Duration::from_secs(30),
            seed: 1,
            nodes: 3,
            out: PathBuf::from("jepsen-runs"),
            concurrency: 8,
            rate: 40.0,
            keys: 4,
            name: None,
        }
    }

    fn faults_name(&self) -> String {
        if self.faults.is_empty() {
            "none".into()
        } else {
            self.faults
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join("+")
        }
    }

    /// `register kill+partition sync seed 3`.
    pub fn label(&self) -> String {
        format!(
            "{} {} {} seed {}",
            self.workload.name(),
            self.faults_name(),
            self.mode.name(),
            self.seed
        )
    }

    fn run_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!(
                "{}-{}-{}-s{}-{t}",
                self.workload.name(),
                self.faults_name(),
                self.mode.name(),
                self.seed
            )
        })
    }
}

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    History(#[from] history::HistoryError),
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run: {0}")]
    Unsupported(String),
    #[error("{0}")]
    NotReady(String),
    #[error("interrupted")]
    Interrupted,
}

/// A flag set when the run should stop (SIGINT/SIGTERM).
#[derive(Clone)]
pub struct Cancel(tokio::sync::watch::Receiver<bool>);

impl Cancel {
    /// A flag and the sender that sets it.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Cancel) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Cancel(rx))
    }

    /// A flag nobody sets.
    pub fn never() -> Cancel {
        let (tx, c) = Cancel::new();
        // Keep the channel open for the life of the program.
        std::mem::forget(tx);
        c
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the flag is set.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub label: String,
    pub dir: PathBuf,
    /// Events in the history (client and nemesis).
    pub events: usize,
    pub nemesis_events: usize,
    /// `valid`, `invalid`, `unknown`, or `error`.
    pub verdict: String,
    /// 0 valid, 1 invalid, 2 unknown, 3 error.
    pub exit_code: i32,
    /// Convergence and other remarks.
    pub notes: Vec<String>,
    /// The checker's judgement, when it ran.
    pub result: Option<CheckResult>,
}

/// The dataserver flag that sets a group's replication mode, if this
/// `chorus-dataserver` has one.
fn replication_mode_flag() -> Result<Option<&'static str>, RunError> {
    let bin = hosts::find_bin("chorus-dataserver")?;
    let out = Command::new(&bin)
        .arg("--help")
        .output()
        .map_err(|source| RunError::Io {
            what: format!("{} --help", bin.display()),
            source,
        })?;
    let help = String::from_utf8_lossy(&out.stdout);
    Ok(["--replication-mode", "--replication", "--mode"]
        .into_iter()
        .find(|f| {
            help.contains(&format!("{f} "))
                || help.contains(&format!("{f}="))
                || help.contains(&format!("{f}\n"))
        }))
}

/// Poll the map until the group has an ACTIVE master.
async fn wait_master(lc: &LeaderClient, limit: Duration, cancel: &Cancel) -> Result<(), RunError> {
    let deadline = Instant::now() + limit;
    loop {
        if cancel.is_set() {
            return Err(RunError::Interrupted);
        }
        if let Ok(m) = lc.get_map(false).await {
            if m.master_of(GROUP)
                .is_some_and(|s| s.status == ServerStatus::Active)
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(RunError::NotReady(format!(
                "{GROUP} has no ACTIVE master after {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn leader_client(addrs: Vec<String>) -> LeaderClient {
    LeaderClient::with_timeouts(
        addrs,
        ClientTimeouts {
            connect: Duration::from_millis(300),
            request: Duration::from_secs(2),
            call: Duration::from_secs(4),
            backoff: Duration::from_millis(50),
            subscription_silence: Duration::from_secs(3),
        },
    )
}

/// `chorus verify GROUP --leaders ...`, if the `chorus` binary has it:
/// `Some(passed, output)`, or `None` with the reason it was skipped.
fn verify(leaders: &[String]) -> Result<(bool, String), String> {
    let bin = hosts::find_bin("chorus").map_err(|e| e.to_string())?;
    let help = Command::new(&bin)
        .args(["verify", "--help"])
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !help.status.success() {
        return Err("`chorus verify` is not available in this build".into());
    }
    let mut child = Command::new(&bin)
        .args(["verify", GROUP, "--leaders", &leaders.join(",")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let deadline = Instant::now() + VERIFY_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok((false, format!("timed out after {VERIFY_LIMIT:?}")));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("chorus verify: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// The part of a run that needs the hosts up; returns the history and
/// notes.
async fn drive(
    opts: &RunOpts,
    hosts: &Arc<Hosts>,
    cancel: &Cancel,
    rec: &Arc<Recorder>,
    notes: &mut Vec<String>,
) -> Result<(), RunError> {
    let h = hosts.clone();
    tokio::task::spawn_blocking(move || h.start_all())
        .await
        .map_err(|e| RunError::NotReady(format!("start task: {e}")))??;
    let leaders = hosts.leader_addrs();
    let lc = leader_client(leaders.clone());
    wait_master(&lc, READY_LIMIT, cancel).await?;
    info!("cluster ready");

    let client = workload::connect(&leaders).await?;
    let wl = Arc::new(
        Workload::setup(
            &client,
            WorkloadOpts {
                kind: opts.workload,
                concurrency: opts.concurrency,
                rate: opts.rate,
                keys: opts.keys,
                op_timeout: Duration::from_secs(8),
                seed: opts.seed,
            },
            Duration::from_secs(30),
        )
        .await?,
    );

    let stop_at = Instant::now() + opts.time_limit;
    let mut nem = Nemesis::new(
        hosts.clone(),
        rec.clone(),
        NemesisOpts::new(opts.faults.clone(), opts.seed),
    );
    info!(limit = ?opts.time_limit, "running workload and nemesis");
    let (w, ()) = tokio::join!(wl.run(&leaders, rec, stop_at), nem.run(stop_at));
    w?;
    // Every fault was stopped at the end of its window: a node down now
    // died by itself.
    for n in nem.heal_all().await {
        notes.push(format!(
            "node {n} had exited by itself (restarted; see logs/{n}.log)"
        ));
    }
    if !nem.started.is_empty() {
        let s: Vec<String> = nem
            .started
            .iter()
            .map(|(f, n)| format!("{} x{n}", f.name()))
            .collect();
        notes.push(format!("faults: {}", s.join(", ")));
    }
    if cancel.is_set() {
        return Err(RunError::Interrupted);
    }

    info!("healed; waiting for a master, then the final reads");
    if let Err(e) = wait_master(&lc, READY_LIMIT, cancel).await {
        notes.push(format!("after healing: {e}"));
    }
    tokio::time::sleep(QUIET).await;
    let reader = workload::connect(&leaders).await?;
    wl.final_reads(&reader, rec, FINAL_READS_LIMIT).await;

    let l = leaders.clone();
    let conv = tokio::task::spawn_blocking(move || verify(&l))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match conv {
        Ok((true, _)) => notes.push("convergence: chorus verify passed".into()),
        Ok((false, out)) => {
            notes.push(format!("convergence: chorus verify FAILED: {}", out.trim()))
        }
        Err(why) => notes.push(format!("convergence: not checked ({why})")),
    }
    Ok(())
}

/// Carry out one run. `Err` only when nothing could be judged; a run
/// that was set up but failed midway still saves what it recorded.
pub async fn run(opts: &RunOpts, cancel: &Cancel) -> Result<RunOutcome, RunError> {
    let mut dataserver_args = Vec::new();
    if opts.mode == Mode::Async {
        match replication_mode_flag()? {
            Some(flag) => {
                dataserver_args.push(flag.to_string());
                dataserver_args.push("async".into());
            }
            None => {
                return Err(RunError::Unsupported(
                    "--mode async: this chorus-dataserver has no replication-mode flag \
                     (groups are always sync in this build)"
                        .into(),
                ))
            }
        }
    }
    if opts.faults.contains(&Fault::Clock) && !nemesis::faketime_available() {
        return Err(RunError::Unsupported(format!(
            "the clock nemesis needs libfaketime ({} missing; apt-get install libfaketime)",
            hosts::LIBFAKETIME
        )));
    }
    hosts::netns_available().map_err(RunError::Unsupported)?;

    let dir = opts.out.join(opts.run_name());
    std::fs::create_dir_all(&dir).map_err(|source| RunError::Io {
        what: dir.display().to_string(),
        source,
    })?;
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    info!(run = %opts.label(), dir = %dir.display(), "starting");
    let hosts = Arc::new(Hosts::setup(&HostsOpts {
        dir: dir.clone(),
        leaders: 3,
        dataservers: opts.nodes,
        leader_args: Vec::new(),
        dataserver_args,
    })?);

    let rec = Recorder::new();
    let mut notes = Vec::new();
    let result = tokio::select! {
        r = drive(opts, &hosts, cancel, &rec, &mut notes) => r,
        _ = cancel.wait() => Err(RunError::Interrupted),
    };
    {
        let h = hosts.clone();
        let _ = tokio::task::spawn_blocking(move || {
            h.stop_all();
            h.teardown();
        })
        .await;
    }
    hosts.teardown();

    let ops = rec.snapshot();
    let path = dir.join("history.jsonl");
    history::write(&path, &ops)?;
    if let Err(e) = result {
        warn!("run failed: {e}");
        notes.push(format!("run failed: {e}"));
        let outcome = outcome_of(opts, &dir, &ops, "error", EXIT_ERROR, notes);
        write_notes(&dir, &outcome)?;
        if matches!(e, RunError::Interrupted) || ops.is_empty() {
            return Err(e);
        }
        return Ok(outcome);
    }
    let (d, w, h) = (dir.clone(), opts.workload.name(), ops.clone());
    let judged = tokio::task::spawn_blocking(move || judge(&d, w, &h))
        .await
        .map_err(|e| RunError::Unsupported(format!("checker task: {e}")))?;
    let result = match judged {
        Ok(r) => r,
        Err(e) => {
            notes.push(format!("checker: {e}"));
            let outcome = outcome_of(opts, &dir, &ops, "error", EXIT_ERROR, notes);
            write_notes(&dir, &outcome)?;
            return Ok(outcome);
        }
    };
    notes.push(result.summary.clone());
    let mut verdict = result.verdict;
    if notes
        .iter()
        .any(|n| n.starts_with("convergence: chorus verify FAILED"))
    {
        verdict = verdict.and(Verdict::Invalid);
    }
    let mut outcome = outcome_of(
        opts,
        &dir,
        &ops,
        verdict.as_str(),
        verdict.exit_code(),
        notes,
    );
    outcome.result = Some(result);
    write_notes(&dir, &outcome)?;
    Ok(outcome)
}

fn outcome_of(
    opts: &RunOpts,
    dir: &Path,
    ops: &[Op],
    verdict: &str,
    exit_code: i32,
    notes: Vec<String>,
) -> RunOutcome {
    RunOutcome {
        label: opts.label(),
        dir: dir.to_path_buf(),
        events: ops.len(),
        nemesis_events: ops.iter().filter(|o| o.process == NEMESIS).count(),
        verdict: verdict.to_string(),
        exit_code,
        notes,
        result: None,
    }
}

/// `run.json` in the run folder: the options' label, the verdict, notes.
fn write_notes(dir: &Path, o: &RunOutcome) -> Result<(), RunError> {
    let v = serde_json::json!({
        "run": o.label,
        "verdict": o.verdict,
        "exit_code": o.exit_code,
        "events": o.events,
        "nemesis_events": o.nemesis_events,
        "notes": o.notes,
    });
    let p = dir.join("run.json");
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap_or_default()).map_err(|source| {
        RunError::Io {
            what: p.display().to_string(),
            source,
        }
    })
}

/// Judge a history (with `workload`, or the one detected from it when
/// empty) and write `results.json` and the report next to it.
pub fn judge(dir: &Path, workload: &str, ops: &[Op]) -> Result<CheckResult, RunError> {
    let w = if workload.is_empty() {
        checker::detect_workload(ops).ok_or_else(|| {
            RunError::Unsupported(
                "cannot tell the workload of this history; pass --workload".into(),
            )
        })?
    } else {
        workload.to_string()
    };
    let result = checker::check(&w, ops, Budget::default());
    report::write_report(dir, ops, &result)?;
    Ok(result)
}

/// The runs of `suite`: `quick` is what CI runs (about 20 s each).
pub fn suite_runs(quick: bool, out: &Path, seed: u64) -> Vec<RunOpts> {
    use Fault::*;
    let plan: Vec<(Kind, Vec<Fault>)> = if quick {
        vec![
            (Kind::Register, vec![Partition]),
            (Kind::Register, vec![Kill, Pause]),
            (Kind::Register, vec![Netem, Clock]),
            (Kind::ListAppend, vec![Partition, Kill]),
            (Kind::ListAppend, vec![Pause, Netem]),
            (Kind::Set, vec![Kill, Partition]),
            (Kind::Set, vec![Clock, Pause]),
        ]
    } else {
        let mut p = Vec::new();
        for k in [Kind::Register, Kind::ListAppend, Kind::Set] {
            for f in Fault::ALL {
                p.push((k, vec![f]));
            }
            p.push((k, vec![Partition, Kill, Pause, Netem]));
        }
        p
    };
    plan.into_iter()
        .map(|(k, f)| {
            let mut o = RunOpts::new(k, f);
            o.out = out.to_path_buf();
            o.seed = seed;
            o.time_limit = Duration::from_secs(if quick { 20 } else { 60 });
            o
        })
        .collect()
}

/// The summary of several runs: the report's table of the judged runs,
/// then a line for each run that could not be judged, then the notes.
pub fn summary(outcomes: &[RunOutcome]) -> String {
    let judged: Vec<(String, &CheckResult)> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().map(|r| (o.label.clone(), r)))
        .collect();
    let mut s = report::summary_table(&judged);
    for o in outcomes.iter().filter(|o| o.result.is_none()) {
        s.push_str(&format!(
            "{}: {} ({})\n",
            o.label,
            o.verdict,
            o.notes.join("; ")
        ));
    }
    for o in outcomes.iter().filter(|o| o.result.is_some()) {
        for n in o
            .notes
            .iter()
            .filter(|n| n.starts_with("convergence") || n.starts_with("node "))
        {
            s.push_str(&format!(
                "{}: {}\n",
                o.label,
                n.lines().next().unwrap_or_default()
            ));
        }
    }
    s
}

/// The overall exit code of several runs: any invalid wins, then any
/// error, then any unknown.
pub fn combined_exit(codes: &[i32]) -> i32 {
    [1, EXIT_ERROR, 2]
        .into_iter()
        .find(|c| codes.contains(c))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_exit_ranks_invalid_first() {
        assert_eq!(combined_exit(&[0, 0]), 0);
        assert_eq!(combined_exit(&[0, 2]), 2);
        assert_eq!(combined_exit(&[2, 3, 0]), 3);
        assert_eq!(combined_exit(&[3, 1, 2]), 1);
    }

    #[test]
    fn quick_suite_fits_in_ten_minutes() {
        let runs = suite_runs(true, Path::new("/tmp/x"), 7);
        // Each run: its time limit plus about 25 s of setup, heal, final
        // reads and teardown.
        let total: u64 = runs.iter().map(|r| r.time_limit.as_secs() + 25).sum();
        assert!(total < 600, "{total} s");
        assert!(runs.iter().any(|r| r.workload == Kind::Register));
        assert!(runs.iter().any(|r| r.workload == Kind::ListAppend));
        assert!(runs.iter().any(|r| r.workload == Kind::Set));
    }
}
