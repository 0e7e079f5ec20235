//! Applying a change the master replicated, in data-version order.

use proto::{ErrorCode, FileStat, ReplOp, ReplRecord, Reply, WireError};

use std::time::Duration;

use tracing::debug;

use super::pull::{BytesBody, Puller};
use super::{ReplTiming, Replicator};
use crate::cluster::{Role, SharedView};

/// How long a change waits for earlier versions before copying them.
const GAP_PATIENCE: Duration = Duration::from_millis(200);
use crate::engine::{Body, Engine, EngineError};

fn wire(e: EngineError) -> WireError {
    WireError::new(e.code(), e.to_string())
}

/// Check a replicated change's epoch against this server's view: only the
/// current master's changes are taken.
pub fn admit(view: &SharedView, epoch: u64) -> Result<(), WireError> {
    match view.role() {
        Role::Slave { epoch: ours, .. } => {
            if epoch < ours {
                Err(WireError::new(
                    ErrorCode::StaleEpoch,
                    format!("stale epoch {epoch}, current {ours}"),
                ))
            } else if epoch > ours {
                Err(WireError::new(
                    ErrorCode::Unavailable,
                    format!("epoch {epoch} is newer than this server's map ({ours})"),
                ))
            } else {
                Ok(())
            }
        }
        Role::Master { epoch: ours, .. } => Err(WireError::new(
            if epoch < ours {
                ErrorCode::StaleEpoch
            } else {
                ErrorCode::Unavailable
            },
            format!("this server is the master at epoch {ours}"),
        )),
        other => Err(WireError::new(
            ErrorCode::Unavailable,
            format!(
                "this server is {} and takes no replicated changes",
                other.name()
            ),
        )),
    }
}

/// The most body bytes one `ReplicateBatch` may carry (the master sends at
/// most [`super::batch::MAX_BYTES`]).
pub const MAX_BATCH_BODY: u64 = 8 << 20;

/// Apply several changes sent together: each as if sent alone (in version
/// order, each waiting its turn), all at once, so they share the disk's
/// group commit; one answer per change.
pub async fn apply_batch(
    engine: &Engine,
    repl: &Replicator,
    view: &SharedView,
    epoch: u64,
    records: Vec<ReplRecord>,
    body: &mut impl Body,
) -> Result<Reply, WireError> {
    let total: u64 = records
        .iter()
        .try_fold(0u64, |sum, r| sum.checked_add(r.body_len))
        .unwrap_or(u64::MAX);
    if total > MAX_BATCH_BODY {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!("a replicated batch of {total} body bytes exceeds {MAX_BATCH_BODY}"),
        ));
    }
    let mut all = bytes::BytesMut::with_capacity(total as usize);
    while let Some(chunk) = body.next_chunk().await.map_err(wire)? {
        all.extend_from_slice(&chunk);
    }
    let mut all = all.freeze();
    let applies = records.iter().map(|rec| {
        let part = all.split_to((rec.body_len as usize).min(all.len()));
        async move {
            let mut body = BytesBody(Some(part));
            apply(engine, repl, view, epoch, rec, &mut body).await
        }
    });
    let results = futures::future::join_all(applies)
        .await
        .into_iter()
        .map(|r| r.err())
        .collect();
    Ok(Reply::ReplicatedBatch {
        results,
        data_version: engine.data_version(),
    })
}

/// The answer the master gave the client for the change `rec`.
pub fn client_reply(rec: &ReplRecord) -> Reply {
    match (&rec.op, &rec.state) {
        (ReplOp::Delete, _) | (_, None) => Reply::Deleted {
            version: rec.version,
        },
        (_, Some(st)) => Reply::Stat(FileStat {
            file_id: rec.file_id.clone(),
            size: st.size,
            crc32: st.crc32,
            create_time_us: st.create_time_us,
            modify_time_us: st.modify_time_us,
            version: rec.file_version,
            appender: st.appender,
        }),
    }
}

/// Answer for version `v` that this server already took: once it is durable.
async fn already_here(engine: &Engine, v: u64, timing: ReplTiming) -> Result<Reply, WireError> {
    if engine.wait_durable(v, timing.deadline).await {
        Ok(Reply::Replicated {
            data_version: engine.data_version(),
        })
    } else {
        Err(WireError::new(
            ErrorCode::Timeout,
            format!("version {v} is not durable yet"),
        ))
    }
}

/// Apply `rec` (its bytes come from `body`) once every earlier version is
/// here; answer when it is durable. The client's answer is recorded for
/// retries before the slave's permission to apply ends, so a server
/// promoted meanwhile knows it before it takes the retry.
pub async fn apply(
    engine: &Engine,
    repl: &Replicator,
    view: &SharedView,
    epoch: u64,
    rec: &ReplRecord,
    body: &mut impl Body,
) -> Result<Reply, WireError> {
    let timing = repl.timing();
    if rec.version >= engine.next_version() && !engine.wait_turn(rec.version, GAP_PATIENCE).await {
        // Versions this server was not sent (assigned while it turned
        // ONLINE): copy them from the master, one copier at a time.
        if let Ok(_one) = repl.pull_lock().try_lock() {
            if let Role::Slave {
                master: Some(m), ..
            } = view.role()
            {
                if let Err(e) = Puller::new(engine, repl, &m.addr, epoch).run().await {
                    debug!(error = %e, "filling a gap from the master failed");
                }
            }
        }
        // Past it already: the copy took this very version meanwhile.
        if !engine.wait_turn(rec.version, timing.gap_wait).await
            && engine.next_version() <= rec.version
        {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                format!(
                    "versions before {} did not arrive (next here is {})",
                    rec.version,
                    engine.next_version()
                ),
            ));
        }
    }
    let _applying = repl.slave_apply(epoch).await?;
    let r = if rec.version < engine.next_version() {
        // Already here (copied by catch-up from the same master).
        already_here(engine, rec.version, timing).await
    } else {
        repl.epoch_file()
            .observe(epoch)
            .map_err(|e| WireError::new(ErrorCode::Io, format!("recording epoch {epoch}: {e}")))?;
        tracing::trace!(version = rec.version, file_id = %rec.file_id, op = ?rec.op, prev = rec.prev_version, "applying a live change");
        match engine.apply_replicated(rec, body).await {
            Ok(_) => Ok(Reply::Replicated {
                data_version: engine.data_version(),
            }),
            // Copied meanwhile by the gap filler.
            Err(EngineError::Diverged(_)) if engine.next_version() > rec.version => {
                already_here(engine, rec.version, timing).await
            }
            // A copy from the master is running (it holds the pull lock):
            // a batch of it may have skipped an earlier change of this file
            // because this very version changes it again (the copy installs
            // the file's state at this version itself), so the state this
            // change applies to is not here. The copy takes this version.
            Err(EngineError::Diverged(e)) if repl.pull_lock().try_lock().is_err() => {
                debug!(version = rec.version, error = %e, "leaving a live change to the running copy");
                engine.wait_turn(rec.version + 1, timing.gap_wait).await;
                if engine.next_version() > rec.version {
                    already_here(engine, rec.version, timing).await
                } else {
                    Err(wire(EngineError::Diverged(e)))
                }
            }
            Err(e) => Err(wire(e)),
        }
    };
    if r.is_ok() && rec.client_id != 0 && rec.seq != 0 {
        repl.dedup()
            .record(rec.client_id, rec.seq, client_reply(rec));
    }
    r
}
