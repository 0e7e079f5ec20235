//! Copying versions from the master (catch-up and gap filling).
//!
//! List the master's binlog from the next version here (`ReplLog`); for
//! each record apply, at the master's version, a no-op (a void record; a
//! file this server already has at that version or newer; a file a later
//! record of the same batch changes again), a delete, or the file's
//! current state and content fetched from the master (`ReplFetch`,
//! installed whole) — so versions stay consecutive and equal to the
//! master's, and the end state matches. Fetches run [`PARALLEL`] at a time
//! and applies are pipelined (each takes its version in order, then waits
//! for durability with the others).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::peer::PeerBody;
use futures::stream::{self, StreamExt};
use proto::{FileId, LogRef, ReplOp, ReplRecord, ReplState, Reply, Request};
use tracing::{debug, info};

use super::peers::PeerPool;
use super::Replicator;
use crate::engine::{Body, Engine, EngineError};

/// How many binlog records one `ReplLog` asks for.
const LOG_BATCH: u32 = 1024;
/// The smallest batch asked for when batches are sized to the pace.
const MIN_BATCH: u32 = 64;
/// Fetches (and applies) in flight.
const PARALLEL: usize = 64;
/// How long a copied version may wait for the ones before it.
const TURN_WAIT: Duration = Duration::from_secs(30);

/// A body from memory.
pub struct BytesBody(pub Option<Bytes>);

impl Body for BytesBody {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, EngineError> {
        Ok(self.0.take().filter(|b| !b.is_empty()))
    }
}

pub struct Puller<'a> {
    engine: &'a Engine,
    repl: &'a Replicator,
    epoch: u64,
    master: PeerPool,
}

impl<'a> Puller<'a> {
    pub fn new(engine: &'a Engine, repl: &'a Replicator, master: &'a str, epoch: u64) -> Self {
        Puller {
            engine,
            repl,
            epoch,
            master: PeerPool::new(
                master,
                Duration::from_secs(2),
                Duration::from_secs(30),
                usize::MAX,
            ),
        }
    }

    async fn call(
        &self,
        op: Request,
        data: Option<&mut Vec<u8>>,
    ) -> Result<Result<Reply, proto::WireError>, String> {
        // This server's id as the client id: the master judges each
        // returning member's pace apart (`repl::pace`).
        let me = (self.repl.id(), 0);
        self.master
            .call_as(op, self.epoch, me, PeerBody::None, data)
            .await
            .map_err(|e| format!("talking to the master at {}: {e}", self.master.addr()))
    }

    /// Copy until this server has what the master could list (a short
    /// batch: everything settled there at that moment); returns this
    /// server's data version then. Writes still in flight on the master
    /// come live (ONLINE) or by a later pull.
    pub async fn run(&self) -> Result<u64, String> {
        self.run_until(Duration::ZERO).await
    }

    /// Like [`Self::run`], but stop as soon as what is left (behind the
    /// master's version at the last listing) would take at most `slack` at
    /// the pace of the last batch. A master writing as fast as this server
    /// copies is never caught by copying alone; the rest comes as live
    /// writes once this server is in the write set, within a deadline that
    /// `slack` stays under.
    pub async fn run_until(&self, slack: Duration) -> Result<u64, String> {
        let mut copied = 0u64;
        let mut max = LOG_BATCH;
        loop {
            let from = self.engine.next_version();
            let batch_started = Instant::now();
            let listed = self.call(Request::ReplLog { from, max }, None).await?;
            let (records, master_last) = match listed {
                Ok(Reply::ReplLog {
                    records,
                    last_version,
                }) => (records, last_version),
                Ok(other) => return Err(format!("unexpected answer to ReplLog: {other:?}")),
                Err(e) => return Err(format!("ReplLog refused: {e}")),
            };
            if records.is_empty() {
                if copied > 0 {
                    info!(copied, data_version = from - 1, "copied from the master");
                }
                return Ok(self.engine.next_version() - 1);
            }
            debug!(from, n = records.len(), "copying versions from the master");
            // A file changed again later in the batch is copied only then.
            let mut last: HashMap<&str, u64> = HashMap::new();
            for r in &records {
                if !r.file_id.is_empty() {
                    last.insert(&r.file_id, r.version);
                }
            }
            let superseded: Vec<bool> = records
                .iter()
                .map(|r| !r.delete && last.get(r.file_id.as_str()).is_some_and(|v| *v > r.version))
                .collect();
            let work: Vec<_> = records
                .iter()
                .zip(superseded)
                .map(|(r, sup)| self.one(r, sup))
                .collect();
            let short = records.len() < max as usize;
            let mut done = stream::iter(work).buffered(PARALLEL);
            while let Some(applied) = done.next().await {
                copied += u64::from(applied?);
            }
            drop(done);
            let reached = self.engine.next_version() - 1;
            let left = master_last.saturating_sub(reached);
            let took = batch_started.elapsed();
            let close = close_enough(left, records.len() as u64, took, slack);
            if !slack.is_zero() {
                // While a batch is copied the master writes on: batches of
                // half the slack's worth keep what is left within reach.
                max = batch_for(records.len() as u64, took, slack / 2);
            }
            if short || close {
                info!(
                    copied,
                    data_version = reached,
                    left,
                    "copied from the master"
                );
                return Ok(reached);
            }
        }
    }

