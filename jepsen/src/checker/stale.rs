//! Stale reads of a register: a direct, countable witness of
//! non-linearizability, beside the search in [`super::register`].
//!
//! An `ok` read R of value `v` on a key is **stale** when some `ok` write
//! (or compare-and-set) W of that key completed before R began, and every
//! operation that could have given the register the value `v` for R — the
//! initial `null` when `v` is `null`, every write / cas writing `v` that is
//! not a `fail` and was invoked before R completed — had completed before W
//! began. In any linearization W then comes after every possible source of
//! `v` and before R, so R should have seen W's value or a later one: R
//! returned an overwritten value. An `info` or unfinished source may take
//! effect at any later time, so it clears R.
//!
//! The count is sound (every stale read is a real violation) but not
//! complete (a history can be non-linearizable without a stale read); in
//! a sync group it must be 0, in an async group reads from peers that lag
//! behind the file's source server produce them, which is what async mode
//! allows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::calls::{Call, Paired};
use crate::history::OpType;

/// Examples kept in a [`StaleReads`].
pub const MAX_EXAMPLES: usize = 10;

/// One stale read and the write it missed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleExample {
    pub key: String,
    /// `read -> 1 on r0 by process 3 (index 40, ok)`.
    pub read: String,
    /// The completed write whose value the read should have seen (or a
    /// later one).
    pub missed: String,
}

/// The stale reads of a register history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleReads {
    /// `ok` reads examined.
    pub reads: u64,
    /// Stale ones among them.
    pub stale: u64,
    /// Stale reads per key.
    pub by_key: BTreeMap<String, u64>,
    /// The first few, for people.
    pub examples: Vec<StaleExample>,
}

/// A write as far as the count is concerned: the value it writes and its
/// bounds (history positions; `end` = `None`: may take effect any time
/// after `start`).
struct Source {
    value: Value,
    start: i64,
    end: Option<i64>,
}

