//! Cluster membership on the dataserver side.
//!
//! With `leaders` configured the server joins its group through the
//! leaders (retrying until they answer; a refused join stops the server),
//! then heartbeats every `heartbeat_ms`, follows the map the leaders push,
//! and climbs the status ladder through `crate::repl::catchup`. Everything it
//! learns lands in one [`view::ClusterView`]; every request passes the gate
//! [`view::admit`] (see the table in [`view`]) before it reaches the engine.
//! Without leaders the view is [`view::Role::Standalone`] and the gate lets
//! everything through.
//!
//! * [`view`]: the view, the role and the gate (pure).
//! * [`agent`]: the tasks that talk to the leaders.

pub mod agent;
pub mod view;

pub use agent::AgentConfig;
pub use view::{ClusterView, Role, SharedView};

/// Why the server cannot stay in the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The leaders refused the join (wrong group, duplicate id, ...).
    #[error("the leaders refused to let this server join: {0}")]
    JoinRefused(String),
    #[error("cluster agent failed: {0}")]
    Agent(String),
}
