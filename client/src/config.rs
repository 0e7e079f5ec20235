//! Client settings.

use std::time::Duration;

use crate::cluster::{ReadRule, UploadGroupRule};

/// How a [`Client`](crate::Client) connects, waits and retries.
///
/// Built with chained setters from [`ClientConfig::default`]:
///
/// ```
/// use std::time::Duration;
/// let cfg = client::ClientConfig::default()
///     .connect_timeout(Duration::from_secs(2))
///     .request_timeout(Duration::from_secs(10))
///     .pool_size(8)
///     .retries(3);
/// assert_eq!(cfg.get_pool_size(), 8);
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) pool_size: usize,
    pub(crate) retries: u32,
    pub(crate) retry_backoff: Duration,
    pub(crate) verify_crc: bool,
    pub(crate) upload_group_rule: UploadGroupRule,
    pub(crate) read_rule: ReadRule,
    pub(crate) cluster_wait: Duration,
}

impl Default for ClientConfig {
    /// Connect timeout 5 s, request timeout 30 s, 16 pooled connections per
    /// server, 2 retries with 50 ms backoff, crc verification on; in
    /// cluster mode, round-robin uploads and up to 5 s of waiting for a
    /// master per operation.
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            pool_size: 16,
            retries: 2,
            retry_backoff: Duration::from_millis(50),
            verify_crc: true,
            upload_group_rule: UploadGroupRule::RoundRobin,
            read_rule: ReadRule::Master,
            cluster_wait: Duration::from_secs(5),
        }
    }
}

impl ClientConfig {
    /// Longest wait for a TCP connection to open.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Longest wait for any single step of a request: sending one frame or
    /// receiving the next one. A large transfer may take much longer in
    /// total; it fails only when it stops making progress for this long.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Idle connections kept open for reuse, per server. More connections
    /// are opened under load; those beyond this number are closed when
    /// their request completes. 0 disables pooling.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// How many times an idempotent operation (ping, stat, exists,
    /// get-meta, download) is retried after a connection failure or a
    /// retryable server error. Any operation is retried when the connection
    /// could not even be opened, as long as its body can be replayed.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Wait before the first retry; doubled for each further one.
    pub fn retry_backoff(mut self, d: Duration) -> Self {
        self.retry_backoff = d;
        self
    }

    /// Check whole-file downloads against the crc32 the server reports.
    pub fn verify_crc(mut self, on: bool) -> Self {
        self.verify_crc = on;
        self
    }

    /// Cluster mode: how an upload picks its group.
    pub fn upload_group_rule(mut self, rule: UploadGroupRule) -> Self {
        self.upload_group_rule = rule;
        self
    }

    /// Cluster mode: the longest an operation waits, in total, for the map
    /// to name a usable master after the one it tried refused
    /// (`not_master`, `stale_epoch`, `unavailable`) or could not be reached,
    /// or when its group has no ACTIVE master. The operation is retried
    /// (with the same sequence number) whenever a newer map arrives, and
    /// also after a short backoff in case the server lagged behind the map.
    /// [`Client::connect`](crate::Client::connect) waits at least this long
    /// for the first map.
    pub fn cluster_wait(mut self, d: Duration) -> Self {
        self.cluster_wait = d;
        self
    }

    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    pub fn get_request_timeout(&self) -> Duration {
        self.request_timeout
    }
    pub fn get_pool_size(&self) -> usize {
        self.pool_size
    }
    pub fn get_retries(&self) -> u32 {
        self.retries
    }
    pub fn get_verify_crc(&self) -> bool {
        self.verify_crc
    }
    /// Where reads go in cluster mode (default [`ReadRule::Master`]:
    /// linearizable in sync groups, the file's source server in async
    /// groups; [`ReadRule::Any`] spreads them over ACTIVE members). See
    /// [`ReadRule`] for what each promises in each replication mode.
    pub fn read_rule(mut self, rule: ReadRule) -> Self {
        self.read_rule = rule;
        self
    }

    pub fn get_read_rule(&self) -> ReadRule {
        self.read_rule
    }

    pub fn get_upload_group_rule(&self) -> UploadGroupRule {
        self.upload_group_rule
    }
    pub fn get_cluster_wait(&self) -> Duration {
        self.cluster_wait
    }
}
