//! The receiving side of async replication: answering offers and taking
//! pushed changes.

use std::time::Duration;

use proto::{AsyncItem, ErrorCode, ReplRecord, Reply, WireError};
use tracing::debug;

use crate::engine::{now_us, Body, Engine, PushOutcome};
use crate::server::metrics::Metrics;

/// `AsyncOffer`: which of the offered changes this server lacks.
pub fn offer(engine: &Engine, items: &[AsyncItem]) -> Reply {
    debug!(n = items.len(), "answering an offer");
    Reply::AsyncWanted {
        want: items.iter().map(|i| engine.wants(i)).collect(),
    }
}

/// `AsyncPush`: take one of `source`'s files (see
/// [`Engine::apply_pushed`]) and record how far behind its source it was.
pub async fn push(
    engine: &Engine,
    metrics: &Metrics,
    source: u64,
    rec: &ReplRecord,
    source_time_us: u64,
    body: &mut impl Body,
) -> Result<Reply, WireError> {
    let id = proto::FileId::parse(&rec.file_id)
        .map_err(|e| WireError::new(ErrorCode::InvalidFileId, e.to_string()))?;
    if u64::from(id.source_server()) != source {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!(
                "server {source} pushed {id}, whose source is server {}: a server pushes only its own files",
                id.source_server()
            ),
        ));
    }
    debug!(file = %id, op = rec.op.name(), len = rec.body_len, "taking a pushed change");
    let outcome = engine
        .apply_pushed(rec, body)
        .await
        .map_err(|e| WireError::new(e.code(), e.to_string()))?;
    if outcome == PushOutcome::Taken {
        let lag = Duration::from_micros(now_us().saturating_sub(source_time_us));
        metrics.replica_lag(lag);
        debug!(file = %id, op = rec.op.name(), lag_ms = lag.as_millis() as u64, "took a pushed change");
    }
    Ok(Reply::Replicated {
        data_version: engine.data_version(),
    })
}
