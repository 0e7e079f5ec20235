//! Chorus leaders: a Raft group (openraft) replicating the cluster map,
//! tracking dataserver heartbeats, appointing masters and pushing every map
//! change to subscribers.
//!
//! * [`status`]: server status transitions (pure).
//! * [`map`]: commands on the cluster map and how they apply (pure).
//! * [`raft`]: the openraft boundary: durable log and state machine (redb),
//!   peer RPCs, the [`raft::RaftHandle`].
//! * [`live`]: heartbeat figures and master leases in the Raft leader's memory.
//! * [`node`]: request handling and the failure monitor.
//! * [`server`]: the TCP listener (client requests, subscriptions, Raft RPCs).
//! * [`config`]: flags and TOML configuration.
//!
//! Dataservers, the SDK and the CLI talk to leaders through
//! `client::leader::LeaderClient` in the `client` crate.

pub mod config;
pub mod live;
pub mod map;
pub mod node;
pub mod raft;
pub mod server;
pub mod status;
