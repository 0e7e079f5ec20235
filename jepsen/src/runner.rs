//! One run end to end, and the suites.
//!
//! [`run`]: make the hosts, start 3 leaders and the dataservers, wait for a
//! group master (sync) or for every member to be ACTIVE (async), create the
//! workload's files, run the workload and the nemesis for the time limit,
//! heal, wait for the group again, do the final reads, check convergence
//! (`chorus verify`, when the CLI has it), stop everything and tear the
//! hosts down, save the history, judge it and write the report into
//! `<out>/<run name>/`.
//!
//! **Async mode** (`--mode async`): dataservers run with `--replication
//! async`; workload clients read with `ReadRule::Any` (so reads reach the
//! peers, which lag behind each file's source server), the register
//! workload reads a key again right after each acknowledged write, and
//! the final reads go to each file's source. Async mode promises no
//! linearizability, so the register checker is *expected* to find stale
//! reads: the run's verdict stays what the checker says (invalid), with
//! the count of stale reads ([`crate::checker::stale`]) and a note saying
//! so, while convergence (`chorus verify --wait`) must still pass. A run's
//! [`Expectation`] says what the suite requires of it.
//!
//! Interrupting (the [`Cancel`] flag, set on SIGINT/SIGTERM by the CLI)
//! ends the run early; the hosts are torn down either way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::leader::{ClientTimeouts, LeaderClient};
use client::ReadRule;
use proto::cluster::ServerStatus;
use tracing::{info, warn};

use crate::checker::{self, AnomalyKind, Budget, CheckResult, Verdict};
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
/// Async mode: how long `chorus verify` lets differing members settle
/// (`--wait`), within [`VERIFY_LIMIT`].
const ASYNC_SETTLE_SECS: &str = "30";

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

    /// Where the workload's reads go: the master in sync mode
    /// (linearizable reads), any ACTIVE member in async mode (peers
    /// included, which is where staleness shows).
    pub fn read_rule(self) -> ReadRule {
        match self {
            Mode::Sync => ReadRule::Master,
            Mode::Async => ReadRule::Any,
        }
    }
}

/// What a run must show for a suite to pass it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation {
    /// The checker finds the history valid and the group converges (every
    /// sync run).
    Valid,
    /// Async mode's promise: reads may be stale (at least one stale read
    /// must be found, or the run did not exercise what it is for), and the
    /// members converge once faults are healed and pushes settle.
    StaleReadsAndConverged,
}

