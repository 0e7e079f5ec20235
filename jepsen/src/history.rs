//! Histories: what every client and the nemesis did, Jepsen-shaped, one
//! JSON object per line.
//!
//! ```json
//! {"index":0,"time":1200,"process":3,"type":"invoke","f":"write","key":"r1","value":5}
//! ```
//!
//! * `process`: a logical client; a process whose operation ended in
//!   `info` (timeout, lost connection: the outcome is unknown) is retired
//!   and a fresh process number takes its place, so every process has at
//!   most one operation open at a time.
//! * The nemesis writes its faults as process [`NEMESIS`] with `f` naming
//!   the fault (`start-partition`, `stop-partition`, `kill`, ...), `type`
//!   `info`, and a description in `value`.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The process number the nemesis records under.
pub const NEMESIS: i64 = -1;

/// The kind of a history event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The operation was started.
    Invoke,
    /// It completed and took effect.
    Ok,
    /// It completed and certainly did not take effect.
    Fail,
    /// Its outcome is unknown (it may or may not have taken effect, at any
    /// time after its invocation).
    Info,
}

/// One event of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history, from 0.
    pub index: u64,
    /// Nanoseconds since the run started.
    pub time: u64,
    pub process: i64,
    #[serde(rename = "type")]
    pub kind: OpType,
    /// The function: `read`, `write`, `cas`, `append`, `add`, `final-read`,
    /// or a nemesis fault.
    pub f: String,
    /// The key (file) the operation is on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Workload-specific: a register value, `[expected, new]` for a cas, a
    /// list of elements for a list-append read, ...
    #[serde(default)]
    pub value: serde_json::Value,
    /// Free text: the error of a `fail`/`info`, a nemesis description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Errors reading or writing a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {source}")]
    Parse {
        path: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// Read a history file (JSON lines; blank lines are skipped).
pub fn read(path: &Path) -> Result<Vec<Op>, HistoryError> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| HistoryError::Io {
        path: p.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| HistoryError::Io {
            path: p.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
            path: p.clone(),
            line: i + 1,
            source,
        })?;
        out.push(op);
    }
    Ok(out)
}

/// Write a history as JSON lines.
pub fn write(path: &Path, ops: &[Op]) -> Result<(), HistoryError> {
    let p = path.display().to_string();
    let io = |source| HistoryError::Io {
        path: p.clone(),
        source,
    };
    let f = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::new(f);
    for op in ops {
        // Serialising these plain structs cannot fail.
        let line = serde_json::to_string(op).unwrap_or_default();
        writeln!(w, "{line}").map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let ops = vec![
            Op {
                index: 0,
                time: 10,
                process: 0,
                kind: OpType::Invoke,
                f: "write".into(),
                key: Some("r1".into()),
                value: serde_json::json!(3),
                error: None,
            },
            Op {
                index: 1,
                time: 20,
                process: 0,
                kind: OpType::Info,
                f: "write".into(),
                key: Some("r1".into()),
                value: serde_json::json!(3),
                error: Some("timeout".into()),
            },
        ];
        write(&path, &ops).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(
            r#"{"index":0,"time":10,"process":0,"type":"invoke","f":"write","key":"r1","value":3}"#
        ));
        assert_eq!(read(&path).unwrap(), ops);
    }
}
