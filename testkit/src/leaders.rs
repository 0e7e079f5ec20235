//! A group of real `chorus-leader` processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process;

/// Bound on a (re)start, until the process accepts connections.
const START_LIMIT: Duration = Duration::from_secs(30);

/// One `chorus-leader` process of a [`Leaders`] group.
pub struct LeaderProc {
    pub id: u64,
    pub addr: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl LeaderProc {
    /// The leader's data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this harness started it and has not killed it since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A group of real `chorus-leader` processes on loopback (`--id --listen
/// --peers --data-dir`, plus any extra flags such as
/// `--server-timeout-ms`). Every process is SIGKILLed on drop.
pub struct Leaders {
    tmp: tempfile::TempDir,
    pub procs: Vec<LeaderProc>,
    peers: String,
    extra: Vec<String>,
}

impl Leaders {
    /// Start `n` leaders and wait until each accepts connections (a Raft
    /// leader may still be being elected: leader clients retry through it).
    pub fn start(n: usize, extra: &[&str]) -> Leaders {
        let mut ls = Leaders::prepare(n, extra);
        ls.start_all();
        ls
    }

    /// Choose addresses and directories for `n` leaders without starting
    /// any (to start dataservers first); then [`start_all`](Self::start_all).
    pub fn prepare(n: usize, extra: &[&str]) -> Leaders {
        let tmp = tempfile::Builder::new()
            .prefix("chorus-leaders-")
            .tempdir()
            .expect("tempdir");
        let procs: Vec<LeaderProc> = (0..n)
            .map(|i| LeaderProc {
                id: i as u64 + 1,
                addr: crate::free_addr().to_string(),
                dir: tmp.path().join(format!("leader{}", i + 1)),
                child: None,
            })
            .collect();
        let peers = procs
            .iter()
            .map(|l| format!("{}={}", l.id, l.addr))
            .collect::<Vec<_>>()
            .join(",");
        Leaders {
            tmp,
            procs,
            peers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Start every leader that is not running and wait until each listens.
    pub fn start_all(&mut self) {
        let stopped: Vec<usize> = (0..self.procs.len())
            .filter(|i| self.procs[*i].child.is_none())
            .collect();
        for &i in &stopped {
            self.spawn(i);
        }
        for &i in &stopped {
            self.wait_listening(i, START_LIMIT);
        }
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.tmp
            .path()
            .join(format!("leader{}.log", self.procs[i].id))
    }

    /// Start leader `i` without waiting for it (tests that kill a leader
    /// during its start use this; [`restart`](Self::restart) waits).
    pub fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("open leader log");
        let l = &self.procs[i];
        let child = Command::new(crate::bin("chorus-leader"))
            .arg("--id")
            .arg(l.id.to_string())
            .arg("--listen")
            .arg(&l.addr)
            .arg("--peers")
            .arg(&self.peers)
            .arg("--data-dir")
            .arg(&l.dir)
            .args(&self.extra)
            .env("RUST_LOG", process::rust_log("info,openraft=warn"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn chorus-leader");
        self.procs[i].child = Some(child);
    }

    fn wait_listening(&mut self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let addr: SocketAddr = self.procs[i].addr.parse().expect("leader addr");
        loop {
            if let Some(Ok(Some(st))) = self.procs[i].child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "chorus-leader exited during start ({st}); log:\n{}",
                    self.log(i)
                );
            }
            if crate::port_open(addr) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chorus-leader {} not listening after {timeout:?}; log:\n{}",
                self.procs[i].id,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every leader's address.
    pub fn addrs(&self) -> Vec<String> {
        self.procs.iter().map(|l| l.addr.clone()).collect()
    }

    /// Leader `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// SIGKILL leader `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            process::kill(&mut c);
        }
    }

    /// Start leader `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_listening(i, START_LIMIT);
    }

    fn signal_all(&self, sig: i32) {
        for c in self.procs.iter().filter_map(|l| l.child.as_ref()) {
            process::signal(c, sig);
        }
    }

    /// SIGSTOP leader `i`: it keeps its socket but answers nothing.
    pub fn suspend(&self, i: usize) {
        if let Some(c) = self.procs[i].child.as_ref() {
            process::signal(c, libc::SIGSTOP);
        }
    }

    /// SIGCONT leader `i`.
    pub fn resume(&self, i: usize) {
        if let Some(c) = self.procs[i].child.as_ref() {
            process::signal(c, libc::SIGCONT);
        }
    }

    /// SIGSTOP every leader: they keep their sockets but answer nothing.
    pub fn suspend_all(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    /// SIGCONT every leader.
    pub fn resume_all(&self) {
        self.signal_all(libc::SIGCONT);
    }
}

impl Drop for Leaders {
    fn drop(&mut self) {
        self.resume_all();
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}
