//! One connection to a dataserver: frame I/O with timeouts, request bodies
//! and download streams.
//!
//! Frames are read by hand (header, validated archive, payload) rather than
//! through `proto::FrameReader::read`, so payloads land directly in the
//! caller's buffer or in one reused scratch buffer instead of a fresh
//! allocation per frame.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proto::frame::{
    FrameHeader, COALESCE, DEFAULT_MAX_META, DEFAULT_MAX_PAYLOAD, HEADER_LEN, PROTOCOL_VERSION,
    STREAM_CHUNK,
};
use proto::{DataChunk, FrameError, Message, Reply, WireError};
use rkyv::util::AlignedVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tracing::debug;

use crate::error::{ClientError, Result};

/// Bytes the read side buffers; a header, its archive and the start of a
/// payload usually arrive in one read.
const READ_BUFFER: usize = 64 * 1024;
/// Upper bound on what is reserved up front for a download into memory;
/// beyond it the vector grows as data arrives.
const MAX_PRERESERVE: u64 = 64 << 20;
/// How long to look for an early error response after a body write failed.
const SALVAGE_WAIT: Duration = Duration::from_millis(500);

/// The body sent after a request.
pub(crate) enum Body<'a> {
    None,
    Slice(&'a [u8]),
    Reader(&'a mut (dyn AsyncRead + Unpin + Send), u64),
}

impl Body<'_> {
    /// Whether the body can be sent again on a retry.
    pub(crate) fn replayable(&self) -> bool {
        !matches!(self, Body::Reader(..))
    }
}

/// Where downloaded data goes.
pub(crate) enum Sink<'a> {
    None,
    Vec(&'a mut Vec<u8>),
    Writer {
        writer: &'a mut (dyn AsyncWrite + Unpin + Send),
        written: u64,
    },
}

impl Sink<'_> {
    /// Whether data already went somewhere a retry cannot take it back.
    pub(crate) fn committed(&self) -> bool {
        matches!(self, Sink::Writer { written, .. } if *written > 0)
    }
}

/// Run `fut`, failing with a timeout error after `after`.
async fn timed<T>(
    addr: &Arc<str>,
    during: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            addr: addr.to_string(),
            during,
            after,
        }),
    }
}

