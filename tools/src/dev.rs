//! `chorus dev`: a local cluster in the foreground — 3 leaders and one group
//! of dataservers on 127.0.0.1, data and logs under one folder.
//!
//! Children run in their own process group (a Ctrl-C in the terminal
//! reaches only `chorus dev`, which then stops them in order: dataservers,
//! then leaders; SIGTERM, SIGKILL after [`STOP_GRACE`]) and get SIGTERM
//! from the kernel if `chorus dev` itself dies (`PR_SET_PDEATHSIG`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use proto::cluster::{ClusterMap, ReplicationMode, ServerStatus};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::leader_client;
use crate::cli::DevArgs;
use crate::output::{exit, print_json, CliError, CliResult, Output};

const LEADERS: u16 = 3;
const GROUP: &str = "group1";
/// Dataserver ports start this far above the base port.
const DATASERVER_PORT_OFFSET: u16 = 10;
/// How long the cluster may take to elect a Raft leader and a master.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long a child may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Proc {
    name: String,
    addr: String,
    log: PathBuf,
    child: Child,
    pid: u32,
    bin: PathBuf,
    args: Vec<String>,
    /// Restarts after the cluster was up (see [`restart_exited`]).
    restarts: u32,
}

/// A child that dies while the cluster runs is restarted (on the same data,
/// like an init system would), so killing one shows a failover and its
/// recovery; after this many restarts of one child `chorus dev` gives up.
const MAX_RESTARTS: u32 = 20;

fn err(message: impl Into<String>) -> CliError {
    CliError::new("dev", message, exit::OTHER)
}

/// Where `chorus-leader` and `chorus-dataserver` are: `$CHORUS_BIN_DIR`,
/// else beside this executable.
fn bin_dir() -> CliResult<PathBuf> {
    if let Some(d) = std::env::var_os("CHORUS_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| err("cannot tell where the chorus executable is"))
}

fn find_bin(dir: &Path, name: &str) -> CliResult<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(err(format!(
            "{} not found (build it: cargo build -p {name}, or set CHORUS_BIN_DIR)",
            p.display()
        )))
    }
}

fn port(base: u16, offset: u16) -> CliResult<u16> {
    base.checked_add(offset)
        .ok_or_else(|| CliError::usage(format!("--base-port {base} leaves no room for the ports")))
}

fn spawn(name: String, bin: &Path, args: &[String], addr: &str, log: PathBuf) -> CliResult<Proc> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| err(format!("{}: {e}", log.display())))?;
    let file2 = file.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(file2))
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl(2) is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| err(format!("starting {}: {e}", bin.display())))?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(%name, pid, %addr, "started");
    Ok(Proc {
        name,
        addr: addr.to_string(),
        log,
        child,
        pid,
        bin: bin.to_path_buf(),
        args: args.to_vec(),
        restarts: 0,
    })
}

/// Restart every child that exited; an error when one keeps dying.
fn restart_exited(procs: &mut [Proc]) -> Result<(), String> {
    for p in procs.iter_mut() {
        let Ok(Some(st)) = p.child.try_wait() else {
            continue;
        };
        if p.restarts >= MAX_RESTARTS {
            return Err(format!(
                "{} (pid {}) exited with {st} after {} restarts; see {}",
                p.name,
                p.pid,
                p.restarts,
                p.log.display()
            ));
        }
        eprintln!(
            "chorus dev: {} (pid {}) exited with {st}; restarting it",
            p.name, p.pid
        );
        let restarts = p.restarts + 1;
        let fresh = spawn(p.name.clone(), &p.bin, &p.args, &p.addr, p.log.clone())
            .map_err(|e| format!("restarting {}: {}", p.name, e.message))?;
        *p = Proc { restarts, ..fresh };
        eprintln!("chorus dev: {} restarted (pid {})", p.name, p.pid);
    }
    Ok(())
}

/// The first child that exited, with its status.
fn exited(procs: &mut [Proc]) -> Option<String> {
    for p in procs.iter_mut() {
        if let Ok(Some(st)) = p.child.try_wait() {
            return Some(format!(
                "{} (pid {}) exited with {st}; see {}",
                p.name,
                p.pid,
                p.log.display()
            ));
        }
    }
    None
}

