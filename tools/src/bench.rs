//! `chorus bench`: throughput and latency of uploads and downloads.
//!
//! Each task owns one client with one connection and runs operations back
//! to back. The payload is generated once and shared; downloads land in a
//! per-task buffer reused across operations, so the client side allocates
//! nothing per operation for the data itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{ByteRange, Client, ClientConfig, UploadOptions};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::cli::{BenchArgs, BenchOp};
use crate::endpoint::Endpoint;
use crate::lag::{LagSummary, Prober, Sample, SAMPLE_EVERY};
use crate::output::{exit, CliError, CliResult, Output};

/// Largest latency the histogram tracks (microseconds); longer ones are
/// clamped to it.
const MAX_LATENCY_US: u64 = 600_000_000;

/// What one task measured.
struct TaskResult {
    hist: Histogram<u64>,
    ops: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<CliError>,
    /// When the task's last measured operation finished.
    last_done: Option<Instant>,
}

/// The summary printed at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub op: &'static str,
    pub size: u64,
    pub concurrency: usize,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub ops: u64,
    pub errors: u64,
    pub bytes: u64,
    pub ops_per_sec: f64,
    pub mib_per_sec: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    /// `--replica-lag`: how long the other members took to have sampled
    /// uploads.
    pub replica_lag: Option<LagSummary>,
}

fn new_hist() -> CliResult<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| CliError::new("internal", e.to_string(), exit::OTHER))
}

/// xorshift64*: cheap, good enough to pick operations and fill payloads.
fn next_rand(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn payload(size: u64) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut v = Vec::with_capacity(size as usize);
    while (v.len() as u64) < size {
        let r = next_rand(&mut state).to_le_bytes();
        let take = (size as usize - v.len()).min(8);
        v.extend_from_slice(&r[..take]);
    }
    v
}

/// Upload `count` files of the payload with up to `concurrency` at once.
async fn preload(
    ep: &Endpoint,
    cfg: &ClientConfig,
    data: &Arc<Vec<u8>>,
    count: usize,
    concurrency: usize,
) -> CliResult<Arc<Vec<String>>> {
    let client = ep.connect(cfg.clone().pool_size(concurrency)).await?;
    let mut set = tokio::task::JoinSet::new();
    let per = count.div_ceil(concurrency.max(1));
    let mut left = count;
    while left > 0 {
        let n = per.min(left);
        left -= n;
        let client = client.clone();
        let data = data.clone();
        set.spawn(async move {
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                ids.push(
                    client
                        .upload(&data, UploadOptions::default())
                        .await?
                        .file_id,
                );
            }
            Ok::<_, client::ClientError>(ids)
        });
    }
    let mut ids = Vec::with_capacity(count);
    while let Some(r) = set.join_next().await {
        let part = r.map_err(|e| CliError::new("internal", e.to_string(), exit::OTHER))??;
        ids.extend(part);
    }
    Ok(Arc::new(ids))
}

struct Plan {
    op: BenchOp,
    data: Arc<Vec<u8>>,
    ids: Arc<Vec<String>>,
    measure_from: Instant,
    end: Instant,
    /// `--replica-lag`: where sampled uploads go (the prober's channel).
    lag: Option<tokio::sync::mpsc::UnboundedSender<Sample>>,
    /// Measured uploads so far, for sampling one in [`SAMPLE_EVERY`].
    uploads: AtomicU64,
}

impl Plan {
    /// Hand a measured upload to the replica-lag prober, one in
    /// [`SAMPLE_EVERY`] (a channel send: nothing waits for the probe).
    fn sample(&self, file_id: String, acked: Instant) {
        if let Some(tx) = &self.lag {
            if self
                .uploads
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(SAMPLE_EVERY)
            {
                let _ = tx.send(Sample { file_id, acked });
            }
        }
    }
}

