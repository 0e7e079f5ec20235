//! The [`Client`] and its operations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::cluster::ClusterMap;
use proto::{
    ErrorCode, FileId, FileStat, Message, MetaEntry, MetaMode, Reply, Request, RequestEnvelope,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::cluster::ClusterRouter;
use crate::config::ClientConfig;
use crate::conn::{Body, Sink};
use crate::error::{ClientError, Result};
use crate::leader::ClientTimeouts;
use crate::options::{ByteRange, FileMeta, PingInfo, UploadOptions};
use crate::pool::Pool;
use crate::route::{Route, Router, Target};

/// A handle to a Chorus cluster ([`connect`](Self::connect)) or to one
/// dataserver ([`connect_direct`](Self::connect_direct)).
///
/// Cheap to clone; clones share the connection pool, the client id, the
/// sequence counter and (in cluster mode) the map subscription. Every operation takes a pooled connection for its
/// duration, so one `Client` can be used from many tasks at once.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    pool: Pool,
    router: Router,
    client_id: u64,
    next_seq: AtomicU64,
    next_id: AtomicU64,
}

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientStats {
    /// TCP connections opened since the client was created.
    pub connections_opened: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.router.describe())
            .field("client_id", &self.inner.client_id)
            .finish()
    }
}

/// The longest pause between two attempts of an operation waiting for a
/// usable master (cluster mode), unless a newer map ends it earlier.
const CLUSTER_BACKOFF_MAX: Duration = Duration::from_millis(500);

fn parse_id(id: &str) -> Result<FileId> {
    Ok(FileId::parse(id)?)
}

impl Client {
    /// Connect straight to one dataserver at `addr` (`host:port`) with the
    /// default [`ClientConfig`]. One connection is opened at once, so an
    /// unreachable server is reported here.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), client::ClientError> {
    /// let client = client::Client::connect_direct("127.0.0.1:23000").await?;
    /// let info = client.ping().await?;
    /// println!("server {} of {}", info.server_id, info.group);
    /// # Ok(()) }
    /// ```
    pub async fn connect_direct(addr: impl Into<String>) -> Result<Client> {
        Self::connect_direct_with(addr, ClientConfig::default()).await
    }

    /// [`connect_direct`](Self::connect_direct) with explicit settings.
    pub async fn connect_direct_with(addr: impl Into<String>, cfg: ClientConfig) -> Result<Client> {
        let addr: Arc<str> = addr.into().into();
        let client = Self::new_direct(addr.clone(), cfg);
        let conn = client.inner.pool.get(&addr).await?;
        client.inner.pool.put(conn);
        Ok(client)
    }

    /// Connect to a cluster through its leaders (`host:port` each; one
    /// reachable leader is enough) with the default [`ClientConfig`].
    ///
    /// The client subscribes to the cluster map and keeps it current: the
    /// Raft leader pushes every change (no polling), and the subscription
    /// moves to the next Raft leader by itself. Returns once the first map
    /// arrived (or fails with a timeout after
    /// `max(connect_timeout, cluster_wait)`).
    ///
    /// An upload picks a group by [`ClientConfig::upload_group_rule`]
    /// among the groups that can take it. Then, by the group's replication
    /// mode (the group is part of the file id):
    ///
    /// * **sync**: every operation goes to the group's master and carries
    ///   the group's epoch (reads under [`ReadRule::Any`] go to the ACTIVE
    ///   members in turn). With the default [`ReadRule::Master`] the
    ///   client is linearizable.
    /// * **async** (FastDFS): uploads go to the group's ACTIVE members in
    ///   turn (the member becomes the new file's source server); appends,
    ///   modifies, truncates, deletes and metadata changes go to the file's
    ///   source server (the id names it) and wait, like a refused write,
    ///   while it is not ACTIVE; reads follow the [`ReadRule`]. Peers get
    ///   changes by asynchronous push, so reads from them may be stale:
    ///   **nothing is linearizable in an async group**; see [`ReadRule`]
    ///   for what each rule still promises.
    ///
    /// When the chosen server refuses (`not_master`, `stale_epoch`,
    /// `unavailable`) or cannot be reached, or the map names no usable
    /// server, the operation waits for a fresher map and is sent again with
    /// the same sequence number, for up to [`ClientConfig::cluster_wait`]
    /// in total.
    ///
    /// [`ReadRule`]: crate::ReadRule
    /// [`ReadRule::Any`]: crate::ReadRule::Any
    /// [`ReadRule::Master`]: crate::ReadRule::Master
    /// Every operation whose body can be sent again is retried this way
    /// (not those streaming from a reader, nor downloads that already wrote
    /// to a caller's writer), appends included: a write resent after a lost
    /// connection may have been applied already; dataservers recognise
    /// such a resend by `(client_id, seq)` and answer it with the first
    /// attempt's answer (the master and every slave keep the recent
    /// answers in memory, so this holds across a failover, not across a
    /// restart of every member).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), client::ClientError> {
    /// let client = client::Client::connect(["127.0.0.1:7100", "127.0.0.1:7101"]).await?;
    /// let stat = client.upload(b"hi", client::UploadOptions::new()).await?;
    /// let map = client.cluster_map().expect("cluster mode");
    /// println!("{} went to {:?}", stat.file_id, map.master_of("group1").map(|s| &s.addr));
    /// # Ok(()) }
    /// ```
    pub async fn connect(leaders: impl IntoIterator<Item = impl Into<String>>) -> Result<Client> {
        Self::connect_with(leaders, ClientConfig::default()).await
    }

