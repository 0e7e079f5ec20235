//! An in-memory fake dataserver speaking the real wire protocol (proto's
//! FrameReader/FrameWriter over real TCP), with injectable faults.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use proto::frame::STREAM_CHUNK;
use proto::{
    DataChunk, ErrorCode, FileId, FileStat, FrameReader, FrameWriter, Message, MetaEntry, MetaMode,
    Reply, Request, RequestEnvelope, ResponseEnvelope, WireError,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A one-shot misbehaviour for the next request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this error instead of running the request.
    Error(ErrorCode),
    /// Close the connection instead of answering.
    Drop,
    /// Answer, then close the connection.
    CloseAfter,
    /// Wait this long before answering.
    Delay(Duration),
    /// Send bytes that are not a frame.
    Garbage,
    /// Send a download header and half the data, then close.
    CloseMidDownload,
    /// Report a wrong crc32 in a download header.
    BadCrc,
    /// Answer with a response carrying another request id.
    WrongId,
}

#[derive(Debug, Clone)]
struct FakeFile {
    data: Vec<u8>,
    meta: Vec<MetaEntry>,
    version: u64,
    appender: bool,
    created_us: u64,
    modified_us: u64,
}

#[derive(Default)]
struct State {
    files: Mutex<HashMap<String, FakeFile>>,
    version: Mutex<u64>,
    faults: Mutex<Vec<Fault>>,
    log: Mutex<Vec<RequestEnvelope>>,
    accepted: AtomicUsize,
    max_chunk: AtomicUsize,
    /// The server id put in the ids of files uploaded here (their source).
    server_id: u32,
}

pub struct FakeServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        Self::start_as(1).await
    }

    /// A fake whose uploads name `server_id` as their source server.
    pub async fn start_as(server_id: u32) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            server_id,
            ..State::default()
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((sock, _)) = listener.accept().await {
                st.accepted.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve(st.clone(), sock));
            }
        });
        FakeServer { addr, state, task }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Faults apply to the following requests, in order.
    pub fn inject(&self, f: Fault) {
        self.state.faults.lock().push(f);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Every request envelope received, in order.
    pub fn log(&self) -> Vec<RequestEnvelope> {
        self.state.log.lock().clone()
    }

    /// The largest body payload seen in one data frame.
    pub fn max_chunk(&self) -> usize {
        self.state.max_chunk.load(Ordering::SeqCst)
    }

    pub fn file_data(&self, id: &str) -> Option<Vec<u8>> {
        self.state.files.lock().get(id).map(|f| f.data.clone())
    }

    /// Copy a file from another fake (an asynchronous push, by hand).
    pub fn copy_file_from(&self, other: &FakeServer, id: &str) {
        let f = other.state.files.lock().get(id).cloned();
        if let Some(f) = f {
            self.state.files.lock().insert(id.to_string(), f);
        }
    }
}

fn err(code: ErrorCode, msg: &str) -> WireError {
    WireError::new(code, msg)
}

impl State {
    fn take_fault(&self) -> Option<Fault> {
        let mut f = self.faults.lock();
        if f.is_empty() {
            None
        } else {
            Some(f.remove(0))
        }
    }

    fn next_version(&self) -> u64 {
        let mut v = self.version.lock();
        *v += 1;
        *v
    }

    fn stat(id: &str, f: &FakeFile) -> FileStat {
        FileStat {
            file_id: id.to_string(),
            size: f.data.len() as u64,
            crc32: crc32fast::hash(&f.data),
            create_time_us: f.created_us,
            modify_time_us: f.modified_us,
            version: f.version,
            appender: f.appender,
        }
    }