/// An open connection. Any error returned by its methods leaves it in an
/// unknown state: the caller must drop it, never pool it.
pub(crate) struct Conn {
    addr: Arc<str>,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    wbuf: Vec<u8>,
    meta: AlignedVec,
    scratch: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    /// Open a connection to `addr` (`host:port`).
    pub(crate) async fn connect(
        addr: Arc<str>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Conn> {
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(&*addr)).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    addr: addr.to_string(),
                    during: "connecting",
                    after: connect_timeout,
                })
            }
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    addr: addr.to_string(),
                    source,
                })
            }
            Ok(Ok(s)) => s,
        };
        // Requests are small frames answered one at a time: never wait for
        // Nagle.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%addr, error = %e, "could not set TCP_NODELAY");
        }
        let (r, w) = stream.into_split();
        debug!(%addr, "connected");
        Ok(Conn {
            addr,
            reader: BufReader::with_capacity(READ_BUFFER, r),
            writer: w,
            wbuf: Vec::with_capacity(8 * 1024),
            meta: AlignedVec::new(),
            scratch: Vec::new(),
            timeout: request_timeout,
        })
    }

    pub(crate) fn addr(&self) -> &Arc<str> {
        &self.addr
    }

    /// A pooled connection is reusable when nothing is waiting on it: the
    /// server has not closed it (idle timeout) and sent nothing unasked.
    pub(crate) fn is_reusable(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.reader.get_ref().try_read(&mut probe) {
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }

    fn conn_err(&self, e: std::io::Error) -> ClientError {
        let message = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "closed by the server".to_string()
        } else {
            e.to_string()
        };
        ClientError::Connection {
            addr: self.addr.to_string(),
            message,
        }
    }

    fn frame_err(&self, e: FrameError) -> ClientError {
        match e {
            FrameError::Io(e) => self.conn_err(e),
            FrameError::Truncated => ClientError::Connection {
                addr: self.addr.to_string(),
                message: "closed by the server in the middle of a frame".into(),
            },
            other => self.protocol(other.to_string()),
        }
    }

    pub(crate) fn protocol(&self, message: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            addr: self.addr.to_string(),
            message: message.into(),
        }
    }

    /// Append one frame (header, archive, payload) to the write buffer.
    fn push_frame(&mut self, msg: &Message, payload: &[u8]) -> Result<()> {
        self.push_head(msg, payload.len())?;
        self.wbuf.extend_from_slice(payload);
        Ok(())
    }

    /// Append a frame's header and archive; its `payload_len` bytes must
    /// follow.
    fn push_head(&mut self, msg: &Message, payload_len: usize) -> Result<()> {
        let meta = proto::frame::encode(msg).map_err(|e| self.frame_err(e))?;
        let header = FrameHeader {
            version: PROTOCOL_VERSION,
            flags: 0,
            meta_len: meta.len() as u32,
            payload_len: u32::try_from(payload_len)
                .map_err(|_| self.protocol("payload larger than a frame allows"))?,
        };
        self.wbuf.extend_from_slice(&header.encode());
        self.wbuf.extend_from_slice(&meta);
        Ok(())
    }

    /// Write the buffered frames, then `tail` (a payload too large to
    /// copy), under one timeout.
    async fn flush_with(&mut self, tail: &[u8]) -> Result<()> {
        let addr = self.addr.clone();
        let after = self.timeout;
        let mut buf = std::mem::take(&mut self.wbuf);
        let res = tokio::time::timeout(after, async {
            self.writer.write_all(&buf).await?;
            if !tail.is_empty() {
                self.writer.write_all(tail).await?;
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
        buf.clear();
        self.wbuf = buf;
        match res {
            Err(_) => Err(ClientError::Timeout {
                addr: addr.to_string(),
                during: "sending",
                after,
            }),
            Ok(Err(e)) => Err(self.conn_err(e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Send one data frame carrying `payload`.
    async fn send_data(&mut self, id: u64, last: bool, payload: &[u8]) -> Result<()> {
        let msg = Message::Data(DataChunk { id, last });
        if payload.len() <= COALESCE {
            self.push_frame(&msg, payload)?;
            self.flush_with(&[]).await
        } else {
            self.push_head(&msg, payload.len())?;
            self.flush_with(payload).await
        }
    }

    async fn read_exact_conn(&mut self, buf: &mut [u8]) -> Result<()> {
        match self.reader.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.conn_err(e)),
        }
    }

    /// Read a frame's header and archive; the caller must then consume
    /// exactly the returned number of payload bytes.
    async fn read_head(&mut self) -> Result<(Message, usize)> {
        let addr = self.addr.clone();
        let after = self.timeout;
        timed(&addr, "waiting for the server", after, async {
            let mut h = [0u8; HEADER_LEN];
            self.read_exact_conn(&mut h).await?;
            let header = FrameHeader::decode(&h).map_err(|e| self.frame_err(e))?;
            if header.meta_len > DEFAULT_MAX_META {
                return Err(self.protocol(format!(
                    "frame archive of {} bytes exceeds {DEFAULT_MAX_META}",
                    header.meta_len
                )));
            }
            if header.payload_len > DEFAULT_MAX_PAYLOAD {
                return Err(self.protocol(format!(
                    "frame payload of {} bytes exceeds {DEFAULT_MAX_PAYLOAD}",
                    header.payload_len
                )));
            }
            let mut meta = std::mem::take(&mut self.meta);
            meta.clear();
            meta.resize(header.meta_len as usize, 0);
            let res = self.read_exact_conn(&mut meta[..]).await;
            let msg = res.and_then(|()| {
                proto::frame::decode::<Message>(&meta).map_err(|e| self.frame_err(e))
            });
            self.meta = meta;
            Ok((msg?, header.payload_len as usize))
        })
        .await
    }

    async fn read_payload(&mut self, dst: &mut [u8]) -> Result<()> {
        let addr = self.addr.clone();
        let after = self.timeout;
        timed(&addr, "receiving data", after, self.read_exact_conn(dst)).await
    }

    /// Send a request frame and its body.
    pub(crate) async fn send_request(
        &mut self,
        msg: &Message,
        id: u64,
        body: &mut Body<'_>,
    ) -> Result<()> {
        self.wbuf.clear();
        self.push_frame(msg, &[])?;
        if let Body::Slice(data) = body {
            if data.len() <= COALESCE {
                // Request and small body leave in one write.
                let last = Message::Data(DataChunk { id, last: true });
                self.push_frame(&last, data)?;
                return self.flush_with(&[]).await;
            }
        }
        self.flush_with(&[]).await?;
        let sent = match body {
            Body::None => return Ok(()),
            Body::Slice(data) => self.send_body_slice(id, data).await,
            Body::Reader(r, size) => self.send_body_reader(id, &mut **r, *size).await,
        };
        match sent {
            Err(e @ ClientError::Connection { .. }) => {
                // The server may have refused the body early (too large) and
                // closed; prefer its answer to a bare "connection reset".
                match tokio::time::timeout(SALVAGE_WAIT, self.recv_response(id)).await {
                    Ok(Ok(Err(wire))) => Err(wire.into()),
                    _ => Err(e),
                }
            }
            other => other,
        }
    }

    async fn send_body_slice(&mut self, id: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return self.send_data(id, true, &[]).await;
        }
        let mut chunks = data.chunks(STREAM_CHUNK).peekable();
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.send_data(id, last, chunk).await?;
        }
        Ok(())
    }

    async fn send_body_reader(
        &mut self,
        id: u64,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        size: u64,
    ) -> Result<()> {
        if size == 0 {
            return self.send_data(id, true, &[]).await;
        }
        let mut buf = std::mem::take(&mut self.scratch);
        let res = self.pump_reader(id, reader, size, &mut buf).await;
        self.scratch = buf;
        res
    }

    async fn pump_reader(
        &mut self,
        id: u64,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        size: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let mut remaining = size;
        while remaining > 0 {
            let want = remaining.min(STREAM_CHUNK as u64) as usize;
            buf.resize(want, 0);
            let mut filled = 0;
            while filled < want {
                let n = reader.read(&mut buf[filled..want]).await?;
                if n == 0 {
                    return Err(ClientError::ShortBody {
                        expected: size,
                        got: size - remaining + filled as u64,
                    });
                }
                filled += n;
            }
            remaining -= want as u64;
            let last = remaining == 0;
            self.send_data(id, last, &buf[..want]).await?;
        }
        Ok(())
    }

    /// Read the response to request `id`.
    pub(crate) async fn recv_response(&mut self, id: u64) -> Result<Result<Reply, WireError>> {
        let (msg, payload_len) = self.read_head().await?;
        let env = match msg {
            Message::Response(env) => env,
            Message::Request(_) => return Err(self.protocol("server sent a request frame")),
            Message::Data(_) => {
                return Err(self.protocol("server sent data before answering the request"))
            }
        };
        if payload_len != 0 {
            return Err(self.protocol("response frame with a payload"));
        }
        // A server that could not parse the request answers with id 0.
        if env.id != id && !(env.id == 0 && env.result.is_err()) {
            return Err(self.protocol(format!(
                "response for request {} while waiting for {id}",
                env.id
            )));
        }
        Ok(env.result)
    }

    /// Read the next data frame of request `id`'s download; returns its
    /// payload length and whether it is the last one. `remaining` is what
    /// the reply announced and has not arrived yet.
    async fn next_data(&mut self, id: u64, remaining: u64) -> Result<(usize, bool)> {
        let (msg, len) = self.read_head().await?;
        let chunk = match msg {
            Message::Data(c) => c,
            _ => return Err(self.protocol("expected a data frame in a download")),
        };
        if chunk.id != id {
            return Err(self.protocol(format!(
                "data frame for request {} while receiving {id}",
                chunk.id
            )));
        }
        if len as u64 > remaining {
            return Err(self.protocol("download sent more data than announced"));
        }
        if chunk.last && len as u64 != remaining {
            return Err(self.protocol("download ended before the announced length"));
        }
        if !chunk.last && len == 0 {
            return Err(self.protocol("empty data frame before the last one"));
        }
        Ok((len, chunk.last))
    }

    /// Receive `length` bytes of a download into `sink`, feeding `crc`.
    pub(crate) async fn recv_body(
        &mut self,
        id: u64,
        length: u64,
        sink: &mut Sink<'_>,
        mut crc: Option<&mut crc32fast::Hasher>,
    ) -> Result<()> {
        if let Sink::Vec(v) = sink {
            v.reserve(length.min(MAX_PRERESERVE) as usize);
        }
        let mut remaining = length;
        loop {
            let (len, last) = self.next_data(id, remaining).await?;
            match sink {
                Sink::Vec(v) => {
                    let start = v.len();
                    v.resize(start + len, 0);
                    self.read_payload(&mut v[start..]).await?;
                    if let Some(h) = crc.as_deref_mut() {
                        h.update(&v[start..]);
                    }
                }
                Sink::Writer { writer, written } => {
                    let mut buf = std::mem::take(&mut self.scratch);
                    buf.resize(len, 0);
                    let res = self.read_payload(&mut buf).await;
                    if res.is_ok() {
                        if let Some(h) = crc.as_deref_mut() {
                            h.update(&buf);
                        }
                    }
                    let res = match res {
                        Ok(()) => writer.write_all(&buf).await.map_err(ClientError::Io),
                        Err(e) => Err(e),
                    };
                    self.scratch = buf;
                    res?;
                    *written += len as u64;
                }
                Sink::None => {
                    let mut buf = std::mem::take(&mut self.scratch);
                    buf.resize(len, 0);
                    let res = self.read_payload(&mut buf).await;
                    if res.is_ok() {
                        if let Some(h) = crc.as_deref_mut() {
                            h.update(&buf);
                        }
                    }
                    self.scratch = buf;
                    res?;
                }
            }
            remaining -= len as u64;
            if last {
                break;
            }
        }
        if let Sink::Writer { writer, .. } = sink {
            writer.flush().await?;
        }
        Ok(())
    }

    /// One whole exchange: request, body, response and any download data.
    pub(crate) async fn call(
        &mut self,
        msg: &Message,
        id: u64,
        body: &mut Body<'_>,
        sink: &mut Sink<'_>,
        verify_crc: bool,
    ) -> Result<Result<Reply, WireError>> {
        self.send_request(msg, id, body).await?;
        let resp = self.recv_response(id).await?;
        if let Ok(Reply::Download {
            stat,
            offset,
            length,
        }) = &resp
        {
            let whole = verify_crc && *offset == 0 && *length == stat.size;
            let mut hasher = whole.then(crc32fast::Hasher::new);
            self.recv_body(id, *length, sink, hasher.as_mut()).await?;
            if let Some(h) = hasher {
                let actual = h.finalize();
                if actual != stat.crc32 {
                    return Err(ClientError::ChecksumMismatch {
                        expected: stat.crc32,
                        actual,
                    });
                }
            }
        }
        Ok(resp)
    }
}
