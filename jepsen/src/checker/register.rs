//! Linearizability of a read / write / compare-and-set register, per key.
//!
//! The search is Wing & Gong's, with Lowe's memoization: the key's events
//! form a doubly linked list (invocations and `ok` completions in history
//! order); the search repeatedly picks an invocation that comes before the
//! first pending completion, applies it to the model, and lifts it out of
//! the list, backtracking when a completion is reached whose operation has
//! not been linearized. A cache of (set of linearized operations, model
//! state) pairs prunes configurations already explored.
//!
//! * `fail` operations did not happen: they are dropped.
//! * `info` (and unfinished) writes and compare-and-sets have no completion
//!   entry: they may be linearized at any point after their invocation, or
//!   never (the search succeeds once every `ok` operation is linearized).
//!   Those whose new value nobody ever reads or expects are dropped first:
//!   taking effect could not explain any observation, so it never helps.
//! * `info` reads observed nothing: dropped.
//!
//! Before searching, an ok read (or cas) of a value nothing invoked before
//! it completed could have written is reported at once. The search itself
//! runs first relaxed (indeterminate operations may take effect any number
//! of times: few configurations, and its "not linearizable" is final), then
//! exact only if the relaxed answer took an indeterminate operation twice;
//! see [`search`] for the reductions (symmetry, dominance) that keep
//! indeterminate operations from blowing up the exact search.
//!
//! The model: the initial value is `null`; `read` returns the value;
//! `write v` sets it; `cas [e, n]` sets `n` if the value is `e` (an `ok`
//! cas succeeded, a failed one is a `fail`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use serde_json::{json, Value};

use super::calls::Call;
use super::values::{Interner, NULL};
use super::{Anomalies, AnomalyKind, Budget, Judgement, KeyResult, Paired, Verdict};
use crate::history::OpType;

/// What an operation does to the register (values are interned ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Action {
    Read(u32),
    Write(u32),
    Cas(u32, u32),
}

impl Action {
    /// The model's transition: the new state, or `None` if the operation
    /// cannot happen in `state`.
    fn step(self, state: u32) -> Option<u32> {
        match self {
            Action::Read(v) => (state == v).then_some(state),
            Action::Write(v) => Some(v),
            Action::Cas(expected, new) => (state == expected).then_some(new),
        }
    }
}

/// One operation taking part in the search.
struct ROp<'c, 'a> {
    call: &'c Call<'a>,
    action: Action,
    /// `ok`: it must be linearized before its completion.
    must: bool,
}

/// Where the search got stuck deepest.
#[derive(Debug, Clone)]
struct Witness {
    /// The operation whose completion was reached unlinearized.
    blocked: Option<usize>,
    /// The register state at that point.
    state: u32,
    /// Ok operations linearized at that point.
    depth: usize,
    /// The last few operations linearized, latest last.
    last: Vec<usize>,
    /// Operations that could have been linearized next.
    concurrent: Vec<usize>,
}

enum Outcome {
    /// `reused`: the linearization found took some indeterminate operation
    /// more than once (possible only in a relaxed search).
    Linearizable {
        states: u64,
        reused: bool,
    },
    Exhausted {
        states: u64,
        why: String,
    },
    Nonlinearizable {
        states: u64,
        witness: Witness,
    },
}

