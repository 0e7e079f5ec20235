//! Workloads: concurrent logical clients ("processes") running operations
//! through the SDK, each recorded as an `invoke` and a completion (`ok`,
//! `fail` or `info`) into one [`Recorder`].
//!
//! * **register**: keys `r0..` are normal files of [`REGISTER_WIDTH`] bytes,
//!   created holding [`REGISTER_NULL`] (read as `null`). `write v` is one
//!   `modify` at offset 0 of `v` zero-padded to the width; `read` downloads
//!   and decodes; `cas [e, n]` downloads (content and version at once),
//!   fails without writing if the content is not `e`, else modifies with
//!   `if_version` = the version read (`version_mismatch`: fail). With
//!   `read_after_write` (async runs) every acknowledged write or cas is
//!   followed at once by a read of the same key from the same process.
//!   In an async group the register files are created on the members in
//!   turn (each becomes its file's source server) and then only modified:
//!   the SDK sends every modify to the file's source, reads to any member.
//! * **list-append**: keys `l0..` are appender files, created empty;
//!   `append v` appends `"v,"` (values unique across the run); `read`
//!   downloads the whole file and decodes the list.
//! * **set**: `add v` uploads a file holding `v`; at the end one
//!   `final-read` (key `null`) lists every value read back from the ids of
//!   the acknowledged adds.
//!
//! Reads that fail are `fail` (a read changes nothing). A write that fails
//! with an error that means it was refused before taking effect
//! (`version_mismatch`, `not_found`, `not_appender`, bad arguments) is
//! `fail`; any other failure (timeouts, lost connections, and refusals that
//! may follow an SDK resend of an attempt whose answer was lost) is `info`,
//! and the process is retired: the worker continues as a new process.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Client, ClientConfig, ClientError, ErrorCode, ReadRule, UploadOptions};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::history::{Op, OpType};

/// Width of a register's content.
pub const REGISTER_WIDTH: usize = 8;
/// A register's initial content, read as `null`.
pub const REGISTER_NULL: &[u8] = b"--------";
/// Register values are drawn from `0..REGISTER_VALUES`.
pub const REGISTER_VALUES: i64 = 5;

/// The shared history of a run.
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    /// A history whose time 0 is now.
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        })
    }

    /// Append one event (index and time assigned here, under the lock, so
    /// both grow together).
    pub fn record(
        &self,
        process: i64,
        kind: OpType,
        f: &str,
        key: Option<&str>,
        value: Value,
        error: Option<String>,
    ) {
        let mut ops = self.ops.lock();
        let op = Op {
            index: ops.len() as u64,
            time: self.start.elapsed().as_nanos() as u64,
            process,
            kind,
            f: f.to_string(),
            key: key.map(str::to_string),
            value,
            error,
        };
        ops.push(op);
    }

    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn len(&self) -> usize {
        self.ops.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> Vec<Op> {
        self.ops.lock().clone()
    }
}

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Register,
    ListAppend,
    Set,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Register => "register",
            Kind::ListAppend => "list-append",
            Kind::Set => "set",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "register" => Some(Kind::Register),
            "list-append" | "append" => Some(Kind::ListAppend),
            "set" => Some(Kind::Set),
            _ => None,
        }
    }
}

/// Errors preparing a workload.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("connecting to the cluster: {0}")]
    Connect(#[source] ClientError),
    #[error("creating {key}: {source}")]
    Setup {
        key: String,
        #[source]
        source: ClientError,
    },
}

/// How hard to drive the cluster.
#[derive(Debug, Clone)]
pub struct WorkloadOpts {
    pub kind: Kind,
    /// Concurrent processes.
    pub concurrency: usize,
    /// Target operations per second, all processes together.
    pub rate: f64,
    /// Keys (files) for register and list-append.
    pub keys: usize,
    /// Bound on one operation; past it the operation is `info`.
    pub op_timeout: Duration,
    pub seed: u64,
    /// Where the workload's reads go (`Any` for async groups, so reads
    /// reach the peers).
    pub read_rule: ReadRule,
    /// register: follow every acknowledged write or compare-and-set by a
    /// read of the same key from the same process at once (recorded as its
    /// own operation). A read right after an acknowledgement is where an
    /// async group's push lag shows.
    pub read_after_write: bool,
}

/// The SDK settings workloads use: short timeouts, so faults show as
/// `info` within an operation timeout.
pub fn client_config(read_rule: ReadRule) -> ClientConfig {
    ClientConfig::default()
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(3))
        .cluster_wait(Duration::from_secs(3))
        .retries(1)
        .read_rule(read_rule)
}

