//! Frame format and async codec.
//!
//! ```text
//! +-------+---------+-------+----------+-------------+----------------+---------+
//! | "CH"  | version | flags | meta_len | payload_len | meta (rkyv)    | payload |
//! | 2 B   | 1 B     | 1 B   | u32 LE   | u32 LE      | meta_len bytes | bytes   |
//! +-------+---------+-------+----------+-------------+----------------+---------+
//! ```
//!
//! The header (12 bytes) stays outside the archive, so the archive is read
//! into its own aligned buffer and ends exactly where the root is. Lengths
//! are checked against the limits before anything is allocated, and the
//! archive is validated (bytecheck) before it is used.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"CH";
/// The current frame format version. There is no schema evolution inside an
/// archive: any change to a wire type raises this.
pub const PROTOCOL_VERSION: u8 = 2;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 12;
/// Default maximum size of a frame's archive.
pub const DEFAULT_MAX_META: u32 = 1 << 20;
/// Default maximum size of a frame's payload.
pub const DEFAULT_MAX_PAYLOAD: u32 = 8 << 20;
/// The chunk size senders use when streaming file data.
pub const STREAM_CHUNK: usize = 1 << 20;

/// What can go wrong reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 2]),
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    Version(u8),
    #[error("frame archive of {len} bytes exceeds the limit of {max}")]
    MetaTooLarge { len: u32, max: u32 },
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge { len: u32, max: u32 },
    #[error("frame failed validation: {0}")]
    Invalid(String),
    #[error("could not encode frame: {0}")]
    Encode(String),
}

impl FrameError {
    /// True when the peer simply went away (as opposed to sending garbage).
    pub fn is_disconnect(&self) -> bool {
        match self {
            FrameError::Truncated => true,
            FrameError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u8,
    pub flags: u8,
    pub meta_len: u32,
    pub payload_len: u32,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = self.version;
        h[3] = self.flags;
        h[4..8].copy_from_slice(&self.meta_len.to_le_bytes());
        h[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        h
    }

    pub fn decode(h: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        if h[0..2] != MAGIC {
            return Err(FrameError::BadMagic([h[0], h[1]]));
        }
        if h[2] != PROTOCOL_VERSION {
            return Err(FrameError::Version(h[2]));
        }
        Ok(FrameHeader {
            version: h[2],
            flags: h[3],
            meta_len: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            payload_len: u32::from_le_bytes([h[8], h[9], h[10], h[11]]),
        })
    }
}

/// Encode a message into an archive buffer.
pub fn encode<M>(msg: &M) -> Result<AlignedVec, FrameError>
where
    M: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    rkyv::to_bytes::<rancor::Error>(msg).map_err(|e| FrameError::Encode(e.to_string()))
}

/// Validate an archive and deserialize it. `bytes` must be aligned (an
/// [`AlignedVec`]); nothing unvalidated is ever read.
pub fn decode<M>(bytes: &[u8]) -> Result<M, FrameError>
where
    M: Archive,
    M::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<M, HighDeserializer<rancor::Error>>,
{
    if bytes.is_empty() {
        return Err(FrameError::Invalid("empty archive".into()));
    }
    rkyv::from_bytes::<M, rancor::Error>(bytes).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Reads frames from a byte stream, reusing its buffers.
pub struct FrameReader<R> {
    inner: R,
    meta: AlignedVec,
    max_meta: u32,
    max_payload: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_limits(inner, DEFAULT_MAX_META, DEFAULT_MAX_PAYLOAD)
    }

    pub fn with_limits(inner: R, max_meta: u32, max_payload: u32) -> Self {
        FrameReader {
            inner,
            meta: AlignedVec::new(),
            max_meta,
            max_payload,
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Read the next frame's header. `Ok(None)` on a clean end of stream
    /// (the peer closed between frames).
    pub async fn read_header(&mut self) -> Result<Option<FrameHeader>, FrameError> {
        let mut h = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let n = self.inner.read(&mut h[got..]).await?;
            if n == 0 {
                return if got == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            got += n;
        }
        let header = FrameHeader::decode(&h)?;
        if header.meta_len > self.max_meta {
            return Err(FrameError::MetaTooLarge {
                len: header.meta_len,
                max: self.max_meta,
            });
        }
        if header.payload_len > self.max_payload {
            return Err(FrameError::PayloadTooLarge {
                len: header.payload_len,
                max: self.max_payload,
            });
        }
        Ok(Some(header))
    }

    async fn read_exact_or_truncated(&mut self, buf: &mut [u8]) -> Result<(), FrameError> {
        match self.inner.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
            Err(e) => Err(e.into()),
        }
    }

    /// Read one whole frame: the decoded message and its payload.
    /// `Ok(None)` on a clean end of stream.
    pub async fn read<M>(&mut self) -> Result<Option<(M, Vec<u8>)>, FrameError>
    where
        M: Archive,
        M::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + Deserialize<M, HighDeserializer<rancor::Error>>,
    {
        let Some(header) = self.read_header().await? else {
            return Ok(None);
        };
        self.meta.clear();
        self.meta.resize(header.meta_len as usize, 0);
        let mut meta = std::mem::take(&mut self.meta);
        let res = self.read_exact_or_truncated(&mut meta[..]).await;
        self.meta = meta;
        res?;
        let mut payload = vec![0u8; header.payload_len as usize];
        self.read_exact_or_truncated(&mut payload).await?;
        let msg = decode::<M>(&self.meta)?;
        Ok(Some((msg, payload)))
    }
}

/// Payloads up to this size are copied next to their frame's header and
/// leave in one write; larger ones are written from where they are.
pub const COALESCE: usize = 64 * 1024;

/// Writes frames to a byte stream.
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: Vec::with_capacity(4096),
        }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Append one frame to `buf` (header and archive; the payload too when
    /// it is small enough to copy). Returns whether the payload was copied.
    fn append<M>(&mut self, msg: &M, payload: &[u8]) -> Result<bool, FrameError>
    where
        M: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let meta = encode(msg)?;
        let payload_len = u32::try_from(payload.len())
            .map_err(|_| FrameError::Encode(format!("payload of {} bytes", payload.len())))?;
        let meta_len = u32::try_from(meta.len())
            .map_err(|_| FrameError::Encode(format!("archive of {} bytes", meta.len())))?;
        let header = FrameHeader {
            version: PROTOCOL_VERSION,
            flags: 0,
            meta_len,
            payload_len,
        };
        self.buf.extend_from_slice(&header.encode());
        self.buf.extend_from_slice(&meta);
        let copy = payload.len() <= COALESCE;
        if copy {
            self.buf.extend_from_slice(payload);
        }
        Ok(copy)
    }