pub(super) fn check(
    paired: &Paired<'_>,
    budget: Budget,
    deadline: Option<Instant>,
    anomalies: &mut Anomalies,
) -> Judgement {
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
    let (mut states, mut searched, mut pruned, mut skipped) = (0u64, 0u64, 0u64, 0u64);
    let mut any_ok = false;
    for (key, calls) in &by_key {
        let prepared = prepare(calls);
        searched += prepared.ops.len() as u64;
        pruned += prepared.pruned;
        skipped += prepared.skipped.len() as u64;
        any_ok |= prepared.ops.iter().any(|o| o.must);
        let mut kr = KeyResult {
            key: key.to_string(),
            verdict: Verdict::Valid,
            calls: calls.len() as u64,
            anomalies: 0,
            states: None,
            note: prepared.skipped.first().cloned(),
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            kr.verdict = Verdict::Unknown;
            kr.note = Some("time budget exhausted before this key".into());
        } else if let Some((i, v)) = unexplained(&prepared) {
            kr.states = Some(0);
            kr.verdict = Verdict::Invalid;
            kr.anomalies = 1;
            let op = &prepared.ops[i];
            let value = prepared.values.value(v);
            anomalies.push(
                AnomalyKind::Nonlinearizable,
                Some(key),
                format!(
                    "key {key}: {} observed {value}, which no operation invoked before it completed could have written",
                    op.call.describe()
                ),
                op.call.events(),
                json!({ "blocked": op.call.describe(), "value": value }),
            );
        } else {
            match decide(&prepared.ops, budget.max_states_per_key, deadline) {
                Outcome::Linearizable { states: s, .. } => kr.states = Some(s),
                Outcome::Exhausted { states: s, why } => {
                    tracing::info!(key, states = s, "linearizability search gave up: {why}");
                    kr.states = Some(s);
                    kr.verdict = Verdict::Unknown;
                    kr.note = Some(why);
                }
                Outcome::Nonlinearizable { states: s, witness } => {
                    kr.states = Some(s);
                    kr.verdict = Verdict::Invalid;
                    kr.anomalies = 1;
                    report(key, &prepared, &witness, anomalies);
                }
            }
        }
        states += kr.states.unwrap_or(0);
        verdict = verdict.and(kr.verdict);
        keys.push(kr);
    }
    if verdict == Verdict::Valid && !any_ok {
        verdict = Verdict::Unknown;
    }
    let names = |v: Verdict| {
        keys.iter()
            .filter(|k| k.verdict == v)
            .map(|k| k.key.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let summary = match verdict {
        Verdict::Valid => format!(
            "all {} keys linearizable ({states} search states)",
            keys.len()
        ),
        Verdict::Invalid => format!("not linearizable on keys {}", names(Verdict::Invalid)),
        Verdict::Unknown if !any_ok => "no ok operation: nothing to check".into(),
        Verdict::Unknown => format!("undecided on keys {}", names(Verdict::Unknown)),
    };
    let mut details = serde_json::Map::new();
    details.insert("keys".into(), json!(keys.len()));
    details.insert("search_states".into(), json!(states));
    details.insert("searched_ops".into(), json!(searched));
    details.insert("pruned_indeterminate_ops".into(), json!(pruned));
    details.insert("skipped_ops".into(), json!(skipped));
    details.insert("unkeyed_ops".into(), json!(unkeyed));
    details.insert(
        "max_states_per_key".into(),
        json!(budget.max_states_per_key),
    );
    Judgement {
        verdict,
        summary,
        keys,
        details,
    }
}

/// A key's operations, ready for the search.
struct Prepared<'c, 'a> {
    ops: Vec<ROp<'c, 'a>>,
    values: Interner,
    /// Indeterminate writes dropped because their value is never observed.
    pruned: u64,
    /// Operations that could not be understood.
    skipped: Vec<String>,
}

fn prepare<'c, 'a>(calls: &[&'c Call<'a>]) -> Prepared<'c, 'a> {
    let mut values = Interner::default();
    let mut ops = Vec::new();
    let mut skipped = Vec::new();
    for &call in calls {
        let outcome = call.outcome();
        if outcome == OpType::Fail {
            continue;
        }
        let must = outcome == OpType::Ok;
        let action = match (call.f(), call.result()) {
            ("read", Some(v)) => Action::Read(values.id(v)),
            ("read", None) => continue,
            ("write", _) => Action::Write(values.id(call.argument())),
            ("cas", _) => match call.argument().as_array().map(Vec::as_slice) {
                Some([e, n]) => Action::Cas(values.id(e), values.id(n)),
                _ => {
                    skipped.push(format!("cas without [expected, new]: {}", call.describe()));
                    continue;
                }
            },
            _ => {
                skipped.push(format!("not a register operation: {}", call.describe()));
                continue;
            }
        };
        ops.push(ROp { call, action, must });
    }
    // Values some operation needs to see: read by an ok read, or expected
    // by a compare-and-set that may have happened.
    let mut observed = HashSet::new();
    for op in &ops {
        match op.action {
            Action::Read(v) => {
                observed.insert(v);
            }
            Action::Cas(e, _) => {
                observed.insert(e);
            }
            Action::Write(_) => {}
        }
    }
    let before = ops.len();
    ops.retain(|op| match op.action {
        _ if op.must => true,
        Action::Write(v) | Action::Cas(_, v) => observed.contains(&v),
        Action::Read(_) => true,
    });
    Prepared {
        pruned: (before - ops.len()) as u64,
        ops,
        values,
        skipped,
    }
}

/// Search twice if need be. First a relaxed search, where indeterminate
/// operations may take effect any number of times: it has far fewer
/// configurations, and it allows more histories than the real model, so
/// "not linearizable" from it is final, and so is "linearizable" when the
/// linearization it found took no indeterminate operation twice. Otherwise,
/// the exact search decides.
fn decide(ops: &[ROp<'_, '_>], max_states: u64, deadline: Option<Instant>) -> Outcome {
    let relaxed_states = match search(ops, max_states, deadline, true) {
        Outcome::Linearizable {
            reused: true,
            states,
        } => states,
        Outcome::Exhausted { states, .. } => states,
        decided => return decided,
    };
    match search(ops, max_states, deadline, false) {
        Outcome::Linearizable { states, reused } => Outcome::Linearizable {
            states: states + relaxed_states,
            reused,
        },
        Outcome::Exhausted { states, why } => Outcome::Exhausted {
            states: states + relaxed_states,
            why,
        },
        Outcome::Nonlinearizable { states, witness } => Outcome::Nonlinearizable {
            states: states + relaxed_states,
            witness,
        },
    }
}

/// An ok operation that observed a value (a read's result, a cas's
/// expected value) that nothing invoked before it completed could have
/// written: invalid without a search. Returns the operation and the value.
fn unexplained(prepared: &Prepared<'_, '_>) -> Option<(usize, u32)> {
    // value -> earliest invocation of an operation that writes it
    let mut first_writer: HashMap<u32, usize> = HashMap::new();
    for op in &prepared.ops {
        if let Action::Write(v) | Action::Cas(_, v) = op.action {
            let e = first_writer.entry(v).or_insert(op.call.start);
            *e = (*e).min(op.call.start);
        }
    }
    prepared.ops.iter().enumerate().find_map(|(i, op)| {
        let v = match op.action {
            Action::Read(v) | Action::Cas(v, _) if op.must && v != NULL => v,
            _ => return None,
        };
        let end = op.call.end.unwrap_or(usize::MAX);
        match first_writer.get(&v) {
            Some(&start) if start < end => None,
            _ => Some((i, v)),
        }
    })
}

/// The Wing–Gong–Lowe search over one key's operations.
///
/// Beyond Lowe's memoization, two reductions keep indeterminate operations
/// (which stay linearizable forever) from multiplying the search space:
///
/// * symmetry: indeterminate operations with the same action are
///   interchangeable, so one is only linearized after its earlier-invoked
///   twin (any linearization can be rewritten to use the earliest twins);
/// * dominance: a configuration that used more indeterminate operations than
///   a visited one with the same `ok` set and state can do nothing the
///   visited one could not (indeterminate operations are optional), so it
///   is skipped. To find such configurations early, `ok` operations are
///   tried before indeterminate ones at every step, and the check looks at
///   the used set minus one operation (cheap with Zobrist hashing).
fn search(
    ops: &[ROp<'_, '_>],
    max_states: u64,
    deadline: Option<Instant>,
    relaxed: bool,
) -> Outcome {
    // Events: (history position, op, is invocation), in history order.
    let mut events: Vec<(usize, usize, bool)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call.start, i, true));
        if let (true, Some(end)) = (op.must, op.call.end) {
            events.push((end, i, false));
        }
    }
    events.sort_unstable_by_key(|e| e.0);
    // Node 0 is the head, node k + 1 is events[k], node m + 1 the tail.
    let m = events.len();
    let tail = m + 1;
    let mut next: Vec<usize> = (1..=m + 1).chain([tail]).collect();
    let mut prev: Vec<usize> = [0].into_iter().chain(0..=m).collect();
    let mut return_node: Vec<Option<usize>> = vec![None; ops.len()];
    for (k, &(_, op, is_call)) in events.iter().enumerate() {
        if !is_call {
            return_node[op] = Some(k + 1);
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, n) = (prev[x], next[x]);
        next[p] = n;
        prev[n] = p;
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, n) = (prev[x], next[x]);
        next[p] = x;
        prev[n] = x;
    };
    // Each indeterminate operation's earlier twin (same action), if any.
    let mut twin: Vec<Option<usize>> = vec![None; ops.len()];
    let mut last_of: HashMap<Action, usize> = HashMap::new();
    for &(_, op, is_call) in &events {
        if is_call && !ops[op].must {
            twin[op] = last_of.insert(ops[op].action, op);
        }
    }

    // The set of linearized operations, as the XOR of a random 128-bit
    // key per operation (Zobrist hashing): O(1) to update and 16 bytes to
    // remember; two different sets collide with probability 2^-128.
    let keys: Vec<u128> = zobrist_keys(ops.len());
    let mut linearized: u128 = 0;
    let mut is_lin = vec![false; ops.len()];
    // Indeterminate operations linearized, in order.
    let mut used: Vec<usize> = Vec::new();
    let mut state = NULL;
    // (node linearized, state before, pass it was found in)
    let mut stack: Vec<(usize, u32, bool)> = Vec::new();
    let mut cache: HashSet<(u128, u32)> = HashSet::new();
    let total_ok = ops.iter().filter(|o| o.must).count();
    let mut remaining = total_ok;
    let mut node = next[0];
    // Pass one tries ok operations, pass two indeterminate ones.
    let mut second_pass = false;
    let mut best: Option<Witness> = None;
    let mut steps = 0u64;
    loop {
        if remaining == 0 {
            let mut seen = HashSet::new();
            let reused = stack
                .iter()
                .map(|&(n, _, _)| events[n - 1].1)
                .any(|op| !ops[op].must && !seen.insert(op));
            return Outcome::Linearizable {
                states: cache.len() as u64,
                reused,
            };
        }
        steps += 1;
        if steps % 4096 == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            return Outcome::Exhausted {
                states: cache.len() as u64,
                why: "time budget exhausted".into(),
            };
        }
        if node != tail && events[node - 1].2 {
            let op = events[node - 1].1;
            let must = ops[op].must;
            let candidate = must != second_pass && (relaxed || twin[op].is_none_or(|t| is_lin[t]));
            if let Some(new_state) = ops[op].action.step(state).filter(|_| candidate) {
                // In a relaxed search indeterminate operations stay
                // available: they are not part of the configuration.
                let h = if relaxed && !must {
                    linearized
                } else {
                    linearized ^ keys[op]
                };
                let dominated = cache.contains(&(h, new_state))
                    || !relaxed
                        && used
                            .iter()
                            .chain((!ops[op].must).then_some(&op))
                            .any(|&u| cache.contains(&(h ^ keys[u], new_state)));
                // A dominated configuration is remembered as seen too:
                // whatever covers it covers the ones it dominates.
                if cache.insert((h, new_state)) && !dominated {
                    if cache.len() as u64 > max_states {
                        return Outcome::Exhausted {
                            states: cache.len() as u64,
                            why: format!("search budget of {max_states} states exhausted"),
                        };
                    }
                    stack.push((node, state, second_pass));
                    linearized = h;
                    state = new_state;
                    if must {
                        remaining -= 1;
                    } else if !relaxed {
                        used.push(op);
                    }
                    if must || !relaxed {
                        is_lin[op] = true;
                        unlink(&mut next, &mut prev, node);
                        if let Some(r) = return_node[op] {
                            unlink(&mut next, &mut prev, r);
                        }
                    }
                    node = next[0];
                    second_pass = false;
                    continue;
                }
            }
            node = next[node];
            continue;
        }
        // The first pending completion (or the end): nothing before it is
        // left to try in this pass.
        if !second_pass {
            second_pass = true;
            node = next[0];
            continue;
        }
        // Stuck: an ok operation's completion came before it was
        // linearized (or nothing is left to try). Remember the deepest
        // such point, then undo the last linearization.
        let blocked = (node != tail).then(|| events[node - 1].1);
        let depth = total_ok - remaining;
        if best.as_ref().is_none_or(|b| depth > b.depth) {
            // Candidates at this point: ok ones first, then the most
            // recently invoked indeterminate ones.
            let (mut concurrent, mut maybe) = (Vec::new(), Vec::new());
            let mut x = next[0];
            while x != node && x != tail {
                let (_, op, is_call) = events[x - 1];
                match (is_call, ops[op].must) {
                    (true, true) if concurrent.len() < 6 && Some(op) != blocked => {
                        concurrent.push(op)
                    }
                    (true, false) => maybe.push(op),
                    _ => {}
                }
                x = next[x];
            }
            let room = 6usize.saturating_sub(concurrent.len());
            concurrent.extend(maybe.iter().rev().take(room).rev());
            best = Some(Witness {
                blocked,
                state,
                depth,
                last: stack
                    .iter()
                    .rev()
                    .take(3)
                    .rev()
                    .map(|&(n, _, _)| events[n - 1].1)
                    .collect(),
                concurrent,
            });
        }
        let Some((undo, before, pass)) = stack.pop() else {
            let witness = best.unwrap_or(Witness {
                blocked,
                state,
                depth: 0,
                last: Vec::new(),
                concurrent: Vec::new(),
            });
            return Outcome::Nonlinearizable {
                states: cache.len() as u64,
                witness,
            };
        };
        let op = events[undo - 1].1;
        state = before;
        let must = ops[op].must;
        if must {
            remaining += 1;
        } else if !relaxed {
            used.pop();
        }
        if must || !relaxed {
            linearized ^= keys[op];
            is_lin[op] = false;
            if let Some(r) = return_node[op] {
                relink(&mut next, &mut prev, r);
            }
            relink(&mut next, &mut prev, undo);
        }
        node = next[undo];
        second_pass = pass;
    }
}