/// Connect a client to the leaders.
pub async fn connect(leaders: &[String], read_rule: ReadRule) -> Result<Client, WorkloadError> {
    Client::connect_with(leaders.to_vec(), client_config(read_rule))
        .await
        .map_err(WorkloadError::Connect)
}

/// A prepared workload: its files, and what the set workload learnt.
pub struct Workload {
    pub opts: WorkloadOpts,
    /// key -> file id (register, list-append).
    pub files: Vec<(String, String)>,
    /// Unique values for appends and adds.
    next_value: AtomicU64,
    /// Next process number for a retired process's successor.
    next_process: AtomicI64,
    /// set: value -> file id of acknowledged adds.
    added: Mutex<BTreeMap<i64, String>>,
}

/// How one operation ended.
struct Outcome {
    kind: OpType,
    value: Value,
    error: Option<String>,
}

impl Outcome {
    fn ok(value: Value) -> Self {
        Outcome {
            kind: OpType::Ok,
            value,
            error: None,
        }
    }
}

/// Whether a write's error means it certainly did not take effect.
fn definitely_not_applied(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Server {
            code: ErrorCode::VersionMismatch
                | ErrorCode::NotFound
                | ErrorCode::NotAppender
                | ErrorCode::BadRequest
                | ErrorCode::InvalidFileId
                | ErrorCode::TooLarge,
            ..
        } | ClientError::InvalidArgument(_)
            | ClientError::InvalidFileId(_)
    )
}

fn write_failed(e: &ClientError, value: Value) -> Outcome {
    Outcome {
        kind: if definitely_not_applied(e) {
            OpType::Fail
        } else {
            OpType::Info
        },
        value,
        error: Some(format!("{}: {}", e.kind_str(), e.message())),
    }
}

fn read_failed(e: &ClientError) -> Outcome {
    Outcome {
        kind: OpType::Fail,
        value: Value::Null,
        error: Some(format!("{}: {}", e.kind_str(), e.message())),
    }
}

/// Decode a register's content: `null` for the placeholder, the integer,
/// or (never written by anyone: an anomaly for the checker) the raw text.
pub fn decode_register(bytes: &[u8]) -> Value {
    if bytes == REGISTER_NULL {
        return Value::Null;
    }
    match std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
    {
        Some(v) if bytes.len() == REGISTER_WIDTH => json!(v),
        _ => json!(String::from_utf8_lossy(bytes)),
    }
}

/// Encode a register value.
pub fn encode_register(v: i64) -> Vec<u8> {
    format!("{v:0width$}", width = REGISTER_WIDTH).into_bytes()
}

/// Decode a list-append file (`"1,5,9,"`): the list, or the raw text when
/// it is not such a list.
pub fn decode_list(bytes: &[u8]) -> Value {
    let Ok(s) = std::str::from_utf8(bytes) else {
        return json!(String::from_utf8_lossy(bytes));
    };
    let mut out = Vec::new();
    for part in s.split_terminator(',') {
        match part.parse::<i64>() {
            Ok(v) => out.push(v),
            Err(_) => return json!(s),
        }
    }
    if !s.is_empty() && !s.ends_with(',') {
        return json!(s);
    }
    json!(out)
}

impl Workload {
    /// Create the workload's files (before the history starts), retrying
    /// for up to `limit` while the cluster settles.
    pub async fn setup(
        client: &Client,
        opts: WorkloadOpts,
        limit: Duration,
    ) -> Result<Workload, WorkloadError> {
        let mut files = Vec::new();
        let (prefix, content, appender): (&str, &[u8], bool) = match opts.kind {
            Kind::Register => ("r", REGISTER_NULL, false),
            Kind::ListAppend => ("l", b"", true),
            Kind::Set => ("", b"", false),
        };
        if opts.kind != Kind::Set {
            for i in 0..opts.keys {
                let key = format!("{prefix}{i}");
                let deadline = Instant::now() + limit;
                let id = loop {
                    match client
                        .upload(content, UploadOptions::new().appender(appender))
                        .await
                    {
                        Ok(st) => break st.file_id,
                        Err(e) if Instant::now() < deadline => {
                            debug!(%key, "setup upload: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(source) => return Err(WorkloadError::Setup { key, source }),
                    }
                };
                info!(%key, %id, "created");
                files.push((key, id));
            }
        }
        Ok(Workload {
            next_process: AtomicI64::new(opts.concurrency as i64),
            opts,
            files,
            next_value: AtomicU64::new(0),
            added: Mutex::new(BTreeMap::new()),
        })
    }

    fn file_of(&self, key: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, id)| id.as_str())
    }

