//! One client connection: read a request, run it against the engine, answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proto::frame::STREAM_CHUNK;
use proto::{
    DataChunk, ErrorCode, FileId, FrameError, FrameReader, FrameWriter, Message, Reply, Request,
    RequestEnvelope, ResponseEnvelope, WireError,
};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tracing::{debug, info_span, warn, Instrument};

use super::body::{message_kind, BodyBufs, NetBody};
use super::metrics::Metrics;
use crate::cluster::view::ungated;
use crate::cluster::{Role, SharedView};
use crate::engine::{Engine, EngineError};
use crate::repl::dedup::{Begin, Dedup};
use crate::repl::{push, slave, Replicator};
use proto::cluster::ServerStatus;

/// Bytes each connection buffers on its read side: a request frame, its
/// archive and a small body usually arrive in one read.
const READ_BUFFER: usize = 16 * 1024;

/// What the connection loop needs from the server.
pub struct ConnContext {
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub server_id: u32,
    pub group: String,
    pub max_file_size: u64,
    pub idle_timeout: Duration,
    pub frame_timeout: Duration,
    /// Flips to true when the server is stopping.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The cluster view every request is admitted against.
    pub cluster: SharedView,
    /// Replication (clustered servers only).
    pub repl: Option<Arc<Replicator>>,
    /// Answers of recent writes, for exactly-once retries.
    pub dedup: Arc<Dedup>,
}

fn unknown_outcome(why: String) -> WireError {
    WireError::new(
        ErrorCode::Unavailable,
        format!("the first attempt of this request was applied here but its replication is unknown ({why}); not running it again"),
    )
}

/// The dedup slot of a client write that carries `(client_id, seq)`.
async fn dedup_begin<'a>(ctx: &'a ConnContext, env: &RequestEnvelope) -> Option<Begin<'a>> {
    if is_write(&env.op) && env.client_id != 0 && env.seq != 0 {
        Some(ctx.dedup.begin(env.client_id, env.seq).await)
    } else {
        None
    }
}

/// Run a client write at most once per `(client_id, seq)`: a resend gets
/// the first attempt's answer, or a refusal when that attempt's outcome is
/// unknown; requests without ids just run.
async fn exactly_once<F: Future<Output = Res>>(
    slot: Option<Begin<'_>>,
    run: impl FnOnce() -> F,
) -> Res {
    match slot {
        Some(Begin::Done(reply)) => {
            debug!("retry of a write already done: its first answer");
            Ok(reply)
        }
        Some(Begin::Unknown(why)) => Err(unknown_outcome(why)),
        Some(Begin::Run(guard)) => {
            let r = run().await;
            guard.finish(&r);
            r
        }
        None => run().await,
    }
}

/// Whether `op` only reads a file.
fn is_read(op: &Request) -> bool {
    matches!(
        op,
        Request::Download { .. }
            | Request::Stat { .. }
            | Request::GetMeta { .. }
            | Request::Exists { .. }
    )
}

/// Whether `op` changes data (a client write).
fn is_write(op: &Request) -> bool {
    matches!(
        op,
        Request::Upload { .. }
            | Request::Append { .. }
            | Request::Modify { .. }
            | Request::Truncate { .. }
            | Request::Delete { .. }
            | Request::SetMeta { .. }
    )
}

/// The gate for one request: replication traffic has its own rules (a
/// change from the current master; catch-up requests to the master at the
/// requester's epoch); client requests go through the cluster gate, and
/// writes on a master also wait for its epoch to have started.
fn gate(ctx: &ConnContext, env: &RequestEnvelope) -> Result<(), WireError> {
    // Async groups (and async traffic anywhere) first.
    let decided = ctx.cluster.with(|v| {
        push::gate::admit(
            v.role(),
            v.map.as_ref(),
            u64::from(ctx.server_id),
            &ctx.group,
            &env.op,
        )
    });
    if let Some(result) = decided {
        return result;
    }
    match &env.op {
        Request::Replicate(_) | Request::ReplicateBatch { .. } => {
            return slave::admit(&ctx.cluster, env.epoch)
        }
        Request::ReplLog { .. } | Request::ReplFetch { .. } | Request::ReplReady { .. } => {
            return match ctx.cluster.role() {
                Role::Master { epoch, .. } if epoch == env.epoch => Ok(()),
                Role::Master { epoch, .. } => Err(WireError::new(
                    if env.epoch < epoch {
                        ErrorCode::StaleEpoch
                    } else {
                        ErrorCode::Unavailable
                    },
                    format!("epoch {} asked, this master is at {epoch}", env.epoch),
                )),
                _ => Err(WireError::new(
                    ErrorCode::NotMaster,
                    "catch-up requests go to the master",
                )),
            };
        }
        _ => {}
    }
    // read_rule = any: an ACTIVE slave serves reads that carry its epoch
    // (a client routing by a current map chose it; see `client::ReadRule`).
    if is_read(&env.op) && env.epoch != 0 {
        let serve = ctx.cluster.with(|v| {
            matches!(v.role(), Role::Slave { epoch, .. } if *epoch == env.epoch)
                && v.my_status() == ServerStatus::Active
        });
        if serve {
            return Ok(());
        }
    }
    ctx.cluster.admit(ungated(&env.op), env.epoch)?;
    if let (Some(repl), Role::Master { epoch, .. }) = (&ctx.repl, ctx.cluster.role()) {
        if is_write(&env.op) {
            repl.writable(epoch)?;
        } else if !ungated(&env.op) {
            repl.serving(epoch)?;
        }
    }
    Ok(())
}