/// `n` pseudo-random 128-bit keys (SplitMix64, fixed seed: a check is
/// deterministic).
fn zobrist_keys(n: usize) -> Vec<u128> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| (u128::from(next()) << 64) | u128::from(next()))
        .collect()
}

/// Turn the witness of a failed search into an anomaly.
fn report(key: &str, prepared: &Prepared<'_, '_>, w: &Witness, anomalies: &mut Anomalies) {
    let ops = &prepared.ops;
    let state = prepared.values.value(w.state);
    let total = ops.iter().filter(|o| o.must).count();
    let what = match w.blocked {
        Some(i) => format!("{} cannot be linearized", ops[i].call.describe()),
        None => "no linearization exists".into(),
    };
    let message = format!(
        "key {key}: {what}; after the longest linearizable prefix ({} of {total} ok operations) the register holds {state}",
        w.depth
    );
    let mut events = Vec::new();
    let mut involved: Vec<usize> = w.blocked.into_iter().collect();
    involved.extend(w.last.iter().copied());
    involved.extend(w.concurrent.iter().copied());
    involved.dedup();
    for &i in &involved {
        events.extend(ops[i].call.events());
    }
    events.sort_by_key(|e| e.index);
    events.dedup_by_key(|e| e.index);
    let describe = |v: &[usize]| -> Vec<Value> {
        v.iter()
            .map(|&i| Value::String(ops[i].call.describe()))
            .collect()
    };
    let data = json!({
        "blocked": w.blocked.map(|i| ops[i].call.describe()),
        "state": state,
        "prefix_len": w.depth,
        "last_linearized": describe(&w.last),
        "concurrent": describe(&w.concurrent),
    });
    anomalies.push(
        AnomalyKind::Nonlinearizable,
        Some(key),
        message,
        events,
        data,
    );
}

