//! Crash safety: many concurrent writers, SIGKILL at a random moment,
//! restart. Every acknowledged operation must be there byte-exact, and no
//! file may be served with content that was never written.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::{Reply, Request};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::{Dataserver, DataserverOpts};

use crate::raw::RawConn;

/// What a writer knows about one of its files.
struct FileModel {
    id: String,
    /// Content after the last acknowledged operation.
    acked: Vec<u8>,
    /// Content if the operation in flight at the crash took effect.
    pending: Option<Vec<u8>>,
}

const SIZES: [usize; 8] = [0, 1, 100, 4096, 20_000, 70_000, 300_000, 1_100_000];

fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

/// One writer: uploads appender files, then appends, modifies and
/// truncates them until the server dies or `stop` is set.
async fn writer(addr: SocketAddr, seed: u64, stop: Arc<AtomicBool>) -> (Vec<FileModel>, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut files: Vec<FileModel> = Vec::new();
    let mut acked_ops = 0u64;
    let Ok(mut conn) =
        tokio::time::timeout(Duration::from_secs(5), RawConn::connect_checked(addr)).await
    else {
        return (files, 0);
    };
    let Some(conn) = conn.as_mut() else {
        return (files, 0);
    };
    while !stop.load(Ordering::Relaxed) {
        let choice = if files.is_empty() {
            0
        } else {
            rng.random_range(0..10)
        };
        if choice < 3 {
            let n = SIZES[rng.random_range(0..SIZES.len())];
            let data = random_bytes(&mut rng, n);
            let op = Request::Upload {
                size: data.len() as u64,
                ext: "dat".into(),
                meta: vec![],
                appender: true,
            };
            match conn.try_call(op, &data).await {
                Ok(Ok(Reply::Stat(s))) => {
                    acked_ops += 1;
                    files.push(FileModel {
                        id: s.file_id,
                        acked: data,
                        pending: None,
                    });
                }
                Ok(other) => panic!("upload refused: {other:?}"),
                Err(_) => break,
            }
            continue;
        }
        let idx = rng.random_range(0..files.len());
        let f = &mut files[idx];
        let (op, body, next) = match choice {
            3..=5 => {
                let n = SIZES[rng.random_range(0..SIZES.len())].min(70_000);
                let add = random_bytes(&mut rng, n);
                let mut next = f.acked.clone();
                next.extend_from_slice(&add);
                let op = Request::Append {
                    file_id: f.id.clone(),
                    size: add.len() as u64,
                    if_version: None,
                };
                (op, add, next)
            }
            6..=8 => {
                let offset = rng.random_range(0..=f.acked.len());
                let n = rng.random_range(1..5000);
                let patch = random_bytes(&mut rng, n);
                let mut next = f.acked.clone();
                let end = offset + patch.len();
                if next.len() < end {
                    next.resize(end, 0);
                }
                next[offset..end].copy_from_slice(&patch);
                let op = Request::Modify {
                    file_id: f.id.clone(),
                    offset: offset as u64,
                    size: patch.len() as u64,
                    if_version: None,
                };
                (op, patch, next)
            }
            _ => {
                let size = rng.random_range(0..=f.acked.len());
                let next = f.acked[..size].to_vec();
                let op = Request::Truncate {
                    file_id: f.id.clone(),
                    size: size as u64,
                    if_version: None,
                };
                (op, Vec::new(), next)
            }
        };
        f.pending = Some(next);
        match conn.try_call(op, &body).await {
            Ok(Ok(_)) => {
                acked_ops += 1;
                if let Some(n) = f.pending.take() {
                    f.acked = n;
                }
            }
            Ok(Err(e)) => panic!("operation refused: {e}"),
            Err(_) => break,
        }
    }
    (files, acked_ops)
}

