//! A raw protocol connection, for tests that must send exactly what they
//! choose (including garbage).

use std::net::SocketAddr;
use std::time::Duration;

use proto::{
    DataChunk, FrameReader, FrameWriter, Message, Reply, Request, RequestEnvelope, WireError,
};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub struct RawConn {
    pub r: FrameReader<OwnedReadHalf>,
    pub w: FrameWriter<OwnedWriteHalf>,
    next_id: u64,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let s = TcpStream::connect(addr).await.expect("connect");
        let (r, w) = s.into_split();
        RawConn {
            r: FrameReader::new(r),
            w: FrameWriter::new(w),
            next_id: 1,
        }
    }

    /// Connect, or `None` if nothing listens.
    pub async fn connect_checked(addr: SocketAddr) -> Option<RawConn> {
        let s = TcpStream::connect(addr).await.ok()?;
        let (r, w) = s.into_split();
        Some(RawConn {
            r: FrameReader::new(r),
            w: FrameWriter::new(w),
            next_id: 1,
        })
    }

    /// Send a request (and its body, if any) and read the response;
    /// panics if the connection fails.
    pub async fn call(&mut self, op: Request, body: &[u8]) -> Result<Reply, WireError> {
        self.try_call(op, body).await.expect("connection failed")
    }

    /// Like [`call`](Self::call), but a broken connection is an `Err(String)`.
    pub async fn try_call(
        &mut self,
        op: Request,
        body: &[u8],
    ) -> Result<Result<Reply, WireError>, String> {
        self.try_call_at(0, op, body).await
    }

    /// Like [`try_call`](Self::try_call), at group epoch `epoch`.
    pub async fn try_call_at(
        &mut self,
        epoch: u64,
        op: Request,
        body: &[u8],
    ) -> Result<Result<Reply, WireError>, String> {
        let id = self.next_id;
        self.next_id += 1;
        let has_body = op.body_len().is_some();
        let env = RequestEnvelope {
            id,
            client_id: 0,
            seq: 0,
            epoch,
            op,
        };
        let io = |e: proto::FrameError| e.to_string();
        self.w
            .write(&Message::Request(env), &[])
            .await
            .map_err(io)?;
        if has_body {
            let mut chunks = body.chunks(proto::frame::STREAM_CHUNK).peekable();
            if chunks.peek().is_none() {
                self.w
                    .write(&Message::Data(DataChunk { id, last: true }), &[])
                    .await
                    .map_err(io)?;
            }
            while let Some(c) = chunks.next() {
                let last = chunks.peek().is_none();
                self.w
                    .write(&Message::Data(DataChunk { id, last }), c)
                    .await
                    .map_err(io)?;
            }
        }
        let frame = tokio::time::timeout(Duration::from_secs(30), self.r.read::<Message>())
            .await
            .map_err(|_| "response timed out".to_string())?
            .map_err(io)?
            .ok_or_else(|| "connection closed before the response".to_string())?;
        match frame.0 {
            Message::Response(r) if r.id == id => Ok(r.result),
            other => Err(format!("unexpected frame {other:?}")),
        }
    }

    /// Read one response frame (with a timeout).
    pub async fn response(&mut self, id: u64) -> Result<Reply, WireError> {
        let (msg, _) = tokio::time::timeout(Duration::from_secs(10), self.r.read::<Message>())
            .await
            .expect("response timed out")
            .expect("read response")
            .expect("connection closed before the response");
        match msg {
            Message::Response(r) => {
                assert_eq!(r.id, id, "response id");
                r.result
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// Download a whole file.
    pub async fn download(&mut self, file_id: &str) -> Result<Vec<u8>, WireError> {
        let id = self.next_id;
        self.next_id += 1;
        let env = RequestEnvelope {
            id,
            client_id: 0,
            seq: 0,
            epoch: 0,
            op: Request::Download {
                file_id: file_id.to_string(),
                offset: 0,
                length: None,
            },
        };
        self.w
            .write(&Message::Request(env), &[])
            .await
            .expect("send");
        let length = match self.response(id).await? {
            Reply::Download { length, .. } => length,
            other => panic!("unexpected reply {other:?}"),
        };
        let mut out = Vec::with_capacity(length as usize);
        loop {
            let (msg, payload) = self.r.read::<Message>().await.expect("read").expect("eof");
            let Message::Data(DataChunk { last, .. }) = msg else {
                panic!("expected data, got {msg:?}");
            };
            out.extend_from_slice(&payload);
            if last {
                break;
            }
        }
        assert_eq!(out.len() as u64, length);
        Ok(out)
    }

    /// Whether the server closed the connection (reads EOF or an error
    /// within a short time).
    pub async fn closed_by_server(&mut self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.r.read::<Message>()).await,
            Ok(Ok(None)) | Ok(Err(_))
        )
    }
}

pub async fn upload(addr: SocketAddr, data: &[u8]) -> proto::FileStat {
    let mut c = RawConn::connect(addr).await;
    match c
        .call(
            Request::Upload {
                size: data.len() as u64,
                ext: "bin".into(),
                meta: vec![],
                appender: true,
            },
            data,
        )
        .await
    {
        Ok(Reply::Stat(s)) => s,
        other => panic!("upload failed: {other:?}"),
    }
}