/// How a request ended, for the connection loop.
enum Outcome {
    /// Answered; keep serving this connection.
    Continue,
    /// Answered (or not answerable); close the connection.
    Close,
}

type Res = Result<Reply, WireError>;

fn engine_err(e: EngineError) -> WireError {
    WireError::new(e.code(), e.to_string())
}

fn parse_id(ctx: &ConnContext, s: &str) -> Result<FileId, WireError> {
    let id =
        FileId::parse(s).map_err(|e| WireError::new(ErrorCode::InvalidFileId, e.to_string()))?;
    if id.group() != ctx.group {
        return Err(WireError::new(
            ErrorCode::WrongGroup,
            format!(
                "file {s} belongs to group {}, this server serves {}",
                id.group(),
                ctx.group
            ),
        ));
    }
    Ok(id)
}

/// Serve one connection until the peer closes it, it idles out, or it
/// breaks the protocol.
pub async fn serve<R, W>(ctx: Arc<ConnContext>, reader: R, writer: W, peer: String)
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    // Buffered: a request frame and a small body arrive in one read.
    let mut reader = FrameReader::with_limits(
        BufReader::with_capacity(READ_BUFFER, reader),
        proto::frame::DEFAULT_MAX_META,
        proto::frame::DEFAULT_MAX_PAYLOAD,
    );
    let mut writer = FrameWriter::new(writer);
    let mut bufs = BodyBufs::default();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let next = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(ctx.idle_timeout, reader.read::<Message>()) => r,
        };
        let frame = match next {
            Err(_) => {
                debug!(%peer, "closing idle connection");
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Ok(Some(f))) => f,
            Ok(Err(e)) => {
                if !e.is_disconnect() {
                    warn!(%peer, error = %e, "bad frame; closing connection");
                    ctx.metrics.protocol_error();
                    let code = match e {
                        FrameError::MetaTooLarge { .. } | FrameError::PayloadTooLarge { .. } => {
                            ErrorCode::TooLarge
                        }
                        _ => ErrorCode::Protocol,
                    };
                    let _ = send_response(&mut writer, 0, Err(WireError::new(code, e.to_string())))
                        .await;
                }
                return;
            }
        };
        let env = match frame {
            (Message::Request(env), payload) if payload.is_empty() => env,
            (other, _) => {
                ctx.metrics.protocol_error();
                let why = format!(
                    "expected a request frame without payload, got {}",
                    message_kind(&other)
                );
                warn!(%peer, "{why}; closing connection");
                let _ = send_response(
                    &mut writer,
                    0,
                    Err(WireError::new(ErrorCode::Protocol, why)),
                )
                .await;
                return;
            }
        };
        let span = info_span!(
            "request",
            id = env.id,
            op = env.op.op_name(),
            file_id = env.op.file_id().unwrap_or(""),
            %peer
        );
        let outcome = handle(&ctx, env, &mut reader, &mut bufs, &mut writer)
            .instrument(span)
            .await;
        if let Outcome::Close = outcome {
            return;
        }
    }
}

async fn send_response<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    id: u64,
    result: Res,
) -> Result<(), FrameError> {
    writer
        .write(&Message::Response(ResponseEnvelope { id, result }), &[])
        .await
}