async fn run_seed(seed: u64) {
    let opts = DataserverOpts {
        // 300 KB files are chunk records written with O_DIRECT, 1.1 MB ones
        // large files.
        large_file_threshold: Some("1MiB".into()),
        ..DataserverOpts::default()
    };
    let mut ds = Dataserver::start(opts);
    let addr = ds.addr;
    let mut rng = StdRng::seed_from_u64(seed);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..12u64 {
        tasks.push(tokio::spawn(writer(addr, seed * 1000 + w, stop.clone())));
    }
    let run_for = Duration::from_millis(rng.random_range(800..2500));
    tokio::time::sleep(run_for).await;
    ds.kill();
    stop.store(true, Ordering::Relaxed);
    let mut models = Vec::new();
    let mut acked_ops = 0;
    for t in tasks {
        let (files, n) = tokio::time::timeout(Duration::from_secs(40), t)
            .await
            .expect("writer did not notice the crash")
            .expect("writer panicked");
        acked_ops += n;
        models.extend(files);
    }
    assert!(
        acked_ops > 20,
        "seed {seed}: too little work before the crash ({acked_ops} ops)"
    );
    ds.restart();
    let mut conn = RawConn::connect(ds.addr).await;
    let mut in_flight_applied = 0;
    for f in &models {
        let got = match conn.download(&f.id).await {
            Ok(b) => b,
            Err(e) => panic!("seed {seed}: acknowledged file {} lost: {e}", f.id),
        };
        if got == f.acked {
            continue;
        }
        match &f.pending {
            Some(p) if *p == got => in_flight_applied += 1,
            _ => panic!(
                "seed {seed}: file {} has {} bytes that were never acknowledged (acked {} bytes, in flight {:?} bytes)\n{}",
                f.id,
                got.len(),
                f.acked.len(),
                f.pending.as_ref().map(|p| p.len()),
                ds.log_text()
            ),
        }
        let st = match conn
            .call(
                Request::Stat {
                    file_id: f.id.clone(),
                },
                &[],
            )
            .await
        {
            Ok(Reply::Stat(s)) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(st.size, got.len() as u64);
        assert_eq!(st.crc32, crc32fast::hash(&got), "stat crc32 of {}", f.id);
    }
    // The restarted server takes new writes on top.
    let f = &models[0];
    let r = conn
        .call(
            Request::Append {
                file_id: f.id.clone(),
                size: 3,
                if_version: None,
            },
            b"end",
        )
        .await;
    assert!(r.is_ok(), "append after restart: {r:?}");
    println!(
        "seed {seed}: killed after {run_for:?}, {acked_ops} acknowledged ops over {} files, {in_flight_applied} in-flight ops applied, all intact",
        models.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_writes_loses_nothing_acknowledged() {
    let seeds: Vec<u64> = match std::env::var("CHORUS_CRASH_SEEDS") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![1, 2, 3, 4],
    };
    for seed in seeds {
        run_seed(seed).await;
    }
}

/// Send one append with explicit `(client_id, seq)` over a fresh connection.
async fn append_as(addr: SocketAddr, file_id: &str, data: &[u8], ids: (u64, u64)) -> Reply {
    let mut c = client::peer::PeerConn::connect(
        &addr.to_string(),
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .await
    .expect("connect");
    let op = Request::Append {
        file_id: file_id.to_string(),
        size: data.len() as u64,
        if_version: None,
    };
    c.call(op, 0, ids, client::peer::PeerBody::Slice(data), None)
        .await
        .expect("exchange")
        .expect("append answered")
}

/// Exactly-once survives a crash: an append acknowledged, the server
/// SIGKILLed and restarted, the same `(client_id, seq)` sent again gets the
/// first answer and the file does not grow; a new `seq` applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_a_crash_gets_the_first_answer() {
    let mut ds = Dataserver::start(DataserverOpts::default());
    let c = client::Client::connect_direct(ds.addr.to_string())
        .await
        .expect("client");
    let opts = client::UploadOptions {
        appender: true,
        ..Default::default()
    };
    let id = c.upload(b"head:", opts).await.expect("upload").file_id;
    let first = append_as(ds.addr, &id, b"once", (0xC0FFEE, 41)).await;
    let Reply::Stat(st) = &first else {
        panic!("append answered {first:?}");
    };
    assert_eq!(st.size, 9);
    tokio::task::block_in_place(|| {
        ds.kill();
        ds.restart();
    });
    let again = append_as(ds.addr, &id, b"once", (0xC0FFEE, 41)).await;
    assert_eq!(
        again, first,
        "a resend after the restart must get the first answer"
    );
    let c = client::Client::connect_direct(ds.addr.to_string())
        .await
        .expect("client");
    assert_eq!(c.download(&id).await.expect("download"), b"head:once");
    let next = append_as(ds.addr, &id, b"+", (0xC0FFEE, 42)).await;
    assert!(
        matches!(next, Reply::Stat(ref s) if s.size == 10),
        "{next:?}"
    );
    assert_eq!(c.download(&id).await.expect("download"), b"head:once+");
}
