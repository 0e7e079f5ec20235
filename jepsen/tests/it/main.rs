//! Integration tests of the checker and report library API, on histories
//! simulated from a correct (linearizable) store, and on corrupted copies.

mod sim;

use jepsen::checker::{check, detect_workload, AnomalyKind, Budget, Verdict};
use jepsen::history::{Op, OpType};
use jepsen::report::{summary_table, write_report, REPORT_FILES};
use serde_json::{json, Value};
use std::time::Instant;

fn ok_reads(h: &[Op]) -> Vec<usize> {
    h.iter()
        .enumerate()
        .filter(|(_, o)| o.kind == OpType::Ok && o.f == "read")
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn a_simulated_register_history_is_linearizable_and_a_corrupt_read_is_not() {
    for seed in 0..4 {
        let h = sim::register(seed, 6_000);
        assert_eq!(detect_workload(&h).as_deref(), Some("register"));
        let started = Instant::now();
        let r = check("register", &h, Budget::default());
        let took = started.elapsed();
        assert_eq!(r.verdict, Verdict::Valid, "seed {seed}: {}", r.summary);
        assert_eq!(r.keys.len(), 5);
        assert!(r.stats.info > 0 && r.stats.fail > 0, "{:?}", r.stats);
        assert!(took.as_secs() < 20, "seed {seed}: check took {took:?}");

        // A read of a value nobody wrote, two thirds into the run.
        let mut bad = h.clone();
        let reads = ok_reads(&bad);
        let i = reads[reads.len() * 2 / 3];
        bad[i].value = json!(999);
        let key = bad[i].key.clone();
        let r = check("register", &bad, Budget::default());
        assert_eq!(r.verdict, Verdict::Invalid, "seed {seed}");
        assert_eq!(r.anomalies.len(), 1);
        assert_eq!(r.anomalies[0].kind, AnomalyKind::Nonlinearizable);
        assert_eq!(r.anomalies[0].key, key);
        assert!(r.anomalies[0].ops.iter().any(|o| o.index == bad[i].index));
    }
}

#[test]
fn a_stale_read_after_a_long_simulated_history_is_not_linearizable() {
    // After a long valid history full of indeterminate operations, one
    // process writes 100 then 101 on r2, then a read returns 100. The
    // search has to rule out every configuration of the prefix.
    for seed in [1, 0, 2] {
        let mut h = sim::register(seed, 3_000);
        let r = check("register", &h, Budget::default());
        assert_eq!(r.verdict, Verdict::Valid);
        let t = h.last().map_or(0, |o| o.time);
        let p = 10_000;
        for (i, (kind, f, v)) in [
            (OpType::Invoke, "write", json!(100)),
            (OpType::Ok, "write", json!(100)),
            (OpType::Invoke, "write", json!(101)),
            (OpType::Ok, "write", json!(101)),
            (OpType::Invoke, "read", Value::Null),
            (OpType::Ok, "read", json!(100)),
        ]
        .into_iter()
        .enumerate()
        {
            h.push(Op {
                index: h.len() as u64,
                time: t + 1_000 * (i as u64 + 1),
                process: p,
                kind,
                f: f.into(),
                key: Some("r2".into()),
                value: v,
                error: None,
            });
        }
        let started = Instant::now();
        let r = check("register", &h, Budget::default());
        let took = started.elapsed();
        assert_eq!(
            r.verdict,
            Verdict::Invalid,
            "seed {seed}: {} {:?}",
            r.summary,
            r.keys
        );
        let bad: Vec<&str> = r
            .keys
            .iter()
            .filter(|k| k.verdict == Verdict::Invalid)
            .map(|k| k.key.as_str())
            .collect();
        assert_eq!(bad, ["r2"]);
        assert!(
            r.anomalies[0].message.contains("read -> 100"),
            "{}",
            r.anomalies[0].message
        );
        eprintln!(
            "seed {seed}: invalid after {:?} states in {took:?}",
            r.keys[2].states
        );
    }
}

#[test]
fn stale_reads_from_a_lagging_replica_are_found_quickly() {
    for seed in 0..4 {
        let h = sim::lagging_register(seed, 4_000, 3);
        let started = Instant::now();
        let r = check("register", &h, Budget::default());
        let took = started.elapsed();
        assert_eq!(
            r.verdict,
            Verdict::Invalid,
            "seed {seed}: {} {:?}",
            r.summary,
            r.keys
        );
        assert!(
            r.keys.iter().all(|k| k.verdict != Verdict::Unknown),
            "{:?}",
            r.keys
        );
        assert!(took.as_secs() < 20, "seed {seed}: check took {took:?}");
        let a = &r.anomalies[0];
        assert_eq!(a.kind, AnomalyKind::Nonlinearizable);
        assert!(!a.ops.is_empty() && a.data["blocked"].is_string(), "{a:#?}");
    }
}

#[test]
fn a_simulated_list_append_history_is_valid_and_corruptions_are_caught() {
    let h = sim::list_append(3, 4_000);
    assert_eq!(detect_workload(&h).as_deref(), Some("list-append"));
    let r = check("list-append", &h, Budget::default());
    assert_eq!(
        r.verdict,
        Verdict::Valid,
        "{}: {:#?}",
        r.summary,
        r.anomalies
    );

    // Drop the first element of the longest read.
    let reads = ok_reads(&h);
    let longest = *reads
        .iter()
        .max_by_key(|&&i| h[i].value.as_array().map_or(0, Vec::len))
        .unwrap();
    let mut bad = h.clone();
    if let Some(list) = bad[longest].value.as_array_mut() {
        list.remove(0);
    }
    let r = check("list-append", &bad, Budget::default());
    assert_eq!(r.verdict, Verdict::Invalid);
    assert!(
        r.anomaly_counts
            .contains_key(&AnomalyKind::IncompatibleOrder)
            || r.anomaly_counts.contains_key(&AnomalyKind::LostAppend),
        "{:?}",
        r.anomaly_counts
    );

    // Duplicate the last element of the last read.
    let last = *reads.last().unwrap();
    let mut bad = h.clone();
    if let Some(list) = bad[last].value.as_array_mut() {
        let x = list.last().cloned().unwrap_or(json!(1));
        list.push(x);
    }
    let r = check("list-append", &bad, Budget::default());
    assert!(
        r.anomaly_counts.contains_key(&AnomalyKind::Duplicate),
        "{:?}",
        r.anomaly_counts
    );
}

#[test]
fn a_simulated_set_history_counts_losses() {
    let h = sim::set(5, 2_000);
    assert_eq!(detect_workload(&h).as_deref(), Some("set"));
    let r = check("set", &h, Budget::default());
    assert_eq!(r.verdict, Verdict::Valid, "{}", r.summary);
    assert_eq!(r.details["lost_count"], 0);
    let fin = h
        .iter()
        .rposition(|o| o.f == "final-read" && o.kind == OpType::Ok)
        .unwrap();
    let mut bad = h.clone();
    if let Some(list) = bad[fin].value.as_array_mut() {
        list.truncate(list.len() - 3);
        list.push(json!(-5));
    }
    let r = check("set", &bad, Budget::default());
    assert_eq!(r.verdict, Verdict::Invalid);
    assert!(r.details["lost_count"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(r.details["unexpected"], json!([-5]));
}

#[test]
fn reports_for_simulated_runs() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [
        ("register", sim::register(1, 1_500)),
        ("list-append", sim::list_append(1, 1_500)),
        ("set", sim::set(1, 800)),
    ];
    let mut results = Vec::new();
    for (name, h) in &runs {
        let r = check(name, h, Budget::default());
        let run = dir.path().join(name);
        write_report(&run, h, &r).unwrap();
        for f in REPORT_FILES {
            let len = std::fs::metadata(run.join(f)).unwrap().len();
            assert!(len > 100, "{name}/{f} is {len} bytes");
        }
        let back: Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(back["workload"], *name);
        let svg = std::fs::read_to_string(run.join("latency.svg")).unwrap();
        assert!(svg.contains(r#"class="fault""#));
        results.push((name.to_string(), r));
    }
    let refs: Vec<(String, &_)> = results.iter().map(|(n, r)| (n.clone(), r)).collect();
    let table = summary_table(&refs);
    assert_eq!(table.lines().count(), 2 + runs.len());
    assert!(table.contains("| set "));
}
