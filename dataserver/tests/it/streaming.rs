//! A multi-GiB file streams through the SDK and the server without either
//! holding it in memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use client::{Client, UploadOptions};
use testkit::{Dataserver, DataserverOpts};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Deterministic content: a pseudo-random pattern whose length (a prime)
/// shares no factor with any chunk size, so a misplaced, repeated or
/// dropped piece shows. Generated and checked with slice copies.
const PERIOD: usize = 1_000_003;

fn pattern() -> &'static [u8] {
    static P: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect()
    })
}

fn byte_at(i: u64) -> u8 {
    pattern()[(i % PERIOD as u64) as usize]
}

/// Call `f(offset, expected_slice)` over `len` bytes from `start`.
fn for_pattern(start: u64, len: usize, mut f: impl FnMut(usize, &[u8])) {
    let p = pattern();
    let mut done = 0;
    while done < len {
        let at = ((start + done as u64) % PERIOD as u64) as usize;
        let n = (PERIOD - at).min(len - done);
        f(done, &p[at..at + n]);
        done += n;
    }
}

struct Generated {
    pos: u64,
    len: u64,
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.len - self.pos) as usize;
        let start = self.pos;
        let out = buf.initialize_unfilled_to(n);
        for_pattern(start, n, |at, want| {
            out[at..at + want.len()].copy_from_slice(want)
        });
        buf.advance(n);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Checks what is written against the generator as it arrives.
struct Checker {
    pos: u64,
    bad_at: Option<u64>,
}

impl AsyncWrite for Checker {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let start = self.pos;
        if self.bad_at.is_none() {
            let mut bad = None;
            for_pattern(start, data.len(), |at, want| {
                if bad.is_none() && data[at..at + want.len()] != *want {
                    bad = Some(start + at as u64);
                }
            });
            self.bad_at = bad;
        }
        self.pos += data.len() as u64;
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gib_file_streams_in_bounded_memory() {
    let size: u64 = std::env::var("CHORUS_STREAM_TEST_BYTES")
        .ok()
        .and_then(|s| proto::units::parse_size(&s).ok())
        .unwrap_or(2 << 30);
    let ds = Dataserver::start(DataserverOpts {
        reserved_space: "1GiB".into(),
        ..DataserverOpts::default()
    });
    let pid = ds.pid().expect("pid").to_string();
    let c = Client::connect_direct(ds.addr.to_string()).await.unwrap();
    let started = std::time::Instant::now();
    let stat = c
        .upload_reader(
            Generated { pos: 0, len: size },
            size,
            UploadOptions::new().ext("bin"),
        )
        .await
        .expect("upload");
    let up = started.elapsed();
    assert_eq!(stat.size, size);
    let started = std::time::Instant::now();
    let mut check = Checker {
        pos: 0,
        bad_at: None,
    };
    let got = c
        .download_to(&stat.file_id, &mut check, ..)
        .await
        .expect("download");
    let down = started.elapsed();
    assert_eq!(check.pos, size, "download length");
    assert_eq!(
        check.bad_at, None,
        "downloaded bytes differ from the upload"
    );
    assert_eq!(got.crc32, stat.crc32);
    // A ranged read from the far end of the file.
    let tail = c
        .download_range(&stat.file_id, size - 10, 10)
        .await
        .unwrap();
    let want: Vec<u8> = (size - 10..size).map(byte_at).collect();
    assert_eq!(tail, want);
    let server_kib = peak_rss_kib(&pid);
    let test_kib = peak_rss_kib("self");
    println!(
        "{} MiB: upload {up:?}, download {down:?}; peak RSS server {} MiB, test process {} MiB",
        size >> 20,
        server_kib >> 10,
        test_kib >> 10
    );
    assert!(server_kib > 0, "could not read the server's memory use");
    assert!(
        server_kib < 256 * 1024,
        "server peaked at {} MiB for a {} MiB file",
        server_kib >> 10,
        size >> 20
    );
    assert!(
        test_kib < 256 * 1024,
        "client side peaked at {} MiB for a {} MiB file",
        test_kib >> 10,
        size >> 20
    );
    c.delete(&stat.file_id, None).await.unwrap();
}
