//! Checkers: judge a history without knowing anything of the system that
//! produced it.
//!
//! * `register`: linearizability per key (a Wing–Gong–Lowe search with
//!   memoization) against a read / write / compare-and-set register whose
//!   initial value is `null`.
//! * `list-append`: every read is a prefix of every later read (and all reads
//!   of a key agree on one order), no duplicate or invented element, no
//!   acknowledged append missing, no failed append visible.
//! * `set`: lost / unexpected / recovered counts from the final read.
//!
//! Register results also carry `details.stale_reads`: reads that returned
//! a value already overwritten by a completed write ([`stale`]), a sound
//! count of the staleness async groups allow and sync groups must not show.
//!
//! A `fail` completion means the operation did not take effect; an `info`
//! completion (or none at all) means it may have taken effect at any time
//! after its invocation, or never. Nemesis events are ignored.
//!
//! [`check`] returns a [`CheckResult`], which serialises to `results.json`.

mod calls;
mod list_append;
mod register;
mod set;
pub mod stale;
#[cfg(test)]
pub(crate) mod testing;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use calls::{pair, Call, Paired};
pub use stale::{stale_reads, StaleReads};

use crate::history::{Op, OpType};

/// Names of the workloads the checkers know.
pub const WORKLOADS: [&str; 3] = ["register", "list-append", "set"];

/// How much a check may spend before it gives up with [`Verdict::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Distinct search states (linearized set, register value) the
    /// linearizability search may visit per key. Each costs about 40 bytes
    /// of memory while that key is searched.
    pub max_states_per_key: u64,
    /// Wall-clock limit for the whole check, if any.
    pub max_time: Option<Duration>,
}

impl Budget {
    /// A budget of `n` states per key and no time limit.
    pub fn states(n: u64) -> Self {
        Self {
            max_states_per_key: n,
            max_time: None,
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_states_per_key: 5_000_000,
            max_time: Some(Duration::from_secs(120)),
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The history is consistent with the model.
    Valid,
    /// The history shows at least one anomaly.
    Invalid,
    /// The checker could not decide (budget exhausted, nothing observed).
    Unknown,
}

impl Verdict {
    /// The process exit code for this verdict: 0 valid, 1 invalid,
    /// 2 unknown (3 is left to the CLI for errors).
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Valid => 0,
            Verdict::Invalid => 1,
            Verdict::Unknown => 2,
        }
    }

    /// The combination of two verdicts: invalid beats unknown beats valid.
    pub fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Invalid, _) | (_, Verdict::Invalid) => Verdict::Invalid,
            (Verdict::Unknown, _) | (_, Verdict::Unknown) => Verdict::Unknown,
            _ => Verdict::Valid,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of anomaly a checker found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnomalyKind {
    /// register: no linearization of the key's operations exists.
    Nonlinearizable,
    /// list-append: a read holds the same element twice.
    Duplicate,
    /// list-append: a read holds an element no append ever wrote.
    Invented,
    /// list-append: a read holds an element whose append failed.
    FailedAppendVisible,
    /// list-append: two reads of a key disagree on the order (neither is a
    /// prefix of the other).
    IncompatibleOrder,
    /// list-append: a read that began after another ended saw less.
    NonmonotonicRead,
    /// list-append: an acknowledged append is missing from a read that
    /// began after the append completed.
    LostAppend,
    /// list-append: append `a` completed before append `b` began, yet `b`
    /// comes first in the list.
    AppendOrder,
    /// list-append: a read ended before the append of an element it holds
    /// began.
    FutureRead,
    /// set: an acknowledged add is missing from the final read.
    Lost,
    /// set: the final read holds an element never added.
    Unexpected,
    /// set: the final read holds an element whose add failed.
    FailedAddPresent,
}

impl AnomalyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::Nonlinearizable => "nonlinearizable",
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::Invented => "invented",
            AnomalyKind::FailedAppendVisible => "failed-append-visible",
            AnomalyKind::IncompatibleOrder => "incompatible-order",
            AnomalyKind::NonmonotonicRead => "nonmonotonic-read",
            AnomalyKind::LostAppend => "lost-append",
            AnomalyKind::AppendOrder => "append-order",
            AnomalyKind::FutureRead => "future-read",
            AnomalyKind::Lost => "lost",
            AnomalyKind::Unexpected => "unexpected",
            AnomalyKind::FailedAddPresent => "failed-add-present",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One anomaly, with the history events that witness it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A sentence a person can act on.
    pub message: String,
    /// The invocations and completions involved.
    pub ops: Vec<Op>,
    /// Kind-specific structured detail.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// Outcome counts of one function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ok: u64,
    pub fail: u64,
    /// `info` completions plus calls that never completed.
    pub info: u64,
}