#[cfg(test)]
mod tests {
    use super::super::testing::H;
    use super::super::{check, Budget, CheckResult};
    use super::*;
    use crate::history::OpType::{Fail, Info, Ok};

    fn run(h: &H) -> CheckResult {
        check("register", &h.ops, Budget::default())
    }

    fn assert_invalid(h: &H) -> CheckResult {
        let r = run(h);
        assert_eq!(r.verdict, Verdict::Invalid, "{r:#?}");
        assert_eq!(
            r.anomaly_counts.get(&AnomalyKind::Nonlinearizable),
            Some(&1)
        );
        r
    }

    fn assert_valid(h: &H) -> CheckResult {
        let r = run(h);
        assert_eq!(r.verdict, Verdict::Valid, "{r:#?}");
        assert!(r.anomalies.is_empty());
        r
    }

    #[test]
    fn sequential_writes_and_reads_are_linearizable() {
        let mut h = H::new();
        h.call(0, Ok, "read", "r0", Value::Null, Value::Null);
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(1, Ok, "read", "r0", Value::Null, 1);
        h.call(1, Ok, "write", "r0", 2, 2);
        h.call(0, Ok, "read", "r0", Value::Null, 2);
        let r = assert_valid(&h);
        assert_eq!(r.keys.len(), 1);
        assert_eq!(r.keys[0].verdict, Verdict::Valid);
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_return_either_value() {
        for seen in [Value::Null, Value::from(1)] {
            let mut h = H::new();
            h.invoke(0, "write", "r0", 1);
            h.invoke(1, "read", "r0", Value::Null);
            h.ok(1, "read", "r0", seen.clone());
            h.ok(0, "write", "r0", 1);
            h.call(1, Ok, "read", "r0", Value::Null, 1);
            assert_valid(&h);
        }
    }

    #[test]
    fn concurrent_reads_may_see_the_old_and_new_values_in_real_time_order() {
        // w1 overlaps both reads; the first read sees 1, the later one null:
        // impossible once a read has seen the new value.
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 0, 0);
        h.invoke(0, "write", "r0", 1);
        h.call(1, Ok, "read", "r0", Value::Null, 1);
        h.call(2, Ok, "read", "r0", Value::Null, 0);
        h.ok(0, "write", "r0", 1);
        assert_invalid(&h);
    }