/// The value a write or cas writes, if it is one.
fn written(call: &Call<'_>) -> Option<Value> {
    match call.f() {
        "write" => Some(call.argument().clone()),
        "cas" => match call.argument().as_array().map(Vec::as_slice) {
            Some([_, n]) => Some(n.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Count the stale reads of every key of a register history.
pub fn stale_reads(paired: &Paired<'_>) -> StaleReads {
    let mut by_key: BTreeMap<&str, Vec<&Call<'_>>> = BTreeMap::new();
    for call in &paired.calls {
        if let Some(k) = call.key() {
            by_key.entry(k).or_default().push(call);
        }
    }
    let mut out = StaleReads::default();
    for (key, calls) in by_key {
        // The initial value: a completed source before everything.
        let mut sources = vec![Source {
            value: Value::Null,
            start: -1,
            end: Some(-1),
        }];
        // Ok writes: (start, end, call).
        let mut ok_writes: Vec<(i64, i64, &Call<'_>)> = Vec::new();
        for &call in &calls {
            if call.outcome() == OpType::Fail {
                continue;
            }
            let Some(value) = written(call) else { continue };
            let start = call.start as i64;
            let end = call.ok_end().map(|e| e as i64);
            if let Some(e) = end {
                ok_writes.push((start, e, call));
            }
            sources.push(Source { value, start, end });
        }
        for &read in &calls {
            if read.f() != "read" {
                continue;
            }
            let (Some(v), Some(r_end)) = (read.result(), read.ok_end()) else {
                continue;
            };
            out.reads += 1;
            let (r_start, r_end) = (read.start as i64, r_end as i64);
            // The latest moment a source of `v` that may explain the read
            // can still take effect (None: unbounded).
            let mut latest: Option<i64> = Some(i64::MIN);
            for s in sources.iter().filter(|s| &s.value == v && s.start < r_end) {
                latest = match (latest, s.end) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            let Some(latest) = latest else { continue };
            let missed = ok_writes
                .iter()
                .find(|(w_start, w_end, _)| *w_start > latest && *w_end < r_start);
            if let Some((_, _, w)) = missed {
                out.stale += 1;
                *out.by_key.entry(key.to_string()).or_default() += 1;
                if out.examples.len() < MAX_EXAMPLES {
                    out.examples.push(StaleExample {
                        key: key.to_string(),
                        read: read.describe(),
                        missed: w.describe(),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::calls::pair;
    use crate::checker::testing::H;
    use serde_json::json;

    fn count(h: &H) -> StaleReads {
        stale_reads(&pair(&h.ops))
    }

    #[test]
    fn a_read_of_an_overwritten_value_is_stale() {
        let mut h = H::new();
        h.call(0, OpType::Ok, "write", "r0", 1, 1);
        h.call(0, OpType::Ok, "write", "r0", 2, 2);
        h.call(1, OpType::Ok, "read", "r0", Value::Null, 1);
        // The initial null, read after a completed write, is stale too.
        h.call(1, OpType::Ok, "read", "r1", Value::Null, Value::Null);
        h.call(0, OpType::Ok, "write", "r1", 3, 3);
        h.call(1, OpType::Ok, "read", "r1", Value::Null, Value::Null);
        let s = count(&h);
        assert_eq!((s.reads, s.stale), (3, 2));
        assert_eq!(s.by_key.get("r0"), Some(&1));
        assert_eq!(s.by_key.get("r1"), Some(&1));
        assert!(s.examples[0].read.contains("read -> 1"), "{:?}", s.examples);
        assert!(s.examples[0].missed.contains("write 2"), "{:?}", s.examples);
    }

    #[test]
    fn linearizable_reads_are_not_stale() {
        let mut h = H::new();
        h.call(0, OpType::Ok, "write", "r0", 1, 1);
        h.call(1, OpType::Ok, "read", "r0", Value::Null, 1);
        // Concurrent with the write of 2: either value is fine.
        h.invoke(0, "write", "r0", 2);
        h.invoke(1, "read", "r0", Value::Null);
        h.ok(1, "read", "r0", 1);
        h.ok(0, "write", "r0", 2);
        // A later write of the old value again explains it.
        h.call(0, OpType::Ok, "write", "r0", 1, 1);
        h.call(1, OpType::Ok, "read", "r0", Value::Null, 1);
        assert_eq!(count(&h).stale, 0);
    }

    #[test]
    fn indeterminate_sources_clear_a_read_and_failed_ones_do_not() {
        // An info write of 1 may take effect late: reading 1 is fine.
        let mut h = H::new();
        h.call(0, OpType::Info, "write", "r0", 1, 1);
        h.call(2, OpType::Ok, "write", "r0", 2, 2);
        h.call(1, OpType::Ok, "read", "r0", Value::Null, 1);
        assert_eq!(count(&h).stale, 0);
        // A failed write of 1 never happened: the read of 1 after the
        // ok write of 2 is stale only if an ok source of 1 ended before it.
        let mut h = H::new();
        h.call(0, OpType::Ok, "write", "r0", 1, 1);
        h.call(3, OpType::Fail, "write", "r0", 1, 1);
        h.call(2, OpType::Ok, "write", "r0", 2, 2);
        h.call(1, OpType::Ok, "read", "r0", Value::Null, 1);
        assert_eq!(count(&h).stale, 1);
        // A pending (unfinished) write of 1 clears it.
        h.invoke(4, "write", "r0", 1);
        h.call(1, OpType::Ok, "read", "r0", Value::Null, 1);
        assert_eq!(count(&h).stale, 1);
    }

    #[test]
    fn cas_writes_its_new_value() {
        let mut h = H::new();
        h.call(
            0,
            OpType::Ok,
            "cas",
            "r0",
            json!([null, 4]),
            json!([null, 4]),
        );
        h.call(1, OpType::Ok, "read", "r0", Value::Null, Value::Null);
        h.call(1, OpType::Ok, "read", "r0", Value::Null, 4);
        // A failed cas writes nothing.
        h.call(0, OpType::Fail, "cas", "r0", json!([4, 0]), json!([4, 0]));
        h.call(1, OpType::Ok, "read", "r0", Value::Null, 4);
        let s = count(&h);
        assert_eq!((s.reads, s.stale), (3, 1));
    }
}
