//! Integration tests: the real `chorus` CLI against a real
//! `chorus-dataserver` process (built beforehand; see `harness`), and
//! against real clusters of `chorus-leader` and `chorus-dataserver`
//! processes (`cluster_harness`, `cluster`).

mod async_group;
mod cluster;
mod cluster_harness;
mod harness;
mod roundtrip;
mod verify;
