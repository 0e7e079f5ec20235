//! Loopback addresses and liveness probes.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

/// A free loopback port for a server to listen on later. Taken below the
/// kernel's ephemeral range (so no outgoing connection takes it meanwhile),
/// never the same twice in this process, and bindable when handed out.
/// Falls back to an ephemeral port when there is no room below the range.
pub fn free_addr() -> SocketAddr {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    const LOW: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral > LOW + 1000 {
        let span = ephemeral - LOW;
        // xorshift32 never leaves 0: keep the seed odd.
        let mut x = (std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()))
            | 1;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..1000 {
            // xorshift32
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let port = (LOW + x % span) as u16;
            if given.contains(&port) {
                continue;
            }
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                given.insert(port);
                return l.local_addr().expect("local_addr");
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

/// Run `fut` to completion on a fresh current-thread runtime on its own
/// thread: callable from sync tests and from inside async ones alike.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(fut)
        })
        .join()
        .expect("block_on thread panicked")
    })
}

/// Whether a dataserver answers a ping at `addr` (1 s bound).
/// Safe to call from inside an async test: it runs on its own thread.
pub fn ping(addr: SocketAddr) -> bool {
    block_on(async move {
        tokio::time::timeout(Duration::from_secs(1), ping_once(addr))
            .await
            .unwrap_or(false)
    })
}

async fn ping_once(addr: SocketAddr) -> bool {
    let Ok(s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let (r, w) = s.into_split();
    let mut w = proto::FrameWriter::new(w);
    let mut r = proto::FrameReader::new(r);
    let req = proto::Message::Request(proto::RequestEnvelope {
        id: 1,
        client_id: 0,
        seq: 0,
        epoch: 0,
        op: proto::Request::Ping,
    });
    if w.write(&req, &[]).await.is_err() {
        return false;
    }
    matches!(
        r.read::<proto::Message>().await,
        Ok(Some((
            proto::Message::Response(proto::ResponseEnvelope { result: Ok(_), .. }),
            _
        )))
    )
}

/// Whether anything accepts TCP connections at `addr`.
pub fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}
