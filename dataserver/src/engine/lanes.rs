//! Per-file lanes: a file id hashes to one of N FIFO locks, so operations
//! on one file apply in arrival order (tokio's mutex is fair).

use std::hash::{Hash, Hasher};

use proto::FileId;
use tokio::sync::{Mutex, MutexGuard};

pub(crate) struct Lanes {
    lanes: Vec<Mutex<()>>,
}

impl Lanes {
    pub fn new(n: usize) -> Self {
        Lanes {
            lanes: (0..n.max(1)).map(|_| Mutex::new(())).collect(),
        }
    }

    pub fn index(&self, id: &FileId) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        (h.finish() % self.lanes.len() as u64) as usize
    }

    pub async fn lock(&self, id: &FileId) -> MutexGuard<'_, ()> {
        self.lanes[self.index(id)].lock().await
    }
}