async fn handle<R, W>(
    ctx: &ConnContext,
    env: RequestEnvelope,
    reader: &mut FrameReader<R>,
    bufs: &mut BodyBufs,
    writer: &mut FrameWriter<W>,
) -> Outcome
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let started = std::time::Instant::now();
    let op = env.op.op_name();
    let id = env.id;
    // The cluster gate: role, lease and epoch (see `cluster::view`).
    let admitted = gate(ctx, &env);
    if let Err(e) = &admitted {
        debug!(code = %e.code, error = %e.message, "request refused by the cluster gate");
    }
    // A master whose returning member cannot catch up holds writes to its
    // pace (`repl::pace`; nothing is held otherwise).
    if let (Some(repl), Ok(())) = (&ctx.repl, &admitted) {
        if is_write(&env.op) {
            repl.pace().admit().await;
        }
    }

    // Requests with a body: run them, then make sure the body was consumed.
    if let Some(size) = env.op.body_len() {
        if size > ctx.max_file_size {
            // Too large to drain politely: answer and close.
            let err = WireError::new(
                ErrorCode::TooLarge,
                format!(
                    "body of {size} bytes exceeds this server's limit of {}",
                    ctx.max_file_size
                ),
            );
            ctx.metrics.finish(op, false, started.elapsed());
            let _ = send_response(writer, id, Err(err)).await;
            return Outcome::Close;
        }
        let mut body = NetBody::new(reader, bufs, id, size, ctx.frame_timeout);
        // A refused request's body is drained below, keeping the stream in step.
        let client = (env.client_id, env.seq);
        let result = match admitted {
            Ok(()) => {
                let slot = dedup_begin(ctx, &env).await;
                let body = &mut body;
                exactly_once(slot, move || {
                    run_with_body(ctx, env.op, env.epoch, client, body)
                })
                .await
            }
            Err(e) => Err(e),
        };
        let in_step = body.drain().await;
        if let Some(why) = body.broken() {
            warn!(error = why, "malformed request body; closing connection");
            ctx.metrics.protocol_error();
            let err = WireError::new(ErrorCode::Protocol, why.to_string());
            ctx.metrics.finish(op, false, started.elapsed());
            let _ = send_response(writer, id, Err(err)).await;
            return Outcome::Close;
        }
        if let Err(e) = &result {
            debug!(code = %e.code, error = %e.message, "request failed");
        }
        ctx.metrics.bytes_in(size);
        ctx.metrics.finish(op, result.is_ok(), started.elapsed());
        if send_response(writer, id, result).await.is_err() || !in_step {
            return Outcome::Close;
        }
        return Outcome::Continue;
    }

    if let Err(e) = admitted {
        ctx.metrics.finish(op, false, started.elapsed());
        return match send_response(writer, id, Err(e)).await {
            Ok(()) => Outcome::Continue,
            Err(_) => Outcome::Close,
        };
    }

    if let Request::Download {
        file_id,
        offset,
        length,
    } = env.op
    {
        let out = download(ctx, id, &file_id, offset, length, writer).await;
        ctx.metrics.finish(op, out.is_ok(), started.elapsed());
        return match out {
            Ok(()) => Outcome::Continue,
            Err(DownloadEnd::Answered) => Outcome::Continue,
            Err(DownloadEnd::Broken) => Outcome::Close,
        };
    }

    if let Request::ReplFetch { file_id } = &env.op {
        let out = repl_fetch(ctx, id, file_id, writer).await;
        ctx.metrics.finish(op, out.is_ok(), started.elapsed());
        return match out {
            Ok(()) | Err(DownloadEnd::Answered) => Outcome::Continue,
            Err(DownloadEnd::Broken) => Outcome::Close,
        };
    }

    let slot = dedup_begin(ctx, &env).await;
    let client = (env.client_id, env.seq);
    let result = exactly_once(slot, move || run_simple(ctx, env.op, client)).await;
    if let Err(e) = &result {
        debug!(code = %e.code, error = %e.message, "request failed");
    }
    ctx.metrics.finish(op, result.is_ok(), started.elapsed());
    match send_response(writer, id, result).await {
        Ok(()) => Outcome::Continue,
        Err(_) => Outcome::Close,
    }
}