    #[test]
    fn a_stale_read_is_caught() {
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(0, Ok, "write", "r0", 2, 2);
        h.call(1, Ok, "read", "r0", Value::Null, 1);
        let r = assert_invalid(&h);
        let a = &r.anomalies[0];
        assert_eq!(a.key.as_deref(), Some("r0"));
        assert!(a.message.contains("read -> 1"), "{}", a.message);
        assert!(a.message.contains("holds 2"), "{}", a.message);
        // The witness names the stale read's events.
        assert!(a.ops.iter().any(|o| o.index == 5));
        assert_eq!(r.keys[0].verdict, Verdict::Invalid);
    }

    #[test]
    fn a_lost_write_is_caught() {
        let mut h = H::new();
        h.call(0, Ok, "write", "r1", 7, 7);
        h.call(1, Ok, "read", "r1", Value::Null, Value::Null);
        assert_invalid(&h);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(0, Ok, "write", "r1", 2, 2);
        h.call(1, Ok, "read", "r1", Value::Null, 2);
        h.call(1, Ok, "read", "r0", Value::Null, 2);
        let r = assert_invalid(&h);
        let verdicts: Vec<_> = r.keys.iter().map(|k| (k.key.as_str(), k.verdict)).collect();
        assert_eq!(verdicts, [("r0", Verdict::Invalid), ("r1", Verdict::Valid)]);
        assert!(r.summary.contains("r0"));
    }