    /// Hold one frame (message and a payload of at most [`COALESCE`] bytes)
    /// to go out with the next [`FrameWriter::write`], in the same write:
    /// a download's answer and its first data frame leave as one segment.
    /// The caller must follow it with a `write`.
    pub fn hold<M>(&mut self, msg: &M, payload: &[u8]) -> Result<(), FrameError>
    where
        M: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let mark = self.buf.len();
        match self.append(msg, payload) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.buf.truncate(mark);
                Err(FrameError::Encode(format!(
                    "a held frame's payload must be at most {COALESCE} bytes, not {}",
                    payload.len()
                )))
            }
            Err(e) => {
                self.buf.truncate(mark);
                Err(e)
            }
        }
    }

    /// Write one frame (message and payload), after any held frames, and
    /// flush it.
    pub async fn write<M>(&mut self, msg: &M, payload: &[u8]) -> Result<(), FrameError>
    where
        M: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let res = self.write_inner(msg, payload).await;
        self.buf.clear();
        res
    }

    async fn write_inner<M>(&mut self, msg: &M, payload: &[u8]) -> Result<(), FrameError>
    where
        M: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        // Small payloads go out in the same write as the header.
        let copied = self.append(msg, payload)?;
        self.inner.write_all(&self.buf).await?;
        if !copied {
            self.inner.write_all(payload).await?;
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// Write raw bytes (tests use this to send malformed frames).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.inner.write_all(bytes).await?;
        self.inner.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;

    fn req(op: Request) -> Message {
        Message::Request(RequestEnvelope {
            id: 7,
            client_id: 1,
            seq: 2,
            epoch: 0,
            op,
        })
    }

    #[tokio::test]
    async fn round_trip_with_payload() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b);
        let msg = req(Request::Upload {
            size: 3,
            ext: "jpg".into(),
            meta: vec![MetaEntry::new("k", "v")],
            appender: false,
        });
        w.write(&msg, b"").await.unwrap();
        let data = Message::Data(DataChunk { id: 7, last: true });
        let payload = vec![5u8; 200_000];
        w.write(&data, &payload).await.unwrap();
        let (got, p) = r.read::<Message>().await.unwrap().unwrap();
        assert_eq!(got, msg);
        assert!(p.is_empty());
        let (got, p) = r.read::<Message>().await.unwrap().unwrap();
        assert_eq!(got, data);
        assert_eq!(p, payload);
        drop(w);
        assert!(r.read::<Message>().await.unwrap().is_none());
    }

    /// A held frame goes out first, in the same write as the next one; a
    /// payload too large to hold is refused and leaves nothing behind.
    #[tokio::test]
    async fn held_frame_leaves_with_the_next_write() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b);
        let answer = Message::Data(DataChunk { id: 1, last: false });
        w.hold(&answer, b"abc").unwrap();
        assert!(matches!(
            w.hold(&answer, &vec![0u8; COALESCE + 1]),
            Err(FrameError::Encode(_))
        ));
        // Nothing is written until the next frame.
        let mut probe = [0u8; 1];
        let pending = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            tokio::io::AsyncReadExt::read(r.get_mut(), &mut probe),
        )
        .await;
        assert!(
            pending.is_err(),
            "a held frame must wait for the next write"
        );
        let big = vec![9u8; COALESCE * 2];
        let data = Message::Data(DataChunk { id: 1, last: true });
        w.write(&data, &big).await.unwrap();
        let (got, p) = r.read::<Message>().await.unwrap().unwrap();
        assert_eq!(got, answer);
        assert_eq!(p, b"abc");
        let (got, p) = r.read::<Message>().await.unwrap().unwrap();
        assert_eq!(got, data);
        assert_eq!(p, big);
        // The buffer was emptied: the next frame stands alone.
        w.write(&data, b"x").await.unwrap();
        let (got, p) = r.read::<Message>().await.unwrap().unwrap();
        assert_eq!(got, data);
        assert_eq!(p, b"x");
    }

    #[tokio::test]
    async fn rejects_oversized_before_allocating() {
        let (a, b) = tokio::io::duplex(1024);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::with_limits(b, 1024, 1024);
        let h = FrameHeader {
            version: PROTOCOL_VERSION,
            flags: 0,
            meta_len: u32::MAX,
            payload_len: 0,
        };
        w.write_raw(&h.encode()).await.unwrap();
        match r.read::<Message>().await {
            Err(FrameError::MetaTooLarge { len, .. }) => assert_eq!(len, u32::MAX),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn rejects_garbage() {
        let (a, b) = tokio::io::duplex(1024);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b);
        w.write_raw(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(matches!(
            r.read::<Message>().await,
            Err(FrameError::BadMagic(_))
        ));
    }

    #[tokio::test]
    async fn rejects_invalid_archive() {
        let (a, b) = tokio::io::duplex(4096);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b);
        let body = [0xffu8; 64];
        let h = FrameHeader {
            version: PROTOCOL_VERSION,
            flags: 0,
            meta_len: body.len() as u32,
            payload_len: 0,
        };
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(&body);
        w.write_raw(&bytes).await.unwrap();
        assert!(matches!(
            r.read::<Message>().await,
            Err(FrameError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn truncated_frame_is_reported() {
        let (a, b) = tokio::io::duplex(4096);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b);
        let h = FrameHeader {
            version: PROTOCOL_VERSION,
            flags: 0,
            meta_len: 100,
            payload_len: 0,
        };
        w.write_raw(&h.encode()).await.unwrap();
        w.write_raw(&[1, 2, 3]).await.unwrap();
        drop(w);
        assert!(matches!(
            r.read::<Message>().await,
            Err(FrameError::Truncated)
        ));
    }
}