async fn run_with_body<R: AsyncRead + Unpin + Send>(
    ctx: &ConnContext,
    op: Request,
    epoch: u64,
    client: (u64, u64),
    body: &mut NetBody<'_, R>,
) -> Res {
    match op {
        Request::Replicate(rec) => {
            let Some(repl) = &ctx.repl else {
                return Err(WireError::new(
                    ErrorCode::BadRequest,
                    "this server is not in a cluster",
                ));
            };
            slave::apply(&ctx.engine, repl, &ctx.cluster, epoch, &rec, body).await
        }
        Request::ReplicateBatch { records } => {
            let Some(repl) = &ctx.repl else {
                return Err(WireError::new(
                    ErrorCode::BadRequest,
                    "this server is not in a cluster",
                ));
            };
            slave::apply_batch(&ctx.engine, repl, &ctx.cluster, epoch, records, body).await
        }
        Request::AsyncPush {
            source,
            rec,
            source_time_us,
        } => {
            push::receive::push(
                &ctx.engine,
                &ctx.metrics,
                source,
                &rec,
                source_time_us,
                body,
            )
            .await
        }
        Request::Upload {
            size,
            ext,
            meta,
            appender,
        } => {
            proto::file_id::validate_ext(&ext)
                .map_err(|e| WireError::new(ErrorCode::BadRequest, e.to_string()))?;
            ctx.engine
                .upload_for(size, &ext, meta, appender, body, client)
                .await
                .map(Reply::Stat)
                .map_err(engine_err)
        }
        Request::Append {
            file_id,
            size,
            if_version,
        } => {
            let fid = parse_id(ctx, &file_id)?;
            ctx.engine
                .append_for(&fid, size, if_version, body, client)
                .await
                .map(Reply::Stat)
                .map_err(engine_err)
        }
        Request::Modify {
            file_id,
            offset,
            size,
            if_version,
        } => {
            let fid = parse_id(ctx, &file_id)?;
            ctx.engine
                .modify_for(&fid, offset, size, if_version, body, client)
                .await
                .map(Reply::Stat)
                .map_err(engine_err)
        }
        other => Err(WireError::new(
            ErrorCode::Internal,
            format!("{} has no body", other.op_name()),
        )),
    }
}

async fn run_simple(ctx: &ConnContext, op: Request, client: (u64, u64)) -> Res {
    let e = &ctx.engine;
    match op {
        Request::Ping => Ok(Reply::Pong {
            server_id: ctx.server_id,
            group: ctx.group.clone(),
            data_version: e.data_version(),
        }),
        Request::Delete {
            file_id,
            if_version,
        } => {
            let fid = parse_id(ctx, &file_id)?;
            e.delete_for(&fid, if_version, client)
                .await
                .map(|version| Reply::Deleted { version })
                .map_err(engine_err)
        }
        Request::Truncate {
            file_id,
            size,
            if_version,
        } => {
            let fid = parse_id(ctx, &file_id)?;
            e.truncate_for(&fid, size, if_version, client)
                .await
                .map(Reply::Stat)
                .map_err(engine_err)
        }
        Request::Stat { file_id } => {
            let fid = parse_id(ctx, &file_id)?;
            e.stat(&fid).await.map(Reply::Stat).map_err(engine_err)
        }
        Request::SetMeta {
            file_id,
            meta,
            mode,
            if_version,
        } => {
            let fid = parse_id(ctx, &file_id)?;
            e.set_meta_for(&fid, meta, mode, if_version, client)
                .await
                .map(Reply::Stat)
                .map_err(engine_err)
        }
        Request::GetMeta { file_id } => {
            let fid = parse_id(ctx, &file_id)?;
            e.get_meta(&fid)
                .await
                .map(|(meta, version)| Reply::Meta { meta, version })
                .map_err(engine_err)
        }
        Request::Exists { file_id } => {
            let fid = parse_id(ctx, &file_id)?;
            e.exists(&fid).await.map(Reply::Exists).map_err(engine_err)
        }
        Request::ReplLog { from, max } => {
            let (records, last_version) = e
                .log_refs(from.max(1), (max as usize).clamp(1, 4096))
                .map_err(engine_err)?;
            if let Some(repl) = &ctx.repl {
                // The asking server's id rides as the client id.
                repl.pace().listed(client.0, from, last_version);
            }
            Ok(Reply::ReplLog {
                records,
                last_version,
            })
        }
        Request::AsyncOffer { items, .. } => Ok(push::receive::offer(e, &items)),
        Request::ReplReady { server_id, .. } => match &ctx.repl {
            Some(repl) => repl.activate(e, server_id).await,
            None => Err(WireError::new(
                ErrorCode::BadRequest,
                "this server is not in a cluster",
            )),
        },
        Request::ListFiles { after, limit } => {
            // A page is one scan of the index: keep it off the async workers.
            let engine = Arc::clone(e);
            let (files, done) =
                tokio::task::spawn_blocking(move || engine.list_files(&after, limit as usize))
                    .await
                    .map_err(|err| {
                        WireError::new(ErrorCode::Internal, format!("listing failed: {err}"))
                    })?;
            Ok(Reply::Files {
                files,
                data_version: e.data_version(),
                done,
            })
        }
        other => Err(WireError::new(
            ErrorCode::Internal,
            format!("{} is not a simple request", other.op_name()),
        )),
    }
}

