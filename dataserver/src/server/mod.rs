//! The network side of the dataserver: accept connections, serve requests,
//! expose metrics, stop cleanly.

mod body;
mod conn;
mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::cluster::{agent, AgentConfig, ClusterError, ClusterView, SharedView};
use crate::config::Config;
use crate::engine::{Engine, EngineError};
use crate::repl::catchup::CatchUp;
use crate::repl::dedup::Dedup;
use crate::repl::epoch::EpochFile;
use crate::repl::push::AsyncRepl;
use crate::repl::wipe::{self, WipePlan};
use crate::repl::{ReplTiming, Replicator};
use client::leader::LeaderClient;
use conn::ConnContext;
use metrics::Metrics;
use proto::cluster::ReplicationMode;
use proto::{ErrorCode, FrameWriter, Message, ResponseEnvelope, WireError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the store: {0}")]
    Engine(#[from] EngineError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// A started dataserver.
pub struct Server {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    ctx: Arc<ConnContext>,
    max_connections: usize,
    grace: Duration,
    shutdown_tx: watch::Sender<bool>,
    view: SharedView,
    /// Set when leaders are configured.
    agent: Option<AgentConfig>,
    /// Replication (set with `agent`).
    repl: Option<Arc<Replicator>>,
    /// Async groups: the pushers (set with `agent`).
    async_repl: Option<Arc<AsyncRepl>>,
    wipe: WipePlan,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

impl Server {
    /// Open the store and bind the listeners.
    pub async fn start(cfg: Config) -> Result<Server, ServerError> {
        cfg.validate()?;
        let engine_cfg = cfg.engine_config();
        let wipe = WipePlan {
            store_paths: engine_cfg.store_paths.clone(),
            meta_dir: engine_cfg.meta_dir.clone(),
        };
        // A wipe asked for before a restart happens before anything is read.
        let plan = wipe.clone();
        tokio::task::spawn_blocking(move || wipe::apply_pending(&plan))
            .await
            .map_err(|e| EngineError::Internal(format!("wipe task failed: {e}")))?
            .map_err(|e| EngineError::Io {
                context: "wiping the store".into(),
                source: e,
            })?;
        let engine = tokio::task::spawn_blocking(move || Engine::open(engine_cfg))
            .await
            .map_err(|e| EngineError::Internal(format!("engine open task failed: {e}")))??;
        if let Some(r) = engine.rolled_back().filter(|r| r.must_recopy()) {
            tracing::warn!(
                kept = r.kept,
                "a rollback could not rebuild the history it keeps: wiping the store to copy everything again"
            );
            return Err(EngineError::Internal(wipe::wipe_and_restart(&wipe)).into());
        }
        let listener = bind(cfg.listen).await?;
        let id = u64::from(cfg.server_id);
        let (view, agent) = if cfg.clustered() {
            let advertise = match cfg.advertise {
                Some(a) => a,
                None => listener.local_addr().map_err(|source| ServerError::Bind {
                    addr: cfg.listen,
                    source,
                })?,
            };
            let agent = AgentConfig {
                id,
                group: cfg.group.clone(),
                advertise: advertise.to_string(),
                leaders: cfg.leaders.clone(),
                heartbeat: Duration::from_millis(cfg.heartbeat_ms),
                mode: cfg.replication,
                sync_delay_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            };
            (ClusterView::joining(id, cfg.group.clone()), Some(agent))
        } else {
            (ClusterView::standalone(id, cfg.group.clone()), None)
        };
        let view = SharedView::new(view);
        let dedup = Arc::new(Dedup::default());
        {
            let engine = engine.clone();
            let answers = tokio::task::spawn_blocking(move || {
                engine.recent_answers(crate::repl::dedup::SEED_CHANGES)
            })
            .await
            .map_err(|e| EngineError::Internal(format!("reading recent answers failed: {e}")))??;
            info!(
                answers = answers.len(),
                "answers of recent writes read back for retries"
            );
            dedup.seed(answers);
        }
        let repl = agent.as_ref().map(|a| {
            let epochs = Arc::new(EpochFile::open(&wipe.meta_dir));
            let leaders = LeaderClient::with_timeouts(a.leaders.clone(), agent::timeouts());
            let r = Replicator::new(
                a.id,
                a.group.clone(),
                view.clone(),
                leaders,
                ReplTiming::with_deadline(Duration::from_millis(cfg.replication_deadline_ms)),
                epochs,
                dedup.clone(),
            );
            // Async groups replicate after the fact (`repl::push`): no hook.
            if a.mode == ReplicationMode::Sync {
                engine.set_replicate_hook(Some(r.clone()));
            }
            r
        });
        let async_repl = agent
            .as_ref()
            .filter(|a| a.mode == ReplicationMode::Async)
            .map(|a| {
                Arc::new(AsyncRepl::new(
                    a.id,
                    a.group.clone(),
                    engine.clone(),
                    &wipe.meta_dir,
                    a.sync_delay_ms.clone(),
                ))
            });
        let metrics_listener = match cfg.metrics_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(ConnContext {
            engine: engine.clone(),
            metrics: metrics.clone(),
            server_id: cfg.server_id,
            group: cfg.group.clone(),
            max_file_size: cfg.limits.max_file_size,
            idle_timeout: Duration::from_secs(cfg.limits.idle_timeout_secs.max(1)),
            frame_timeout: Duration::from_secs(cfg.limits.frame_timeout_secs.max(1)),
            shutdown: shutdown_rx,
            cluster: view.clone(),
            repl: repl.clone(),
            dedup,
        });
        Ok(Server {
            engine,
            metrics,
            listener,
            metrics_listener,
            ctx,
            max_connections: cfg.limits.max_connections,
            grace: Duration::from_secs(cfg.limits.shutdown_grace_secs),
            shutdown_tx,
            view,
            agent,
            repl,
            async_repl,
            wipe,
        })
    }

    /// What this server knows of the cluster (standalone without leaders).
    pub fn cluster_view(&self) -> &SharedView {
        &self.view
    }

    /// The address the data port is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address the metrics port is bound to, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Serve until `stop` completes (or the cluster agent fails: a refused
    /// join), then stop heartbeats, finish requests in flight (up to the
    /// grace period) and close the store.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            engine,
            metrics,
            listener,
            metrics_listener,
            ctx,
            max_connections,
            grace,
            shutdown_tx,
            view,
            agent,
            repl,
            async_repl,
            wipe,
        } = self;
        let mut agent = agent.zip(repl).map(|(cfg, repl)| {
            let catchup = CatchUp {
                id: cfg.id,
                group: cfg.group.clone(),
                engine: engine.clone(),
                view: view.clone(),
                repl,
                wipe,
                async_repl,
            };
            tokio::spawn(agent::run(
                cfg,
                engine.clone(),
                view.clone(),
                catchup,
                ctx.shutdown.clone(),
            ))
        });
        let mut failed: Option<ClusterError> = None;
        let limit = Arc::new(Semaphore::new(max_connections));
        let mut conns = JoinSet::new();
        if let Some(l) = metrics_listener {
            let (m, e, r) = (metrics.clone(), engine.clone(), ctx.repl.clone());
            let rx = ctx.shutdown.clone();
            conns.spawn(http::serve_metrics(l, m, e, r, rx));
        }
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                ended = agent_ended(&mut agent) => {
                    if let Err(e) = ended {
                        tracing::error!(error = %e, "leaving the cluster; stopping");
                        failed = Some(e);
                        break;
                    }
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        metrics.connection_refused();
                        conns.spawn(refuse(stream, peer));
                        continue;
                    };
                    metrics.connection_opened();
                    debug!(%peer, "connection accepted");
                    let ctx = ctx.clone();
                    conns.spawn(async move {
                        let (r, w) = stream.into_split();
                        conn::serve(ctx, r, w, peer.to_string()).await;
                        drop(permit);
                    });
                }
            }
        }
        info!("stopping: no new connections; finishing requests in flight");
        drop(listener);
        let _ = shutdown_tx.send(true);
        if let Some(h) = agent.take() {
            // The agent stops at the shutdown signal; don't wait on a stuck call.
            let abort = h.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), h)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let drained =
            tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!("grace period over; abandoning {} connections", conns.len());
            conns.abort_all();
        }
        engine.shutdown().await?;
        info!("stopped");
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// Resolves when the cluster agent ends (never when there is none).
async fn agent_ended(
    agent: &mut Option<tokio::task::JoinHandle<Result<(), ClusterError>>>,
) -> Result<(), ClusterError> {
    let Some(h) = agent.as_mut() else {
        return std::future::pending().await;
    };
    let r = h.await;
    *agent = None;
    match r {
        Ok(r) => r,
        Err(e) => Err(ClusterError::Agent(e.to_string())),
    }
}

/// Answer a connection over the limit with `busy` and close it.
async fn refuse(stream: tokio::net::TcpStream, peer: SocketAddr) {
    warn!(%peer, "connection limit reached; refusing");
    let mut w = FrameWriter::new(stream);
    let msg = Message::Response(ResponseEnvelope {
        id: 0,
        result: Err(WireError::new(
            ErrorCode::Busy,
            "too many connections; try again later",
        )),
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), w.write(&msg, &[])).await;
}
