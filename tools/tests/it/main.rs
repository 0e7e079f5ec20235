//! Integration tests: the real `chorus` CLI against a real
//! `chorus-dataserver` process (built beforehand; see `harness`).

mod harness;
mod roundtrip;
