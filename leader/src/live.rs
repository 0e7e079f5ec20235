//! What only the Raft leader's memory holds: when each dataserver was last
//! heard from, its latest figures, and each group's master lease.
//!
//! None of this goes through Raft. A leader that takes over starts a fresh
//! table: every server gets a full `server_timeout` of grace and every group's
//! lease is treated as granted at that moment, so no master is replaced before
//! the lease a previous leader may have granted has run out.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proto::cluster::ServerId;

use crate::map::Stats;

#[derive(Debug, Clone, Copy)]
pub struct LiveServer {
    pub last_seen: Instant,
    pub stats: Stats,
    /// Async mode: the server's reported push delay (ms).
    pub sync_delay_ms: u64,
}

/// The leader's in-memory table.
#[derive(Debug, Default)]
pub struct LiveTable {
    /// When this node last became the Raft leader (None: not leading).
    pub leading_since: Option<Instant>,
    pub servers: HashMap<ServerId, LiveServer>,
    /// Until when each group's master may hold a lease this leader (or a
    /// predecessor) granted.
    pub lease_until: HashMap<String, Instant>,
    /// Groups whose master lease is being revoked for a failover.
    pub revoking: HashSet<String>,
}

impl LiveTable {
    /// Forget everything: this node stopped leading.
    pub fn step_down(&mut self) {
        *self = LiveTable::default();
    }

    /// This node just became leader at `now`.
    pub fn take_over(&mut self, now: Instant) {
        self.step_down();
        self.leading_since = Some(now);
    }

    /// Record a heartbeat (or a join).
    pub fn heard(&mut self, id: ServerId, stats: Stats, now: Instant) {
        let sync_delay_ms = self.servers.get(&id).map_or(0, |s| s.sync_delay_ms);
        self.servers.insert(
            id,
            LiveServer {
                last_seen: now,
                stats,
                sync_delay_ms,
            },
        );
    }

    /// Record the push delay a heartbeat reported.
    pub fn sync_delay(&mut self, id: ServerId, ms: u64) {
        if let Some(s) = self.servers.get_mut(&id) {
            s.sync_delay_ms = ms;
        }
    }

    /// When `id` was last heard from; the takeover time if never.
    pub fn last_seen(&self, id: ServerId) -> Option<Instant> {
        self.servers
            .get(&id)
            .map(|s| s.last_seen)
            .or(self.leading_since)
    }

    pub fn stats(&self, id: ServerId) -> Option<Stats> {
        self.servers.get(&id).map(|s| s.stats)
    }

    /// Until when `group`'s master may still hold a lease: the last grant,
    /// or a full lease from the takeover when this leader granted none.
    pub fn lease_until(&self, group: &str, lease: Duration) -> Option<Instant> {
        self.lease_until
            .get(group)
            .copied()
            .or(self.leading_since.map(|t| t + lease))
    }

    /// Grant (extend) `group`'s master lease from `now`, unless a failover is
    /// revoking it. Returns whether it was granted.
    pub fn grant_lease(&mut self, group: &str, now: Instant, lease: Duration) -> bool {
        if self.revoking.contains(group) {
            return false;
        }
        let until = now + lease;
        let floor = self.lease_until(group, lease).unwrap_or(until);
        self.lease_until.insert(group.to_string(), until.max(floor));
        true
    }

    /// Whether the old master's lease in `group` has run out at `now`.
    pub fn lease_expired(&self, group: &str, now: Instant, lease: Duration) -> bool {
        self.lease_until(group, lease).is_none_or(|t| now >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(3000);

    fn stats() -> Stats {
        Stats {
            data_version: 1,
            disk_free: 2,
            disk_total: 3,
        }
    }

    #[test]
    fn takeover_grants_grace_and_assumes_a_lease() {
        let t0 = Instant::now();
        let mut t = LiveTable::default();
        t.take_over(t0);
        assert_eq!(t.last_seen(7), Some(t0));
        assert!(!t.lease_expired("g", t0 + Duration::from_millis(2999), LEASE));
        assert!(t.lease_expired("g", t0 + LEASE, LEASE));
    }

    #[test]
    fn leases_extend_and_revocation_stops_them() {
        let t0 = Instant::now();
        let mut t = LiveTable::default();
        t.take_over(t0);
        let t1 = t0 + Duration::from_millis(2000);
        assert!(t.grant_lease("g", t1, LEASE));
        assert!(!t.lease_expired("g", t1 + Duration::from_millis(2999), LEASE));
        t.revoking.insert("g".into());
        assert!(!t.grant_lease("g", t1 + Duration::from_millis(100), LEASE));
        assert!(t.lease_expired("g", t1 + LEASE, LEASE));
        t.heard(3, stats(), t1);
        assert_eq!(t.last_seen(3), Some(t1));
        t.step_down();
        assert_eq!(t.last_seen(3), None);
    }
}