async fn task(client: Client, plan: Arc<Plan>, index: usize) -> CliResult<TaskResult> {
    let mut res = TaskResult {
        hist: new_hist()?,
        ops: 0,
        bytes: 0,
        errors: 0,
        first_error: None,
        last_done: None,
    };
    let mut rng = 0x1234_5678_9abc_def1u64 ^ ((index as u64 + 1) << 17);
    let mut buf: Vec<u8> = Vec::with_capacity(plan.data.len());
    let mut next_file = index;
    loop {
        let t0 = Instant::now();
        if t0 >= plan.end {
            break;
        }
        let upload = match plan.op {
            BenchOp::Upload => true,
            BenchOp::Download => false,
            BenchOp::Mixed => next_rand(&mut rng) & 1 == 0,
        };
        let mut uploaded = None;
        let outcome = if upload {
            client
                .upload(&plan.data, UploadOptions::default())
                .await
                .map(|s| {
                    uploaded = Some(s.file_id);
                    s.size
                })
        } else {
            let id = &plan.ids[next_file % plan.ids.len()];
            next_file = next_file.wrapping_add(1);
            buf.clear();
            client
                .download_into(id, ByteRange::all(), &mut buf)
                .await
                .map(|_| buf.len() as u64)
        };
        let t1 = Instant::now();
        if t0 < plan.measure_from {
            continue;
        }
        res.last_done = Some(t1);
        if let Some(id) = uploaded {
            plan.sample(id, t1);
        }
        match outcome {
            Ok(bytes) => {
                res.ops += 1;
                res.bytes += bytes;
                let us = (t1 - t0).as_micros().clamp(1, MAX_LATENCY_US as u128) as u64;
                res.hist.saturating_record(us);
            }
            Err(e) => {
                res.errors += 1;
                if res.first_error.is_none() {
                    res.first_error = Some(CliError::from(e));
                }
            }
        }
    }
    Ok(res)
}

/// Run the benchmark and print its summary.
pub async fn run(ep: &Endpoint, cfg: ClientConfig, args: BenchArgs, out: Output) -> CliResult {
    if args.concurrency == 0 {
        return Err(CliError::usage("--concurrency must be at least 1"));
    }
    if args.duration <= 0.0 {
        return Err(CliError::usage("--duration must be positive"));
    }
    if args.op != BenchOp::Upload && args.files == 0 {
        return Err(CliError::usage("--files must be at least 1"));
    }
    if args.replica_lag {
        ep.leaders("--replica-lag")?;
        if args.op == BenchOp::Download {
            return Err(CliError::usage(
                "--replica-lag samples uploads: use --op upload or --op mixed",
            ));
        }
    }
    let cfg = cfg.retries(0);
    let data = Arc::new(payload(args.size));
    let ids = if args.op == BenchOp::Upload {
        Arc::new(Vec::new())
    } else {
        preload(ep, &cfg, &data, args.files, args.concurrency).await?
    };

    // One client (one connection) per task, all connected before the clock
    // starts.
    let mut clients = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        clients.push(ep.connect(cfg.clone().pool_size(1)).await?);
    }
    // The prober follows the map with a client of its own and asks the
    // members directly, on tasks of its own.
    let prober = if args.replica_lag {
        let probe_client = ep
            .connect(cfg.clone().pool_size(args.concurrency.max(8)))
            .await?;
        Some(Prober::start(probe_client))
    } else {
        None
    };
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let plan = Arc::new(Plan {
        op: args.op,
        data,
        ids,
        measure_from,
        end: measure_from + Duration::from_secs_f64(args.duration),
        lag: prober.as_ref().map(Prober::sender),
        uploads: AtomicU64::new(0),
    });
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in clients.into_iter().enumerate() {
        set.spawn(task(c, plan.clone(), i));
    }
    let mut results = Vec::with_capacity(args.concurrency);
    while let Some(r) = set.join_next().await {
        results.push(r.map_err(|e| CliError::new("internal", e.to_string(), exit::OTHER))??);
    }
    let mut summary = summarize(&args, plan.measure_from, &results)?;
    // Every task is done: the plan's sender is the last one.
    drop(plan);
    if let Some(p) = prober {
        summary.replica_lag = Some(p.finish().await?);
    }
    let first_error = results.iter_mut().find_map(|r| r.first_error.take());
    if summary.ops == 0 {
        return Err(first_error
            .unwrap_or_else(|| CliError::new("bench", "no operation completed", exit::OTHER)));
    }
    print(&summary, out)?;
    if let Some(e) = first_error {
        eprintln!(
            "warning: {} operations failed; first: {}: {}",
            summary.errors, e.code, e.message
        );
    }
    Ok(())
}

