//! List-append: appenders add unique elements to a key's list, readers read
//! the whole list. Per key:
//!
//! * no read holds an element twice (`duplicate`), an element never
//!   appended (`invented`) or one whose append failed
//!   (`failed-append-visible`), or one whose append began after the read
//!   ended (`future-read`);
//! * all reads agree on one order: each is a prefix of the longest
//!   (`incompatible-order`);
//! * a read that began after another ended saw at least as much
//!   (`nonmonotonic-read`);
//! * an acknowledged append is in every read that began after it completed
//!   (`lost-append`);
//! * an append that completed before another began comes first in the list
//!   (`append-order`).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Value};

use super::calls::Call;
use super::values::Interner;
use super::{Anomalies, AnomalyKind, Judgement, KeyResult, Paired, Verdict};
use crate::history::OpType;

pub(super) fn check(paired: &Paired<'_>, anomalies: &mut Anomalies) -> Judgement {
    let mut by_key: BTreeMap<&str, Vec<&Call<'_>>> = BTreeMap::new();
    let mut unkeyed = 0u64;
    for call in &paired.calls {
        match call.key() {
            Some(k) => by_key.entry(k).or_default().push(call),
            None => unkeyed += 1,
        }
    }
    let mut keys = Vec::new();
    let mut verdict = Verdict::Valid;
    let (mut reads, mut appends) = (0u64, 0u64);
    for (key, calls) in &by_key {
        let (kr, r, a) = check_key(key, calls, anomalies);
        reads += r;
        appends += a;
        verdict = verdict.and(kr.verdict);
        keys.push(kr);
    }
    if verdict == Verdict::Valid && reads == 0 {
        verdict = Verdict::Unknown;
    }
    let bad: Vec<&str> = keys
        .iter()
        .filter(|k| k.verdict == Verdict::Invalid)
        .map(|k| k.key.as_str())
        .collect();
    let summary = match verdict {
        Verdict::Valid => format!(
            "{} keys: {reads} reads consistent with {appends} acknowledged appends",
            keys.len()
        ),
        Verdict::Invalid => format!("anomalies on keys {}", bad.join(", ")),
        Verdict::Unknown => "no ok read: nothing to check".into(),
    };
    let mut details = serde_json::Map::new();
    details.insert("keys".into(), json!(keys.len()));
    details.insert("ok_reads".into(), json!(reads));
    details.insert("ok_appends".into(), json!(appends));
    details.insert("unkeyed_ops".into(), json!(unkeyed));
    Judgement {
        verdict,
        summary,
        keys,
        details,
    }
}

struct Read<'c, 'a> {
    call: &'c Call<'a>,
    elems: Vec<u32>,
}

impl Read<'_, '_> {
    fn end(&self) -> usize {
        self.call.end.unwrap_or(usize::MAX)
    }
}

