//! Issue 4's partition test, on real hosts: a group of 3 dataservers and 3
//! leaders, each in its own network namespace. The master is cut off from
//! every leader (iptables inside the namespaces) while a client keeps
//! writing to it directly. It must stop acknowledging within its lease;
//! the leaders promote another member only after that; no write is
//! acknowledged by the old master after the new one took over; every
//! acknowledged write is readable from the new master.
//!
//! Needs root and `ip netns`; skipped (with the reason printed) otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use client::leader::LeaderClient;
use client::{Client, ClientConfig, UploadOptions};
use jepsen::hosts::{self, Hosts, HostsOpts};
use parking_lot::Mutex;
use proto::cluster::{ClusterMap, ServerStatus};

const LEASE_MS: u64 = 1500;

/// Acknowledged uploads: (wall-clock ms of the answer, file id, content).
type Acks = Arc<Mutex<Vec<(u64, String, Vec<u8>)>>>;

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn master_of(m: &ClusterMap) -> Option<(u64, u64)> {
    let g = m.group("group1")?;
    Some((g.master?, g.epoch))
}

/// 3 leaders (`[server timeout ms, master lease ms]`) and 3 dataservers in
/// namespaces; `test` runs on them within 120 s; everything is torn down.
async fn with_hosts<F, Fut>(leader_ms: [&str; 2], test: F)
where
    F: FnOnce(Arc<Hosts>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let opts = HostsOpts {
        dir: dir.path().to_path_buf(),
        leaders: 3,
        dataservers: 3,
        leader_args: vec![
            "--server-timeout-ms".into(),
            leader_ms[0].into(),
            "--master-lease-ms".into(),
            leader_ms[1].into(),
        ],
        dataserver_args: ["--heartbeat-ms", "300"].map(String::from).to_vec(),
    };
    let hosts = Arc::new(Hosts::setup(&opts).expect("set up the hosts"));
    let res = tokio::time::timeout(Duration::from_secs(120), test(hosts.clone())).await;
    hosts.teardown();
    res.expect("the test ran over its bound");
}

