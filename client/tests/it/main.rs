//! Client SDK tests against in-process fake dataservers (and a fake leader)
//! over real TCP.

mod cluster;
mod fake;
mod fake_leader;
mod faults;
mod ops;

use std::time::Duration;

use client::{Client, ClientConfig};

/// Every test runs under this bound.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);

pub async fn client_for(fake: &fake::FakeServer, cfg: ClientConfig) -> Client {
    Client::connect_direct_with(fake.addr(), cfg).await.unwrap()
}

pub fn fast_cfg() -> ClientConfig {
    ClientConfig::default()
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(5))
        .retry_backoff(Duration::from_millis(5))
}

/// Deterministic test content.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Bound a test body in time.
#[macro_export]
macro_rules! bounded {
    ($body:expr) => {
        tokio::time::timeout($crate::TEST_LIMIT, $body)
            .await
            .expect("test exceeded its time bound")
    };
}