/// Check one key; returns its result, its ok reads and ok appends.
fn check_key(key: &str, calls: &[&Call<'_>], anomalies: &mut Anomalies) -> (KeyResult, u64, u64) {
    let before = anomalies.total();
    let mut values = Interner::default();
    let mut appends: HashMap<u32, &Call<'_>> = HashMap::new();
    let mut reads: Vec<Read<'_, '_>> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for &call in calls {
        match call.f() {
            "append" => {
                let id = values.id(call.argument());
                if appends.insert(id, call).is_some() {
                    notes.push(format!("element appended twice: {}", call.describe()));
                }
            }
            "read" => match call.result() {
                None => {}
                Some(Value::Null) => reads.push(Read {
                    call,
                    elems: Vec::new(),
                }),
                Some(Value::Array(list)) => reads.push(Read {
                    call,
                    elems: list.iter().map(|v| values.id(v)).collect(),
                }),
                Some(_) => notes.push(format!("read result not a list: {}", call.describe())),
            },
            _ => notes.push(format!("not a list-append operation: {}", call.describe())),
        }
    }
    let k = Some(key);
    let elem = |values: &Interner, id: u32| values.value(id).clone();

    // Per read: duplicates, invented, failed, future elements.
    let mut reported: HashSet<(AnomalyKind, u32)> = HashSet::new();
    for r in &reads {
        let mut seen = HashSet::new();
        let mut dup_reported = false;
        for &e in &r.elems {
            if !seen.insert(e) && !dup_reported {
                dup_reported = true;
                anomalies.push(
                    AnomalyKind::Duplicate,
                    k,
                    format!(
                        "key {key}: {} holds {} more than once",
                        r.call.describe(),
                        elem(&values, e)
                    ),
                    r.call.events(),
                    json!({ "element": elem(&values, e) }),
                );
            }
            let (kind, message, mut ops) = match appends.get(&e) {
                None => (
                    AnomalyKind::Invented,
                    format!(
                        "key {key}: {} holds {}, which no append wrote",
                        r.call.describe(),
                        elem(&values, e)
                    ),
                    Vec::new(),
                ),
                Some(a) if a.outcome() == OpType::Fail => (
                    AnomalyKind::FailedAppendVisible,
                    format!(
                        "key {key}: {} holds {}, whose append failed ({})",
                        r.call.describe(),
                        elem(&values, e),
                        a.describe()
                    ),
                    a.events(),
                ),
                Some(a) if a.start > r.end() => (
                    AnomalyKind::FutureRead,
                    format!(
                        "key {key}: {} holds {}, appended only after the read ended ({})",
                        r.call.describe(),
                        elem(&values, e),
                        a.describe()
                    ),
                    a.events(),
                ),
                Some(_) => continue,
            };
            if reported.insert((kind, e)) {
                ops.extend(r.call.events());
                anomalies.push(
                    kind,
                    k,
                    message,
                    ops,
                    json!({ "element": elem(&values, e) }),
                );
            }
        }
    }

    // One order: every read is a prefix of the longest.
    let longest = reads.iter().max_by_key(|r| r.elems.len());
    if let Some(l) = longest {
        for r in &reads {
            let differ = r.elems.iter().zip(&l.elems).position(|(a, b)| a != b);
            if let Some(at) = differ {
                let mut ops = r.call.events();
                ops.extend(l.call.events());
                anomalies.push(
                    AnomalyKind::IncompatibleOrder,
                    k,
                    format!(
                        "key {key}: {} and {} disagree at position {at} ({} vs {})",
                        r.call.describe(),
                        l.call.describe(),
                        elem(&values, r.elems[at]),
                        elem(&values, l.elems[at])
                    ),
                    ops,
                    json!({ "position": at }),
                );
            }
        }
    }

    // Real time: a read that began after another completed saw at least as
    // much. Sweep events in history order, keeping the longest completed.
    let mut sweep: Vec<(usize, bool, usize)> = Vec::new(); // (pos, is_end, read)
    for (i, r) in reads.iter().enumerate() {
        sweep.push((r.call.start, false, i));
        sweep.push((r.end(), true, i));
    }
    sweep.sort_unstable();
    let mut longest_done: Option<usize> = None;
    for (_, is_end, i) in sweep {
        if is_end {
            if longest_done.is_none_or(|j| reads[i].elems.len() > reads[j].elems.len()) {
                longest_done = Some(i);
            }
        } else if let Some(j) = longest_done {
            let (a, b) = (&reads[j], &reads[i]);
            if b.elems.len() < a.elems.len() {
                let mut ops = a.call.events();
                ops.extend(b.call.events());
                anomalies.push(
                    AnomalyKind::NonmonotonicRead,
                    k,
                    format!(
                        "key {key}: {} saw {} elements, but {} completed before it began and saw {}",
                        b.call.describe(),
                        b.elems.len(),
                        a.call.describe(),
                        a.elems.len()
                    ),
                    ops,
                    json!({ "earlier_len": a.elems.len(), "later_len": b.elems.len() }),
                );
            }
        }
    }

    // Lost appends: each acknowledged append is in every read that began
    // after it completed. Report each element at its first miss.
    let mut acked: Vec<(usize, u32, &Call<'_>)> = appends
        .iter()
        .filter_map(|(&e, a)| a.ok_end().map(|end| (end, e, *a)))
        .collect();
    acked.sort_unstable_by_key(|a| a.0);
    let mut by_start: Vec<&Read<'_, '_>> = reads.iter().collect();
    by_start.sort_unstable_by_key(|r| r.call.start);
    let mut present = vec![false; values.len()];
    let mut lost = vec![false; values.len()];
    let mut done = 0;
    for r in &by_start {
        while done < acked.len() && acked[done].0 < r.call.start {
            done += 1;
        }
        for &e in &r.elems {
            present[e as usize] = true;
        }
        for &(_, e, a) in &acked[..done] {
            if !present[e as usize] && !lost[e as usize] {
                lost[e as usize] = true;
                let later = reads
                    .iter()
                    .any(|o| o.call.start > r.call.start && o.elems.contains(&e));
                let mut ops = a.events();
                ops.extend(r.call.events());
                anomalies.push(
                    AnomalyKind::LostAppend,
                    k,
                    format!(
                        "key {key}: {} was acknowledged, but {} began after it and does not hold it{}",
                        a.describe(),
                        r.call.describe(),
                        if later { " (a later read does)" } else { "" }
                    ),
                    ops,
                    json!({ "element": elem(&values, e), "seen_later": later }),
                );
            }
        }
        for &e in &r.elems {
            present[e as usize] = false;
        }
    }

    // Append order along the longest read: if x comes after y in the list,
    // x's append must not have completed before y's began.
    if let Some(l) = longest {
        let mut min_after: Option<(usize, u32)> = None; // (ok end, element)
        for &y in l.elems.iter().rev() {
            let Some(ya) = appends.get(&y) else { continue };
            if let Some((x_end, x)) = min_after {
                if x_end < ya.start && reported.insert((AnomalyKind::AppendOrder, y)) {
                    let xa = appends[&x];
                    let mut ops = xa.events();
                    ops.extend(ya.events());
                    anomalies.push(
                        AnomalyKind::AppendOrder,
                        k,
                        format!(
                            "key {key}: {} completed before {} began, yet comes after it in {}",
                            xa.describe(),
                            ya.describe(),
                            l.call.describe()
                        ),
                        ops,
                        json!({ "first": elem(&values, y), "then": elem(&values, x) }),
                    );
                }
            }
            if let Some(end) = ya.ok_end() {
                if min_after.is_none_or(|(m, _)| end < m) {
                    min_after = Some((end, y));
                }
            }
        }
    }

    let found = anomalies.total() - before;
    if !notes.is_empty() {
        tracing::warn!(key, count = notes.len(), first = %notes[0], "odd list-append operations");
    }
    let note = match (reads.is_empty(), notes.first()) {
        (_, Some(n)) => Some(n.clone()),
        (true, None) => Some("no ok read".into()),
        (false, None) => None,
    };
    let ok_appends = appends
        .values()
        .filter(|a| a.outcome() == OpType::Ok)
        .count() as u64;
    let kr = KeyResult {
        key: key.to_string(),
        verdict: if found > 0 {
            Verdict::Invalid
        } else {
            Verdict::Valid
        },
        calls: calls.len() as u64,
        anomalies: found,
        states: None,
        note,
    };
    (kr, reads.len() as u64, ok_appends)
}

#[cfg(test)]
mod tests {
    use super::super::testing::H;
    use super::super::{check, Budget, CheckResult};
    use super::*;
    use crate::history::OpType::{Fail, Info, Ok};

    fn run(h: &H) -> CheckResult {
        check("list-append", &h.ops, Budget::default())
    }

    fn kinds(r: &CheckResult) -> Vec<AnomalyKind> {
        r.anomaly_counts.keys().copied().collect()
    }

    fn append(h: &mut H, p: i64, kind: OpType, v: i64) {
        h.call(p, kind, "append", "l0", v, v);
    }

    fn read(h: &mut H, p: i64, list: Value) {
        h.call(p, Ok, "read", "l0", Value::Null, list);
    }

    #[test]
    fn growing_prefixes_are_valid() {
        let mut h = H::new();
        read(&mut h, 1, Value::Null);
        append(&mut h, 0, Ok, 1);
        read(&mut h, 1, json!([1]));
        append(&mut h, 0, Ok, 2);
        append(&mut h, 0, Info, 3); // indeterminate, seen
        append(&mut h, 0, Info, 4); // indeterminate, never seen
        read(&mut h, 1, json!([1, 2, 3]));
        // a read concurrent with an append may or may not see it
        h.invoke(2, "read", "l0", Value::Null);
        append(&mut h, 0, Ok, 5);
        h.ok(2, "read", "l0", json!([1, 2, 3]));
        read(&mut h, 1, json!([1, 2, 3, 5]));
        let r = run(&h);
        assert_eq!(r.verdict, Verdict::Valid, "{r:#?}");
        assert_eq!(r.details["ok_reads"], 5);
        assert_eq!(r.keys[0].anomalies, 0);
    }

    #[test]
    fn reads_that_disagree_on_order_are_caught() {
        let mut h = H::new();
        h.invoke(0, "append", "l0", 1);
        h.invoke(1, "append", "l0", 2);
        h.ok(0, "append", "l0", 1);
        h.ok(1, "append", "l0", 2);
        read(&mut h, 2, json!([1, 2]));
        read(&mut h, 3, json!([2, 1]));
        let r = run(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert!(
            kinds(&r).contains(&AnomalyKind::IncompatibleOrder),
            "{r:#?}"
        );
    }

    #[test]
    fn a_later_read_seeing_less_is_caught() {
        let mut h = H::new();
        append(&mut h, 0, Ok, 1);
        append(&mut h, 0, Ok, 2);
        read(&mut h, 1, json!([1, 2]));
        read(&mut h, 2, json!([1]));
        let r = run(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        let k = kinds(&r);
        assert!(k.contains(&AnomalyKind::NonmonotonicRead), "{k:?}");
        assert!(k.contains(&AnomalyKind::LostAppend), "{k:?}");
        let lost = r
            .anomalies
            .iter()
            .find(|a| a.kind == AnomalyKind::LostAppend)
            .map(|a| a.data["element"].clone());
        assert_eq!(lost, Some(json!(2)));
    }

    #[test]
    fn a_duplicate_is_caught() {
        let mut h = H::new();
        append(&mut h, 0, Ok, 1);
        read(&mut h, 1, json!([1, 1]));
        let r = run(&h);
        assert_eq!(kinds(&r), [AnomalyKind::Duplicate]);
        assert_eq!(r.anomalies[0].data["element"], 1);
    }

    #[test]
    fn an_invented_element_is_caught() {
        let mut h = H::new();
        append(&mut h, 0, Ok, 1);
        read(&mut h, 1, json!([1, 9]));
        read(&mut h, 1, json!([1, 9]));
        let r = run(&h);
        assert_eq!(kinds(&r), [AnomalyKind::Invented]);
        // reported once per element
        assert_eq!(r.anomaly_counts[&AnomalyKind::Invented], 1);
    }

    #[test]
    fn a_missing_acknowledged_append_is_caught() {
        let mut h = H::new();
        append(&mut h, 0, Ok, 1);
        append(&mut h, 0, Ok, 2);
        read(&mut h, 1, json!([1]));
        let r = run(&h);
        assert_eq!(kinds(&r), [AnomalyKind::LostAppend]);
        assert_eq!(r.anomalies[0].data["seen_later"], false);
        assert_eq!(r.keys[0].verdict, Verdict::Invalid);
    }

    #[test]
    fn a_failed_append_must_never_appear() {
        let mut h = H::new();
        append(&mut h, 0, Ok, 1);
        append(&mut h, 0, Fail, 2);
        read(&mut h, 1, json!([1, 2]));
        let r = run(&h);
        assert_eq!(kinds(&r), [AnomalyKind::FailedAppendVisible]);
    }

    #[test]
    fn an_element_read_before_its_append_began_is_caught() {
        let mut h = H::new();
        append(&mut h, 0, Ok, 1);
        read(&mut h, 1, json!([1, 2]));
        append(&mut h, 0, Ok, 2);
        let r = run(&h);
        assert_eq!(kinds(&r), [AnomalyKind::FutureRead]);
    }

    #[test]
    fn appends_in_real_time_order_must_keep_it() {
        let mut h = H::new();
        append(&mut h, 0, Ok, 1);
        append(&mut h, 0, Ok, 2);
        read(&mut h, 1, json!([2, 1]));
        let r = run(&h);
        assert_eq!(kinds(&r), [AnomalyKind::AppendOrder]);
    }

    #[test]
    fn keys_are_independent_and_no_reads_is_unknown() {
        let mut h = H::new();
        h.call(0, Ok, "append", "l0", 1, 1);
        h.call(0, Ok, "append", "l1", 1, 1);
        h.call(1, Ok, "read", "l1", Value::Null, json!([1]));
        let r = run(&h);
        assert_eq!(r.verdict, Verdict::Valid);
        assert_eq!(r.keys.len(), 2);
        assert_eq!(r.keys[0].note.as_deref(), Some("no ok read"));

        let mut h = H::new();
        h.call(0, Ok, "append", "l0", 1, 1);
        h.call(1, Info, "read", "l0", Value::Null, Value::Null);
        assert_eq!(run(&h).verdict, Verdict::Unknown);
    }
}
