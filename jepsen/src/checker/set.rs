//! Set: clients `add` unique elements; at the end a `final-read` (key
//! `null`) reads back every acknowledged element. Its `ok` value is the
//! list of elements read back; elements it could not read (an I/O error,
//! not an absence) may be listed as `{"ok": [...], "unreadable": [...]}` in
//! the value, or as a JSON list in the completion's `error`. Several final
//! reads are merged.
//!
//! * lost: acknowledged (and completed before the last final read began),
//!   not read back, not unreadable;
//! * unexpected: read back but never added;
//! * recovered: an indeterminate add that was read back (fine);
//! * failed-add-present: a failed add that was read back (an anomaly).
//!
//! A final read that failed (or timed out) but lists what it did read
//! still counts for unexpected / recovered / failed-but-present, though
//! losses are then not judged.
//!
//! Invalid if anything is lost, unexpected or failed-but-present; unknown
//! if there is no ok final read or an acknowledged element was unreadable.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::calls::Call;
use super::values::Interner;
use super::{Anomalies, AnomalyKind, Judgement, Paired, Verdict};
use crate::history::OpType;

/// Elements listed per category in `details`.
const LISTED: usize = 100;

pub(super) fn check(paired: &Paired<'_>, anomalies: &mut Anomalies) -> Judgement {
    let mut values = Interner::default();
    let mut adds: HashMap<u32, &Call<'_>> = HashMap::new();
    let mut finals: Vec<&Call<'_>> = Vec::new();
    let mut failed_finals = 0u64;
    let mut partial_finals = 0u64;
    let mut read: HashSet<u32> = HashSet::new();
    let mut unreadable: HashSet<u32> = HashSet::new();
    let mut notes: Vec<String> = Vec::new();
    for call in &paired.calls {
        match call.f() {
            "add" => {
                let id = values.id(call.argument());
                if adds.insert(id, call).is_some() {
                    notes.push(format!("element added twice: {}", call.describe()));
                }
            }
            "final-read" => {
                let Some(result) = call.result() else {
                    // A final read that did not finish cleanly may still
                    // list what it read: enough to find unexpected elements.
                    failed_finals += 1;
                    if let Some(list) = call.complete.and_then(|c| c.value.as_array()) {
                        partial_finals += 1;
                        read.extend(list.iter().map(|v| values.id(v)));
                    }
                    continue;
                };
                let (ok, bad) = split_final(result, call.complete.and_then(|c| c.error.as_deref()));
                match ok {
                    Some(list) => {
                        read.extend(list.iter().map(|v| values.id(v)));
                        unreadable.extend(bad.iter().map(|v| values.id(v)));
                        finals.push(call);
                    }
                    None => notes.push(format!("final-read value not a list: {}", call.describe())),
                }
            }
            _ => notes.push(format!("not a set operation: {}", call.describe())),
        }
    }
    if !notes.is_empty() {
        tracing::warn!(count = notes.len(), first = %notes[0], "odd set operations");
    }
    let last_final = finals.iter().map(|c| c.start).max();

    let mut acked = 0u64;
    let mut ok = 0u64;
    let mut lost = Vec::new();
    let mut unreadable_acked = Vec::new();
    let mut recovered = Vec::new();
    let mut failed_present = Vec::new();
    let mut concurrent = 0u64;
    let mut unjudged = 0u64;
    let mut ids: Vec<u32> = adds.keys().copied().collect();
    ids.sort_unstable_by_key(|id| adds[id].start);
    for id in ids {
        let add = adds[&id];
        let present = read.contains(&id);
        match add.outcome() {
            OpType::Ok => {
                acked += 1;
                if present {
                    ok += 1;
                } else if unreadable.contains(&id) {
                    unreadable_acked.push(id);
                } else if last_final.is_none() {
                    unjudged += 1;
                } else if last_final.is_some_and(|f| add.end.is_some_and(|e| e < f)) {
                    lost.push(id);
                    anomalies.push(
                        AnomalyKind::Lost,
                        None,
                        format!("{} was acknowledged but not read back", add.describe()),
                        add.events(),
                        json!({ "element": values.value(id) }),
                    );
                } else {
                    concurrent += 1;
                }
            }
            OpType::Fail if present => {
                failed_present.push(id);
                anomalies.push(
                    AnomalyKind::FailedAddPresent,
                    None,
                    format!("{} failed, yet was read back", add.describe()),
                    add.events(),
                    json!({ "element": values.value(id) }),
                );
            }
            OpType::Info if present => recovered.push(id),
            _ => {}
        }
    }
    let mut unexpected: Vec<u32> = read
        .iter()
        .copied()
        .filter(|id| !adds.contains_key(id))
        .collect();
    unexpected.sort_unstable();
    for &id in &unexpected {
        let ops = finals.iter().flat_map(|c| c.events()).collect();
        anomalies.push(
            AnomalyKind::Unexpected,
            None,
            format!(
                "final read holds {}, which was never added",
                values.value(id)
            ),
            ops,
            json!({ "element": values.value(id) }),
        );
    }

    let verdict = if !unexpected.is_empty() || !failed_present.is_empty() {
        Verdict::Invalid
    } else if finals.is_empty() {
        Verdict::Unknown
    } else if !lost.is_empty() {
        Verdict::Invalid
    } else if !unreadable_acked.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    let summary = if finals.is_empty() {
        format!(
            "no ok final read ({failed_finals} failed, {partial_finals} with a partial list): {unjudged} acknowledged adds not judged, {} unexpected, {} failed-but-present",
            unexpected.len(),
            failed_present.len()
        )
    } else {
        format!(
            "{acked} acknowledged adds: {ok} read back, {} lost, {} unexpected, {} recovered, {} failed-but-present, {} unreadable",
            lost.len(),
            unexpected.len(),
            recovered.len(),
            failed_present.len(),
            unreadable_acked.len()
        )
    };
    let list = |ids: &[u32]| -> Vec<Value> {
        ids.iter()
            .take(LISTED)
            .map(|&id| values.value(id).clone())
            .collect()
    };
    let mut details = serde_json::Map::new();
    details.insert("attempted".into(), json!(adds.len()));
    details.insert("acknowledged".into(), json!(acked));
    details.insert("ok".into(), json!(ok));
    details.insert("lost_count".into(), json!(lost.len()));
    details.insert("unexpected_count".into(), json!(unexpected.len()));
    details.insert("recovered_count".into(), json!(recovered.len()));
    details.insert("failed_present_count".into(), json!(failed_present.len()));
    details.insert("unreadable_count".into(), json!(unreadable_acked.len()));
    details.insert("acked_during_final_read".into(), json!(concurrent));
    details.insert("final_reads".into(), json!(finals.len()));
    details.insert("failed_final_reads".into(), json!(failed_finals));
    details.insert("partial_final_reads".into(), json!(partial_finals));
    details.insert("unjudged".into(), json!(unjudged));
    details.insert("read_back".into(), json!(read.len()));
    details.insert("lost".into(), Value::Array(list(&lost)));
    details.insert("unexpected".into(), Value::Array(list(&unexpected)));
    details.insert("recovered".into(), Value::Array(list(&recovered)));
    details.insert("unreadable".into(), Value::Array(list(&unreadable_acked)));
    if let Some(n) = notes.first() {
        details.insert("note".into(), json!(n));
    }
    Judgement {
        verdict,
        summary,
        keys: Vec::new(),
        details,
    }
}

