//! Fault windows: the spans between a nemesis `start-X` and the matching
//! `stop-X`, shaded in every plot.

use std::collections::HashMap;

use serde_json::Value;

use crate::history::{Op, NEMESIS};

/// One fault, from its start to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultWindow {
    /// `partition`, `kill`, `pause`, `netem`, `clock`, ... (`f` without
    /// its `start-`/`stop-` prefix).
    pub kind: String,
    /// Start time, ns.
    pub start: u64,
    /// End time, ns; `None` if the history ended with the fault active.
    /// A nemesis event without a `start-`/`stop-` prefix is an instant
    /// (`end == Some(start)`).
    pub end: Option<u64>,
    /// What the nemesis said at the start (its `value`, or its `error`).
    pub description: String,
}

impl FaultWindow {
    /// The end, or `until` if the fault was never healed.
    pub fn end_or(&self, until: u64) -> u64 {
        self.end.unwrap_or(until).max(self.start)
    }
}

/// The fault windows of a history, in start order. A `stop-X` closes every
/// open window of kind `X`; a `stop-X` with none open is ignored.
pub fn fault_windows(history: &[Op]) -> Vec<FaultWindow> {
    let mut events: Vec<&Op> = history.iter().filter(|o| o.process == NEMESIS).collect();
    events.sort_by_key(|o| o.index);
    let mut out: Vec<FaultWindow> = Vec::new();
    let mut open: HashMap<String, Vec<usize>> = HashMap::new();
    for op in events {
        if let Some(kind) = op.f.strip_prefix("start-") {
            open.entry(kind.to_string()).or_default().push(out.len());
            out.push(FaultWindow {
                kind: kind.to_string(),
                start: op.time,
                end: None,
                description: describe(op),
            });
        } else if let Some(kind) = op.f.strip_prefix("stop-") {
            for i in open.remove(kind).unwrap_or_default() {
                out[i].end = Some(op.time);
            }
        } else {
            out.push(FaultWindow {
                kind: op.f.clone(),
                start: op.time,
                end: Some(op.time),
                description: describe(op),
            });
        }
    }
    out
}

fn describe(op: &Op) -> String {
    match &op.value {
        Value::String(s) => s.clone(),
        Value::Null => op.error.clone().unwrap_or_default(),
        v => v.to_string(),
    }
}

/// A fill colour per fault kind.
pub(crate) fn color(kind: &str) -> &'static str {
    match kind {
        "partition" => "#4a78c2",
        "kill" => "#c0392b",
        "pause" => "#8e44ad",
        "netem" => "#e67e22",
        "clock" => "#7f6a3a",
        _ => "#666666",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testing::H;

    #[test]
    fn pairs_starts_with_stops_by_kind() {
        let mut h = H::new();
        h.nemesis("start-partition", "n1 | n2 n3");
        h.nemesis("start-kill", "n2");
        h.nemesis("stop-partition", "healed");
        h.nemesis("kill", "n3");
        h.nemesis("stop-pause", "nothing to stop");
        h.nemesis("start-clock", "n1 +30s");
        let w = fault_windows(&h.ops);
        assert_eq!(w.len(), 4);
        assert_eq!(w[0].kind, "partition");
        assert_eq!(w[0].description, "n1 | n2 n3");
        assert_eq!((w[0].start, w[0].end), (1_000_000, Some(3_000_000)));
        assert_eq!(w[1].kind, "kill");
        assert_eq!(w[1].end, None);
        assert_eq!(w[1].end_or(9), 2_000_000);
        assert_eq!(w[2].kind, "kill");
        assert_eq!(w[2].end, Some(w[2].start));
        assert_eq!(w[3].kind, "clock");
        assert_eq!(w[3].end_or(99_000_000), 99_000_000);
    }
}
