//! The master's queue of small changes per slave, sent several to a frame
//! (`ReplicateBatch`).
//!
//! Each write that goes to a slave queues its change here. The first one
//! into an empty queue starts a sender, which first lets the other tasks
//! that are ready run (one `yield`): the writers whose local commit
//! finished in the same group commit queue their changes meanwhile. Then
//! it takes everything queued, in version order, and sends it in as few
//! frames as the limits allow. Nothing is held back beyond that one yield
//! and nothing waits for another exchange to finish (the slave applies in
//! version order, so a change held behind a batch in flight could be the
//! one that batch waits for). There is no timer: an idle slave gets a
//! change as soon as it is made, a busy master's slave gets each group
//! commit's changes in one frame, one response and one turn of its disk's
//! group commit.

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::Mutex;
use proto::ReplRecord;
use tokio::sync::oneshot;

/// Changes in one frame at most.
pub const MAX_RECORDS: usize = 64;
/// Body bytes in one frame at most (a change alone may be bigger, up to
/// [`BATCH_BODY_MAX`]).
pub const MAX_BYTES: u64 = 1 << 20;
/// Changes with bodies up to this size are queued; bigger ones go alone.
pub const BATCH_BODY_MAX: u64 = 64 << 10;

/// One change waiting to be sent to one slave.
pub struct Item {
    pub epoch: u64,
    /// How long the writer waits for the slave's answer.
    pub deadline: std::time::Duration,
    pub rec: ReplRecord,
    pub body: Bytes,
    /// Answered with the slave's outcome for this change.
    pub done: oneshot::Sender<Result<(), String>>,
}

/// The queues, one per slave address.
#[derive(Default)]
pub struct Batcher {
    queues: Mutex<HashMap<String, Vec<Item>>>,
}

impl Batcher {
    /// Queue `item` for `addr`. `true`: the queue was empty, the caller
    /// must start a sender that yields once, then [`Batcher::take`]s.
    pub fn push(&self, addr: &str, item: Item) -> bool {
        let mut queues = self.queues.lock();
        // The queue exists while a sender is due: no key to allocate then.
        if let Some(q) = queues.get_mut(addr) {
            q.push(item);
            return false;
        }
        queues.insert(addr.to_string(), vec![item]);
        true
    }

    /// Everything queued for `addr`, in version order, cut into frames
    /// within the limits (each of one epoch).
    pub fn take(&self, addr: &str) -> Vec<Vec<Item>> {
        let Some(mut all) = self.queues.lock().remove(addr) else {
            return Vec::new();
        };
        all.sort_unstable_by_key(|i| i.rec.version);
        let mut frames: Vec<Vec<Item>> = Vec::new();
        let mut bytes = 0u64;
        for item in all {
            let len = item.body.len() as u64;
            let fits = frames.last().is_some_and(|f| {
                f.len() < MAX_RECORDS && bytes + len <= MAX_BYTES && f[0].epoch == item.epoch
            });
            match frames.last_mut() {
                Some(f) if fits => {
                    bytes += len;
                    f.push(item);
                }
                _ => {
                    bytes = len;
                    frames.push(vec![item]);
                }
            }
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(epoch: u64, version: u64, len: usize) -> (Item, oneshot::Receiver<Result<(), String>>) {
        let (done, rx) = oneshot::channel();
        let rec = ReplRecord {
            version,
            file_id: format!("g/M00/00/00/f{version}"),
            op: proto::ReplOp::Noop,
            prev_version: 0,
            file_version: version,
            state: None,
            body_len: len as u64,
            client_id: 0,
            seq: 0,
        };
        let body = Bytes::from(vec![0u8; len]);
        (
            Item {
                epoch,
                deadline: std::time::Duration::from_secs(1),
                rec,
                body,
                done,
            },
            rx,
        )
    }

    fn versions(b: &[Item]) -> Vec<u64> {
        b.iter().map(|i| i.rec.version).collect()
    }

    #[test]
    fn the_first_change_starts_a_sender_which_takes_all_in_order() {
        let b = Batcher::default();
        let mut keep = Vec::new();
        for (k, v) in [7u64, 5, 9, 6].into_iter().enumerate() {
            let (i, rx) = item(1, v, 10);
            keep.push(rx);
            assert_eq!(b.push("s", i), k == 0, "only the first starts a sender");
        }
        // Another slave has its own queue.
        let (i, _rx) = item(1, 5, 10);
        assert!(b.push("t", i));
        let frames = b.take("s");
        assert_eq!(frames.len(), 1);
        assert_eq!(versions(&frames[0]), vec![5, 6, 7, 9]);
        assert!(b.take("s").is_empty());
        // Empty again: the next change starts a new sender.
        let (i, _rx) = item(1, 10, 10);
        assert!(b.push("s", i));
        assert_eq!(b.take("t").len(), 1);
    }

    #[test]
    fn frames_keep_to_the_limits_and_one_epoch() {
        let b = Batcher::default();
        let mut keep = Vec::new();
        for v in 0..MAX_RECORDS as u64 + 5 {
            let (i, rx) = item(1, v, 1);
            keep.push(rx);
            b.push("s", i);
        }
        let frames = b.take("s");
        assert_eq!(
            frames.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_RECORDS, 5]
        );
        // Bytes: a change that would overflow starts the next frame; so
        // does a change of another epoch.
        let (i, _a) = item(1, 200, (MAX_BYTES / 2) as usize);
        b.push("s", i);
        let (i, _b) = item(1, 201, (MAX_BYTES / 2) as usize + 1);
        b.push("s", i);
        let (i, _c) = item(1, 202, 1);
        b.push("s", i);
        let (i, _d) = item(2, 203, 1);
        b.push("s", i);
        let frames = b.take("s");
        assert_eq!(
            frames.iter().map(|f| versions(f)).collect::<Vec<_>>(),
            vec![vec![200], vec![201, 202], vec![203]]
        );
    }
}
