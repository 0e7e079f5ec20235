//! Hand-made histories for unit tests.

use serde_json::Value;

use crate::history::{Op, OpType, NEMESIS};

/// A history builder: each event gets the next index and a time 1 ms later.
#[derive(Default)]
pub(crate) struct H {
    pub ops: Vec<Op>,
}

impl H {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(
        &mut self,
        process: i64,
        kind: OpType,
        f: &str,
        key: &str,
        value: impl Into<Value>,
    ) -> &mut Self {
        let index = self.ops.len() as u64;
        self.ops.push(Op {
            index,
            time: (index + 1) * 1_000_000,
            process,
            kind,
            f: f.into(),
            key: (!key.is_empty()).then(|| key.to_string()),
            value: value.into(),
            error: None,
        });
        self
    }

    pub fn invoke(&mut self, p: i64, f: &str, key: &str, v: impl Into<Value>) -> &mut Self {
        self.push(p, OpType::Invoke, f, key, v)
    }

    pub fn ok(&mut self, p: i64, f: &str, key: &str, v: impl Into<Value>) -> &mut Self {
        self.push(p, OpType::Ok, f, key, v)
    }

    pub fn fail(&mut self, p: i64, f: &str, key: &str, v: impl Into<Value>) -> &mut Self {
        self.push(p, OpType::Fail, f, key, v)
    }

    pub fn info(&mut self, p: i64, f: &str, key: &str, v: impl Into<Value>) -> &mut Self {
        self.push(p, OpType::Info, f, key, v)
    }

    pub fn nemesis(&mut self, f: &str, description: &str) -> &mut Self {
        self.push(NEMESIS, OpType::Info, f, "", description)
    }

    /// Invoke and complete at once (no concurrency).
    pub fn call(
        &mut self,
        p: i64,
        kind: OpType,
        f: &str,
        key: &str,
        arg: impl Into<Value>,
        ret: impl Into<Value>,
    ) -> &mut Self {
        self.invoke(p, f, key, arg);
        self.push(p, kind, f, key, ret)
    }
}