    /// [`connect`](Self::connect) with explicit settings.
    pub async fn connect_with(
        leaders: impl IntoIterator<Item = impl Into<String>>,
        cfg: ClientConfig,
    ) -> Result<Client> {
        let leaders: Vec<String> = leaders
            .into_iter()
            .map(Into::into)
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if leaders.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no leader addresses given".into(),
            ));
        }
        let timeouts = ClientTimeouts {
            connect: cfg.connect_timeout.min(Duration::from_secs(1)),
            ..ClientTimeouts::default()
        };
        let router = ClusterRouter::start(
            leaders.clone(),
            timeouts,
            cfg.upload_group_rule,
            cfg.read_rule,
        );
        let wait = cfg.connect_timeout.max(cfg.cluster_wait);
        if !router.wait_first(wait).await {
            return Err(ClientError::Timeout {
                addr: leaders.join(","),
                during: "waiting for the cluster map from the leaders",
                after: wait,
            });
        }
        Ok(Self::new(Router::Cluster(router), cfg))
    }

    fn new_direct(addr: Arc<str>, cfg: ClientConfig) -> Client {
        Self::new(Router::Direct(addr), cfg)
    }

    fn new(router: Router, cfg: ClientConfig) -> Client {
        let pool = Pool::new(cfg.pool_size, cfg.connect_timeout, cfg.request_timeout);
        let client_id = loop {
            let id = rand::random::<u64>();
            if id != 0 {
                break id;
            }
        };
        Client {
            inner: Arc::new(Inner {
                cfg,
                pool,
                router,
                client_id,
                next_seq: AtomicU64::new(1),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// This client's random id, sent with every request.
    pub fn client_id(&self) -> u64 {
        self.inner.client_id
    }

    /// The settings in use.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// Cluster mode: the latest cluster map (`None` in direct mode).
    pub fn cluster_map(&self) -> Option<ClusterMap> {
        self.inner
            .router
            .cluster()
            .and_then(|c| c.current())
            .map(|m| ClusterMap::clone(&m))
    }

    /// Cluster mode: the leader addresses given to
    /// [`connect`](Self::connect) (`None` in direct mode).
    pub fn leaders(&self) -> Option<&[String]> {
        self.inner.router.cluster().map(|c| c.leaders())
    }

    /// Cluster mode: wait up to `timeout` for a map whose version is above
    /// `version`, and return it (`None` on timeout or in direct mode).
    pub async fn wait_cluster_map(&self, version: u64, timeout: Duration) -> Option<ClusterMap> {
        let c = self.inner.router.cluster()?;
        if c.wait_newer(version, timeout).await {
            self.cluster_map()
        } else {
            None
        }
    }

    /// Counters (connections opened).
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            connections_opened: self.inner.pool.opened(),
        }
    }

    /// Idle pooled connections to the direct server (for tests).
    #[doc(hidden)]
    pub fn idle_connections(&self) -> usize {
        self.inner.pool.idle_count(self.inner.router.describe())
    }

    fn unexpected(&self, reply: &Reply, want: &str) -> ClientError {
        let got = match reply {
            Reply::Pong { .. } => "pong",
            Reply::Stat(_) => "stat",
            Reply::Download { .. } => "download",
            Reply::Deleted { .. } => "deleted",
            Reply::Meta { .. } => "meta",
            Reply::Exists(_) => "exists",
            Reply::Replicated { .. } => "replicated",
            Reply::ReplicatedBatch { .. } => "replicated_batch",
            Reply::ReplLog { .. } => "repl_log",
            Reply::ReplFile { .. } => "repl_file",
            Reply::Activated { .. } => "activated",
            Reply::Files { .. } => "files",
            Reply::AsyncWanted { .. } => "async_wanted",
        };
        ClientError::Protocol {
            addr: self.inner.router.describe().to_string(),
            message: format!("expected a {want} reply, got {got}"),
        }
    }

    fn stat_reply(&self, reply: Reply) -> Result<FileStat> {
        match reply {
            Reply::Stat(s) => Ok(s),
            other => Err(self.unexpected(&other, "stat")),
        }
    }

    /// Run one logical operation: route, take a connection, send, receive,
    /// and retry when that is safe. Retries reuse the operation's `seq`.
    async fn exchange(
        &self,
        target: Target<'_>,
        op: Request,
        idempotent: bool,
        mut body: Body<'_>,
        mut sink: Sink<'_>,
    ) -> Result<Reply> {
        let inner = &*self.inner;
        let seq = inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut msg = Message::Request(RequestEnvelope {
            id: 0,
            client_id: inner.client_id,
            seq,
            epoch: 0,
            op,
        });
        let vec_start = match &sink {
            Sink::Vec(v) => v.len(),
            _ => 0,
        };
        let mut attempt: u32 = 0;
        // Cluster mode: waiting for a usable master ends at this deadline.
        let deadline = Instant::now() + inner.cfg.cluster_wait;
        let mut cluster_backoff = inner.cfg.retry_backoff;
        // Async groups: the source server to ask after a peer said the file
        // is not there (at most once per operation).
        let mut redirect: Option<Route> = None;
        loop {
            let routed = match redirect.take() {
                Some(r) => Ok(r),
                None => inner.router.route(target),
            };
            let route = match routed {
                Ok(r) => r,
                Err(e) => {
                    let cluster = inner.router.cluster();
                    let left = deadline.saturating_duration_since(Instant::now());
                    match cluster {
                        Some(c) if e.is_retryable() && !left.is_zero() => {
                            let version = c.current().map_or(0, |m| m.version);
                            debug!(seq, error = %e, "no route; waiting for a newer map");
                            c.wait_newer(version, left).await;
                            continue;
                        }
                        _ => return Err(e),
                    }
                }
            };
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            if let Message::Request(env) = &mut msg {
                env.id = id;
                env.epoch = route.epoch;
            }
            let outcome = self
                .attempt(&route.addr, &msg, id, &mut body, &mut sink)
                .await;
            let resendable = body.replayable() && !sink.committed();
            if let Some(source) = route.fallback.as_ref().filter(|_| resendable) {
                let missing = match &outcome {
                    Ok(Ok(Reply::Exists(false))) => true,
                    Ok(Err(wire)) => wire.code == ErrorCode::NotFound,
                    _ => false,
                };
                if missing {
                    debug!(
                        seq,
                        peer = %route.addr,
                        source = %source,
                        "not on this peer (yet); asking the file's source server"
                    );
                    if let Sink::Vec(v) = &mut sink {
                        v.truncate(vec_start);
                    }
                    redirect = Some(Route {
                        addr: source.clone(),
                        epoch: route.epoch,
                        map_version: route.map_version,
                        fallback: None,
                    });
                    continue;
                }
            }
            let err = match outcome {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(wire)) => ClientError::from(wire),
                Err(e) => e,
            };
            if let Some(c) = inner.router.cluster() {
                let left = deadline.saturating_duration_since(Instant::now());
                if resendable && err.wants_fresher_map() && !left.is_zero() {
                    if let Sink::Vec(v) = &mut sink {
                        v.truncate(vec_start);
                    }
                    // A newer map ends the wait at once; the backoff covers
                    // a server that has not caught up with the map yet.
                    let wait = cluster_backoff.min(left);
                    debug!(
                        seq,
                        addr = %route.addr,
                        epoch = route.epoch,
                        map = route.map_version,
                        error = %err,
                        "retrying once the map moves on"
                    );
                    c.wait_newer(route.map_version, wait).await;
                    cluster_backoff = (cluster_backoff * 2).min(CLUSTER_BACKOFF_MAX);
                    continue;
                }
            }
            let nothing_sent = matches!(
                err,
                ClientError::Connect { .. }
                    | ClientError::Timeout {
                        during: "connecting",
                        ..
                    }
            );
            let may_retry = attempt < inner.cfg.retries
                && resendable
                && (nothing_sent || (idempotent && err.is_retryable()));
            if !may_retry {
                return Err(err);
            }
            if let Sink::Vec(v) = &mut sink {
                v.truncate(vec_start);
            }
            let wait = inner
                .cfg
                .retry_backoff
                .saturating_mul(1u32 << attempt.min(16));
            debug!(seq, attempt, error = %err, ?wait, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        addr: &Arc<str>,
        msg: &Message,
        id: u64,
        body: &mut Body<'_>,
        sink: &mut Sink<'_>,
    ) -> Result<std::result::Result<Reply, proto::WireError>> {
        let mut conn = self.inner.pool.get(addr).await?;
        let res = conn
            .call(msg, id, body, sink, self.inner.cfg.verify_crc)
            .await;
        if res.is_ok() {
            self.inner.pool.put(conn);
        }
        res
    }

    async fn simple(&self, target: Target<'_>, op: Request, idempotent: bool) -> Result<Reply> {
        self.exchange(target, op, idempotent, Body::None, Sink::None)
            .await
    }

    /// Check that the server is alive and ask who it is.
    pub async fn ping(&self) -> Result<PingInfo> {
        match self.simple(Target::Any, Request::Ping, true).await? {
            Reply::Pong {
                server_id,
                group,
                data_version,
            } => Ok(PingInfo {
                server_id,
                group,
                data_version,
            }),
            other => Err(self.unexpected(&other, "pong")),
        }
    }

    fn upload_request(size: u64, opts: UploadOptions) -> Result<Request> {
        proto::file_id::validate_ext(&opts.ext)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        Ok(Request::Upload {
            size,
            ext: opts.ext,
            meta: opts.meta,
            appender: opts.appender,
        })
    }

    /// Store `data` as a new file; the server assigns its id.
    ///
    /// ```no_run
    /// # async fn run(client: client::Client) -> Result<(), client::ClientError> {
    /// use client::UploadOptions;
    /// let stat = client
    ///     .upload(b"hello", UploadOptions::new().ext("txt").meta("lang", "en"))
    ///     .await?;
    /// println!("stored as {} (version {})", stat.file_id, stat.version);
    /// # Ok(()) }
    /// ```
    pub async fn upload(&self, data: &[u8], opts: UploadOptions) -> Result<FileStat> {
        let op = Self::upload_request(data.len() as u64, opts)?;
        let reply = self
            .exchange(Target::Create, op, false, Body::Slice(data), Sink::None)
            .await?;
        self.stat_reply(reply)
    }

    /// Store exactly `size` bytes read from `reader` as a new file,
    /// streamed in [`STREAM_CHUNK`](proto::frame::STREAM_CHUNK) pieces
    /// (never held in memory whole). Fails with
    /// [`ClientError::ShortBody`] if the reader ends early; bytes beyond
    /// `size` are not read.
    ///
    /// ```no_run
    /// # async fn run(client: client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let file = tokio::fs::File::open("backup.tar").await?;
    /// let size = file.metadata().await?.len();
    /// let stat = client
    ///     .upload_reader(file, size, client::UploadOptions::new().ext("tar"))
    ///     .await?;
    /// println!("{}", stat.file_id);
    /// # Ok(()) }
    /// ```
    pub async fn upload_reader<R>(
        &self,
        mut reader: R,
        size: u64,
        opts: UploadOptions,
    ) -> Result<FileStat>
    where
        R: AsyncRead + Unpin + Send,
    {
        let op = Self::upload_request(size, opts)?;
        let reply = self
            .exchange(
                Target::Create,
                op,
                false,
                Body::Reader(&mut reader, size),
                Sink::None,
            )
            .await?;
        self.stat_reply(reply)
    }

    /// Download a whole file into memory. The content is checked against
    /// the server's crc32 unless [`ClientConfig::verify_crc`] is off.
    ///
    /// ```no_run
    /// # async fn run(client: client::Client, id: String) -> Result<(), client::ClientError> {
    /// match client.download(&id).await {
    ///     Ok(bytes) => println!("{} bytes", bytes.len()),
    ///     Err(e) if e.is_not_found() => println!("no such file"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn download(&self, file_id: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.download_into(file_id, ByteRange::all(), &mut out)
            .await?;
        Ok(out)
    }

    /// Download `length` bytes from `offset` (fewer when the file ends
    /// first).
    pub async fn download_range(&self, file_id: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.download_into(file_id, ByteRange::new(offset, length), &mut out)
            .await?;
        Ok(out)
    }

    /// Download `range` of a file, appending to `out` (reuse one vector
    /// across calls to avoid allocating per download). Returns the file's
    /// stat.
    pub async fn download_into(
        &self,
        file_id: &str,
        range: impl Into<ByteRange>,
        out: &mut Vec<u8>,
    ) -> Result<FileStat> {
        let fid = parse_id(file_id)?;
        let range = range.into();
        let op = Request::Download {
            file_id: file_id.to_string(),
            offset: range.offset,
            length: range.length,
        };
        let reply = self
            .exchange(Target::Read(&fid), op, true, Body::None, Sink::Vec(out))
            .await?;
        match reply {
            Reply::Download { stat, .. } => Ok(stat),
            other => Err(self.unexpected(&other, "download")),
        }
    }

    /// Stream `range` of a file into `writer` (chunk by chunk; a 2 GiB file
    /// is never held in memory). Returns the file's stat. A failed
    /// download may leave part of the data written; it is retried only if
    /// nothing was written yet. A whole-file download is checked against
    /// the crc32 only after all data was written.
    ///
    /// ```no_run
    /// # async fn run(client: client::Client, id: String) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut out = tokio::fs::File::create("copy.bin").await?;
    /// let stat = client.download_to(&id, &mut out, ..).await?;
    /// println!("{} bytes, version {}", stat.size, stat.version);
    /// # Ok(()) }
    /// ```
    pub async fn download_to<W>(
        &self,
        file_id: &str,
        mut writer: W,
        range: impl Into<ByteRange>,
    ) -> Result<FileStat>
    where
        W: AsyncWrite + Unpin + Send,
    {
        let fid = parse_id(file_id)?;
        let range = range.into();
        let op = Request::Download {
            file_id: file_id.to_string(),
            offset: range.offset,
            length: range.length,
        };
        let sink = Sink::Writer {
            writer: &mut writer,
            written: 0,
        };
        let reply = self
            .exchange(Target::Read(&fid), op, true, Body::None, sink)
            .await?;
        match reply {
            Reply::Download { stat, .. } => Ok(stat),
            other => Err(self.unexpected(&other, "download")),
        }
    }

    /// Delete a file; with `if_version`, only if that is its current
    /// version. Returns the version of the deletion.
    ///
    /// ```no_run
    /// # async fn run(client: client::Client, id: String) -> Result<(), client::ClientError> {
    /// let stat = client.stat(&id).await?;
    /// match client.delete(&id, Some(stat.version)).await {
    ///     Err(e) if e.is_version_mismatch() => println!("changed meanwhile; kept"),
    ///     other => { other?; }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, file_id: &str, if_version: Option<u64>) -> Result<u64> {
        let fid = parse_id(file_id)?;
        let op = Request::Delete {
            file_id: file_id.to_string(),
            if_version,
        };
        match self.simple(Target::Write(&fid), op, false).await? {
            Reply::Deleted { version } => Ok(version),
            other => Err(self.unexpected(&other, "deleted")),
        }
    }

    /// Append `data` to an appender file.
    ///
    /// ```no_run
    /// # async fn run(client: client::Client) -> Result<(), client::ClientError> {
    /// use client::UploadOptions;
    /// let log = client.upload(b"", UploadOptions::new().appender(true)).await?;
    /// let stat = client.append(&log.file_id, b"line 1\n", None).await?;
    /// assert_eq!(stat.size, 7);
    /// # Ok(()) }
    /// ```
    pub async fn append(
        &self,
        file_id: &str,
        data: &[u8],
        if_version: Option<u64>,
    ) -> Result<FileStat> {
        let fid = parse_id(file_id)?;
        let op = Request::Append {
            file_id: file_id.to_string(),
            size: data.len() as u64,
            if_version,
        };
        let reply = self
            .exchange(
                Target::Write(&fid),
                op,
                false,
                Body::Slice(data),
                Sink::None,
            )
            .await?;
        self.stat_reply(reply)
    }

    /// Append exactly `size` bytes read from `reader`, streamed.
    pub async fn append_reader<R>(
        &self,
        file_id: &str,
        mut reader: R,
        size: u64,
        if_version: Option<u64>,
    ) -> Result<FileStat>
    where
        R: AsyncRead + Unpin + Send,
    {
        let fid = parse_id(file_id)?;
        let op = Request::Append {
            file_id: file_id.to_string(),
            size,
            if_version,
        };
        let body = Body::Reader(&mut reader, size);
        let reply = self
            .exchange(Target::Write(&fid), op, false, body, Sink::None)
            .await?;
        self.stat_reply(reply)
    }

    /// Overwrite bytes at `offset` with `data`; the file grows when the
    /// write runs past its end (`offset` must be at most its size).
    ///
    /// ```no_run
    /// # async fn run(client: client::Client, id: String) -> Result<(), client::ClientError> {
    /// let before = client.stat(&id).await?;
    /// let after = client.modify(&id, 0, b"HEAD", Some(before.version)).await?;
    /// assert!(after.version > before.version);
    /// # Ok(()) }
    /// ```
    pub async fn modify(
        &self,
        file_id: &str,
        offset: u64,
        data: &[u8],
        if_version: Option<u64>,
    ) -> Result<FileStat> {
        let fid = parse_id(file_id)?;
        let op = Request::Modify {
            file_id: file_id.to_string(),
            offset,
            size: data.len() as u64,
            if_version,
        };
        let reply = self
            .exchange(
                Target::Write(&fid),
                op,
                false,
                Body::Slice(data),
                Sink::None,
            )
            .await?;
        self.stat_reply(reply)
    }

    /// [`modify`](Self::modify) with exactly `size` bytes from `reader`.
    pub async fn modify_reader<R>(
        &self,
        file_id: &str,
        offset: u64,
        mut reader: R,
        size: u64,
        if_version: Option<u64>,
    ) -> Result<FileStat>
    where
        R: AsyncRead + Unpin + Send,
    {
        let fid = parse_id(file_id)?;
        let op = Request::Modify {
            file_id: file_id.to_string(),
            offset,
            size,
            if_version,
        };
        let body = Body::Reader(&mut reader, size);
        let reply = self
            .exchange(Target::Write(&fid), op, false, body, Sink::None)
            .await?;
        self.stat_reply(reply)
    }

    /// Set the size of an appender file (shrink, or extend with zeros).
    pub async fn truncate(
        &self,
        file_id: &str,
        size: u64,
        if_version: Option<u64>,
    ) -> Result<FileStat> {
        let fid = parse_id(file_id)?;
        let op = Request::Truncate {
            file_id: file_id.to_string(),
            size,
            if_version,
        };
        let reply = self.simple(Target::Write(&fid), op, false).await?;
        self.stat_reply(reply)
    }

    /// A file's size, crc32, times, version and kind.
    ///
    /// ```no_run
    /// # async fn run(client: client::Client, id: String) -> Result<(), client::ClientError> {
    /// let stat = client.stat(&id).await?;
    /// println!("{} bytes, crc32 {:08x}", stat.size, stat.crc32);
    /// # Ok(()) }
    /// ```
    pub async fn stat(&self, file_id: &str) -> Result<FileStat> {
        let fid = parse_id(file_id)?;
        let op = Request::Stat {
            file_id: file_id.to_string(),
        };
        let reply = self.simple(Target::Read(&fid), op, true).await?;
        self.stat_reply(reply)
    }

    /// Replace ([`MetaMode::Overwrite`]) or update ([`MetaMode::Merge`]) a
    /// file's metadata.
    ///
    /// ```no_run
    /// # async fn run(client: client::Client, id: String) -> Result<(), client::ClientError> {
    /// use client::{MetaEntry, MetaMode};
    /// client
    ///     .set_meta(&id, vec![MetaEntry::new("owner", "ana")], MetaMode::Merge, None)
    ///     .await?;
    /// let meta = client.get_meta(&id).await?;
    /// assert_eq!(meta.get("owner"), Some("ana"));
    /// # Ok(()) }
    /// ```
    pub async fn set_meta(
        &self,
        file_id: &str,
        meta: Vec<MetaEntry>,
        mode: MetaMode,
        if_version: Option<u64>,
    ) -> Result<FileStat> {
        let fid = parse_id(file_id)?;
        let op = Request::SetMeta {
            file_id: file_id.to_string(),
            meta,
            mode,
            if_version,
        };
        let reply = self.simple(Target::Write(&fid), op, false).await?;
        self.stat_reply(reply)
    }

    /// A file's metadata and the version it was read at.
    pub async fn get_meta(&self, file_id: &str) -> Result<FileMeta> {
        let fid = parse_id(file_id)?;
        let op = Request::GetMeta {
            file_id: file_id.to_string(),
        };
        match self.simple(Target::Read(&fid), op, true).await? {
            Reply::Meta { meta, version } => Ok(FileMeta {
                entries: meta,
                version,
            }),
            other => Err(self.unexpected(&other, "meta")),
        }
    }

    /// Whether the dataserver at `addr` (a member of the file's group) has
    /// the file: asked of that server alone, once — no routing, no
    /// fallback, no retry. The request carries the group's epoch from the
    /// latest map (0 for async groups and in direct mode), so an ACTIVE
    /// slave of a sync group answers too. For watching replication (e.g.
    /// `chorus bench --replica-lag`); applications want
    /// [`exists`](Self::exists).
    pub async fn exists_on(&self, addr: &str, file_id: &str) -> Result<bool> {
        let fid = parse_id(file_id)?;
        let epoch = self
            .inner
            .router
            .cluster()
            .and_then(|c| c.current())
            .and_then(|m| m.group(fid.group()).map(|g| g.epoch))
            .unwrap_or(0);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = Message::Request(RequestEnvelope {
            id,
            client_id: self.inner.client_id,
            seq: self.inner.next_seq.fetch_add(1, Ordering::Relaxed),
            epoch,
            op: Request::Exists {
                file_id: file_id.to_string(),
            },
        });
        let addr: Arc<str> = addr.into();
        let reply = self
            .attempt(&addr, &msg, id, &mut Body::None, &mut Sink::None)
            .await??;
        match reply {
            Reply::Exists(b) => Ok(b),
            other => Err(self.unexpected(&other, "exists")),
        }
    }

    /// Whether the file exists.
    pub async fn exists(&self, file_id: &str) -> Result<bool> {
        let fid = parse_id(file_id)?;
        let op = Request::Exists {
            file_id: file_id.to_string(),
        };
        match self.simple(Target::Read(&fid), op, true).await? {
            Reply::Exists(b) => Ok(b),
            other => Err(self.unexpected(&other, "exists")),
        }
    }
}
