//! Start and stop real Chorus processes for integration tests.
//!
//! Every process is killed (SIGKILL) when its handle drops, so a failing
//! test never leaves a server behind; data directories are temporary
//! unless the test keeps them to restart a server on the same data.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory holding the workspace's built binaries (`target/debug` or
/// `target/release`), found from the running test executable
/// (`target/<profile>/deps/<test>`), or `CHORUS_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CHORUS_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary, e.g. `bin("chorus-dataserver")`.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build the workspace binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// A free loopback port (bound then released).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

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

/// A running `chorus-dataserver`.
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
        let mut ds = Dataserver {
            child: None,
            addr: free_addr(),
            data_dir,
            opts,
            _tmp: Some(tmp),
            log: PathBuf::new(),
        };
        ds.spawn();
        ds
    }

    /// Start a server on a data directory the caller owns.
    pub fn start_in(data_dir: &Path, opts: DataserverOpts) -> Dataserver {
        let mut ds = Dataserver {
            child: None,
            addr: free_addr(),
            data_dir: data_dir.to_path_buf(),
            opts,
            _tmp: None,
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
        let mut cmd = Command::new(bin("chorus-dataserver"));
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--group")
            .arg(&self.opts.group)
            .arg("--server-id")
            .arg(self.opts.server_id.to_string())
            .arg("--reserved-space")
            .arg(&self.opts.reserved_space)
            .arg("--fsync")
            .arg(&self.opts.fsync);
        if !self.opts.leaders.is_empty() {
            cmd.arg("--leaders").arg(self.opts.leaders.join(","));
        }
        if let Some(t) = &self.opts.large_file_threshold {
            cmd.arg("--large-file-threshold").arg(t);
        }
        if !self.opts.store_paths.is_empty() {
            cmd.arg("--store-path").arg(self.data_dir.join("store0"));
            for p in &self.opts.store_paths {
                cmd.arg("--store-path").arg(p);
            }
        }
        cmd.args(&self.opts.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().expect("spawn chorus-dataserver");
        self.child = Some(child);
        self.log = log;
        self.wait_ready(Duration::from_secs(30));
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
            if ping(self.addr) {
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

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL the server and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns its exit status
    /// success, or false if it had to be killed.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match c.try_wait() {
                Ok(Some(st)) => return st.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return false;
                }
            }
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
                addr: free_addr().to_string(),
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
            self.wait_listening(i, Duration::from_secs(30));
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
        let child = Command::new(bin("chorus-leader"))
            .arg("--id")
            .arg(l.id.to_string())
            .arg("--listen")
            .arg(&l.addr)
            .arg("--peers")
            .arg(&self.peers)
            .arg("--data-dir")
            .arg(&l.dir)
            .args(&self.extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
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
            if port_open(addr) {
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
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start leader `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_listening(i, Duration::from_secs(30));
    }

    fn signal_all(&self, sig: i32) {
        for c in self.procs.iter().filter_map(|l| l.child.as_ref()) {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
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

/// Whether a dataserver answers a ping at `addr` (blocking, short timeouts).
/// Safe to call from inside an async test: it runs on its own thread.
pub fn ping(addr: SocketAddr) -> bool {
    std::thread::spawn(move || ping_on_this_thread(addr))
        .join()
        .unwrap_or(false)
}

fn ping_on_this_thread(addr: SocketAddr) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(1), async {
            let Ok(s) = tokio::net::TcpStream::connect(addr).await else {
                return false;
            };
            let (r, w) = s.into_split();
            let mut w = proto::FrameWriter::new(w);
            let mut r = proto::FrameReader::new(r);
            let req = proto::Message::Request(proto::RequestEnvelope {
                id: 1,
                client_id: 0,
                seq: 0,
                epoch: 0,
                op: proto::Request::Ping,
            });
            if w.write(&req, &[]).await.is_err() {
                return false;
            }
            matches!(
                r.read::<proto::Message>().await,
                Ok(Some((
                    proto::Message::Response(proto::ResponseEnvelope { result: Ok(_), .. }),
                    _
                )))
            )
        })
        .await
        .unwrap_or(false)
    })
}

/// Whether anything accepts TCP connections at `addr`.
pub fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}