/// SIGTERM every child still running, wait up to [`STOP_GRACE`], SIGKILL
/// what is left; reaps them all.
async fn stop(procs: &mut [Proc]) {
    for p in procs.iter_mut() {
        if let (Ok(None), Some(pid)) = (p.child.try_wait(), p.child.id()) {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for p in procs.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, p.child.wait()).await {
            Ok(Ok(st)) => tracing::info!(name = %p.name, %st, "stopped"),
            Ok(Err(e)) => tracing::warn!(name = %p.name, "waiting: {e}"),
            Err(_) => {
                eprintln!("{} did not stop within {STOP_GRACE:?}; killing it", p.name);
                let _ = p.child.kill().await;
            }
        }
    }
}

/// Whether the group has an ACTIVE master.
/// The cluster is up: a sync group has an ACTIVE master (id, address,
/// epoch); an async group has all its `members` ACTIVE (no master).
fn ready(
    map: &ClusterMap,
    mode: ReplicationMode,
    members: usize,
) -> Option<Option<(u64, String, u64)>> {
    let g = map.group(GROUP)?;
    if mode == ReplicationMode::Async {
        let active = g
            .members
            .iter()
            .filter(|id| {
                map.server(**id)
                    .is_some_and(|s| s.status == ServerStatus::Active)
            })
            .count();
        return (active >= members).then_some(None);
    }
    let m = map.master_of(GROUP)?;
    (m.status == ServerStatus::Active).then(|| Some((m.id, m.addr.clone(), g.epoch)))
}

/// What ended the foreground wait.
enum Ended {
    Signal(&'static str),
    ChildDied(String),
}

pub async fn run(args: DevArgs, out: Output) -> CliResult {
    let bins = bin_dir()?;
    let leader_bin = find_bin(&bins, "chorus-leader")?;
    let ds_bin = find_bin(&bins, "chorus-dataserver")?;
    let dir = args.dir.clone();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| err(format!("{}: {e}", logs.display())))?;

