//! The sync delay reported with every heartbeat: the age of the oldest
//! local change not yet pushed to some peer (0 when every peer has all).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use proto::cluster::ServerId;

use crate::engine::now_us;

pub struct DelayBoard {
    /// Per peer: when its oldest unpushed local change was made (µs).
    oldest: Mutex<HashMap<ServerId, u64>>,
    /// What the heartbeat sends (ms).
    out: Arc<AtomicU64>,
}

impl DelayBoard {
    pub fn new(out: Arc<AtomicU64>) -> Self {
        DelayBoard {
            oldest: Mutex::new(HashMap::new()),
            out,
        }
    }

    /// `peer` lacks local changes from `since_us` on (`None`: it has all).
    pub fn set(&self, peer: ServerId, since_us: Option<u64>) {
        {
            let mut o = self.oldest.lock();
            match since_us {
                Some(t) => {
                    o.insert(peer, t);
                }
                None => {
                    o.remove(&peer);
                }
            }
        }
        self.refresh();
    }

    /// Recompute the figure (it grows while a peer stays behind).
    pub fn refresh(&self) {
        let now = now_us();
        let ms = self
            .oldest
            .lock()
            .values()
            .map(|t| now.saturating_sub(*t) / 1000)
            .max()
            .unwrap_or(0);
        self.out.store(ms, Ordering::Relaxed);
    }

    pub fn current_ms(&self) -> u64 {
        self.out.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_unpushed_change_counts() {
        let out = Arc::new(AtomicU64::new(0));
        let b = DelayBoard::new(out.clone());
        let now = now_us();
        b.set(2, Some(now - 5_000_000));
        b.set(3, Some(now - 1_000_000));
        assert!((5000..6000).contains(&b.current_ms()), "{}", b.current_ms());
        b.set(2, None);
        assert!((1000..2000).contains(&out.load(Ordering::Relaxed)));
        b.set(3, None);
        assert_eq!(b.current_ms(), 0);
    }
}