/// Catch-up: a file's state and whole content, like a download.
async fn repl_fetch<W: AsyncWrite + Unpin + Send>(
    ctx: &ConnContext,
    id: u64,
    file_id: &str,
    writer: &mut FrameWriter<W>,
) -> Result<(), DownloadEnd> {
    let fetched = match parse_id(ctx, file_id) {
        Ok(fid) => ctx.engine.fetch_file(&fid).await.map_err(engine_err),
        Err(e) => Err(e),
    };
    let (reply, parts) = match fetched {
        Ok(None) => (
            Reply::ReplFile {
                file_version: 0,
                state: None,
            },
            Vec::new(),
        ),
        Ok(Some((file_version, state, parts))) => (
            Reply::ReplFile {
                file_version,
                state: Some(state),
            },
            parts,
        ),
        Err(e) => {
            return match send_response(writer, id, Err(e)).await {
                Ok(()) => Err(DownloadEnd::Answered),
                Err(_) => Err(DownloadEnd::Broken),
            }
        }
    };
    let has_body = matches!(&reply, Reply::ReplFile { state: Some(_), .. });
    if send_response(writer, id, Ok(reply)).await.is_err() {
        return Err(DownloadEnd::Broken);
    }
    if !has_body {
        return Ok(());
    }
    if parts.is_empty() {
        let last = Message::Data(DataChunk { id, last: true });
        return writer
            .write(&last, &[])
            .await
            .map_err(|_| DownloadEnd::Broken);
    }
    let n = parts.len();
    for (i, p) in parts.into_iter().enumerate() {
        let msg = Message::Data(DataChunk {
            id,
            last: i + 1 == n,
        });
        if writer.write(&msg, &p).await.is_err() {
            return Err(DownloadEnd::Broken);
        }
    }
    Ok(())
}

enum DownloadEnd {
    /// An error response was sent; the connection is still in step.
    Answered,
    /// The stream broke after the header; the connection must close.
    Broken,
}

async fn download<W: AsyncWrite + Unpin + Send>(
    ctx: &ConnContext,
    id: u64,
    file_id: &str,
    offset: u64,
    length: Option<u64>,
    writer: &mut FrameWriter<W>,
) -> Result<(), DownloadEnd> {
    let opened = match parse_id(ctx, file_id) {
        Ok(fid) => ctx
            .engine
            .open_read(&fid, offset, length)
            .await
            .map_err(engine_err),
        Err(e) => Err(e),
    };
    let mut read = match opened {
        Ok(r) => r,
        Err(e) => {
            debug!(code = %e.code, error = %e.message, "download refused");
            return match send_response(writer, id, Err(e)).await {
                Ok(()) => Err(DownloadEnd::Answered),
                Err(_) => Err(DownloadEnd::Broken),
            };
        }
    };
    let header = Reply::Download {
        stat: read.stat.clone(),
        offset: read.offset,
        length: read.length,
    };
    // The answer leaves with the first data frame, in one write.
    let answer = Message::Response(ResponseEnvelope {
        id,
        result: Ok(header),
    });
    if writer.hold(&answer, &[]).is_err() {
        return Err(DownloadEnd::Broken);
    }
    let mut sent: u64 = 0;
    let total = read.length;
    loop {
        let chunk = match read.next_chunk(STREAM_CHUNK).await {
            Ok(c) => c,
            Err(e) => {
                // The header is out; the only honest signal left is to cut
                // the stream so the client sees a short read.
                warn!(error = %e, sent, total, "download failed mid-stream; closing connection");
                return Err(DownloadEnd::Broken);
            }
        };
        let Some(bytes) = chunk else {
            if sent != total {
                warn!(sent, total, "download ended short; closing connection");
                return Err(DownloadEnd::Broken);
            }
            if total == 0 {
                let last = Message::Data(DataChunk { id, last: true });
                if writer.write(&last, &[]).await.is_err() {
                    return Err(DownloadEnd::Broken);
                }
            }
            ctx.metrics.bytes_out(sent);
            return Ok(());
        };
        sent += bytes.len() as u64;
        if sent > total {
            warn!(
                sent,
                total, "engine returned more than asked; closing connection"
            );
            return Err(DownloadEnd::Broken);
        }
        let msg = Message::Data(DataChunk {
            id,
            last: sent == total,
        });
        if writer.write(&msg, &bytes).await.is_err() {
            return Err(DownloadEnd::Broken);
        }
        if sent == total {
            ctx.metrics.bytes_out(sent);
            return Ok(());
        }
    }
}
