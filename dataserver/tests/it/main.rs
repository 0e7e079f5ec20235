//! Dataserver integration tests: the real `chorus-dataserver` binary on
//! real sockets and disks.

mod async_mode;
mod bad_input;
mod cluster;
mod crash;
mod raw;
mod replication;
mod streaming;