/// What the history holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpStats {
    /// Client calls (invocations).
    pub calls: u64,
    pub ok: u64,
    pub fail: u64,
    /// `info` completions plus `pending`.
    pub info: u64,
    /// Calls the history ended before completing.
    pub pending: u64,
    /// Nemesis events.
    pub nemesis: u64,
    /// Events that could not be paired (see `details.malformed`).
    pub malformed: u64,
    /// Counts per function (`read`, `write`, ...).
    pub by_f: BTreeMap<String, Counts>,
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyResult {
    pub key: String,
    pub verdict: Verdict,
    /// Client calls on this key.
    pub calls: u64,
    /// Anomalies found on this key.
    pub anomalies: u64,
    /// register: search states visited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<u64>,
    /// Why the verdict is unknown, or other remarks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The judgement of one history; written as `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub workload: String,
    pub verdict: Verdict,
    /// One line: what was found.
    pub summary: String,
    pub stats: OpStats,
    /// Anomalies per kind (all of them, even beyond those listed).
    pub anomaly_counts: BTreeMap<AnomalyKind, u64>,
    /// The anomalies, at most [`MAX_LISTED`] per kind.
    pub anomalies: Vec<Anomaly>,
    /// Per-key verdicts (register, list-append).
    pub keys: Vec<KeyResult>,
    /// Workload-specific figures (set counts, search sizes, malformed
    /// events, ...).
    pub details: Value,
}

impl CheckResult {
    /// All anomalies found, listed or not.
    pub fn anomaly_total(&self) -> u64 {
        self.anomaly_counts.values().sum()
    }

