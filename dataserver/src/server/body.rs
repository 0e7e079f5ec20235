//! A request body read from the connection's `Data` frames.

use std::time::Duration;

use bytes::Bytes;
use proto::{FrameReader, Message};
use tokio::io::AsyncRead;

use crate::engine::{Body, EngineError};

/// Feeds the engine exactly `size` bytes from `Data` frames, checking that
/// the frames belong to the request and add up to the declared size.
pub struct NetBody<'a, R> {
    reader: &'a mut FrameReader<R>,
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
        id: u64,
        size: u64,
        frame_timeout: Duration,
    ) -> Self {
        NetBody {
            reader,
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
        let frame =
            match tokio::time::timeout(self.frame_timeout, self.reader.read::<Message>()).await {
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
        Ok(Some(Bytes::from(payload)))
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
