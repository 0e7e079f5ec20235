//! Runs the real `chorus` binary against a real `chorus-dataserver`
//! started by `testkit` (free port, temporary data directory, killed on
//! drop). The binaries are found by `testkit::bin` next to the test
//! executable, or in `$CHORUS_BIN_DIR`; build them first with
//! `cargo build --workspace --bins`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{Dataserver, DataserverOpts};

/// Bound on any single CLI invocation.
const RUN_LIMIT: Duration = Duration::from_secs(60);

pub fn chorus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chorus"))
}

pub fn free_port() -> u16 {
    testkit::free_addr().port()
}

/// A running dataserver; killed and its directory removed on drop.
pub struct DataServer {
    _server: Dataserver,
    pub addr: String,
}

impl DataServer {
    /// Start with a 2 MiB large-file threshold (so tests cover both the
    /// chunked small-file path and the single-file large path).
    pub fn start() -> DataServer {
        let server = Dataserver::start(DataserverOpts {
            large_file_threshold: Some("2MiB".into()),
            ..DataserverOpts::default()
        });
        let addr = server.addr.to_string();
        DataServer {
            _server: server,
            addr,
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
    let Some(status) = testkit::wait_exit(&mut child, RUN_LIMIT) else {
        panic!("chorus {args:?} did not finish within {RUN_LIMIT:?}");
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