    /// `lost-append×2, duplicate×1`, or `-` when there are none.
    pub fn anomaly_brief(&self) -> String {
        if self.anomaly_counts.is_empty() {
            return "-".into();
        }
        self.anomaly_counts
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Register histories: how many reads returned an overwritten value
    /// (`details.stale_reads`); `None` for other workloads.
    pub fn stale_reads(&self) -> Option<u64> {
        self.details.get("stale_reads").and_then(Value::as_u64)
    }

    /// Every history `index` named by an anomaly, for highlighting.
    pub fn anomaly_indices(&self) -> std::collections::BTreeSet<u64> {
        self.anomalies
            .iter()
            .flat_map(|a| a.ops.iter().map(|o| o.index))
            .collect()
    }
}

/// How many anomalies of one kind are listed in a result.
pub const MAX_LISTED: usize = 20;

/// Collects anomalies, listing at most [`MAX_LISTED`] per kind.
#[derive(Debug, Default)]
pub(crate) struct Anomalies {
    list: Vec<Anomaly>,
    counts: BTreeMap<AnomalyKind, u64>,
}

impl Anomalies {
    pub fn push(
        &mut self,
        kind: AnomalyKind,
        key: Option<&str>,
        message: String,
        ops: Vec<Op>,
        data: Value,
    ) {
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        if *n as usize <= MAX_LISTED {
            self.list.push(Anomaly {
                kind,
                key: key.map(str::to_string),
                message,
                ops,
                data,
            });
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// What one workload checker hands back to [`check`].
pub(crate) struct Judgement {
    pub verdict: Verdict,
    pub summary: String,
    pub keys: Vec<KeyResult>,
    pub details: serde_json::Map<String, Value>,
}

/// Guess the workload of a history from its function names: `cas`/`write`
/// mean register, `append` list-append, `add`/`final-read` set; a history
/// of reads only is list-append if a read returned a list, else register.
/// `None` if there are no client operations or the names conflict.
pub fn detect_workload(history: &[Op]) -> Option<String> {
    let (mut reg, mut list, mut set, mut list_reads, mut reads) =
        (false, false, false, false, false);
    for op in history
        .iter()
        .filter(|o| o.process != crate::history::NEMESIS)
    {
        match op.f.as_str() {
            "write" | "cas" => reg = true,
            "append" => list = true,
            "add" | "final-read" => set = true,
            "read" => {
                reads = true;
                if op.kind == OpType::Ok && op.value.is_array() {
                    list_reads = true;
                }
            }
            _ => {}
        }
    }
    let name = match (reg, list, set) {
        (true, false, false) => "register",
        (false, true, false) => "list-append",
        (false, false, true) => "set",
        (false, false, false) if reads && list_reads => "list-append",
        (false, false, false) if reads => "register",
        _ => return None,
    };
    Some(name.to_string())
}

/// Judge `history` as a run of `workload` (`register`, `list-append` or
/// `set`; `list_append` is accepted too). An unknown workload gives an
/// [`Verdict::Unknown`] result saying so.
pub fn check(workload: &str, history: &[Op], budget: Budget) -> CheckResult {
    let started = Instant::now();
    let deadline = budget.max_time.map(|d| started + d);
    let paired = pair(history);
    let stats = stats(&paired);
    let mut anomalies = Anomalies::default();
    let name = workload.replace('_', "-");
    let judgement = match name.as_str() {
        "register" => register::check(&paired, budget, deadline, &mut anomalies),
        "list-append" => list_append::check(&paired, &mut anomalies),
        "set" => set::check(&paired, &mut anomalies),
        _ => Judgement {
            verdict: Verdict::Unknown,
            summary: format!(
                "unknown workload {workload:?} (known: {})",
                WORKLOADS.join(", ")
            ),
            keys: Vec::new(),
            details: serde_json::Map::new(),
        },
    };
    let mut details = judgement.details;
    if name == "register" {
        // The countable witness of stale reads (0 in a sync group; what
        // async mode allows), beside the search's verdict.
        let stale = stale::stale_reads(&paired);
        details.insert("stale_reads".into(), Value::from(stale.stale));
        if let Ok(v) = serde_json::to_value(&stale) {
            details.insert("stale_read_detail".into(), v);
        }
    }
    if !paired.malformed.is_empty() {
        tracing::warn!(
            count = paired.malformed.len(),
            first = %paired.malformed[0],
            "history has events that do not pair"
        );
        let listed: Vec<Value> = paired
            .malformed
            .iter()
            .take(MAX_LISTED)
            .map(|s| Value::String(s.clone()))
            .collect();
        details.insert("malformed".into(), Value::Array(listed));
    }
    details.insert(
        "check_ms".into(),
        Value::from(started.elapsed().as_millis() as u64),
    );
    CheckResult {
        workload: name,
        verdict: judgement.verdict,
        summary: judgement.summary,
        stats,
        anomaly_counts: anomalies.counts,
        anomalies: anomalies.list,
        keys: judgement.keys,
        details: Value::Object(details),
    }
}

fn stats(paired: &Paired<'_>) -> OpStats {
    let mut s = OpStats {
        calls: paired.calls.len() as u64,
        nemesis: paired.nemesis.len() as u64,
        malformed: paired.malformed.len() as u64,
        ..OpStats::default()
    };
    for call in &paired.calls {
        let c = s.by_f.entry(call.f().to_string()).or_default();
        match call.outcome() {
            OpType::Ok => {
                s.ok += 1;
                c.ok += 1;
            }
            OpType::Fail => {
                s.fail += 1;
                c.fail += 1;
            }
            _ => {
                s.info += 1;
                c.info += 1;
                if call.complete.is_none() {
                    s.pending += 1;
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::testing::H;
    use super::*;
    use serde_json::json;

    #[test]
    fn verdicts_have_distinct_exit_codes_and_combine() {
        assert_eq!(Verdict::Valid.exit_code(), 0);
        assert_eq!(Verdict::Invalid.exit_code(), 1);
        assert_eq!(Verdict::Unknown.exit_code(), 2);
        assert_eq!(Verdict::Valid.and(Verdict::Unknown), Verdict::Unknown);
        assert_eq!(Verdict::Unknown.and(Verdict::Invalid), Verdict::Invalid);
        assert_eq!(Verdict::Valid.and(Verdict::Valid), Verdict::Valid);
        assert_eq!(
            serde_json::to_string(&Verdict::Invalid).unwrap(),
            "\"invalid\""
        );
    }

    #[test]
    fn detects_workloads_from_function_names() {
        let mut h = H::new();
        h.call(0, OpType::Ok, "write", "r0", 1, 1);
        assert_eq!(detect_workload(&h.ops).as_deref(), Some("register"));
        let mut h = H::new();
        h.call(0, OpType::Ok, "append", "l0", 1, 1);
        assert_eq!(detect_workload(&h.ops).as_deref(), Some("list-append"));
        let mut h = H::new();
        h.call(0, OpType::Ok, "read", "l0", Value::Null, json!([1]));
        assert_eq!(detect_workload(&h.ops).as_deref(), Some("list-append"));
        let mut h = H::new();
        h.call(0, OpType::Ok, "add", "", 1, 1);
        h.nemesis("start-kill", "n1");
        assert_eq!(detect_workload(&h.ops).as_deref(), Some("set"));
        h.call(1, OpType::Ok, "cas", "r0", json!([1, 2]), json!([1, 2]));
        assert_eq!(detect_workload(&h.ops), None);
        assert_eq!(detect_workload(&[]), None);
    }

    #[test]
    fn unknown_workload_is_unknown() {
        let r = check("bank", &[], Budget::default());
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(r.summary.contains("bank"));
    }

    #[test]
    fn stats_count_outcomes_per_function() {
        let mut h = H::new();
        h.call(0, OpType::Ok, "write", "r0", 1, 1);
        h.call(0, OpType::Fail, "write", "r0", 2, 2);
        h.call(0, OpType::Info, "read", "r0", Value::Null, Value::Null);
        h.invoke(1, "write", "r0", 3);
        h.nemesis("start-pause", "n2");
        let r = check("register", &h.ops, Budget::default());
        assert_eq!(r.stats.calls, 4);
        assert_eq!((r.stats.ok, r.stats.fail, r.stats.info), (1, 1, 2));
        assert_eq!(r.stats.pending, 1);
        assert_eq!(r.stats.nemesis, 1);
        assert_eq!(
            r.stats.by_f["write"],
            Counts {
                ok: 1,
                fail: 1,
                info: 1
            }
        );
        let back: CheckResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