    /// Run a request; for downloads also return the bytes to stream.
    fn apply(&self, op: Request, body: Vec<u8>) -> (Result<Reply, WireError>, Vec<u8>) {
        let mut files = self.files.lock();
        let check = |f: &FakeFile, want: Option<u64>| match want {
            Some(v) if v != f.version => Err(err(ErrorCode::VersionMismatch, "version differs")),
            _ => Ok(()),
        };
        let res = (|| match op {
            Request::Ping => Ok((
                Reply::Pong {
                    server_id: 1,
                    group: "group1".into(),
                    data_version: *self.version.lock(),
                },
                Vec::new(),
            )),
            Request::Upload {
                ext,
                meta,
                appender,
                ..
            } => {
                let id = FileId::generate(
                    "group1",
                    0,
                    self.server_id,
                    1_700_000_000,
                    body.len() as u64,
                    0,
                    &ext,
                )
                .map_err(|e| err(ErrorCode::BadRequest, &e.to_string()))?
                .to_string();
                let t = now_us();
                let f = FakeFile {
                    data: body,
                    meta,
                    version: self.next_version(),
                    appender,
                    created_us: t,
                    modified_us: t,
                };
                let st = Self::stat(&id, &f);
                files.insert(id, f);
                Ok((Reply::Stat(st), Vec::new()))
            }
            Request::Download {
                file_id,
                offset,
                length,
            } => {
                let f = files
                    .get(&file_id)
                    .ok_or_else(|| err(ErrorCode::NotFound, "no such file"))?;
                let size = f.data.len() as u64;
                if offset > size {
                    return Err(err(ErrorCode::BadRequest, "offset past the end"));
                }
                let end = match length {
                    Some(l) => (offset + l).min(size),
                    None => size,
                };
                let data = f.data[offset as usize..end as usize].to_vec();
                Ok((
                    Reply::Download {
                        stat: Self::stat(&file_id, f),
                        offset,
                        length: end - offset,
                    },
                    data,
                ))
            }
            Request::Delete {
                file_id,
                if_version,
            } => {
                let f = files
                    .get(&file_id)
                    .ok_or_else(|| err(ErrorCode::NotFound, "no such file"))?;
                check(f, if_version)?;
                files.remove(&file_id);
                Ok((
                    Reply::Deleted {
                        version: self.next_version(),
                    },
                    Vec::new(),
                ))
            }
            Request::Append {
                file_id,
                if_version,
                ..
            } => {
                let v = self.next_version();
                let f = files
                    .get_mut(&file_id)
                    .ok_or_else(|| err(ErrorCode::NotFound, "no such file"))?;
                check(f, if_version)?;
                if !f.appender {
                    return Err(err(ErrorCode::NotAppender, "not an appender"));
                }
                f.data.extend_from_slice(&body);
                f.version = v;
                f.modified_us = now_us();
                Ok((Reply::Stat(Self::stat(&file_id, f)), Vec::new()))
            }
            Request::Modify {
                file_id,
                offset,
                if_version,
                ..
            } => {
                let v = self.next_version();
                let f = files
                    .get_mut(&file_id)
                    .ok_or_else(|| err(ErrorCode::NotFound, "no such file"))?;
                check(f, if_version)?;
                let off = offset as usize;
                if off > f.data.len() {
                    return Err(err(ErrorCode::BadRequest, "offset past the end"));
                }
                let end = off + body.len();
                if end > f.data.len() {
                    f.data.resize(end, 0);
                }
                f.data[off..end].copy_from_slice(&body);
                f.version = v;
                Ok((Reply::Stat(Self::stat(&file_id, f)), Vec::new()))
            }
            Request::Truncate {
                file_id,
                size,
                if_version,
            } => {
                let v = self.next_version();
                let f = files
                    .get_mut(&file_id)
                    .ok_or_else(|| err(ErrorCode::NotFound, "no such file"))?;
                check(f, if_version)?;
                if !f.appender {
                    return Err(err(ErrorCode::NotAppender, "not an appender"));
                }
                f.data.resize(size as usize, 0);
                f.version = v;
                Ok((Reply::Stat(Self::stat(&file_id, f)), Vec::new()))
            }
            Request::Stat { file_id } => {
                let f = files
                    .get(&file_id)
                    .ok_or_else(|| err(ErrorCode::NotFound, "no such file"))?;
                Ok((Reply::Stat(Self::stat(&file_id, f)), Vec::new()))
            }
            Request::SetMeta {
                file_id,
                meta,
                mode,
                if_version,
            } => {
                let v = self.next_version();
                let f = files
                    .get_mut(&file_id)
                    .ok_or_else(|| err(ErrorCode::NotFound, "no such file"))?;
                check(f, if_version)?;
                match mode {
                    MetaMode::Overwrite => f.meta = meta,
                    MetaMode::Merge => {
                        for e in meta {
                            f.meta.retain(|m| m.key != e.key);
                            f.meta.push(e);
                        }
                    }
                }
                f.version = v;
                Ok((Reply::Stat(Self::stat(&file_id, f)), Vec::new()))
            }
            Request::GetMeta { file_id } => {
                let f = files
                    .get(&file_id)
                    .ok_or_else(|| err(ErrorCode::NotFound, "no such file"))?;
                Ok((
                    Reply::Meta {
                        meta: f.meta.clone(),
                        version: f.version,
                    },
                    Vec::new(),
                ))
            }
            Request::Exists { file_id } => {
                Ok((Reply::Exists(files.contains_key(&file_id)), Vec::new()))
            }
            other => Err(err(
                ErrorCode::BadRequest,
                &format!("the fake server does not serve {}", other.op_name()),
            )),
        })();
        match res {
            Ok((r, d)) => (Ok(r), d),
            Err(e) => (Err(e), Vec::new()),
        }
    }
}