    #[test]
    fn a_failed_write_that_took_effect_is_caught() {
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(0, Fail, "write", "r0", 2, 2);
        h.call(1, Ok, "read", "r0", Value::Null, 2);
        assert_invalid(&h);
    }

    #[test]
    fn a_failed_write_that_did_not_take_effect_is_fine() {
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(0, Fail, "write", "r0", 2, 2);
        h.call(1, Ok, "read", "r0", Value::Null, 1);
        assert_valid(&h);
    }

    #[test]
    fn an_indeterminate_write_may_take_effect_later() {
        // The info write of 2 is read after the write of 3 completed: it
        // took effect late, after 3 — fine, it had no completion bound.
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(0, Info, "write", "r0", 2, 2);
        h.call(1, Ok, "read", "r0", Value::Null, 1);
        h.call(1, Ok, "write", "r0", 3, 3);
        h.call(2, Ok, "read", "r0", Value::Null, 2);
        h.call(2, Ok, "read", "r0", Value::Null, 2);
        assert_valid(&h);
    }

    #[test]
    fn an_indeterminate_write_may_never_take_effect() {
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(0, Info, "write", "r0", 2, 2);
        h.invoke(3, "write", "r0", 4); // never completes
        h.call(1, Ok, "read", "r0", Value::Null, 1);
        h.call(1, Ok, "read", "r0", Value::Null, 1);
        let r = assert_valid(&h);
        assert_eq!(r.details["pruned_indeterminate_ops"], 2);
    }

    #[test]
    fn an_indeterminate_write_cannot_take_effect_before_its_invocation() {
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(1, Ok, "read", "r0", Value::Null, 2);
        h.call(0, Info, "write", "r0", 2, 2);
        assert_invalid(&h);
    }

    #[test]
    fn an_indeterminate_write_takes_effect_at_most_once() {
        // 2 is read, then 1 is read after being written, then 2 again:
        // the info write of 2 would have to happen twice.
        let mut h = H::new();
        h.call(0, Info, "write", "r0", 2, 2);
        h.call(1, Ok, "read", "r0", Value::Null, 2);
        h.call(1, Ok, "write", "r0", 1, 1);
        h.call(1, Ok, "read", "r0", Value::Null, 1);
        h.call(2, Ok, "read", "r0", Value::Null, 2);
        assert_invalid(&h);
    }

