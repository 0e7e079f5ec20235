//! Starts a real `chorus-dataserver` on a free port with a temporary data
//! directory, and runs the real `chorus` binary against it.
//!
//! The dataserver binary is `$CHORUS_DATASERVER_BIN` when set, else the
//! `chorus-dataserver` next to the `chorus` binary under test (same target
//! directory and profile), else `<workspace>/target/debug/chorus-dataserver`.
//! Build it first: `cargo build -p chorus-dataserver`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first ping.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// Bound on any single CLI invocation.
const RUN_LIMIT: Duration = Duration::from_secs(60);

pub fn dataserver_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHORUS_DATASERVER_BIN") {
        return PathBuf::from(p);
    }
    let beside = PathBuf::from(env!("CARGO_BIN_EXE_chorus")).with_file_name("chorus-dataserver");
    if beside.exists() {
        return beside;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/chorus-dataserver")
}

pub fn chorus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chorus"))
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A running dataserver; stopped and its directory removed on drop.
pub struct DataServer {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl DataServer {
    /// Start with a 2 MiB large-file threshold (so tests cover both the
    /// chunked small-file path and the single-file large path).
    pub fn start() -> DataServer {
        Self::start_with(&["--large-file-threshold", "2MiB"])
    }

    pub fn start_with(extra: &[&str]) -> DataServer {
        let bin = dataserver_bin();
        assert!(
            bin.exists(),
            "{} not found: build it with `cargo build -p chorus-dataserver` or set CHORUS_DATASERVER_BIN",
            bin.display()
        );
        let mut last_err = String::new();
        // A port picked free may be taken by the time the server binds it.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let addr = format!("127.0.0.1:{}", free_port());
            let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
            let child = Command::new(&bin)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen", &addr])
                .args(extra)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn chorus-dataserver");
            let mut server = DataServer { child, addr, dir };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("dataserver did not start: {last_err}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}; log:\n{}", self.log()));
            }
            let cfg = client::ClientConfig::default()
                .connect_timeout(Duration::from_millis(500))
                .request_timeout(Duration::from_secs(2))
                .retries(0);
            let ok = rt.block_on(async {
                match client::Client::connect_direct_with(self.addr.clone(), cfg).await {
                    Ok(c) => c.ping().await.is_ok(),
                    Err(_) => false,
                }
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer to ping in {START_LIMIT:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run `chorus --server <addr> <args>`.
    pub fn chorus(&self, args: &[&str]) -> Run {
        run_chorus(&self.addr, args, None)
    }

    /// Run `chorus --server <addr> <args>` with `stdin` piped in.
    pub fn chorus_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        run_chorus(&self.addr, args, Some(stdin))
    }
}

impl Drop for DataServer {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child process by its pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcome of one CLI invocation.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "chorus failed: {}", self.stderr);
        self
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim_end().to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// Assert a failure with this exit status and one `error: <code>:` line.
    pub fn fails_with(&self, code: i32, kind: &str) {
        assert_eq!(self.code, code, "stderr: {}", self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one error line, got {:?}",
            self.stderr
        );
        assert!(
            lines[0].starts_with(&format!("error: {kind}: ")),
            "unexpected error line {:?}",
            lines[0]
        );
    }
}

pub fn run_chorus(server: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    run_chorus_with(&["--server", server], args, stdin)
}

/// Run `chorus <global> --timeout 20 <args>` (e.g. global `--leaders A,B`).
pub fn run_chorus_with(global: &[&str], args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut child = Command::new(chorus_bin())
        .args(global)
        .args(["--timeout", "20"])
        .args(args)
        .env_remove("CHORUS_SERVER")
        .env_remove("CHORUS_LEADERS")
        .env_remove("CHORUS_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chorus");
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for chorus") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chorus {args:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
    }
}

/// Deterministic test content.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}
