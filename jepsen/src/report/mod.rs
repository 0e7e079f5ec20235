//! Reports: a folder per run, and a summary table for stdout.
//!
//! [`write_report`] writes into the run's folder:
//!
//! * `history.jsonl`: the history (see [`crate::history`]);
//! * `results.json`: the [`CheckResult`];
//! * `timeline.html`: one lane per process, each operation a bar from
//!   invocation to completion (green ok, red fail, amber info, striped
//!   unfinished; outlined if an anomaly names it), fault windows shaded;
//! * `latency.svg`: latency of each operation against time, log scale;
//! * `throughput.svg`: ok operations per second, per function.

mod plot;
mod timeline;
mod windows;

use std::path::{Path, PathBuf};

pub use windows::{fault_windows, FaultWindow};

use crate::checker::{pair, CheckResult};
use crate::history::{self, HistoryError, Op};

/// Errors writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("serialising results: {0}")]
    Json(#[from] serde_json::Error),
}

/// The files [`write_report`] writes.
pub const REPORT_FILES: [&str; 5] = [
    "history.jsonl",
    "results.json",
    "timeline.html",
    "latency.svg",
    "throughput.svg",
];

/// Write the report of one run into `dir` (created if missing).
pub fn write_report(dir: &Path, history: &[Op], result: &CheckResult) -> Result<(), ReportError> {
    let put = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| ReportError::Io { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    history::write(&dir.join("history.jsonl"), history)?;
    let mut json = serde_json::to_string_pretty(result)?;
    json.push('\n');
    put("results.json", &json)?;

    let paired = pair(history);
    let windows = fault_windows(history);
    let span = Span::of(history);
    let title = format!("{} ({})", result.workload, result.verdict);
    put(
        "timeline.html",
        &timeline::render(&paired.calls, &windows, span, result),
    )?;
    put(
        "latency.svg",
        &plot::latency(&paired.calls, &windows, span, &format!("Latency — {title}")),
    )?;
    put(
        "throughput.svg",
        &plot::throughput(
            &paired.calls,
            &windows,
            span,
            &format!("Throughput — {title}"),
        ),
    )?;
    tracing::info!(dir = %dir.display(), verdict = %result.verdict, "report written");
    Ok(())
}

/// A table of runs for stdout (and Markdown: it is a pipe table):
/// run, workload, verdict, ok / fail / info counts, anomalies.
pub fn summary_table(results: &[(String, &CheckResult)]) -> String {
    let header = [
        "run",
        "workload",
        "verdict",
        "ok",
        "fail",
        "info",
        "anomalies",
    ];
    let rows: Vec<[String; 7]> = results
        .iter()
        .map(|(name, r)| {
            [
                name.clone(),
                r.workload.clone(),
                r.verdict.to_string(),
                r.stats.ok.to_string(),
                r.stats.fail.to_string(),
                r.stats.info.to_string(),
                r.anomaly_brief(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let numeric = |i: usize| (3..6).contains(&i);
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = " ".repeat(widths[i] - c.chars().count());
                if numeric(i) {
                    format!("{pad}{c}")
                } else {
                    format!("{c}{pad}")
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&header.map(String::from));
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if numeric(i) {
                format!("{}:", "-".repeat(w + 1))
            } else {
                "-".repeat(w + 2)
            }
        })
        .collect();
    out.push_str(&format!("|{}|\n", rule.join("|")));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// The time range of a history, in ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    fn of(history: &[Op]) -> Span {
        let start = history.iter().map(|o| o.time).min().unwrap_or(0);
        let end = history.iter().map(|o| o.time).max().unwrap_or(0);
        Span { start, end }
    }

    /// Length in ns, at least 1.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start).max(1)
    }

    /// Where `t` falls in the span, 0 to 1.
    pub fn frac(&self, t: u64) -> f64 {
        (t.saturating_sub(self.start) as f64 / self.len() as f64).clamp(0.0, 1.0)
    }
}

/// Escape text for HTML and SVG (element content and quoted attributes).
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testing::H;
    use crate::checker::{check, Budget, Verdict};
    use crate::history::OpType::{Fail, Info, Ok};
    use serde_json::Value;

    /// A small register history with a partition, a kill left open, and a
    /// stale read.
    fn history() -> Vec<Op> {
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.nemesis("start-partition", "n1 | n2 n3 <isolated>");
        h.call(1, Ok, "read", "r0", Value::Null, 1);
        h.call(0, Info, "write", "r0", 2, 2);
        h.call(3, Fail, "write", "r0", 3, 3);
        h.nemesis("stop-partition", "healed");
        h.call(3, Ok, "write", "r0", 4, 4);
        h.call(1, Ok, "read", "r0", Value::Null, 1);
        h.nemesis("start-kill", "n2");
        h.invoke(4, "read", "r0", Value::Null);
        h.ops
    }

    #[test]
    fn writes_every_file_of_a_report() {
        let ops = history();
        let result = check("register", &ops, Budget::default());
        assert_eq!(result.verdict, Verdict::Invalid);
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run-1");
        write_report(&run, &ops, &result).unwrap();
        for f in REPORT_FILES {
            assert!(run.join(f).is_file(), "{f} missing");
        }

        assert_eq!(history::read(&run.join("history.jsonl")).unwrap(), ops);
        let text = std::fs::read_to_string(run.join("results.json")).unwrap();
        let back: CheckResult = serde_json::from_str(&text).unwrap();
        assert_eq!(back, result);
        let raw: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(raw["verdict"], "invalid");
        assert_eq!(raw["anomaly_counts"]["nonlinearizable"], 1);

        let html = std::fs::read_to_string(run.join("timeline.html")).unwrap();
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.trim_end().ends_with("</html>"));
        for p in [0, 1, 3, 4] {
            assert!(html.contains(&format!(r#"data-process="{p}""#)), "lane {p}");
        }
        assert!(html.contains(r#"data-process="nemesis""#));
        assert!(html.contains(r#"class="band" data-kind="partition""#));
        // escaped nemesis description
        assert!(html.contains("&lt;isolated&gt;"));
        assert!(!html.contains("<isolated>"));
        // the stale read is outlined, the open read striped
        assert!(html.contains(r#"class="op o x""#));
        assert!(html.contains(r#"class="op p""#));
        assert!(html.contains("nonlinearizable"));

        for name in ["latency.svg", "throughput.svg"] {
            let svg = std::fs::read_to_string(run.join(name)).unwrap();
            assert!(svg.starts_with("<svg "), "{name}");
            assert!(svg.trim_end().ends_with("</svg>"), "{name}");
            assert_eq!(svg.matches(r#"class="fault""#).count(), 2, "{name}");
            assert!(svg.contains(">partition</text>"), "{name}");
            assert!(svg.contains(">kill</text>"), "{name}");
            assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
        }
        let latency = std::fs::read_to_string(run.join("latency.svg")).unwrap();
        // six completed calls, one dot each
        assert_eq!(latency.matches("<circle").count(), 6);
        let throughput = std::fs::read_to_string(run.join("throughput.svg")).unwrap();
        // ok reads and ok writes: one line each
        assert_eq!(throughput.matches("<polyline").count(), 2);
    }

    #[test]
    fn an_empty_history_still_makes_a_report() {
        let result = check("set", &[], Budget::default());
        let dir = tempfile::tempdir().unwrap();
        write_report(dir.path(), &[], &result).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("latency.svg")).unwrap();
        assert!(svg.contains("no data"));
        assert!(!svg.contains("NaN"));
        let svg = std::fs::read_to_string(dir.path().join("throughput.svg")).unwrap();
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn a_big_history_keeps_the_timeline_small() {
        let mut h = H::new();
        for i in 0..30_000i64 {
            h.call(i % 10, Ok, "write", "r0", i, i);
        }
        let result = check("register", &h.ops, Budget::default());
        let dir = tempfile::tempdir().unwrap();
        write_report(dir.path(), &h.ops, &result).unwrap();
        let html = std::fs::metadata(dir.path().join("timeline.html"))
            .unwrap()
            .len();
        assert!(html < 6_000_000, "timeline is {html} bytes");
        let text = std::fs::read_to_string(dir.path().join("timeline.html")).unwrap();
        assert!(text.contains("Showing 15000 of 30000 operations"));
    }

    #[test]
    fn the_summary_table_lines_up() {
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(0, Ok, "read", "r0", Value::Null, 1);
        let good = check("register", &h.ops, Budget::default());
        h.call(1, Ok, "read", "r0", Value::Null, 7);
        let bad = check("register", &h.ops, Budget::default());
        let table = summary_table(&[
            ("register-partition-seed1".into(), &good),
            ("register-kill".into(), &bad),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == lines[0].chars().count()));
        assert!(lines[0].starts_with("| run "));
        assert!(lines[2].contains("register-partition-seed1") && lines[2].contains("valid"));
        assert!(lines[3].contains("invalid") && lines[3].contains("nonlinearizable×1"));
        assert!(lines[2].contains("| -"));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
