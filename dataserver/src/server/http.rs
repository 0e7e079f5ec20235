//! A minimal HTTP endpoint for `GET /metrics`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::debug;

use super::metrics::{Extra, Metrics};
use crate::engine::Engine;
use crate::repl::Replicator;

pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    engine: Arc<Engine>,
    repl: Option<Arc<Replicator>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (m, e, r) = (metrics.clone(), engine.clone(), repl.clone());
        tokio::spawn(async move {
            let answered = answer(stream, &m, &e, r.as_deref());
            if let Err(err) = tokio::time::timeout(Duration::from_secs(5), answered).await {
                debug!(error = %err, "metrics request timed out");
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    engine: &Engine,
    repl: Option<&Replicator>,
) {
    let mut buf = [0u8; 4096];
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got += n,
        }
        if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..got]);
    let (status, body) = if head.starts_with("GET /metrics ") {
        let usage = engine.usage();
        let free: u64 = usage.iter().map(|u| u.free_bytes).sum();
        let total: u64 = usage.iter().map(|u| u.total_bytes).sum();
        let disk = engine.counters();
        let extra = [
            Extra::gauge(
                "chorus_data_version",
                "Data version of the last durable change.",
                engine.data_version() as f64,
            ),
            Extra::gauge(
                "chorus_disk_free_bytes",
                "Free bytes over all store paths.",
                free as f64,
            ),
            Extra::gauge(
                "chorus_disk_total_bytes",
                "Total bytes over all store paths.",
                total as f64,
            ),
            Extra::gauge(
                "chorus_engine_poisoned",
                "1 once a failed disk write made the engine refuse every change.",
                if engine.is_poisoned() { 1.0 } else { 0.0 },
            ),
            Extra::gauge(
                "chorus_write_pace_per_second",
                "Writes per second a master holds new writes to while a returning member catches up (0: not held).",
                repl.and_then(|r| r.pace().pacing()).unwrap_or(0.0),
            ),
            Extra::counter(
                "chorus_disk_batches_total",
                "Batches of writes the disk threads committed together (group commits).",
                disk.batches,
            ),
            Extra::counter(
                "chorus_disk_fsyncs_total",
                "fdatasync calls issued by the disk threads.",
                disk.fsyncs,
            ),
            Extra::counter(
                "chorus_disk_writes_total",
                "Write pieces submitted by the disk threads.",
                disk.writes,
            ),
        ];
        ("200 OK", metrics.render(&extra))
    } else {
        ("404 Not Found", "try GET /metrics\n".to_string())
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
}
