//! Progress bars for long transfers: on stderr, only when stderr is a
//! terminal and the transfer is larger than [`MIN_BYTES`].

use std::io::IsTerminal;
use std::pin::Pin;
use std::task::{Context, Poll};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Transfers up to this size show no bar.
pub const MIN_BYTES: u64 = 4 << 20;

/// Whether a transfer of `total` bytes would show a bar.
pub fn wanted(total: u64) -> bool {
    total > MIN_BYTES && std::io::stderr().is_terminal()
}

/// A byte progress bar, or `None` when none should be shown.
pub fn bar(total: u64, label: &str) -> Option<ProgressBar> {
    if !wanted(total) {
        return None;
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(label.to_string());
    Some(pb)
}

/// Counts bytes read through it on a bar.
pub struct ProgressReader<R> {
    inner: R,
    bar: Option<ProgressBar>,
}

impl<R> ProgressReader<R> {
    pub fn new(inner: R, bar: Option<ProgressBar>) -> Self {
        ProgressReader { inner, bar }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ProgressReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(b)) = (&res, &self.bar) {
            b.inc((buf.filled().len() - before) as u64);
        }
        res
    }
}

/// Counts bytes written through it on a bar.
pub struct ProgressWriter<W> {
    inner: W,
    bar: Option<ProgressBar>,
}

impl<W> ProgressWriter<W> {
    pub fn new(inner: W, bar: Option<ProgressBar>) -> Self {
        ProgressWriter { inner, bar }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for ProgressWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(b)) = (&res, &self.bar) {
            b.inc(*n as u64);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn wrappers_pass_bytes_through_and_count() {
        let pb = ProgressBar::hidden();
        pb.set_length(10);
        let mut r = ProgressReader::new(&b"0123456789"[..], Some(pb.clone()));
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"0123456789");
        assert_eq!(pb.position(), 10);

        let pb = ProgressBar::hidden();
        let mut w = ProgressWriter::new(Vec::new(), Some(pb.clone()));
        w.write_all(b"abc").await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.into_inner(), b"abc");
        assert_eq!(pb.position(), 3);
        assert!(!wanted(MIN_BYTES));
    }
}