    /// Run `concurrency` processes until `stop_at`, then wait for the
    /// operations under way (each bounded by the operation timeout).
    pub async fn run(
        self: &Arc<Self>,
        leaders: &[String],
        rec: &Arc<Recorder>,
        stop_at: Instant,
    ) -> Result<(), WorkloadError> {
        let mut tasks = Vec::new();
        for w in 0..self.opts.concurrency {
            let client = connect(leaders, self.opts.read_rule).await?;
            let me = self.clone();
            let rec = rec.clone();
            tasks.push(tokio::spawn(async move {
                me.worker(w, client, rec, stop_at).await;
            }));
        }
        for t in tasks {
            if let Err(e) = t.await {
                warn!("worker task: {e}");
            }
        }
        Ok(())
    }

    async fn worker(&self, w: usize, client: Client, rec: Arc<Recorder>, stop_at: Instant) {
        let mut rng = StdRng::seed_from_u64(self.opts.seed.wrapping_mul(1_000_003) + w as u64);
        let mut process = w as i64;
        let mean = self.opts.concurrency as f64 / self.opts.rate.max(0.1);
        loop {
            let pause = Duration::from_secs_f64(rng.random_range(0.0..2.0 * mean));
            if Instant::now() + pause >= stop_at {
                break;
            }
            tokio::time::sleep(pause).await;
            let (f, key, value) = self.generate(&mut rng);
            let kind = self
                .invoke(&client, &rec, &mut process, f, key.as_deref(), value)
                .await;
            let probe = self.opts.read_after_write
                && self.opts.kind == Kind::Register
                && kind == OpType::Ok
                && f != "read";
            if probe && Instant::now() < stop_at {
                self.invoke(
                    &client,
                    &rec,
                    &mut process,
                    "read",
                    key.as_deref(),
                    Value::Null,
                )
                .await;
            }
        }
    }

    /// Run and record one operation as `process` (replaced by a fresh
    /// process number when the outcome is unknown); returns the outcome.
    async fn invoke(
        &self,
        client: &Client,
        rec: &Recorder,
        process: &mut i64,
        f: &'static str,
        key: Option<&str>,
        value: Value,
    ) -> OpType {
        rec.record(*process, OpType::Invoke, f, key, value.clone(), None);
        let out =
            match tokio::time::timeout(self.opts.op_timeout, self.execute(client, f, key, &value))
                .await
            {
                Ok(o) => o,
                Err(_) => Outcome {
                    kind: if f == "read" {
                        OpType::Fail
                    } else {
                        OpType::Info
                    },
                    value: if f == "read" { Value::Null } else { value },
                    error: Some(format!(
                        "timeout: no answer within {:?}",
                        self.opts.op_timeout
                    )),
                },
            };
        let kind = out.kind;
        rec.record(*process, kind, f, key, out.value, out.error);
        if kind == OpType::Info {
            *process = self.next_process.fetch_add(1, Ordering::Relaxed);
        }
        kind
    }

    fn generate(&self, rng: &mut StdRng) -> (&'static str, Option<String>, Value) {
        let key = |rng: &mut StdRng| {
            let i = rng.random_range(0..self.files.len().max(1));
            self.files.get(i).map(|(k, _)| k.clone())
        };
        match self.opts.kind {
            Kind::Register => {
                let key = key(rng);
                match rng.random_range(0..4) {
                    0 | 1 => ("read", key, Value::Null),
                    2 => ("write", key, json!(rng.random_range(0..REGISTER_VALUES))),
                    _ => (
                        "cas",
                        key,
                        json!([
                            rng.random_range(0..REGISTER_VALUES),
                            rng.random_range(0..REGISTER_VALUES)
                        ]),
                    ),
                }
            }
            Kind::ListAppend => {
                let key = key(rng);
                if rng.random_bool(0.6) {
                    let v = self.next_value.fetch_add(1, Ordering::Relaxed);
                    ("append", key, json!(v))
                } else {
                    ("read", key, Value::Null)
                }
            }
            Kind::Set => {
                let v = self.next_value.fetch_add(1, Ordering::Relaxed);
                ("add", None, json!(v))
            }
        }
    }