    /// Apply the master's version `r.version` here; false if it already was.
    async fn one(&self, r: &LogRef, superseded: bool) -> Result<bool, String> {
        if r.version < self.engine.next_version() {
            return Ok(false);
        }
        let (rec, data) = if superseded {
            (noop(r.version), Bytes::new())
        } else {
            self.record_for(r).await?
        };
        if !self.engine.wait_turn(r.version, TURN_WAIT).await {
            if self.engine.next_version() > r.version {
                return Ok(false);
            }
            return Err(format!(
                "version {} could not be applied in turn",
                r.version
            ));
        }
        let _applying = self
            .repl
            .slave_apply(self.epoch)
            .await
            .map_err(|e| format!("version {}: {e}", r.version))?;
        if self.engine.next_version() > r.version {
            return Ok(false);
        }
        self.repl
            .epoch_file()
            .observe(self.epoch)
            .map_err(|e| format!("recording epoch {}: {e}", self.epoch))?;
        tracing::trace!(version = r.version, file_id = %rec.file_id, op = ?rec.op, file_version = rec.file_version, superseded, "copying a version");
        match self
            .engine
            .apply_replicated(&rec, &mut BytesBody(Some(data)))
            .await
        {
            Ok(_) => Ok(true),
            // A live write took the version first.
            Err(EngineError::Diverged(_)) if self.engine.next_version() > r.version => Ok(false),
            Err(e) => Err(format!("applying version {}: {e}", r.version)),
        }
    }

    /// The change to apply at one of the master's versions.
    async fn record_for(&self, r: &LogRef) -> Result<(ReplRecord, Bytes), String> {
        let mut rec = noop(r.version);
        if r.file_id.is_empty() {
            return Ok((rec, Bytes::new()));
        }
        if r.delete {
            rec.file_id = r.file_id.clone();
            rec.op = ReplOp::Delete;
            return Ok((rec, Bytes::new()));
        }
        let id = FileId::parse(&r.file_id).map_err(|e| format!("{}: {e}", r.file_id))?;
        if let Ok(st) = self.engine.stat(&id).await {
            if st.version >= r.version {
                return Ok((rec, Bytes::new()));
            }
        }
        match self.fetch(&r.file_id).await? {
            None => Ok((rec, Bytes::new())),
            Some((file_version, st, data)) => {
                rec.file_id = r.file_id.clone();
                rec.op = ReplOp::Install;
                rec.file_version = file_version;
                rec.body_len = st.size;
                rec.state = Some(st);
                Ok((rec, data))
            }
        }
    }

    /// The master's current copy of `file_id`: its file version, state and
    /// content (`None`: the master has no such file).
    pub async fn fetch(&self, file_id: &str) -> Result<Option<(u64, ReplState, Bytes)>, String> {
        let mut data = Vec::new();
        let res = self
            .call(
                Request::ReplFetch {
                    file_id: file_id.to_string(),
                },
                Some(&mut data),
            )
            .await?;
        match res {
            Ok(Reply::ReplFile { state: None, .. }) => Ok(None),
            Ok(Reply::ReplFile {
                file_version,
                state: Some(st),
            }) => Ok(Some((file_version, st, Bytes::from(data)))),
            Ok(other) => Err(format!("unexpected answer to ReplFetch: {other:?}")),
            Err(e) => Err(format!("ReplFetch {file_id} refused: {e}")),
        }
    }
}

/// Would `left` versions take at most `slack`, at the pace of the last
/// batch (`batch` versions in `took`)?
fn close_enough(left: u64, batch: u64, took: Duration, slack: Duration) -> bool {
    if slack.is_zero() {
        return left == 0;
    }
    // left / (batch / took) <= slack, without dividing by zero.
    left as u128 * took.as_micros() <= batch as u128 * slack.as_micros()
}

/// How many versions take `aim` at the pace of the last batch, within
/// [`MIN_BATCH`, `LOG_BATCH`].
fn batch_for(batch: u64, took: Duration, aim: Duration) -> u32 {
    let n = (batch as u128 * aim.as_micros())
        .checked_div(took.as_micros())
        .unwrap_or(u128::from(LOG_BATCH));
    n.clamp(u128::from(MIN_BATCH), u128::from(LOG_BATCH)) as u32
}

fn noop(version: u64) -> ReplRecord {
    ReplRecord {
        version,
        file_id: String::new(),
        op: ReplOp::Noop,
        prev_version: 0,
        file_version: version,
        state: None,
        body_len: 0,
        client_id: 0,
        seq: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::{batch_for, close_enough, LOG_BATCH, MIN_BATCH};
    use std::time::Duration;

    #[test]
    fn close_enough_weighs_what_is_left_against_the_pace() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // 1024 versions in 1 s: 500 left take ~0.5 s.
        assert!(close_enough(500, 1024, s(1), s(1)));
        assert!(!close_enough(500, 1024, s(1), ms(400)));
        assert!(!close_enough(5000, 1024, s(1), s(1)));
        // Without slack only nothing left is close enough.
        assert!(close_enough(0, 1024, s(1), Duration::ZERO));
        assert!(!close_enough(1, 1024, ms(1), Duration::ZERO));
        // A batch that took no time at all.
        assert!(close_enough(10, 1024, Duration::ZERO, s(1)));
    }

    #[test]
    fn batches_follow_the_pace() {
        let ms = Duration::from_millis;
        // 1000 versions a second: 250 ms' worth.
        assert_eq!(batch_for(1000, ms(1000), ms(250)), 250);
        assert_eq!(batch_for(10, ms(1000), ms(250)), MIN_BATCH);
        assert_eq!(batch_for(100_000, ms(1), ms(250)), LOG_BATCH);
        assert_eq!(batch_for(5, Duration::ZERO, ms(250)), LOG_BATCH);
    }
}