async fn wait_map(
    lc: &LeaderClient,
    limit: Duration,
    what: &str,
    pred: impl Fn(&ClusterMap) -> bool,
) -> ClusterMap {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(m) = lc.get_map(true).await {
            if pred(&m) {
                return m;
            }
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_cut_off_from_the_leaders_stops_acknowledging_before_a_new_one_takes_over() {
    if let Err(why) = hosts::netns_available() {
        eprintln!("skipping the partition test: {why}");
        return;
    }
    with_hosts(["1000", "1500"], run).await;
}

async fn run(hosts: Arc<Hosts>) {
    hosts.start_all().expect("start every node");
    let lc = LeaderClient::new(hosts.leader_addrs());
    let all_active = |m: &ClusterMap| {
        (1..=3).all(|id| {
            m.server(id)
                .is_some_and(|s| s.status == ServerStatus::Active)
        }) && master_of(m).is_some()
    };
    let map = wait_map(&lc, Duration::from_secs(30), "3 ACTIVE members", all_active).await;
    let (old, epoch) = master_of(&map).unwrap();
    let old_addr = map.server(old).unwrap().addr.clone();
    let old_name = format!("d{old}");

    // Writers straight to the master (they do not follow the map).
    let direct = Arc::new(
        Client::connect_direct_with(
            old_addr.clone(),
            ClientConfig::default()
                .retries(0)
                .request_timeout(Duration::from_secs(3)),
        )
        .await
        .unwrap(),
    );
    let acks: Acks = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (c, acks, stop) = (direct.clone(), acks.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                n += 1;
                let data = format!("w{w}-{n}").into_bytes();
                if let Ok(s) = c.upload(&data, UploadOptions::default()).await {
                    acks.lock().push((wall_ms(), s.file_id, data));
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !acks.lock().is_empty(),
        "no write acknowledged before the cut"
    );

    // Cut the master off from every leader (not from the other members).
    let cut_at = wall_ms();
    for l in 1..=3 {
        hosts.cut(&old_name, &format!("l{l}")).expect("cut");
    }
    let map = wait_map(&lc, Duration::from_secs(20), "a new master", |m| {
        master_of(m).is_some_and(|(id, e)| id != old && e > epoch)
    })
    .await;
    let (new, _) = master_of(&map).unwrap();
    // When the leaders committed the new master (their clock = ours).
    let took_over = map.updated_ms;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let acks = std::mem::take(&mut *acks.lock());
    let last_ack = acks.iter().map(|(t, _, _)| *t).max().unwrap_or(0);
    println!(
        "cut at +0 ms; last acknowledgement by the old master at +{} ms; new master {new} at +{} ms (lease {LEASE_MS} ms)",
        last_ack.saturating_sub(cut_at),
        took_over.saturating_sub(cut_at)
    );
    assert!(
        last_ack < took_over,
        "the old master acknowledged a write at {last_ack}, after the new master took over at {took_over}"
    );
    assert!(
        last_ack <= cut_at + LEASE_MS + 300,
        "the old master kept acknowledging {} ms after the cut",
        last_ack - cut_at
    );
    assert!(
        took_over >= cut_at + LEASE_MS - 300,
        "a new master after only {} ms",
        took_over - cut_at
    );

    // Heal; every acknowledged write is on the new master.
    hosts.heal_network().expect("heal");
    let c = Client::connect(hosts.leader_addrs()).await.unwrap();
    for (_, id, data) in &acks {
        assert_eq!(&c.download(id).await.unwrap(), data, "{id}");
    }
    println!(
        "{} acknowledged writes checked on the new master",
        acks.len()
    );
}

/// A master that applied a write a slave of the write set did not confirm,
/// and cannot reach the leaders to have that slave dropped, must stop
/// serving at once — even reads, even with time left on its lease: a read
/// could see the write, and a failover to that slave would lose it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_that_cannot_drop_a_silent_slave_fences_itself() {
    if let Err(why) = hosts::netns_available() {
        eprintln!("skipping the fencing test: {why}");
        return;
    }
    // A long lease, so the fence (not the lease) is what stops the master.
    with_hosts(["3000", "12000"], fence).await;
}

async fn fence(hosts: Arc<Hosts>) {
    hosts.start_all().expect("start every node");
    let lc = LeaderClient::new(hosts.leader_addrs());
    let map = wait_map(&lc, Duration::from_secs(30), "3 ACTIVE members", |m| {
        (1..=3).all(|id| {
            m.server(id)
                .is_some_and(|s| s.status == ServerStatus::Active)
        }) && master_of(m).is_some()
    })
    .await;
    let (old, _) = master_of(&map).unwrap();
    let slave = (1..=3).find(|id| *id != old).unwrap();
    let c = Client::connect_direct_with(
        map.server(old).unwrap().addr.clone(),
        ClientConfig::default()
            .retries(0)
            .request_timeout(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    let before = c.upload(b"before", UploadOptions::default()).await.unwrap();

    // The master loses the leaders, a slave goes silent, and a write comes.
    for l in 1..=3 {
        hosts
            .cut(&format!("d{old}"), &format!("l{l}"))
            .expect("cut");
    }
    hosts.pause(&format!("d{slave}")).expect("pause");
    let cut_at = Instant::now();
    let e = c
        .upload(b"unsettled", UploadOptions::default())
        .await
        .expect_err("a write the silent slave never confirmed was acknowledged");
    println!("write refused after {:?}: {e}", cut_at.elapsed());
    // Its lease (12 s) has time left, but it must not serve even a read.
    assert!(cut_at.elapsed() < Duration::from_secs(10));
    let e = c
        .stat(&before.file_id)
        .await
        .expect_err("a fenced master served a read");
    assert!(e.to_string().contains("fenced"), "{e}");
    hosts.resume(&format!("d{slave}")).expect("resume");
    hosts.heal_network().expect("heal");
}
