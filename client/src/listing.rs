//! Listing one dataserver's files (`ListFiles`), for `chorus verify`.
//!
//! These talk to the server named, never through the router: every member
//! of a group answers a listing whatever its role or status, so each
//! replica can be compared with the others.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proto::{FileSummary, Message, Reply, Request, RequestEnvelope};
use tracing::debug;

use crate::client::Client;
use crate::conn::{Body, Conn};
use crate::error::{ClientError, Result};

/// Files asked for per page by [`Client::list_all_files`] (the server
/// caps a page at 10 000 files and about 1 MiB).
pub const LIST_PAGE: u32 = 5_000;

/// Request ids for listings (any value works on a fresh connection; kept
/// distinct for logs).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One connection to one server, reopened after a failure.
struct Lister<'a> {
    client: &'a Client,
    addr: Arc<str>,
    conn: Option<Conn>,
}

impl<'a> Lister<'a> {
    fn new(client: &'a Client, addr: &str) -> Self {
        Lister {
            client,
            addr: Arc::from(addr),
            conn: None,
        }
    }

    fn protocol(&self, message: String) -> ClientError {
        ClientError::Protocol {
            addr: self.addr.to_string(),
            message,
        }
    }

    /// One exchange on the current connection (opened if needed); the
    /// connection is dropped after any failure.
    async fn exchange(&mut self, after: &str, limit: u32) -> Result<Reply> {
        let cfg = self.client.config();
        let mut conn = match self.conn.take() {
            Some(c) if c.is_reusable() => c,
            _ => Conn::connect(self.addr.clone(), cfg.connect_timeout, cfg.request_timeout).await?,
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let msg = Message::Request(RequestEnvelope {
            id,
            client_id: self.client.client_id(),
            seq: 0,
            epoch: 0,
            op: Request::ListFiles {
                after: after.to_string(),
                limit,
            },
        });
        conn.send_request(&msg, id, &mut Body::None).await?;
        let reply = conn.recv_response(id).await??;
        self.conn = Some(conn);
        Ok(reply)
    }

    /// One page, retried (it only reads) on network errors and retryable
    /// refusals, as [`ClientConfig::retries`](crate::ClientConfig::retries)
    /// allows.
    async fn page(&mut self, after: &str, limit: u32) -> Result<(Vec<FileSummary>, u64, bool)> {
        let cfg = self.client.config();
        let mut attempt: u32 = 0;
        let reply = loop {
            match self.exchange(after, limit).await {
                Ok(r) => break r,
                Err(e) if attempt < cfg.retries && e.is_retryable() => {
                    let wait = cfg.retry_backoff.saturating_mul(1u32 << attempt.min(16));
                    debug!(addr = %self.addr, attempt, error = %e, ?wait, "retrying a listing");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let Reply::Files {
            files,
            data_version,
            done,
        } = reply
        else {
            return Err(self.protocol(format!("expected a files reply, got {reply:?}")));
        };
        // Each id must follow the cursor and the one before it: a server
        // that breaks this could make a listing loop or skip files.
        let mut prev = after;
        for f in &files {
            if f.file_id.as_str() <= prev {
                return Err(self.protocol(format!(
                    "listing out of order: {:?} after {prev:?}",
                    f.file_id
                )));
            }
            prev = &f.file_id;
        }
        if files.len() > limit.max(1) as usize {
            return Err(self.protocol(format!("listing sent {} files, {limit} asked", files.len())));
        }
        Ok((files, data_version, done))
    }
}

impl Client {
    /// One page of the files stored on the dataserver at `addr` (not
    /// routed: any member of any group, master or not, whatever its
    /// status): files whose id sorts strictly after `after` (`""`: from
    /// the first), at most `limit` (the server caps a page at 10 000 files
    /// and about 1 MiB), in ascending id order. Returns the files with
    /// their size, crc32 and version, the server's data version when it
    /// answered, and whether no file follows the page.
    ///
    /// ```no_run
    /// # async fn run(client: client::Client) -> Result<(), client::ClientError> {
    /// let (files, data_version, done) = client.list_files("127.0.0.1:23001", "", 100).await?;
    /// for f in &files {
    ///     println!("{} {} bytes crc32 {:08x} v{}", f.file_id, f.size, f.crc32, f.version);
    /// }
    /// if !done {
    ///     let next = client
    ///         .list_files("127.0.0.1:23001", &files.last().unwrap().file_id, 100)
    ///         .await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_files(
        &self,
        addr: &str,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<FileSummary>, u64, bool)> {
        Lister::new(self, addr).page(after, limit).await
    }

    /// Every file stored on the dataserver at `addr`, in ascending id
    /// order, paging through [`list_files`](Self::list_files) on one
    /// connection; with the server's data version when it answered the
    /// last page. Pages are read one after the other, so a listing taken
    /// while the server changes is not a snapshot: compare replicas when
    /// writes have stopped (or list again).
    pub async fn list_all_files(&self, addr: &str) -> Result<(Vec<FileSummary>, u64)> {
        let mut lister = Lister::new(self, addr);
        let mut all: Vec<FileSummary> = Vec::new();
        let mut after = String::new();
        loop {
            let (files, data_version, done) = lister.page(&after, LIST_PAGE).await?;
            if done {
                all.extend(files);
                return Ok((all, data_version));
            }
            let Some(last) = files.last() else {
                return Err(lister.protocol("an empty listing page that is not the last".into()));
            };
            after.clone_from(&last.file_id);
            all.extend(files);
        }
    }
}
