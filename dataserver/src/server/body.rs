//! A request body read from the connection's `Data` frames.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proto::{FrameError, FrameReader, Message};
use rkyv::util::AlignedVec;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::engine::{Body, EngineError, RecvBuf};

/// Per-connection buffers for body frames. The payload buffer is handed to
/// the engine as `Bytes` without copying; once the engine (the disk thread)
/// has dropped it, the next frame reuses the same allocation, so a steady
/// stream of uploads neither allocates, zero-fills nor page-faults per frame.
/// Frames of 256 KiB or more go into pooled buffers from the engine instead
/// ([`RecvBuf`]), laid out so new records are written from them directly.
#[derive(Default)]
pub struct BodyBufs {
    meta: AlignedVec,
    payload: BytesMut,
}

impl BodyBufs {
    /// Read one frame like [`FrameReader::read`], the payload into the
    /// reused buffer (uninitialised capacity, no zero-fill).
    async fn read<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
    ) -> Result<Option<(Message, Bytes)>, FrameError> {
        let Some(header) = reader.read_header().await? else {
            return Ok(None);
        };
        let inner = reader.get_mut();
        self.meta.clear();
        self.meta.resize(header.meta_len as usize, 0);
        read_exact(inner, &mut self.meta[..]).await?;
        let len = header.payload_len as usize;
        // A big frame goes into a pooled buffer placed for O_DIRECT.
        if let Some(mut buf) = RecvBuf::new(len) {
            read_exact(inner, buf.space()).await?;
            let msg = proto::frame::decode::<Message>(&self.meta)?;
            return Ok(Some((msg, buf.freeze())));
        }
        // Reclaims the previous allocation when nobody holds it any more.
        self.payload.clear();
        self.payload.reserve(len);
        let mut limited = inner.take(len as u64);
        while self.payload.len() < len {
            if limited.read_buf(&mut self.payload).await? == 0 {
                return Err(FrameError::Truncated);
            }
        }
        let msg = proto::frame::decode::<Message>(&self.meta)?;
        Ok(Some((msg, self.payload.split().freeze())))
    }
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Feeds the engine exactly `size` bytes from `Data` frames, checking that
/// the frames belong to the request and add up to the declared size.
pub struct NetBody<'a, R> {
    reader: &'a mut FrameReader<R>,
    bufs: &'a mut BodyBufs,
    id: u64,
    remaining: u64,
    finished: bool,
    /// Set when the peer broke the body protocol; the connection must close.
    broken: Option<String>,
    frame_timeout: Duration,
}

impl<'a, R: AsyncRead + Unpin + Send> NetBody<'a, R> {
    pub fn new(
        reader: &'a mut FrameReader<R>,
        bufs: &'a mut BodyBufs,
        id: u64,
        size: u64,
        frame_timeout: Duration,
    ) -> Self {
        NetBody {
            reader,
            bufs,
            id,
            remaining: size,
            finished: false,
            broken: None,
            frame_timeout,
        }
    }

    /// The protocol violation seen while reading, if any.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    fn fail(&mut self, why: String) -> EngineError {
        self.broken = Some(why.clone());
        EngineError::BadBody(why)
    }

    async fn next(&mut self) -> Result<Option<Bytes>, EngineError> {
        if self.finished {
            return Ok(None);
        }
        if let Some(b) = &self.broken {
            return Err(EngineError::BadBody(b.clone()));
        }
        let read = self.bufs.read(self.reader);
        let frame = match tokio::time::timeout(self.frame_timeout, read).await {
            Err(_) => return Err(self.fail("timed out waiting for body data".into())),
            Ok(Err(e)) => return Err(self.fail(format!("reading body: {e}"))),
            Ok(Ok(None)) => {
                return Err(self.fail("connection closed in the middle of a body".into()))
            }
            Ok(Ok(Some(f))) => f,
        };
        let (msg, payload) = frame;
        let chunk = match msg {
            Message::Data(c) => c,
            other => {
                return Err(self.fail(format!(
                    "expected a data frame, got {}",
                    message_kind(&other)
                )))
            }
        };
        if chunk.id != self.id {
            return Err(self.fail(format!(
                "data frame for request {} inside request {}",
                chunk.id, self.id
            )));
        }
        let len = payload.len() as u64;
        if len > self.remaining {
            return Err(self.fail(format!(
                "body longer than declared: {} more bytes than expected",
                len - self.remaining
            )));
        }
        self.remaining -= len;
        if chunk.last != (self.remaining == 0) {
            return Err(self.fail(if chunk.last {
                format!(
                    "body ended {} bytes short of its declared size",
                    self.remaining
                )
            } else {
                "body continues past its declared size".to_string()
            }));
        }
        if chunk.last {
            self.finished = true;
        }
        Ok(Some(payload))
    }

    /// Read and discard whatever the engine did not consume, so the
    /// connection stays in step. Returns false when the connection must be
    /// closed instead (the body was malformed).
    pub async fn drain(&mut self) -> bool {
        loop {
            if self.broken.is_some() {
                return false;
            }
            match self.next().await {
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}

impl<R: AsyncRead + Unpin + Send> Body for NetBody<'_, R> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, EngineError> {
        self.next().await
    }
}

pub fn message_kind(m: &Message) -> &'static str {
    match m {
        Message::Request(_) => "request",
        Message::Response(_) => "response",
        Message::Data(_) => "data",
    }
}
