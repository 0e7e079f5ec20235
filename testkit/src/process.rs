//! Child-process chores shared by every server kind: bounded waits,
//! signals, log tails.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How often a bounded wait looks at a child.
const POLL: Duration = Duration::from_millis(5);

/// Wait up to `timeout` for `child` to exit. On timeout it is SIGKILLed and
/// reaped, and the result is `None`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            _ => {
                kill(child);
                return None;
            }
        }
    }
}

/// SIGKILL `child` and reap it (a no-op if it already exited).
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Send `sig` to `child` (which must not have been reaped yet).
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on our own, not yet reaped, child's pid.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// The `RUST_LOG` to give a server: the test's own, or `default`.
pub(crate) fn rust_log(default: &str) -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| default.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb", 5), "a\nb\n");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn wait_exit_returns_the_status_of_a_quick_child() {
        let mut c = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let st = wait_exit(&mut c, Duration::from_secs(10)).expect("exited");
        assert_eq!(st.code(), Some(3));
    }

    #[test]
    fn wait_exit_kills_a_child_that_outlives_the_bound() {
        let mut c = Command::new("sleep").arg("30").spawn().unwrap();
        let t = Instant::now();
        assert!(wait_exit(&mut c, Duration::from_millis(200)).is_none());
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // Killed and reaped: nothing left to wait for.
        assert!(c.try_wait().unwrap().is_some());
    }
}