    #[test]
    fn cas_succeeds_only_from_the_expected_value() {
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(
            0,
            Ok,
            "cas",
            "r0",
            serde_json::json!([1, 2]),
            serde_json::json!([1, 2]),
        );
        h.call(1, Ok, "read", "r0", Value::Null, 2);
        h.call(
            1,
            Fail,
            "cas",
            "r0",
            serde_json::json!([1, 3]),
            serde_json::json!([1, 3]),
        );
        h.call(1, Ok, "read", "r0", Value::Null, 2);
        assert_valid(&h);

        // An ok cas whose expected value was not there.
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(
            0,
            Ok,
            "cas",
            "r0",
            serde_json::json!([5, 2]),
            serde_json::json!([5, 2]),
        );
        assert_invalid(&h);

        // A failed cas that took effect anyway.
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(0, Fail, "cas", "r0", serde_json::json!([1, 2]), Value::Null);
        h.call(1, Ok, "read", "r0", Value::Null, 2);
        assert_invalid(&h);

        // An indeterminate cas that did take effect.
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.call(0, Info, "cas", "r0", serde_json::json!([1, 2]), Value::Null);
        h.call(1, Ok, "read", "r0", Value::Null, 2);
        assert_valid(&h);

        // Two ok cas from the same value: only one can win.
        let mut h = H::new();
        h.call(0, Ok, "write", "r0", 1, 1);
        h.invoke(0, "cas", "r0", serde_json::json!([1, 2]));
        h.invoke(1, "cas", "r0", serde_json::json!([1, 3]));
        h.ok(0, "cas", "r0", serde_json::json!([1, 2]));
        h.ok(1, "cas", "r0", serde_json::json!([1, 3]));
        assert_invalid(&h);
    }

    #[test]
    fn the_search_budget_gives_unknown() {
        // Many concurrent writes and reads: more states than a tiny budget.
        let mut h = H::new();
        for p in 0..8 {
            h.invoke(p, "write", "r0", p);
        }
        for p in 0..8 {
            h.ok(p, "write", "r0", p);
        }
        for p in 0..8 {
            h.call(p, Ok, "read", "r0", Value::Null, 7);
        }
        // Unambiguous with a real budget...
        assert_valid(&h);
        // ...undecided with a tiny one.
        let r = check("register", &h.ops, Budget::states(3));
        assert_eq!(r.verdict, Verdict::Unknown, "{r:#?}");
        assert_eq!(r.keys[0].verdict, Verdict::Unknown);
        assert!(r.keys[0].note.as_deref().unwrap_or("").contains("budget"));
        assert!(r.anomalies.is_empty());
    }

    #[test]
    fn nothing_observed_is_unknown() {
        let mut h = H::new();
        h.call(0, Info, "write", "r0", 1, 1);
        h.call(0, Fail, "read", "r0", Value::Null, Value::Null);
        assert_eq!(run(&h).verdict, Verdict::Unknown);
    }

    #[test]
    fn nemesis_events_are_ignored() {
        let mut h = H::new();
        h.nemesis("start-partition", "n1 | n2 n3");
        h.call(0, Ok, "write", "r0", 1, 1);
        h.nemesis("stop-partition", "healed");
        h.call(1, Ok, "read", "r0", Value::Null, 1);
        assert_valid(&h);
    }

    #[test]
    fn a_long_concurrent_valid_history_is_decided_quickly() {
        // 5 processes, 400 rounds of overlapping writes and reads, with
        // indeterminate writes sprinkled in.
        let mut h = H::new();
        let mut last = Value::Null;
        let mut v = 0i64;
        for round in 0..400 {
            // p0 writes v, p1..p3 read concurrently, some see the old value.
            v += 1;
            h.invoke(0, "write", "r0", v);
            h.invoke(1, "read", "r0", Value::Null);
            h.invoke(2, "read", "r0", Value::Null);
            h.ok(1, "read", "r0", last.clone());
            h.ok(0, "write", "r0", v);
            h.ok(2, "read", "r0", v);
            if round % 7 == 0 {
                h.call(100 + round, Info, "write", "r0", -v, -v);
            }
            last = Value::from(v);
        }
        let started = Instant::now();
        let r = assert_valid(&h);
        assert!(started.elapsed().as_secs() < 10);
        assert!(r.keys[0].states.unwrap_or(0) > 0);
    }

