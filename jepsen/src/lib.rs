//! Chorus's Jepsen-style consistency suite.
//!
//! * [`history`]: the recorded operations (JSON lines).
//! * [`checker`]: judges a history: linearizability per key (register),
//!   list-append, set, convergence; verdicts valid / invalid / unknown.
//! * [`report`]: per-run folder: history, `results.json`, timeline HTML,
//!   latency and throughput plots with fault windows.
//! * [`hosts`]: network namespaces, one per process, on a bridge.
//! * [`nemesis`]: faults (partitions, kill, pause, netem, clock).
//! * [`workload`]: register, list-append and set clients over the SDK.
//! * [`runner`]: one run end to end, and the suites.

pub mod checker;
pub mod history;
pub mod hosts;
pub mod nemesis;
pub mod report;
pub mod runner;
pub mod workload;
