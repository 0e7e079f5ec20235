//! Request metrics, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Latency bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

#[derive(Default)]
struct OpStats {
    ok: u64,
    err: u64,
    buckets: [u64; BUCKETS.len()],
    sum_secs: f64,
}

/// Counters shared by every connection.
#[derive(Default)]
pub struct Metrics {
    ops: Mutex<BTreeMap<&'static str, OpStats>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    protocol_errors: AtomicU64,
    connections: AtomicU64,
    connections_refused: AtomicU64,
    /// Async mode: how long after its source made it a pushed change was
    /// taken here.
    replica_lag: Mutex<LagStats>,
}

/// Replica-lag bucket bounds, in seconds.
const LAG_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Default)]
struct LagStats {
    count: u64,
    sum_secs: f64,
    max_secs: f64,
    buckets: [u64; LAG_BUCKETS.len()],
}

impl Metrics {
    pub fn finish(&self, op: &'static str, ok: bool, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut ops = self.ops.lock();
        let s = ops.entry(op).or_default();
        if ok {
            s.ok += 1;
        } else {
            s.err += 1;
        }
        s.sum_secs += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.buckets[i] += 1;
            }
        }
    }

    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    pub fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Async mode: a pushed change taken `lag` after its source made it.
    pub fn replica_lag(&self, lag: Duration) {
        let secs = lag.as_secs_f64();
        let mut l = self.replica_lag.lock();
        l.count += 1;
        l.sum_secs += secs;
        l.max_secs = l.max_secs.max(secs);
        for (i, b) in LAG_BUCKETS.iter().enumerate() {
            if secs <= *b {
                l.buckets[i] += 1;
            }
        }
    }

    /// Async mode: (count, sum, max) of the replica lags seen, in seconds.
    pub fn replica_lag_summary(&self) -> (u64, f64, f64) {
        let l = self.replica_lag.lock();
        (l.count, l.sum_secs, l.max_secs)
    }

    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition; `extra` adds series the caller owns.
    pub fn render(&self, extra: &[Extra<'_>]) -> String {
        let mut out = String::new();
        out.push_str("# HELP chorus_requests_total Requests handled, by operation and result.\n");
        out.push_str("# TYPE chorus_requests_total counter\n");
        let ops = self.ops.lock();
        for (op, s) in ops.iter() {
            let _ = writeln!(
                out,
                "chorus_requests_total{{op=\"{op}\",result=\"ok\"}} {}",
                s.ok
            );
            let _ = writeln!(
                out,
                "chorus_requests_total{{op=\"{op}\",result=\"error\"}} {}",
                s.err
            );
        }
        out.push_str("# HELP chorus_request_seconds Request latency, by operation.\n");
        out.push_str("# TYPE chorus_request_seconds histogram\n");
        for (op, s) in ops.iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "chorus_request_seconds_bucket{{op=\"{op}\",le=\"{b}\"}} {}",
                    s.buckets[i]
                );
            }
            let n = s.ok + s.err;
            let _ = writeln!(
                out,
                "chorus_request_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {n}"
            );
            let _ = writeln!(
                out,
                "chorus_request_seconds_sum{{op=\"{op}\"}} {}",
                s.sum_secs
            );
            let _ = writeln!(out, "chorus_request_seconds_count{{op=\"{op}\"}} {n}");
        }
        drop(ops);
        let counters = [
            (
                "chorus_bytes_received_total",
                "File bytes received.",
                &self.bytes_in,
            ),
            (
                "chorus_bytes_sent_total",
                "File bytes sent.",
                &self.bytes_out,
            ),
            (
                "chorus_protocol_errors_total",
                "Malformed frames or bodies.",
                &self.protocol_errors,
            ),
            (
                "chorus_connections_total",
                "Connections accepted.",
                &self.connections,
            ),
            (
                "chorus_connections_refused_total",
                "Connections refused over the limit.",
                &self.connections_refused,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        {
            let l = self.replica_lag.lock();
            out.push_str("# HELP chorus_async_replica_lag_seconds Async mode: time from a change at its source to its push being taken here.\n");
            out.push_str("# TYPE chorus_async_replica_lag_seconds histogram\n");
            for (i, b) in LAG_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "chorus_async_replica_lag_seconds_bucket{{le=\"{b}\"}} {}",
                    l.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "chorus_async_replica_lag_seconds_bucket{{le=\"+Inf\"}} {}",
                l.count
            );
            let _ = writeln!(out, "chorus_async_replica_lag_seconds_sum {}", l.sum_secs);
            let _ = writeln!(out, "chorus_async_replica_lag_seconds_count {}", l.count);
            let _ = writeln!(
                out,
                "# HELP chorus_async_replica_lag_max_seconds Async mode: the largest replica lag seen.\n# TYPE chorus_async_replica_lag_max_seconds gauge\nchorus_async_replica_lag_max_seconds {}",
                l.max_secs
            );
        }
        for e in extra {
            let (name, help, v) = (e.name, e.help, e.value);
            let kind = if e.counter { "counter" } else { "gauge" };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}

/// A series the caller of [`Metrics::render`] owns.
pub struct Extra<'a> {
    pub name: &'a str,
    pub help: &'a str,
    pub value: f64,
    /// A counter (only ever grows) rather than a gauge.
    pub counter: bool,
}

impl<'a> Extra<'a> {
    pub fn gauge(name: &'a str, help: &'a str, value: f64) -> Self {
        Extra {
            name,
            help,
            value,
            counter: false,
        }
    }

    pub fn counter(name: &'a str, help: &'a str, value: u64) -> Self {
        Extra {
            name,
            help,
            value: value as f64,
            counter: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let m = Metrics::default();
        m.finish("upload", true, Duration::from_micros(300));
        m.finish("upload", false, Duration::from_millis(3));
        m.bytes_in(10);
        let text = m.render(&[
            Extra::gauge("chorus_data_version", "Last data version.", 7.0),
            Extra::counter("chorus_disk_fsyncs_total", "fdatasyncs.", 3),
        ]);
        assert!(text.contains("chorus_requests_total{op=\"upload\",result=\"ok\"} 1"));
        assert!(text.contains("chorus_requests_total{op=\"upload\",result=\"error\"} 1"));
        assert!(text.contains("chorus_request_seconds_bucket{op=\"upload\",le=\"0.0005\"} 1"));
        assert!(text.contains("chorus_request_seconds_count{op=\"upload\"} 2"));
        assert!(text.contains("chorus_bytes_received_total 10"));
        assert!(text.contains("# TYPE chorus_data_version gauge\nchorus_data_version 7"));
        assert!(
            text.contains("# TYPE chorus_disk_fsyncs_total counter\nchorus_disk_fsyncs_total 3")
        );
    }

    #[test]
    fn renders_replica_lag() {
        let m = Metrics::default();
        m.replica_lag(Duration::from_millis(3));
        m.replica_lag(Duration::from_millis(40));
        let text = m.render(&[]);
        assert!(text.contains("chorus_async_replica_lag_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("chorus_async_replica_lag_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("chorus_async_replica_lag_seconds_count 2"));
        assert!(text.contains("chorus_async_replica_lag_max_seconds 0.04"));
        assert_eq!(m.replica_lag_summary().0, 2);
    }
}