    /// An independent, exhaustive linearizability check for tiny histories:
    /// try every order of the key's calls that respects real time, where
    /// indeterminate calls may also never happen.
    fn brute_force(h: &H) -> bool {
        struct B {
            f: String,
            arg: Value,
            ret: Option<Value>,
            start: usize,
            end: Option<usize>,
        }
        let paired = crate::checker::pair(&h.ops);
        let ops: Vec<B> = paired
            .calls
            .iter()
            .filter(|c| c.outcome() != Fail)
            .filter(|c| !(c.f() == "read" && c.outcome() != Ok))
            .map(|c| B {
                f: c.f().to_string(),
                arg: c.argument().clone(),
                ret: c.result().cloned(),
                start: c.start,
                end: c.ok_end(),
            })
            .collect();
        fn go(ops: &[B], done: &mut Vec<bool>, state: &Value) -> bool {
            if ops
                .iter()
                .zip(done.iter())
                .all(|(o, d)| *d || o.end.is_none())
            {
                return true;
            }
            for i in 0..ops.len() {
                if done[i] {
                    continue;
                }
                let blocked = ops
                    .iter()
                    .zip(done.iter())
                    .any(|(o, d)| !*d && o.end.is_some_and(|e| e < ops[i].start));
                if blocked {
                    continue;
                }
                let o = &ops[i];
                let next = match o.f.as_str() {
                    "read" => (o.ret.as_ref() == Some(state)).then(|| state.clone()),
                    "write" => Some(o.arg.clone()),
                    _ => (o.arg[0] == *state).then(|| o.arg[1].clone()),
                };
                if let Some(n) = next {
                    done[i] = true;
                    if go(ops, done, &n) {
                        return true;
                    }
                    done[i] = false;
                }
            }
            false
        }
        go(&ops, &mut vec![false; ops.len()], &Value::Null)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        use rand::{Rng, SeedableRng};
        let (mut valid, mut invalid, mut with_stale) = (0, 0, 0);
        for seed in 0..1500u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut h = H::new();
            let mut open: Vec<Option<(&str, Value)>> = vec![None; 3];
            let mut next_proc: Vec<i64> = vec![0, 1, 2];
            let mut calls = 0;
            while calls < 7 || open.iter().any(Option::is_some) {
                let p = rng.random_range(0..3);
                let small = |rng: &mut rand::rngs::StdRng| Value::from(rng.random_range(1..3));
                match open[p].take() {
                    None if calls < 7 => {
                        calls += 1;
                        let (f, arg) = match rng.random_range(0..3) {
                            0 => ("read", Value::Null),
                            1 => ("write", small(&mut rng)),
                            _ => {
                                let e = if rng.random_bool(0.3) {
                                    Value::Null
                                } else {
                                    small(&mut rng)
                                };
                                ("cas", serde_json::json!([e, small(&mut rng)]))
                            }
                        };
                        h.invoke(next_proc[p], f, "r0", arg.clone());
                        open[p] = Some((f, arg));
                    }
                    None => {}
                    Some((f, arg)) => {
                        let proc_id = next_proc[p];
                        match rng.random_range(0..10) {
                            0 | 1 => {
                                h.info(proc_id, f, "r0", arg);
                                next_proc[p] += 3;
                            }
                            2 => {
                                h.fail(proc_id, f, "r0", arg);
                            }
                            _ if f == "read" => {
                                let v = match rng.random_range(0..3) {
                                    0 => Value::Null,
                                    _ => small(&mut rng),
                                };
                                h.ok(proc_id, f, "r0", v);
                            }
                            _ => {
                                h.ok(proc_id, f, "r0", arg);
                            }
                        }
                    }
                }
            }
            let expected = brute_force(&h);
            let r = check("register", &h.ops, Budget::default());
            let got = match r.verdict {
                Verdict::Valid => true,
                Verdict::Invalid => false,
                Verdict::Unknown if !h.ops.iter().any(|o| o.kind == Ok) => continue,
                Verdict::Unknown => panic!("seed {seed}: unknown: {r:#?}"),
            };
            assert_eq!(got, expected, "seed {seed}: {:#?}", h.ops);
            // The stale-read count is sound: it never names a read in a
            // linearizable history.
            let stale = r.stale_reads().unwrap_or(0);
            assert!(
                stale == 0 || !expected,
                "seed {seed}: {stale} stale reads in a linearizable history: {:#?}",
                h.ops
            );
            if stale > 0 {
                with_stale += 1;
            }
            if expected {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
        // Both verdicts were exercised.
        assert!(
            valid > 200 && invalid > 200,
            "valid {valid}, invalid {invalid}"
        );
        assert!(
            with_stale > 50,
            "stale reads counted in {with_stale} histories"
        );
    }

    #[test]
    fn a_stale_read_deep_in_a_long_history_is_found() {
        let mut h = H::new();
        for v in 0..300 {
            h.invoke(0, "write", "r0", v);
            h.invoke(1, "read", "r0", Value::Null);
            h.ok(0, "write", "r0", v);
            // the read at v == 200 returns a value two writes old
            let seen = if v == 200 { v - 2 } else { v };
            h.ok(1, "read", "r0", seen);
        }
        let r = assert_invalid(&h);
        assert!(
            r.anomalies[0].message.contains("read -> 198"),
            "{}",
            r.anomalies[0].message
        );
    }
}