async fn respond(
    w: &mut FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    id: u64,
    result: Result<Reply, WireError>,
) -> bool {
    w.write(&Message::Response(ResponseEnvelope { id, result }), &[])
        .await
        .is_ok()
}

async fn send_data(
    w: &mut FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    id: u64,
    data: &[u8],
) -> bool {
    if data.is_empty() {
        return w
            .write(&Message::Data(DataChunk { id, last: true }), &[])
            .await
            .is_ok();
    }
    let n = data.len().div_ceil(STREAM_CHUNK);
    for (i, c) in data.chunks(STREAM_CHUNK).enumerate() {
        let last = i + 1 == n;
        if w.write(&Message::Data(DataChunk { id, last }), c)
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

async fn serve(st: Arc<State>, sock: TcpStream) {
    let (r, w) = sock.into_split();
    let mut r = FrameReader::new(r);
    let mut w = FrameWriter::new(w);
    loop {
        let Ok(Some((msg, _))) = r.read::<Message>().await else {
            return;
        };
        let Message::Request(env) = msg else {
            return;
        };
        st.log.lock().push(env.clone());
        let mut body = Vec::new();
        if let Some(size) = env.op.body_len() {
            loop {
                let Ok(Some((msg, payload))) = r.read::<Message>().await else {
                    return;
                };
                let Message::Data(chunk) = msg else {
                    return;
                };
                assert_eq!(chunk.id, env.id, "data frame for another request");
                st.max_chunk.fetch_max(payload.len(), Ordering::SeqCst);
                body.extend_from_slice(&payload);
                if chunk.last {
                    break;
                }
                assert!(!payload.is_empty(), "empty non-last data frame");
            }
            assert_eq!(body.len() as u64, size, "body length differs from declared");
        }
        let id = env.id;
        let fault = st.take_fault();
        match &fault {
            Some(Fault::Error(code)) => {
                if !respond(&mut w, id, Err(err(*code, "injected"))).await {
                    return;
                }
                continue;
            }
            Some(Fault::Drop) => return,
            Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
            Some(Fault::Garbage) => {
                let _ = w.write_raw(b"HTTP/1.1 500 Oops\r\n\r\n").await;
                return;
            }
            Some(Fault::WrongId) => {
                let _ = respond(&mut w, id + 1000, Ok(Reply::Exists(true))).await;
                continue;
            }
            _ => {}
        }
        let (mut result, data) = st.apply(env.op, body);
        if let (Some(Fault::BadCrc), Ok(Reply::Download { stat, .. })) = (&fault, &mut result) {
            stat.crc32 ^= 1;
        }
        let is_download = matches!(result, Ok(Reply::Download { .. }));
        if !respond(&mut w, id, result).await {
            return;
        }
        if is_download {
            if let Some(Fault::CloseMidDownload) = fault {
                let half = data.len() / 2;
                let _ = w
                    .write(&Message::Data(DataChunk { id, last: false }), &data[..half])
                    .await;
                return;
            }
            if !send_data(&mut w, id, &data).await {
                return;
            }
        }
        if let Some(Fault::CloseAfter) = fault {
            return;
        }
    }
}
