//! `chorus-leader`: one member of the leaders' Raft group.

use anyhow::Context;
use clap::Parser;
use leader::config::{Args, LeaderConfig};
use leader::node::Node;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = LeaderConfig::resolve(&args).context("configuration")?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let node = Node::start(&cfg).await.context("starting raft")?;
    tracing::info!(
        id = cfg.id,
        listen = %cfg.listen,
        peers = ?cfg.peers,
        data_dir = %cfg.data_dir.display(),
        "chorus-leader started"
    );
    tokio::spawn(node.clone().run_monitor());
    let server = tokio::spawn(leader::server::serve(listener, node.clone()));
    tokio::select! {
        r = server => {
            r.context("server task")?.context("server")?;
        }
        r = shutdown_signal() => {
            r.context("signal handler")?;
            tracing::info!("shutting down");
            node.raft().shutdown().await;
        }
    }
    Ok(())
}

async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
