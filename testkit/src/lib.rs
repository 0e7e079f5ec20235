//! Start and stop real Chorus processes for integration tests: the one
//! place every suite gets its leaders and dataservers from.
//!
//! Every process is killed (SIGKILL) when its handle drops, so a failing
//! test never leaves a server behind; every wait is bounded; data
//! directories are temporary unless the test keeps them to restart a server
//! on the same data.
//!
//! - [`Dataserver`] (+ [`DataserverOpts`]): one `chorus-dataserver`.
//! - [`Leaders`]: a group of `chorus-leader`s.
//! - [`Cluster`]: leaders plus one group of dataservers joined to them.
//! - [`bin`], [`free_addr`], [`ping`], [`port_open`], [`block_on`],
//!   [`wait_exit`]: the pieces under them, for tests that run a process
//!   themselves.

mod bin;
mod cluster;
mod dataserver;
mod leaders;
mod net;
mod process;

pub use bin::{bin, bin_dir};
pub use cluster::{Cluster, ClusterOpts};
pub use dataserver::{Dataserver, DataserverOpts};
pub use leaders::{LeaderProc, Leaders};
pub use net::{block_on, free_addr, ping, port_open};
pub use process::{kill, signal, tail, wait_exit};