impl Expectation {
    pub fn describe(self) -> &'static str {
        match self {
            Expectation::Valid => "valid and converged",
            Expectation::StaleReadsAndConverged => "stale reads found (> 0) and converged",
        }
    }

    /// Whether a run with this `verdict` (`valid`, `invalid`, `unknown`,
    /// `error`), `stale_reads` and convergence meets the expectation, and a
    /// sentence saying why.
    pub fn assess(
        self,
        verdict: &str,
        stale_reads: Option<u64>,
        converged: Option<bool>,
    ) -> (bool, String) {
        match self {
            Expectation::Valid => {
                let met = verdict == "valid";
                (met, format!("verdict {verdict}"))
            }
            Expectation::StaleReadsAndConverged => {
                let stale = stale_reads.unwrap_or(0);
                let conv = match converged {
                    Some(true) => "converged",
                    Some(false) => "did NOT converge",
                    None => "convergence not checked",
                };
                let met = verdict != "error" && stale > 0 && converged == Some(true);
                let why = if verdict == "error" {
                    "the run failed".to_string()
                } else if stale == 0 {
                    format!(
                        "no stale read found (the run did not exercise async staleness); {conv}"
                    )
                } else {
                    format!("stale reads found: {stale}; {conv}")
                };
                (met, why)
            }
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
    /// What a suite requires of the run.
    pub expectation: Expectation,
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
            expectation: Expectation::Valid,
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
    /// Whether `chorus verify` passed (`None`: not checked).
    pub converged: Option<bool>,
    /// Register runs: reads that returned an overwritten value.
    pub stale_reads: Option<u64>,
    pub expectation: Expectation,
}

impl RunOutcome {
    /// A run that could not be carried out at all.
    pub fn failed(opts: &RunOpts, why: String) -> RunOutcome {
        RunOutcome {
            label: opts.label(),
            dir: opts.out.clone(),
            events: 0,
            nemesis_events: 0,
            verdict: "error".into(),
            exit_code: EXIT_ERROR,
            notes: vec![why],
            result: None,
            converged: None,
            stale_reads: None,
            expectation: opts.expectation,
        }
    }

    /// Whether the run met its [`Expectation`], and why.
    pub fn assessment(&self) -> (bool, String) {
        self.expectation
            .assess(&self.verdict, self.stale_reads, self.converged)
    }

    /// The run's exit code as a suite counts it: its own for runs expected
    /// valid; for others 0 when the expectation is met, 1 when not (3 when
    /// the run failed).
    pub fn suite_exit(&self) -> i32 {
        match self.expectation {
            Expectation::Valid => self.exit_code,
            _ if self.exit_code == EXIT_ERROR => EXIT_ERROR,
            _ if self.assessment().0 => 0,
            _ => 1,
        }
    }
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

/// Whether the group is ready in `map`: an ACTIVE master (sync), or
/// `nodes` ACTIVE members (async: no master; every member takes uploads of
/// its own and serves reads).
pub fn group_ready(map: &proto::cluster::ClusterMap, mode: Mode, nodes: usize) -> bool {
    match mode {
        Mode::Sync => map
            .master_of(GROUP)
            .is_some_and(|s| s.status == ServerStatus::Active),
        Mode::Async => map.group(GROUP).is_some_and(|g| {
            g.members
                .iter()
                .filter_map(|id| map.server(*id))
                .filter(|s| s.status == ServerStatus::Active)
                .count()
                >= nodes
        }),
    }
}

/// Poll the map until the group is ready ([`group_ready`]).
async fn wait_ready(
    lc: &LeaderClient,
    mode: Mode,
    nodes: usize,
    limit: Duration,
    cancel: &Cancel,
) -> Result<(), RunError> {
    let deadline = Instant::now() + limit;
    loop {
        if cancel.is_set() {
            return Err(RunError::Interrupted);
        }
        if let Ok(m) = lc.get_map(false).await {
            if group_ready(&m, mode, nodes) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(RunError::NotReady(match mode {
                Mode::Sync => format!("{GROUP} has no ACTIVE master after {limit:?}"),
                Mode::Async => {
                    format!("{GROUP} does not have {nodes} ACTIVE members after {limit:?}")
                }
            }));
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
fn verify(leaders: &[String], mode: Mode) -> Result<(bool, String), String> {
    let bin = hosts::find_bin("chorus").map_err(|e| e.to_string())?;
    let help = Command::new(&bin)
        .args(["verify", "--help"])
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !help.status.success() {
        return Err("`chorus verify` is not available in this build".into());
    }
    let mut args = vec!["verify", GROUP, "--leaders"];
    let leaders = leaders.join(",");
    args.push(&leaders);
    if mode == Mode::Async {
        // Pushes run behind writes: let them settle.
        args.extend(["--wait", ASYNC_SETTLE_SECS]);
    }
    let mut child = Command::new(&bin)
        .args(&args)
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
    converged: &mut Option<bool>,
) -> Result<(), RunError> {
    let h = hosts.clone();
    tokio::task::spawn_blocking(move || h.start_all())
        .await
        .map_err(|e| RunError::NotReady(format!("start task: {e}")))??;
    let leaders = hosts.leader_addrs();
    let lc = leader_client(leaders.clone());
    wait_ready(&lc, opts.mode, opts.nodes, READY_LIMIT, cancel).await?;
    info!("cluster ready");

    let client = workload::connect(&leaders, opts.mode.read_rule()).await?;
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
                read_rule: opts.mode.read_rule(),
                read_after_write: opts.mode == Mode::Async,
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

    info!("healed; waiting for the group, then the final reads");
    if let Err(e) = wait_ready(&lc, opts.mode, opts.nodes, READY_LIMIT, cancel).await {
        notes.push(format!("after healing: {e}"));
    }
    tokio::time::sleep(QUIET).await;
    // Final reads go to the master, or to each file's source server in
    // async mode: they check what was kept, not how fresh peers are.
    let reader = workload::connect(&leaders, ReadRule::Master).await?;
    wl.final_reads(&reader, rec, FINAL_READS_LIMIT).await;

    let (l, mode) = (leaders.clone(), opts.mode);
    let conv = tokio::task::spawn_blocking(move || verify(&l, mode))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match conv {
        Ok((true, _)) => {
            *converged = Some(true);
            notes.push("convergence: chorus verify passed".into())
        }
        Ok((false, out)) => {
            *converged = Some(false);
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
    let mut converged = None;
    let result = tokio::select! {
        r = drive(opts, &hosts, cancel, &rec, &mut notes, &mut converged) => r,
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
        let mut outcome = outcome_of(opts, &dir, &ops, "error", EXIT_ERROR, notes);
        outcome.converged = converged;
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
            let mut outcome = outcome_of(opts, &dir, &ops, "error", EXIT_ERROR, notes);
            outcome.converged = converged;
            write_notes(&dir, &outcome)?;
            return Ok(outcome);
        }
    };
    notes.push(result.summary.clone());
    let stale_reads = result.stale_reads();
    if opts.mode == Mode::Async {
        notes.extend(async_notes(&result));
    }
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
    outcome.converged = converged;
    outcome.stale_reads = stale_reads;
    if outcome.expectation != Expectation::Valid {
        let (met, why) = outcome.assessment();
        outcome.notes.push(format!(
            "expected {}: {} ({why})",
            outcome.expectation.describe(),
            if met { "met" } else { "NOT met" }
        ));
    }
    write_notes(&dir, &outcome)?;
    Ok(outcome)
}

/// Anomaly kinds that are staleness: a read that missed acknowledged
/// changes. Async mode allows them (reads from peers lag behind each
/// file's source); any other anomaly is a bug in either mode.
const STALENESS: [AnomalyKind; 3] = [
    AnomalyKind::Nonlinearizable,
    AnomalyKind::NonmonotonicRead,
    AnomalyKind::LostAppend,
];

/// The notes an async run adds to its verdict: what async mode promises,
/// the stale reads found, and the anomalies that are not staleness.
pub fn async_notes(result: &CheckResult) -> Vec<String> {
    let mut notes = vec![
        "async mode promises no linearizability: peers serve reads before each file's \
         source server has pushed its latest changes, so stale reads are expected"
            .to_string(),
    ];
    if let Some(n) = result.stale_reads() {
        notes.push(format!("stale reads found: {n}"));
    }
    let stale: u64 = STALENESS
        .iter()
        .filter_map(|k| result.anomaly_counts.get(k))
        .sum();
    let other: Vec<String> = result
        .anomaly_counts
        .iter()
        .filter(|(k, _)| !STALENESS.contains(k))
        .map(|(k, n)| format!("{k}×{n}"))
        .collect();
    if result.workload != "register" && stale > 0 {
        notes.push(format!(
            "staleness anomalies (allowed in async mode): {stale}"
        ));
    }
    if !other.is_empty() {
        notes.push(format!(
            "anomalies async mode does NOT allow: {}",
            other.join(", ")
        ));
    }
    notes
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
        converged: None,
        stale_reads: None,
        expectation: opts.expectation,
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
        "converged": o.converged,
        "stale_reads": o.stale_reads,
        "expectation": o.expectation.describe(),
        "expectation_met": o.assessment().0,
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
    let mut runs: Vec<RunOpts> = plan
        .into_iter()
        .map(|(k, f)| {
            let mut o = RunOpts::new(k, f);
            o.out = out.to_path_buf();
            o.seed = seed;
            o.time_limit = Duration::from_secs(if quick { 20 } else { 60 });
            o
        })
        .collect();
    // Async mode: the register must show stale reads (what async allows)
    // and the group must still converge, kills included (a killed source
    // server's files wait for it; pushes resume when it is back). The set
    // must lose nothing acknowledged: every upload is durable on its source
    // before it is acknowledged, and the final reads go to the source.
    let mut asynchronous = vec![
        (
            Kind::Register,
            vec![Kill],
            Expectation::StaleReadsAndConverged,
        ),
        (Kind::Set, vec![Kill, Partition], Expectation::Valid),
    ];
    if !quick {
        asynchronous.push((
            Kind::Register,
            Vec::new(),
            Expectation::StaleReadsAndConverged,
        ));
    }
    for (k, f, expectation) in asynchronous {
        let mut o = RunOpts::new(k, f);
        o.mode = Mode::Async;
        o.expectation = expectation;
        o.out = out.to_path_buf();
        o.seed = seed;
        o.time_limit = Duration::from_secs(if quick { 20 } else { 60 });
        runs.push(o);
    }
    runs
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
        for n in o.notes.iter().filter(|n| {
            n.starts_with("convergence")
                || n.starts_with("node ")
                || n.starts_with("stale reads found")
                || n.starts_with("expected ")
                || n.starts_with("anomalies async mode does NOT allow")
        }) {
            s.push_str(&format!(
                "{}: {}\n",
                o.label,
                n.lines().next().unwrap_or_default()
            ));
        }
    }
    s
}

/// The overall exit code of several runs ([`RunOutcome::suite_exit`] of
/// each): any invalid (or unmet expectation) wins, then any error, then any
/// unknown.
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

    #[test]
    fn the_quick_suite_has_async_runs_expecting_stale_reads_and_no_loss() {
        let runs = suite_runs(true, Path::new("/tmp/x"), 3);
        let asynchronous: Vec<&RunOpts> = runs.iter().filter(|r| r.mode == Mode::Async).collect();
        assert_eq!(asynchronous.len(), 2);
        let set = asynchronous[1];
        assert_eq!(
            (set.workload, set.expectation),
            (Kind::Set, Expectation::Valid)
        );
        let a = asynchronous[0];
        assert_eq!(a.workload, Kind::Register);
        assert_eq!(a.expectation, Expectation::StaleReadsAndConverged);
        assert!(a.time_limit <= Duration::from_secs(20));
        assert_eq!(a.faults, [Fault::Kill]);
        assert!(a.label().contains("async"));
        // Every sync run is expected valid.
        assert!(runs
            .iter()
            .filter(|r| r.mode == Mode::Sync)
            .all(|r| r.expectation == Expectation::Valid));
        assert_eq!(Mode::Async.read_rule(), ReadRule::Any);
        assert_eq!(Mode::Sync.read_rule(), ReadRule::Master);
    }

    #[test]
    fn async_expectation_needs_stale_reads_and_convergence() {
        let e = Expectation::StaleReadsAndConverged;
        let (met, why) = e.assess("invalid", Some(12), Some(true));
        assert!(met, "{why}");
        assert_eq!(why, "stale reads found: 12; converged");
        // Valid is fine too, as long as stale reads were found (the stale
        // count is a sound witness; the search may give up: unknown).
        assert!(e.assess("unknown", Some(1), Some(true)).0);
        let (met, why) = e.assess("valid", Some(0), Some(true));
        assert!(!met);
        assert!(why.contains("no stale read"), "{why}");
        let (met, why) = e.assess("invalid", Some(5), Some(false));
        assert!(!met);
        assert!(why.contains("did NOT converge"), "{why}");
        assert!(!e.assess("invalid", Some(5), None).0);
        assert!(!e.assess("error", Some(5), Some(true)).0);
        assert!(!e.assess("invalid", None, Some(true)).0);
        // Sync runs: the verdict alone (convergence failures already make
        // it invalid).
        assert!(Expectation::Valid.assess("valid", None, Some(true)).0);
        assert!(!Expectation::Valid.assess("invalid", Some(0), Some(true)).0);
    }

    #[test]
    fn suite_exit_codes_follow_the_expectation() {
        let mut sync = RunOpts::new(Kind::Register, vec![]);
        sync.out = PathBuf::from("/tmp/x");
        let mut o = RunOutcome::failed(&sync, "boom".into());
        assert_eq!(o.suite_exit(), EXIT_ERROR);
        o.verdict = "invalid".into();
        o.exit_code = 1;
        assert_eq!(o.suite_exit(), 1);

        let mut asynchronous = sync.clone();
        asynchronous.mode = Mode::Async;
        asynchronous.expectation = Expectation::StaleReadsAndConverged;
        let mut o = RunOutcome::failed(&asynchronous, "boom".into());
        assert_eq!(o.suite_exit(), EXIT_ERROR);
        // Invalid with stale reads and converged: the suite passes it.
        o.verdict = "invalid".into();
        o.exit_code = 1;
        o.stale_reads = Some(40);
        o.converged = Some(true);
        assert_eq!(o.suite_exit(), 0);
        assert_eq!(combined_exit(&[0, o.suite_exit()]), 0);
        // Not converged, or nothing stale: the suite fails it.
        o.converged = Some(false);
        assert_eq!(o.suite_exit(), 1);
        o.converged = Some(true);
        o.stale_reads = Some(0);
        o.verdict = "valid".into();
        o.exit_code = 0;
        assert_eq!(o.suite_exit(), 1);
    }

    #[test]
    fn readiness_is_a_master_in_sync_and_every_member_active_in_async() {
        use proto::cluster::{ClusterMap, GroupInfo, ReplicationMode, ServerInfo};
        let srv = |id: u64, status| ServerInfo {
            id,
            addr: format!("10.0.0.{id}:23000"),
            group: GROUP.into(),
            status,
            data_version: 0,
            disk_free: 1,
            disk_total: 2,
            status_changed_ms: 0,
        };
        let mut map = ClusterMap {
            version: 5,
            updated_ms: 0,
            groups: vec![GroupInfo {
                name: GROUP.into(),
                mode: ReplicationMode::Async,
                members: vec![1, 2, 3],
                master: None,
                epoch: 0,
                master_lease_ms: 3000,
                epoch_starts: Vec::new(),
            }],
            servers: vec![
                srv(1, ServerStatus::Active),
                srv(2, ServerStatus::Active),
                srv(3, ServerStatus::Syncing),
            ],
        };
        assert!(!group_ready(&map, Mode::Async, 3));
        assert!(group_ready(&map, Mode::Async, 2));
        assert!(!group_ready(&map, Mode::Sync, 1), "no master");
        map.server_mut(3).unwrap().status = ServerStatus::Active;
        assert!(group_ready(&map, Mode::Async, 3));
        map.groups[0].master = Some(2);
        assert!(group_ready(&map, Mode::Sync, 3));
    }

    #[test]
    fn async_notes_count_stale_reads_and_name_forbidden_anomalies() {
        use crate::checker::testing::H;
        use crate::history::OpType;
        use serde_json::Value;
        let mut h = H::new();
        h.call(0, OpType::Ok, "write", "r0", 1, 1);
        h.call(0, OpType::Ok, "write", "r0", 2, 2);
        h.call(1, OpType::Ok, "read", "r0", Value::Null, 1);
        let r = checker::check("register", &h.ops, Budget::default());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.stale_reads(), Some(1));
        let notes = async_notes(&r);
        assert!(
            notes.iter().any(|n| n == "stale reads found: 1"),
            "{notes:?}"
        );
        assert!(notes[0].contains("no linearizability"), "{notes:?}");
        assert!(!notes.iter().any(|n| n.contains("NOT allow")), "{notes:?}");

        // list-append: a duplicate is not staleness.
        let mut h = H::new();
        h.call(0, OpType::Ok, "append", "l0", 1, 1);
        h.call(
            1,
            OpType::Ok,
            "read",
            "l0",
            Value::Null,
            serde_json::json!([1, 1]),
        );
        let r = checker::check("list-append", &h.ops, Budget::default());
        let notes = async_notes(&r);
        assert_eq!(r.stale_reads(), None);
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("anomalies async mode does NOT allow: duplicate")),
            "{notes:?}"
        );
    }
}
