//! Exactly-once retries: the answers to recent writes, by the client's
//! `(client_id, seq)`.
//!
//! The master records a write's answer when it succeeds; every slave
//! records the answer of each replicated change that carries a client's
//! ids, so after a failover the new master still knows it. A retry of a
//! known `(client_id, seq)` gets the recorded answer and changes nothing;
//! a retry that arrives while the first attempt still runs waits for it.
//!
//! Bounded ([`PER_CLIENT`] answers per client, [`CLIENTS`] clients) and
//! kept in memory, but every logged change carries its client's ids in its
//! binlog record, so a restarted server reads the answers of its last
//! [`SEED_CHANGES`] changes back ([`Dedup::seed`]). A server that caught up
//! by copying files (which carries no ids) does not know those.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use proto::Reply;
use tokio::sync::Notify;

/// How many of the last logged changes a starting server reads back for
/// their answers (their records carry the client's ids).
pub const SEED_CHANGES: usize = 65_536;
/// Answers kept per client (the newest sequence numbers).
pub const PER_CLIENT: usize = 256;
/// Clients remembered (the least recently seen is forgotten first).
pub const CLIENTS: usize = 16_384;

enum Slot {
    Running(Arc<Notify>),
    Done(Reply),
    /// Applied here, but whether the group has it is unknown: a retry must
    /// not run it again here.
    Unknown(String),
}

struct Window {
    slots: BTreeMap<u64, Slot>,
    used: Instant,
}

#[derive(Default)]
pub struct Dedup {
    clients: Mutex<HashMap<u64, Window>>,
}

/// What to do with a write.
pub enum Begin<'a> {
    /// Run it; report the outcome through the guard.
    Run(Guard<'a>),
    /// Already done: this was its answer.
    Done(Reply),
    /// Its first attempt has an unknown outcome (the message says why).
    Unknown(String),
}

/// A write in progress; dropping it without [`Guard::finish`] forgets it.
pub struct Guard<'a> {
    dedup: &'a Dedup,
    client: u64,
    seq: u64,
    done: bool,
}

impl Dedup {
    fn window(map: &mut HashMap<u64, Window>, client: u64) -> &mut Window {
        if !map.contains_key(&client) && map.len() >= CLIENTS {
            if let Some(oldest) = map.iter().min_by_key(|(_, w)| w.used).map(|(c, _)| *c) {
                map.remove(&oldest);
            }
        }
        let w = map.entry(client).or_insert_with(|| Window {
            slots: BTreeMap::new(),
            used: Instant::now(),
        });
        w.used = Instant::now();
        w
    }

    fn trim(w: &mut Window) {
        while w.slots.len() > PER_CLIENT {
            w.slots.pop_first();
        }
    }