/// The elements a final read got, and those it could not read.
fn split_final<'v>(value: &'v Value, error: Option<&str>) -> (Option<&'v [Value]>, Vec<Value>) {
    let from_error = || -> Vec<Value> {
        error
            .and_then(|e| serde_json::from_str::<Vec<Value>>(e).ok())
            .unwrap_or_default()
    };
    match value {
        Value::Array(list) => (Some(list), from_error()),
        Value::Object(o) => {
            let ok = ["ok", "read", "found"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_array))
                .map(Vec::as_slice);
            let mut bad: Vec<Value> = ["unreadable", "error", "errors"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_array))
                .cloned()
                .unwrap_or_default();
            bad.extend(from_error());
            (ok, bad)
        }
        _ => (None, Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::H;
    use super::super::{check, Budget, CheckResult};
    use super::*;
    use crate::history::OpType::{Fail, Info, Ok};

    fn run(h: &H) -> CheckResult {
        check("set", &h.ops, Budget::default())
    }

    fn adds(h: &mut H) {
        h.call(0, Ok, "add", "", 1, 1);
        h.call(1, Ok, "add", "", 2, 2);
        h.call(0, Info, "add", "", 3, 3);
        h.call(2, Info, "add", "", 4, 4);
        h.call(1, Fail, "add", "", 5, 5);
        h.call(3, Ok, "add", "", 6, 6);
    }

    #[test]
    fn everything_read_back_is_valid_and_counts_recovered() {
        let mut h = H::new();
        adds(&mut h);
        h.call(9, Ok, "final-read", "", Value::Null, json!([1, 2, 3, 6]));
        let r = run(&h);
        assert_eq!(r.verdict, Verdict::Valid, "{r:#?}");
        assert_eq!(r.details["acknowledged"], 3);
        assert_eq!(r.details["ok"], 3);
        assert_eq!(r.details["recovered_count"], 1);
        assert_eq!(r.details["recovered"], json!([3]));
        assert_eq!(r.details["lost_count"], 0);
    }

    #[test]
    fn lost_unexpected_and_failed_present_are_counted() {
        let mut h = H::new();
        adds(&mut h);
        h.call(
            9,
            Ok,
            "final-read",
            "",
            Value::Null,
            json!([1, 4, 5, 77, 78]),
        );
        let r = run(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["lost"], json!([2, 6]));
        assert_eq!(r.details["unexpected"], json!([77, 78]));
        assert_eq!(r.details["recovered"], json!([4]));
        assert_eq!(r.details["failed_present_count"], 1);
        assert_eq!(r.anomaly_counts[&AnomalyKind::Lost], 2);
        assert_eq!(r.anomaly_counts[&AnomalyKind::Unexpected], 2);
        assert_eq!(r.anomaly_counts[&AnomalyKind::FailedAddPresent], 1);
        assert!(r.summary.contains("2 lost"), "{}", r.summary);
    }

    #[test]
    fn unreadable_elements_are_unknown_not_lost() {
        let mut h = H::new();
        adds(&mut h);
        h.call(
            9,
            Ok,
            "final-read",
            "",
            Value::Null,
            json!({"ok": [1, 2], "unreadable": [6]}),
        );
        let r = run(&h);
        assert_eq!(r.verdict, Verdict::Unknown, "{r:#?}");
        assert_eq!(r.details["unreadable"], json!([6]));
        assert_eq!(r.details["lost_count"], 0);

        // The same through the completion's error field.
        let mut h = H::new();
        adds(&mut h);
        h.invoke(9, "final-read", "", Value::Null);
        h.ok(9, "final-read", "", json!([1, 2]));
        if let Some(last) = h.ops.last_mut() {
            last.error = Some("[6]".into());
        }
        assert_eq!(run(&h).verdict, Verdict::Unknown);
    }

    #[test]
    fn an_add_acknowledged_during_the_final_read_is_not_lost() {
        let mut h = H::new();
        h.call(0, Ok, "add", "", 1, 1);
        h.invoke(1, "add", "", 2);
        h.invoke(9, "final-read", "", Value::Null);
        h.ok(1, "add", "", 2);
        h.ok(9, "final-read", "", json!([1]));
        let r = run(&h);
        assert_eq!(r.verdict, Verdict::Valid, "{r:#?}");
        assert_eq!(r.details["acked_during_final_read"], 1);
    }

    #[test]
    fn no_final_read_is_unknown() {
        let mut h = H::new();
        adds(&mut h);
        h.call(9, Fail, "final-read", "", Value::Null, Value::Null);
        let r = run(&h);
        assert_eq!(r.verdict, Verdict::Unknown);
        assert_eq!(r.details["failed_final_reads"], 1);
    }

    #[test]
    fn a_failed_final_read_still_shows_unexpected_elements() {
        let mut h = H::new();
        adds(&mut h);
        h.invoke(9, "final-read", "", Value::Null);
        h.fail(9, "final-read", "", json!([1, 3]));
        let r = run(&h);
        assert_eq!(r.verdict, Verdict::Unknown, "{r:#?}");
        assert_eq!(r.details["unjudged"], 2); // 2 and 6; 1 was read
        assert_eq!(r.details["recovered"], json!([3]));

        let mut h = H::new();
        adds(&mut h);
        h.invoke(9, "final-read", "", Value::Null);
        h.fail(9, "final-read", "", json!([1, 42]));
        let r = run(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["unexpected"], json!([42]));
        assert_eq!(r.details["lost_count"], 0);
    }

    #[test]
    fn several_final_reads_are_merged() {
        let mut h = H::new();
        adds(&mut h);
        h.call(9, Ok, "final-read", "", Value::Null, json!([1, 2]));
        h.call(9, Ok, "final-read", "", Value::Null, json!([6]));
        assert_eq!(run(&h).verdict, Verdict::Valid);
    }
}
