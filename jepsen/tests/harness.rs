//! One short real run of the harness: hosts in network namespaces, the
//! register workload under the kill nemesis for 8 s, then the report.
//!
//! Needs root and `ip netns`; skipped (with the reason printed) otherwise.
//! The binaries come from the same target directory as this test (build
//! them first: `cargo build --workspace --bins`), or `CHORUS_BIN_DIR`.

use std::time::Duration;

use jepsen::history::{OpType, NEMESIS};
use jepsen::hosts;
use jepsen::nemesis::Fault;
use jepsen::runner::{self, Cancel, RunOpts};
use jepsen::workload::Kind;

/// Bound on the whole run (8 s of workload plus setup, heal, final reads
/// and teardown).
const LIMIT: Duration = Duration::from_secs(180);

fn skip_reason() -> Option<String> {
    if let Err(why) = hosts::netns_available() {
        return Some(why);
    }
    for b in ["chorus-leader", "chorus-dataserver"] {
        if let Err(e) = hosts::find_bin(b) {
            return Some(e.to_string());
        }
    }
    None
}

/// Namespaces with the harness's prefix that exist now.
fn our_namespaces() -> Vec<String> {
    hosts::sh("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("chj-"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_register_run_under_kill_completes_with_a_report() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the namespace run: {why}");
        return;
    }
    let before = our_namespaces();
    let out = tempfile::tempdir().unwrap();
    let mut opts = RunOpts::new(Kind::Register, vec![Fault::Kill]);
    opts.out = out.path().to_path_buf();
    opts.time_limit = Duration::from_secs(8);
    opts.seed = 42;
    opts.concurrency = 4;
    opts.rate = 30.0;
    opts.name = Some("test-run".into());
    // Make sure a fault happens within 8 s.
    let cancel = Cancel::never();
    let outcome = tokio::time::timeout(LIMIT, runner::run(&opts, &cancel))
        .await
        .expect("run within its bound")
        .expect("run carried out");

    let dir = out.path().join("test-run");
    assert_eq!(
        outcome.dir.canonicalize().unwrap(),
        dir.canonicalize().unwrap()
    );
    let history = jepsen::history::read(&dir.join("history.jsonl")).unwrap();
    assert!(!history.is_empty());
    assert_eq!(history.len(), outcome.events);
    // Client operations completed, and all of them on the registers.
    let oks = history
        .iter()
        .filter(|o| o.process != NEMESIS && o.kind == OpType::Ok)
        .count();
    assert!(oks > 10, "only {oks} ok operations");
    assert!(history
        .iter()
        .filter(|o| o.process != NEMESIS)
        .all(|o| o.key.as_deref().is_some_and(|k| k.starts_with('r'))));
    // The nemesis killed something and restarted it.
    let starts = history
        .iter()
        .filter(|o| o.process == NEMESIS && o.f == "start-kill")
        .count();
    let stops = history
        .iter()
        .filter(|o| o.process == NEMESIS && o.f == "stop-kill")
        .count();
    assert!(starts >= 1, "no kill in 8 s");
    assert_eq!(starts, stops, "every kill healed");
    // Indices are dense and times ordered.
    for (i, o) in history.iter().enumerate() {
        assert_eq!(o.index, i as u64);
    }
    assert!(history.windows(2).all(|w| w[0].time <= w[1].time));
    // The run folder has its files: logs of every node, the run summary.
    for f in jepsen::report::REPORT_FILES
        .iter()
        .chain(&["run.json", "logs/l1.log", "logs/d1.log"])
    {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert!(
        std::fs::metadata(dir.join("logs/l1.log")).unwrap().len() > 0,
        "empty leader log"
    );
    assert_ne!(outcome.verdict, "error", "notes: {:?}", outcome.notes);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["workload"], "register");
    assert_eq!(results["verdict"], outcome.verdict.as_str());
    // Everything torn down.
    let after = our_namespaces();
    let leaked: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
    assert!(leaked.is_empty(), "namespaces left: {leaked:?}");
}

/// Async mode end to end: a short register run against an async group.
/// Reads go to any member, so the checker must find stale reads (async
/// mode promises no linearizability), and the group must still converge;
/// the outcome says both, and the suite would pass the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_async_register_run_shows_stale_reads_and_converges() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the namespace run: {why}");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut opts = RunOpts::new(Kind::Register, Vec::new());
    opts.mode = runner::Mode::Async;
    opts.expectation = runner::Expectation::StaleReadsAndConverged;
    opts.out = out.path().to_path_buf();
    opts.time_limit = Duration::from_secs(8);
    opts.seed = 7;
    opts.concurrency = 4;
    opts.rate = 40.0;
    opts.name = Some("async-run".into());
    let cancel = Cancel::never();
    let outcome = tokio::time::timeout(LIMIT, runner::run(&opts, &cancel))
        .await
        .expect("run within its bound")
        .expect("run carried out");
    let stale = outcome.stale_reads.unwrap_or(0);
    assert!(stale > 0, "no stale read: {:?}", outcome.notes);
    assert!(
        outcome
            .notes
            .iter()
            .any(|n| n == &format!("stale reads found: {stale}")),
        "{:?}",
        outcome.notes
    );
    assert!(
        outcome
            .notes
            .iter()
            .any(|n| n.contains("promises no linearizability")),
        "{:?}",
        outcome.notes
    );
    assert_eq!(outcome.verdict, "invalid", "{:?}", outcome.notes);
    assert_eq!(outcome.converged, Some(true), "{:?}", outcome.notes);
    assert_eq!(outcome.suite_exit(), 0, "{:?}", outcome.notes);
    let run: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("async-run/run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(run["stale_reads"], stale);
    assert_eq!(run["expectation_met"], true);
}