    /// Start the write `(client, seq)`, or get its recorded answer.
    pub async fn begin(&self, client: u64, seq: u64) -> Begin<'_> {
        loop {
            let wait = {
                let mut map = self.clients.lock();
                let w = Self::window(&mut map, client);
                match w.slots.get(&seq) {
                    Some(Slot::Done(r)) => return Begin::Done(r.clone()),
                    Some(Slot::Unknown(m)) => return Begin::Unknown(m.clone()),
                    Some(Slot::Running(n)) => n.clone(),
                    None => {
                        w.slots.insert(seq, Slot::Running(Arc::new(Notify::new())));
                        Self::trim(w);
                        return Begin::Run(Guard {
                            dedup: self,
                            client,
                            seq,
                            done: false,
                        });
                    }
                }
            };
            let notified = wait.notified();
            // Re-check: it may have finished before we subscribed.
            let still = matches!(
                self.clients
                    .lock()
                    .get(&client)
                    .and_then(|w| w.slots.get(&seq)),
                Some(Slot::Running(_))
            );
            if still {
                notified.await;
            }
        }
    }

    /// Fill the table from answers read back from the log at start (oldest
    /// first), so a resend after a restart still gets its first answer.
    pub fn seed(&self, answers: impl IntoIterator<Item = (u64, u64, Reply)>) {
        for (client, seq, reply) in answers {
            self.record(client, seq, reply);
        }
    }

    /// Record the answer of a replicated change.
    pub fn record(&self, client: u64, seq: u64, reply: Reply) {
        let mut map = self.clients.lock();
        let w = Self::window(&mut map, client);
        if let Some(Slot::Running(n)) = w.slots.insert(seq, Slot::Done(reply)) {
            n.notify_waiters();
        }
        Self::trim(w);
    }

    /// A write applied here whose replication could not be settled.
    pub fn mark_unknown(&self, client: u64, seq: u64, why: String) {
        let mut map = self.clients.lock();
        let w = Self::window(&mut map, client);
        if let Some(Slot::Running(n)) = w.slots.insert(seq, Slot::Unknown(why)) {
            n.notify_waiters();
        }
        Self::trim(w);
    }

    fn end(&self, client: u64, seq: u64, reply: Option<Reply>) {
        let mut map = self.clients.lock();
        let Some(w) = map.get_mut(&client) else {
            return;
        };
        let old = match reply {
            // An answer settled meanwhile (by replication) stays.
            Some(r) if matches!(w.slots.get(&seq), Some(Slot::Running(_)) | None) => {
                w.slots.insert(seq, Slot::Done(r))
            }
            Some(_) => None,
            None => match w.slots.get(&seq) {
                Some(Slot::Running(_)) => w.slots.remove(&seq),
                _ => None,
            },
        };
        if let Some(Slot::Running(n)) = old {
            n.notify_waiters();
        }
    }
}

impl Guard<'_> {
    /// Record the outcome: an answer is kept, an error forgotten (a retry
    /// runs again) unless replication settled the slot meanwhile.
    pub fn finish<E>(mut self, result: &Result<Reply, E>) {
        self.done = true;
        self.dedup
            .end(self.client, self.seq, result.as_ref().ok().cloned());
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.dedup.end(self.client, self.seq, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deleted(v: u64) -> Reply {
        Reply::Deleted { version: v }
    }

    #[tokio::test]
    async fn a_retry_gets_the_first_answer_and_waits_for_a_running_one() {
        let d = Arc::new(Dedup::default());
        let Begin::Run(g) = d.begin(7, 1).await else {
            panic!("new write must run");
        };
        let d2 = d.clone();
        let retry = tokio::spawn(async move {
            match d2.begin(7, 1).await {
                Begin::Done(r) => r,
                _ => panic!("retry ran again"),
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        g.finish::<()>(&Ok(deleted(5)));
        assert_eq!(retry.await.unwrap(), deleted(5));
        // A failed write is forgotten: its retry runs.
        let Begin::Run(g) = d.begin(7, 2).await else {
            panic!()
        };
        g.finish(&Err::<Reply, _>("boom"));
        assert!(matches!(d.begin(7, 2).await, Begin::Run(_)));
        // Applied with an unknown outcome: a retry does not run again.
        let Begin::Run(g) = d.begin(7, 3).await else {
            panic!()
        };
        d.mark_unknown(7, 3, "lost the leaders".into());
        g.finish(&Err::<Reply, _>("unavailable"));
        assert!(matches!(d.begin(7, 3).await, Begin::Unknown(_)));
        // Replicated answers count too; other clients are separate.
        d.record(9, 4, deleted(8));
        assert!(matches!(d.begin(9, 4).await, Begin::Done(r) if r == deleted(8)));
        assert!(matches!(d.begin(8, 4).await, Begin::Run(_)));
    }

    #[tokio::test]
    async fn windows_are_bounded() {
        let d = Dedup::default();
        for s in 0..(PER_CLIENT as u64 + 10) {
            d.record(1, s, deleted(s));
        }
        assert!(matches!(d.begin(1, 0).await, Begin::Run(_)));
        assert!(matches!(
            d.begin(1, PER_CLIENT as u64 + 9).await,
            Begin::Done(_)
        ));
    }
}