    let leader_addrs: Vec<String> = (0..LEADERS)
        .map(|i| port(args.base_port, i).map(|p| format!("127.0.0.1:{p}")))
        .collect::<CliResult<_>>()?;
    let ds_addrs: Vec<String> = (0..args.dataservers)
        .map(|i| port(args.base_port, DATASERVER_PORT_OFFSET + i).map(|p| format!("127.0.0.1:{p}")))
        .collect::<CliResult<_>>()?;
    for a in leader_addrs.iter().chain(&ds_addrs) {
        if let Err(e) = std::net::TcpListener::bind(a) {
            return Err(err(format!(
                "{a} is not free ({e}); pick another --base-port"
            )));
        }
    }
    let leaders_arg = leader_addrs.join(",");
    let peers = leader_addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut procs: Vec<Proc> = Vec::new();
    for (i, addr) in leader_addrs.iter().enumerate() {
        let id = i + 1;
        let data = dir.join(format!("leader{id}"));
        let a = vec![
            "--id".to_string(),
            id.to_string(),
            "--listen".into(),
            addr.clone(),
            "--peers".into(),
            peers.clone(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        let log = logs.join(format!("leader{id}.log"));
        match spawn(format!("leader {id}"), &leader_bin, &a, addr, log) {
            Ok(p) => procs.push(p),
            Err(e) => {
                stop(&mut procs).await;
                return Err(e);
            }
        }
    }
    for (i, addr) in ds_addrs.iter().enumerate() {
        let id = i + 1;
        let data = dir.join(format!("ds{id}"));
        let a = vec![
            "--data-dir".to_string(),
            data.display().to_string(),
            "--listen".into(),
            addr.clone(),
            "--advertise".into(),
            addr.clone(),
            "--group".into(),
            GROUP.into(),
            "--server-id".into(),
            id.to_string(),
            "--leaders".into(),
            leaders_arg.clone(),
            // A dev cluster shares the disk with everything else.
            "--reserved-space".into(),
            "64MiB".into(),
            "--replication".into(),
            args.replication.to_string(),
        ];
        let log = logs.join(format!("ds{id}.log"));
        match spawn(format!("dataserver {id}"), &ds_bin, &a, addr, log) {
            Ok(p) => procs.push(p),
            Err(e) => {
                stop(&mut procs).await;
                return Err(e);
            }
        }
    }

    // Wait for a master, watching the children and the signals.
    let lc = leader_client(&leader_addrs, Duration::from_secs(2));
    let start = Instant::now();
    let started = loop {
        if let Some(why) = exited(&mut procs) {
            break Err(Ended::ChildDied(why));
        }
        if start.elapsed() > START_LIMIT {
            break Err(Ended::ChildDied(format!(
                "{GROUP} is not serving ({} mode) after {START_LIMIT:?}; see the logs in {}",
                args.replication,
                logs.display()
            )));
        }
        tokio::select! {
            m = lc.get_map(false) => {
                let members = usize::from(args.dataservers);
                if let Some(r) = m.ok().as_ref().and_then(|m| ready(m, args.replication, members)) {
                    break Ok(r);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = int.recv() => break Err(Ended::Signal("interrupt")),
            _ = term.recv() => break Err(Ended::Signal("terminate")),
        }
    };

    let ended = match started {
        Err(e) => e,
        Ok(master) => {
            announce(
                out,
                &dir,
                &procs,
                &leaders_arg,
                master
                    .as_ref()
                    .map(|(id, addr, epoch)| (*id, addr.as_str(), *epoch)),
                start.elapsed(),
            )?;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(why) = restart_exited(&mut procs) {
                            break Ended::ChildDied(why);
                        }
                    }
                    _ = int.recv() => break Ended::Signal("interrupt"),
                    _ = term.recv() => break Ended::Signal("terminate"),
                }
            }
        }
    };
    match ended {
        Ended::Signal(sig) => {
            eprintln!("chorus dev: {sig}; stopping {} processes", procs.len());
            stop(&mut procs).await;
            eprintln!("chorus dev: stopped");
            Ok(())
        }
        Ended::ChildDied(why) => {
            eprintln!("chorus dev: {why}; stopping everything");
            stop(&mut procs).await;
            Err(err(why))
        }
    }
}

fn announce(
    out: Output,
    dir: &Path,
    procs: &[Proc],
    leaders: &str,
    master: Option<(u64, &str, u64)>,
    took: Duration,
) -> CliResult {
    if out.json {
        let ps: Vec<_> = procs
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "address": p.addr,
                    "pid": p.pid,
                    "log": p.log.display().to_string(),
                })
            })
            .collect();
        return print_json(&json!({
            "leaders": leaders,
            "group": GROUP,
            "mode": if master.is_some() { "sync" } else { "async" },
            "master": master.map(|m| m.0),
            "master_address": master.map(|m| m.1),
            "epoch": master.map_or(0, |m| m.2),
            "dir": dir.display().to_string(),
            "processes": ps,
        }));
    }
    let mut s = format!(
        "chorus dev: cluster up in {:.1}s, data and logs in {}\n\n",
        took.as_secs_f64(),
        dir.display()
    );
    for p in procs {
        s.push_str(&format!(
            "  {:<14} {:<16} pid {:<7} log {}\n",
            p.name,
            p.addr,
            p.pid,
            p.log.display()
        ));
    }
    let group_line = match master {
        Some((id, addr, epoch)) => {
            format!("{GROUP}: master is server {id} at {addr} (epoch {epoch})")
        }
        None => format!("{GROUP}: async replication, every member takes uploads (no master)"),
    };
    s.push_str(&format!(
        "\n{group_line}\n\n\
         Try, in another terminal:\n  \
         export CHORUS_LEADERS={leaders}\n  \
         chorus upload ./some-file          # prints the new file id\n  \
         chorus download <file id> -o copy\n  \
         chorus status                      # or: chorus status --watch\n\n\
         (or pass --leaders {leaders} to each command)\n\
         Ctrl-C stops the cluster.\n"
    ));
    crate::output::print_line(&s)
}