    async fn execute(&self, client: &Client, f: &str, key: Option<&str>, value: &Value) -> Outcome {
        let id = key.and_then(|k| self.file_of(k)).unwrap_or_default();
        match (self.opts.kind, f) {
            (Kind::Register, "read") => match client.download(id).await {
                Ok(b) => Outcome::ok(decode_register(&b)),
                Err(e) => read_failed(&e),
            },
            (Kind::Register, "write") => {
                let v = value.as_i64().unwrap_or(0);
                match client.modify(id, 0, &encode_register(v), None).await {
                    Ok(_) => Outcome::ok(value.clone()),
                    Err(e) => write_failed(&e, value.clone()),
                }
            }
            (Kind::Register, "cas") => {
                let expected = value.get(0).cloned().unwrap_or(Value::Null);
                let new = value.get(1).and_then(Value::as_i64).unwrap_or(0);
                let mut buf = Vec::new();
                let stat = match client
                    .download_into(id, client::ByteRange::all(), &mut buf)
                    .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        return Outcome {
                            kind: OpType::Fail,
                            value: value.clone(),
                            error: Some(format!("read before cas: {e}")),
                        }
                    }
                };
                if decode_register(&buf) != expected {
                    return Outcome {
                        kind: OpType::Fail,
                        value: value.clone(),
                        error: Some("precondition: value differs".into()),
                    };
                }
                match client
                    .modify(id, 0, &encode_register(new), Some(stat.version))
                    .await
                {
                    Ok(_) => Outcome::ok(value.clone()),
                    Err(e) => write_failed(&e, value.clone()),
                }
            }
            (Kind::ListAppend, "append") => {
                let data = format!("{},", value.as_u64().unwrap_or(0));
                match client.append(id, data.as_bytes(), None).await {
                    Ok(_) => Outcome::ok(value.clone()),
                    Err(e) => write_failed(&e, value.clone()),
                }
            }
            (Kind::ListAppend, "read") => match client.download(id).await {
                Ok(b) => Outcome::ok(decode_list(&b)),
                Err(e) => read_failed(&e),
            },
            (Kind::Set, "add") => {
                let v = value.as_i64().unwrap_or(0);
                match client
                    .upload(v.to_string().as_bytes(), UploadOptions::new())
                    .await
                {
                    Ok(st) => {
                        self.added.lock().insert(v, st.file_id);
                        Outcome::ok(value.clone())
                    }
                    Err(e) => write_failed(&e, value.clone()),
                }
            }
            _ => Outcome {
                kind: OpType::Fail,
                value: value.clone(),
                error: Some(format!("unknown operation {f}")),
            },
        }
    }

    /// The final reads, after healing: one read of every key (register,
    /// list-append), retried until one succeeds or `limit` passes; for the
    /// set, one `final-read` of every acknowledged add.
    pub async fn final_reads(&self, client: &Client, rec: &Recorder, limit: Duration) {
        let deadline = Instant::now() + limit;
        match self.opts.kind {
            Kind::Register | Kind::ListAppend => {
                for (key, _) in &self.files {
                    loop {
                        let p = self.next_process.fetch_add(1, Ordering::Relaxed);
                        rec.record(p, OpType::Invoke, "read", Some(key), Value::Null, None);
                        let out = match tokio::time::timeout(
                            self.opts.op_timeout,
                            self.execute(client, "read", Some(key), &Value::Null),
                        )
                        .await
                        {
                            Ok(o) => o,
                            Err(_) => Outcome {
                                kind: OpType::Fail,
                                value: Value::Null,
                                error: Some("timeout".into()),
                            },
                        };
                        let done = out.kind == OpType::Ok;
                        rec.record(p, out.kind, "read", Some(key), out.value, out.error);
                        if done || Instant::now() > deadline {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            Kind::Set => {
                let p = self.next_process.fetch_add(1, Ordering::Relaxed);
                rec.record(p, OpType::Invoke, "final-read", None, Value::Null, None);
                let added: Vec<(i64, String)> = self
                    .added
                    .lock()
                    .iter()
                    .map(|(v, id)| (*v, id.clone()))
                    .collect();
                let mut seen = Vec::new();
                let mut problems = Vec::new();
                for (v, id) in added {
                    loop {
                        match client.download(&id).await {
                            Ok(b) => {
                                match std::str::from_utf8(&b)
                                    .ok()
                                    .and_then(|s| s.parse::<i64>().ok())
                                {
                                    Some(got) => seen.push(got),
                                    None => problems.push(format!("{id}: unreadable content")),
                                }
                                break;
                            }
                            Err(e) if e.is_not_found() => {
                                // Lost: the checker sees it missing.
                                debug!(v, %id, "final read: not found");
                                break;
                            }
                            Err(e) if Instant::now() < deadline => {
                                debug!(v, %id, "final read: {e}; retrying");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(e) => {
                                problems.push(format!("{id}: {e}"));
                                break;
                            }
                        }
                    }
                }
                // Adds whose answer was lost (`info`) may have stored a
                // file: list the group's files (the master's; every ACTIVE
                // member's in an async group) and read every file that no
                // acknowledged add named, so they count as recovered.
                let known: std::collections::BTreeSet<String> =
                    self.added.lock().values().cloned().collect();
                match list_group_files(client).await {
                    Ok(ids) => {
                        info!(
                            listed = ids.len(),
                            acknowledged = known.len(),
                            "set: the group's files"
                        );
                        for id in ids.into_iter().filter(|id| !known.contains(id)) {
                            match client.download(&id).await {
                                Ok(b) => match std::str::from_utf8(&b)
                                    .ok()
                                    .and_then(|s| s.parse::<i64>().ok())
                                {
                                    Some(got) => seen.push(got),
                                    None => problems.push(format!("{id}: unreadable content")),
                                },
                                Err(e) => problems.push(format!("{id} (listed): {e}")),
                            }
                        }
                    }
                    Err(e) => problems.push(format!("listing the group's files: {e}")),
                }
                seen.sort_unstable();
                if problems.is_empty() {
                    rec.record(p, OpType::Ok, "final-read", None, json!(seen), None);
                } else {
                    rec.record(
                        p,
                        OpType::Fail,
                        "final-read",
                        None,
                        json!(seen),
                        Some(problems.join("; ")),
                    );
                }
            }
        }
    }
}

/// Every file id of the group: the master's listing in a sync group; in an
/// async group (no master, each member creates files of its own) the union
/// of every ACTIVE member's listing.
pub async fn list_group_files(client: &Client) -> Result<Vec<String>, String> {
    let map = client.cluster_map().ok_or("no cluster map")?;
    let g = map
        .group(crate::hosts::GROUP)
        .ok_or_else(|| format!("no group {} in the map", crate::hosts::GROUP))?;
    let addrs: Vec<String> = match map.master_of(&g.name) {
        Some(m) => vec![m.addr.clone()],
        None if g.mode == proto::cluster::ReplicationMode::Async => g
            .members
            .iter()
            .filter_map(|id| map.server(*id))
            .filter(|s| s.status == proto::cluster::ServerStatus::Active)
            .map(|s| s.addr.clone())
            .collect(),
        None => return Err("the group has no master".into()),
    };
    if addrs.is_empty() {
        return Err("the group has no ACTIVE member".into());
    }
    let mut ids = std::collections::BTreeSet::new();
    for addr in addrs {
        let (files, _) = client
            .list_all_files(&addr)
            .await
            .map_err(|e| format!("listing {addr}: {e}"))?;
        ids.extend(files.into_iter().map(|f| f.file_id));
    }
    Ok(ids.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_values_round_trip() {
        assert_eq!(decode_register(REGISTER_NULL), Value::Null);
        assert_eq!(encode_register(3), b"00000003");
        assert_eq!(decode_register(&encode_register(4)), json!(4));
        // Anything else is reported raw, for the checker to reject.
        assert_eq!(decode_register(b"0000"), json!("0000"));
        assert_eq!(decode_register(b"----0003"), json!("----0003"));
    }

    #[test]
    fn lists_decode() {
        assert_eq!(decode_list(b""), json!([]));
        assert_eq!(decode_list(b"1,5,9,"), json!([1, 5, 9]));
        assert_eq!(decode_list(b"1,5,9"), json!("1,5,9"));
        assert_eq!(decode_list(b"1,x,"), json!("1,x,"));
    }

    #[test]
    fn recorder_numbers_events_in_order() {
        let r = Recorder::new();
        r.record(0, OpType::Invoke, "read", Some("r0"), Value::Null, None);
        r.record(0, OpType::Ok, "read", Some("r0"), json!(1), None);
        let h = r.snapshot();
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].index, h[1].index), (0, 1));
        assert!(h[0].time <= h[1].time);
        assert_eq!(h[1].value, json!(1));
    }

    #[test]
    fn only_refusals_are_definite_failures() {
        let vm = ClientError::Server {
            code: ErrorCode::VersionMismatch,
            message: String::new(),
        };
        let nm = ClientError::Server {
            code: ErrorCode::NotMaster,
            message: String::new(),
        };
        let to = ClientError::Timeout {
            addr: "x".into(),
            during: "reading",
            after: Duration::from_secs(1),
        };
        assert_eq!(write_failed(&vm, Value::Null).kind, OpType::Fail);
        assert_eq!(write_failed(&nm, Value::Null).kind, OpType::Info);
        assert_eq!(write_failed(&to, Value::Null).kind, OpType::Info);
    }
}
