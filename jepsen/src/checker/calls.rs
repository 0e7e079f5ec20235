//! Pairing a history's events into calls: each client invocation with its
//! completion (`ok`, `fail`, `info`), or with none if the run ended first.

use std::collections::HashMap;

use serde_json::Value;

use crate::history::{Op, OpType, NEMESIS};

/// One client operation: its invocation and, if recorded, its completion.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub invoke: &'a Op,
    /// `None` when the history ended while the operation was open; such a
    /// call is indeterminate, like an `info`.
    pub complete: Option<&'a Op>,
    /// Position of the invocation in the history ordered by `index`.
    pub start: usize,
    /// Position of the completion, if any.
    pub end: Option<usize>,
}

impl<'a> Call<'a> {
    /// `Ok`, `Fail` or `Info` (an unfinished call counts as `Info`).
    pub fn outcome(&self) -> OpType {
        match self.complete.map(|c| c.kind) {
            Some(OpType::Ok) => OpType::Ok,
            Some(OpType::Fail) => OpType::Fail,
            _ => OpType::Info,
        }
    }

    pub fn f(&self) -> &'a str {
        &self.invoke.f
    }

    pub fn process(&self) -> i64 {
        self.invoke.process
    }

    pub fn key(&self) -> Option<&'a str> {
        self.invoke
            .key
            .as_deref()
            .or_else(|| self.complete.and_then(|c| c.key.as_deref()))
    }

    /// The operation's argument: the invocation's value, or the
    /// completion's if the invocation carried none.
    pub fn argument(&self) -> &'a Value {
        match self.complete {
            Some(c) if self.invoke.value.is_null() => &c.value,
            _ => &self.invoke.value,
        }
    }

    /// What an `ok` completion returned.
    pub fn result(&self) -> Option<&'a Value> {
        match self.complete {
            Some(c) if c.kind == OpType::Ok => Some(&c.value),
            _ => None,
        }
    }

    /// Completion position of an `ok` call: the bound before which it took
    /// effect. `None` for calls that may take effect at any later time.
    pub fn ok_end(&self) -> Option<usize> {
        if self.outcome() == OpType::Ok {
            self.end
        } else {
            None
        }
    }

    /// Invocation time in ns.
    pub fn start_time(&self) -> u64 {
        self.invoke.time
    }

    /// Completion time in ns, if completed.
    pub fn end_time(&self) -> Option<u64> {
        self.complete.map(|c| c.time)
    }

    /// The history events of this call, for witnesses.
    pub fn events(&self) -> Vec<Op> {
        let mut v = vec![self.invoke.clone()];
        if let Some(c) = self.complete {
            v.push(c.clone());
        }
        v
    }

    /// A short description: `write 3 on r1 by process 4 (ok)`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} ", self.f());
        match self.result() {
            Some(r) if self.invoke.value.is_null() => s.push_str(&format!("-> {r}")),
            _ => s.push_str(&self.argument().to_string()),
        }
        if let Some(k) = self.key() {
            s.push_str(&format!(" on {k}"));
        }
        let outcome = match self.outcome() {
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            _ if self.complete.is_none() => "pending",
            _ => "info",
        };
        s.push_str(&format!(
            " by process {} (index {}, {outcome})",
            self.process(),
            self.invoke.index
        ));
        s
    }
}

/// A history split into client calls and nemesis events.
#[derive(Debug, Default)]
pub struct Paired<'a> {
    /// Client calls ordered by invocation.
    pub calls: Vec<Call<'a>>,
    /// Nemesis events, in history order.
    pub nemesis: Vec<&'a Op>,
    /// Events that did not fit: completions without an invocation, a second
    /// invocation on a process with one open.
    pub malformed: Vec<String>,
}

/// Pair every invocation with the next completion of the same process.
/// Events are taken in `index` order.
pub fn pair(history: &[Op]) -> Paired<'_> {
    let mut order: Vec<&Op> = history.iter().collect();
    order.sort_by_key(|op| op.index);
    let mut out = Paired::default();
    // process -> position in `out.calls` of its open call
    let mut open: HashMap<i64, usize> = HashMap::new();
    for (pos, op) in order.into_iter().enumerate() {
        if op.process == NEMESIS {
            out.nemesis.push(op);
            continue;
        }
        match op.kind {
            OpType::Invoke => {
                if let Some(prev) = open.insert(op.process, out.calls.len()) {
                    out.malformed.push(format!(
                        "process {} invoked index {} while index {} was open",
                        op.process, op.index, out.calls[prev].invoke.index
                    ));
                }
                out.calls.push(Call {
                    invoke: op,
                    complete: None,
                    start: pos,
                    end: None,
                });
            }
            _ => match open.remove(&op.process) {
                Some(i) => {
                    let call = &mut out.calls[i];
                    if call.invoke.f != op.f {
                        out.malformed.push(format!(
                            "index {}: completion f {:?} does not match invocation {:?} (index {})",
                            op.index, op.f, call.invoke.f, call.invoke.index
                        ));
                    }
                    call.complete = Some(op);
                    call.end = Some(pos);
                }
                None => out.malformed.push(format!(
                    "index {}: {:?} completion of process {} without an open invocation",
                    op.index, op.f, op.process
                )),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testing::H;

    #[test]
    fn pairs_invocations_with_completions_per_process() {
        let mut h = H::new();
        h.invoke(0, "write", "r0", 1);
        h.invoke(1, "read", "r0", Value::Null);
        h.nemesis("start-kill", "n1");
        h.ok(1, "read", "r0", 1);
        h.info(0, "write", "r0", 1);
        h.invoke(2, "write", "r0", 2);
        let p = pair(&h.ops);
        assert_eq!(p.calls.len(), 3);
        assert_eq!(p.nemesis.len(), 1);
        assert!(p.malformed.is_empty());
        assert_eq!(p.calls[0].outcome(), OpType::Info);
        assert_eq!(p.calls[0].end, Some(4));
        assert_eq!(p.calls[1].result(), Some(&serde_json::json!(1)));
        assert_eq!(p.calls[1].ok_end(), Some(3));
        assert!(p.calls[2].complete.is_none());
        assert_eq!(p.calls[2].outcome(), OpType::Info);
    }

    #[test]
    fn reports_orphan_completions_and_double_invocations() {
        let mut h = H::new();
        h.ok(0, "read", "r0", 1);
        h.invoke(1, "read", "r0", Value::Null);
        h.invoke(1, "read", "r0", Value::Null);
        let p = pair(&h.ops);
        assert_eq!(p.malformed.len(), 2);
        assert_eq!(p.calls.len(), 2);
    }
}
