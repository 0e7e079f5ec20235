//! One real `chorus-dataserver` process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process;

/// Bound on a start (until it answers a ping) and on a clean stop.
const START_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// Options for a dataserver under test.
#[derive(Clone, Debug)]
pub struct DataserverOpts {
    pub group: String,
    pub server_id: u32,
    pub large_file_threshold: Option<String>,
    pub reserved_space: String,
    pub fsync: String,
    pub extra_args: Vec<String>,
    /// Extra store paths (besides the default one under the data dir).
    pub store_paths: Vec<PathBuf>,
    /// Leader addresses (`--leaders`); empty: standalone.
    pub leaders: Vec<String>,
}

impl Default for DataserverOpts {
    fn default() -> Self {
        DataserverOpts {
            group: "group1".into(),
            server_id: 1,
            large_file_threshold: None,
            // Tests run on shared disks: don't let the default 1 GiB reserve
            // refuse writes on a nearly full CI machine.
            reserved_space: "16MiB".into(),
            fsync: "always".into(),
            extra_args: Vec::new(),
            store_paths: Vec::new(),
            leaders: Vec::new(),
        }
    }
}

impl DataserverOpts {
    /// The `chorus-dataserver` command line for these options, on
    /// `data_dir` listening at `addr` (stdio left to the caller). For tests
    /// that must watch a process [`Dataserver`] would refuse to start.
    pub fn command(&self, data_dir: &Path, addr: SocketAddr) -> Command {
        let mut cmd = Command::new(crate::bin("chorus-dataserver"));
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--group")
            .arg(&self.group)
            .arg("--server-id")
            .arg(self.server_id.to_string())
            .arg("--reserved-space")
            .arg(&self.reserved_space)
            .arg("--fsync")
            .arg(&self.fsync);
        if !self.leaders.is_empty() {
            cmd.arg("--leaders").arg(self.leaders.join(","));
        }
        if let Some(t) = &self.large_file_threshold {
            cmd.arg("--large-file-threshold").arg(t);
        }
        if !self.store_paths.is_empty() {
            cmd.arg("--store-path").arg(data_dir.join("store0"));
            for p in &self.store_paths {
                cmd.arg("--store-path").arg(p);
            }
        }
        cmd.args(&self.extra_args)
            .env("RUST_LOG", process::rust_log("info"));
        cmd
    }
}

/// A running `chorus-dataserver`, SIGKILLed on drop.
pub struct Dataserver {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    opts: DataserverOpts,
    _tmp: Option<tempfile::TempDir>,
    log: PathBuf,
}

impl Dataserver {
    /// Start a server on a fresh temporary data directory.
    pub fn start(opts: DataserverOpts) -> Dataserver {
        let tmp = tempfile::Builder::new()
            .prefix("chorus-ds-")
            .tempdir()
            .expect("tempdir");
        let data_dir = tmp.path().to_path_buf();
        Dataserver::launch(data_dir, opts, Some(tmp))
    }

    /// Start a server on a data directory the caller owns.
    pub fn start_in(data_dir: &Path, opts: DataserverOpts) -> Dataserver {
        Dataserver::launch(data_dir.to_path_buf(), opts, None)
    }

    fn launch(data_dir: PathBuf, opts: DataserverOpts, tmp: Option<tempfile::TempDir>) -> Self {
        let mut ds = Dataserver {
            child: None,
            addr: crate::free_addr(),
            data_dir,
            opts,
            _tmp: tmp,
            log: PathBuf::new(),
        };
        ds.spawn();
        ds
    }

    fn spawn(&mut self) {
        let log = self.data_dir.join(format!(
            "dataserver-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let log_file = std::fs::File::create(&log).expect("create log");
        let child = self
            .opts
            .command(&self.data_dir, self.addr)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn chorus-dataserver");
        self.child = Some(child);
        self.log = log;
        self.wait_ready(START_LIMIT);
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "chorus-dataserver exited during start ({status}); log:\n{}",
                        self.log_text()
                    );
                }
            }
            if crate::ping(self.addr) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "chorus-dataserver not ready after {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far (of its current run).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle` (a line may be written just
    /// after the state it reports became visible elsewhere); returns the
    /// log, panics with it after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            if std::time::Instant::now() >= deadline {
                panic!("{needle:?} not in the log after {timeout:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL the server and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            process::kill(&mut c);
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns its exit status
    /// success, or false if it had to be killed.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        process::signal(&c, libc::SIGTERM);
        process::wait_exit(&mut c, STOP_LIMIT).is_some_and(|st| st.success())
    }

    /// SIGSTOP the server: it keeps its socket but answers nothing.
    pub fn suspend(&self) {
        if let Some(c) = self.child.as_ref() {
            process::signal(c, libc::SIGSTOP);
        }
    }

    /// SIGCONT the server.
    pub fn resume(&self) {
        if let Some(c) = self.child.as_ref() {
            process::signal(c, libc::SIGCONT);
        }
    }

    /// Start again on the same data directory and address.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Restart on the same data with other options.
    pub fn restart_with(&mut self, opts: DataserverOpts) {
        self.kill();
        self.opts = opts;
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Dataserver {
    fn drop(&mut self) {
        self.kill();
    }
}
