//! Histories from a simulated correct store: every operation takes effect
//! atomically at a random moment between its invocation and completion (or,
//! for some indeterminate ones, never), with a nemesis partition recorded.

use jepsen::history::{Op, OpType, NEMESIS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const WORKERS: usize = 5;

enum Phase {
    Idle,
    Invoked {
        f: &'static str,
        key: Option<String>,
        arg: Value,
    },
    Done {
        f: &'static str,
        key: Option<String>,
        kind: OpType,
        value: Value,
    },
}

struct Rec {
    ops: Vec<Op>,
    rng: StdRng,
}

impl Rec {
    fn push(&mut self, process: i64, kind: OpType, f: &str, key: Option<String>, value: Value) {
        let index = self.ops.len() as u64;
        let time = index * 1_000_000 + self.rng.random_range(0..900_000);
        self.ops.push(Op {
            index,
            time,
            process,
            kind,
            f: f.into(),
            key,
            value,
            error: None,
        });
    }
}

/// Drive `calls` operations. `pick` chooses (f, key, arg); `apply` is the
/// store: it takes effect and returns (ok or fail, completion value).
fn drive(
    seed: u64,
    calls: usize,
    mut pick: impl FnMut(&mut StdRng) -> (&'static str, Option<String>, Value),
    mut apply: impl FnMut(&'static str, Option<&str>, &Value) -> (OpType, Value),
) -> Vec<Op> {
    let mut rec = Rec {
        ops: Vec::new(),
        rng: StdRng::seed_from_u64(seed),
    };
    let mut procs: Vec<i64> = (0..WORKERS as i64).collect();
    let mut phase: Vec<Phase> = (0..WORKERS).map(|_| Phase::Idle).collect();
    let mut started = 0;
    let mut partition = false;
    while started < calls || phase.iter().any(|p| !matches!(p, Phase::Idle)) {
        if rec.rng.random_ratio(1, 200) {
            let f = if partition {
                "stop-partition"
            } else {
                "start-partition"
            };
            partition = !partition;
            rec.push(NEMESIS, OpType::Info, f, None, json!("n1 | n2 n3"));
        }
        let w = rec.rng.random_range(0..WORKERS);
        let p = procs[w];
        match std::mem::replace(&mut phase[w], Phase::Idle) {
            Phase::Idle if started < calls => {
                started += 1;
                let (f, key, arg) = pick(&mut rec.rng);
                rec.push(p, OpType::Invoke, f, key.clone(), arg.clone());
                phase[w] = Phase::Invoked { f, key, arg };
            }
            Phase::Idle => {}
            Phase::Invoked { f, key, arg } => {
                if rec.rng.random_ratio(1, 30) {
                    // crashed before taking effect
                    rec.push(p, OpType::Info, f, key, arg);
                    procs[w] += WORKERS as i64;
                } else {
                    let (kind, value) = apply(f, key.as_deref(), &arg);
                    phase[w] = Phase::Done {
                        f,
                        key,
                        kind,
                        value,
                    };
                }
            }
            Phase::Done {
                f,
                key,
                kind,
                value,
            } => {
                if rec.rng.random_ratio(1, 30) {
                    // took effect, but the client never heard
                    rec.push(
                        p,
                        OpType::Info,
                        f,
                        key,
                        if f == "read" { Value::Null } else { value },
                    );
                    procs[w] += WORKERS as i64;
                } else {
                    rec.push(p, kind, f, key, value);
                }
            }
        }
    }
    if partition {
        rec.push(
            NEMESIS,
            OpType::Info,
            "stop-partition",
            None,
            json!("healed"),
        );
    }
    rec.ops
}

/// Five registers, small values (so values repeat), reads, writes, cas.
pub fn register(seed: u64, calls: usize) -> Vec<Op> {
    let mut regs: std::collections::HashMap<String, Value> = Default::default();
    drive(
        seed,
        calls,
        |rng| {
            let key = Some(format!("r{}", rng.random_range(0..5)));
            match rng.random_range(0..3) {
                0 => ("read", key, Value::Null),
                1 => ("write", key, json!(rng.random_range(0..5))),
                _ => (
                    "cas",
                    key,
                    json!([rng.random_range(0..5), rng.random_range(0..5)]),
                ),
            }
        },
        |f, key, arg| {
            let cur = regs
                .entry(key.unwrap_or_default().to_string())
                .or_insert(Value::Null);
            match f {
                "read" => (OpType::Ok, cur.clone()),
                "write" => {
                    *cur = arg.clone();
                    (OpType::Ok, arg.clone())
                }
                _ if *cur == arg[0] => {
                    *cur = arg[1].clone();
                    (OpType::Ok, arg.clone())
                }
                _ => (OpType::Fail, arg.clone()),
            }
        },
    )
}

/// Three lists, unique appended elements, whole reads.
pub fn list_append(seed: u64, calls: usize) -> Vec<Op> {
    let mut lists: std::collections::HashMap<String, Vec<Value>> = Default::default();
    let mut next = 0i64;
    drive(
        seed,
        calls,
        |rng| {
            let key = Some(format!("l{}", rng.random_range(0..3)));
            if rng.random_bool(0.5) {
                ("read", key, Value::Null)
            } else {
                next += 1;
                ("append", key, json!(next))
            }
        },
        |f, key, arg| {
            let list = lists
                .entry(key.unwrap_or_default().to_string())
                .or_default();
            if f == "read" {
                (OpType::Ok, Value::Array(list.clone()))
            } else {
                list.push(arg.clone());
                (OpType::Ok, arg.clone())
            }
        },
    )
}

/// Unique adds, then one final read of every acknowledged element.
pub fn set(seed: u64, calls: usize) -> Vec<Op> {
    let mut set: Vec<Value> = Vec::new();
    let mut next = 0i64;
    let mut ops = drive(
        seed,
        calls,
        |_| {
            next += 1;
            ("add", None, json!(next))
        },
        |_, _, arg| {
            set.push(arg.clone());
            (OpType::Ok, arg.clone())
        },
    );
    let acked: std::collections::HashSet<String> = ops
        .iter()
        .filter(|o| o.kind == OpType::Ok)
        .map(|o| o.value.to_string())
        .collect();
    // The final read reads every acknowledged id; info adds that took
    // effect are not asked for (as the workload does).
    let read: Vec<Value> = set
        .into_iter()
        .filter(|v| acked.contains(&v.to_string()))
        .collect();
    let t = ops.last().map_or(0, |o| o.time);
    for (kind, value) in [
        (OpType::Invoke, Value::Null),
        (OpType::Ok, Value::Array(read)),
    ] {
        let index = ops.len() as u64;
        ops.push(Op {
            index,
            time: t + 1_000_000 * (index % 3 + 1),
            process: 1_000,
            kind,
            f: "final-read".into(),
            key: None,
            value,
            error: None,
        });
    }
    ops
}

/// Like [`register`], but reads come from a lagging replica now and then
/// (what an asynchronously replicated group does): the value the register
/// held `lag` effects ago.
pub fn lagging_register(seed: u64, calls: usize, lag: usize) -> Vec<Op> {
    let mut regs: std::collections::HashMap<String, Vec<Value>> = Default::default();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    drive(
        seed,
        calls,
        |rng| {
            let key = Some(format!("r{}", rng.random_range(0..5)));
            match rng.random_range(0..3) {
                0 => ("read", key, Value::Null),
                1 => ("write", key, json!(rng.random_range(0..5))),
                _ => (
                    "cas",
                    key,
                    json!([rng.random_range(0..5), rng.random_range(0..5)]),
                ),
            }
        },
        |f, key, arg| {
            let past = regs
                .entry(key.unwrap_or_default().to_string())
                .or_insert_with(|| vec![Value::Null]);
            let cur = past.last().cloned().unwrap_or(Value::Null);
            match f {
                "read" if rng.random_ratio(1, 10) => {
                    let i = past.len().saturating_sub(1 + lag);
                    (OpType::Ok, past[i].clone())
                }
                "read" => (OpType::Ok, cur),
                "write" => {
                    past.push(arg.clone());
                    (OpType::Ok, arg.clone())
                }
                _ if cur == arg[0] => {
                    past.push(arg[1].clone());
                    (OpType::Ok, arg.clone())
                }
                _ => (OpType::Fail, arg.clone()),
            }
        },
    )
}
