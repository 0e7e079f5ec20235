//! The bytes of a replicated change, as sent to each slave: small changes
//! are read once into memory and shared; big ones are streamed to each
//! slave from the master's local copy, 1 MiB at a time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

use crate::engine::{Content, EngineError};

/// Changes up to this size are read into memory once and shared.
pub const INLINE_MAX: u64 = 8 << 20;
/// Bodies are expected to move at least this fast: a slave's deadline grows
/// by a second for every this many bytes.
const MIN_RATE: u64 = 32 << 20;

#[derive(Clone)]
pub enum Payload {
    Mem(Bytes),
    Stream(Content),
}

impl Payload {
    /// Read small content at once; keep big content to stream.
    pub async fn of(content: Option<&Content>) -> Result<Payload, EngineError> {
        match content {
            None => Ok(Payload::Mem(Bytes::new())),
            Some(c) if c.len() <= INLINE_MAX => Ok(Payload::Mem(read_all(c).await?)),
            Some(c) => Ok(Payload::Stream(c.clone())),
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Payload::Mem(b) => b.len() as u64,
            Payload::Stream(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `base` plus the time the body needs at [`MIN_RATE`].
    pub fn deadline(&self, base: Duration) -> Duration {
        base + Duration::from_secs(self.len() / MIN_RATE)
    }
}

/// The whole content in one buffer (no copy when it is one piece).
async fn read_all(c: &Content) -> Result<Bytes, EngineError> {
    let mut parts = c.chunks().await?;
    if parts.len() <= 1 {
        return Ok(parts.pop().unwrap_or_default());
    }
    let mut out = BytesMut::with_capacity(c.len() as usize);
    for p in parts {
        out.extend_from_slice(&p);
    }
    Ok(out.freeze())
}

type ReadFuture = Pin<Box<dyn Future<Output = Result<Bytes, EngineError>> + Send>>;

/// An `AsyncRead` over a change's bytes on the master's disk.
pub struct ContentReader {
    content: Content,
    at: u64,
    buf: Bytes,
    pending: Option<ReadFuture>,
}

impl ContentReader {
    pub fn new(content: Content) -> Self {
        ContentReader {
            content,
            at: 0,
            buf: Bytes::new(),
            pending: None,
        }
    }
}

impl AsyncRead for ContentReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        loop {
            if !me.buf.is_empty() {
                let n = me.buf.len().min(out.remaining());
                out.put_slice(&me.buf[..n]);
                me.buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if me.at >= me.content.len() {
                return Poll::Ready(Ok(()));
            }
            let fut = me.pending.get_or_insert_with(|| {
                let (c, at) = (me.content.clone(), me.at);
                Box::pin(async move { c.read(at, proto::frame::STREAM_CHUNK).await })
            });
            match fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => {
                    me.pending = None;
                    let b = r.map_err(|e| io::Error::other(e.to_string()))?;
                    if b.is_empty() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "content shorter than recorded",
                        )));
                    }
                    me.at += b.len() as u64;
                    me.buf = b;
                }
            }
        }
    }
}