fn summarize(
    args: &BenchArgs,
    measure_from: Instant,
    results: &[TaskResult],
) -> CliResult<Summary> {
    let mut hist = new_hist()?;
    let (mut ops, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut last = measure_from;
    for r in results {
        hist.add(&r.hist)
            .map_err(|e| CliError::new("internal", e.to_string(), exit::OTHER))?;
        ops += r.ops;
        bytes += r.bytes;
        errors += r.errors;
        if let Some(t) = r.last_done {
            last = last.max(t);
        }
    }
    // Operations started before the end finish a little after it.
    let secs = (last - measure_from)
        .as_secs_f64()
        .max(args.duration)
        .max(1e-9);
    let q = |p: f64| {
        if ops == 0 {
            0
        } else {
            hist.value_at_quantile(p)
        }
    };
    Ok(Summary {
        op: args.op.as_str(),
        size: args.size,
        concurrency: args.concurrency,
        duration_secs: secs,
        warmup_secs: args.warmup,
        ops,
        errors,
        bytes,
        ops_per_sec: ops as f64 / secs,
        mib_per_sec: bytes as f64 / secs / (1024.0 * 1024.0),
        p50_us: q(0.50),
        p90_us: q(0.90),
        p99_us: q(0.99),
        max_us: if ops == 0 { 0 } else { hist.max() },
        mean_us: if ops == 0 { 0.0 } else { hist.mean() },
        replica_lag: None,
    })
}

fn print(s: &Summary, out: Output) -> CliResult {
    if out.json {
        let mut v = json!({
            "op": s.op,
            "size": s.size,
            "concurrency": s.concurrency,
            "duration_secs": s.duration_secs,
            "warmup_secs": s.warmup_secs,
            "ops": s.ops,
            "errors": s.errors,
            "bytes": s.bytes,
            "ops_per_sec": s.ops_per_sec,
            "mib_per_sec": s.mib_per_sec,
            "latency_us": {
                "p50": s.p50_us,
                "p90": s.p90_us,
                "p99": s.p99_us,
                "max": s.max_us,
                "mean": s.mean_us,
            },
        });
        if let (Some(lag), Some(obj)) = (&s.replica_lag, v.as_object_mut()) {
            obj.insert("replica_lag_ms".into(), lag.to_json());
        }
        return out.json_value(&v);
    }
    let mut text = format!(
        "bench {op}: {size} per op, {conc} connections, {dur:.1} s measured (warmup {warm:.1} s)\n\
         ops          {ops} ({ops_s:.1} ops/s)\n\
         throughput   {mib:.2} MiB/s\n\
         errors       {errors}\n\
         latency µs   p50 {p50}   p90 {p90}   p99 {p99}   max {max}   mean {mean:.1}",
        op = s.op,
        size = proto::units::format_size(s.size),
        conc = s.concurrency,
        dur = s.duration_secs,
        warm = s.warmup_secs,
        ops = s.ops,
        ops_s = s.ops_per_sec,
        mib = s.mib_per_sec,
        errors = s.errors,
        p50 = s.p50_us,
        p90 = s.p90_us,
        p99 = s.p99_us,
        max = s.max_us,
        mean = s.mean_us,
    );
    if let Some(lag) = &s.replica_lag {
        text.push('\n');
        text.push_str(&lag.to_text());
    }
    out.text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_size_and_varies() {
        for n in [0u64, 1, 7, 8, 4096, 4097] {
            assert_eq!(payload(n).len() as u64, n);
        }
        let p = payload(4096);
        assert!(p.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn summary_merges_tasks() {
        let args = BenchArgs {
            op: BenchOp::Mixed,
            size: 10,
            concurrency: 2,
            duration: 2.0,
            warmup: 0.0,
            files: 1,
            replica_lag: false,
        };
        let t0 = Instant::now();
        let mut a = TaskResult {
            hist: new_hist().unwrap(),
            ops: 0,
            bytes: 0,
            errors: 1,
            first_error: Some(CliError::new("io", "x", exit::OTHER)),
            last_done: Some(t0 + Duration::from_secs(1)),
        };
        for us in [100, 200, 300] {
            a.hist.record(us).unwrap();
            a.ops += 1;
            a.bytes += 10;
        }
        let mut b = TaskResult {
            hist: new_hist().unwrap(),
            ops: 1,
            bytes: 10,
            errors: 0,
            first_error: None,
            last_done: Some(t0 + Duration::from_secs(4)),
        };
        b.hist.record(10_000).unwrap();
        let s = summarize(&args, t0, &[a, b]).unwrap();
        assert_eq!((s.ops, s.errors, s.bytes), (4, 1, 40));
        assert!((s.duration_secs - 4.0).abs() < 1e-6);
        assert!((s.ops_per_sec - 1.0).abs() < 1e-6);
        assert!((200..=201).contains(&s.p50_us), "{}", s.p50_us);
        assert!((9_990..=10_010).contains(&s.max_us), "{}", s.max_us);
    }
}
