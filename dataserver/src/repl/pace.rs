//! Holding a master's writes to the pace of a member that catches up.
//!
//! A returning member copies what it missed from the master (`ReplLog`
//! listings, then one fetch per file) until it is close enough to join the
//! write set. A master taking writes faster than that copy goes is never
//! caught, and the group stays with fewer copies for as long as the load
//! lasts. So the master watches each member's listings (the asker's server
//! id rides in the request's `client_id`): when, over the last
//! [`WINDOW`], the distance between the master's last version and the
//! copy's position did not shrink, new writes are held to [`SHARE`] of the
//! copy's pace (one slot per write, no burst) — the rest of the disk and the
//! CPU go to the copy. A copy that hardly moves ([`STALLED`]) is not paced
//! for: a member failing over and over must not stall its group. Pacing
//! ends when no member has listed anything for a [`WINDOW`] (it joined the
//! write set, or gave up).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{info, warn};

/// How far back a member's listings are looked at.
pub const WINDOW: Duration = Duration::from_secs(3);
/// The share of a lagging copy's pace that writes are held to.
pub const SHARE: f64 = 0.5;
/// Writes are never held below this many per second.
pub const MIN_RATE: f64 = 20.0;
/// A copy slower than this many versions per second is taken as stalled,
/// and never paced for.
pub const STALLED: f64 = 2.0 * MIN_RATE;

#[derive(Debug, Clone, Copy)]
struct Listing {
    at: Instant,
    /// The asker's next version.
    from: u64,
    /// The master's last listable version then.
    last: u64,
}

/// One member's recent listings and the rate they call for.
#[derive(Default)]
struct Member {
    seen: VecDeque<Listing>,
    /// Set while its copy was last judged not to be closing in.
    rate: Option<f64>,
}

#[derive(Default)]
struct State {
    members: HashMap<u64, Member>,
    /// The earliest moment the next write may start.
    next: Option<Instant>,
}

impl State {
    /// The slowest lagging member's rate.
    fn rate(&self) -> Option<f64> {
        self.members
            .values()
            .filter_map(|m| m.rate)
            .reduce(f64::min)
    }
}

#[derive(Default)]
pub struct Pace {
    st: Mutex<State>,
    /// Whether writes are held: checked by every write without the lock,
    /// which only writes arriving while some member lags take.
    holding: AtomicBool,
}

impl Pace {
    /// Server `asker` listed from `from`; the master's last version was
    /// `last`.
    pub fn listed(&self, asker: u64, from: u64, last: u64) {
        self.listed_at(Instant::now(), asker, from, last);
    }

    fn listed_at(&self, now: Instant, asker: u64, from: u64, last: u64) {
        if asker == 0 {
            return;
        }
        let mut st = self.st.lock();
        st.forget_before(now);
        let m = st.members.entry(asker).or_default();
        m.seen.push_back(Listing {
            at: now,
            from,
            last,
        });
        if let Some(rate) = lagging_rate(&m.seen) {
            m.rate = Some(rate);
            if !self.holding.swap(true, Ordering::AcqRel) {
                warn!(
                    server = asker,
                    writes_per_sec = rate as u64,
                    "a returning member's copy is not catching up: holding writes to its pace"
                );
            }
        }
    }

    /// The moment a write arriving `now` may start (`None`: at once), and
    /// the slot it takes.
    fn slot_at(&self, now: Instant) -> Option<Instant> {
        let mut st = self.st.lock();
        st.forget_before(now);
        let Some(rate) = st.rate() else {
            if self.holding.swap(false, Ordering::AcqRel) {
                st.next = None;
                info!("no member is falling behind any more: writes no longer held");
            }
            return None;
        };
        let slot = st.next.map_or(now, |n| n.max(now));
        st.next = Some(slot + Duration::from_secs_f64(1.0 / rate));
        (slot > now).then_some(slot)
    }

    /// Wait for this write's slot, if writes are being held.
    pub async fn admit(&self) {
        if !self.holding.load(Ordering::Acquire) {
            return;
        }
        if let Some(at) = self.slot_at(Instant::now()) {
            tokio::time::sleep_until(at.into()).await;
        }
    }

    /// The writes per second writes are held to, if they are.
    pub fn pacing(&self) -> Option<f64> {
        let mut st = self.st.lock();
        st.forget_before(Instant::now());
        st.rate()
    }
}

impl State {
    fn forget_before(&mut self, now: Instant) {
        self.members.retain(|_, m| {
            while m
                .seen
                .front()
                .is_some_and(|l| now.saturating_duration_since(l.at) > WINDOW)
            {
                m.seen.pop_front();
            }
            !m.seen.is_empty()
        });
    }
}

/// If the copy these listings trace (oldest first, within [`WINDOW`]) is
/// not closing in on the master, the write rate to hold the master to.
fn lagging_rate(seen: &VecDeque<Listing>) -> Option<f64> {
    let (first, last) = (seen.front()?, seen.back()?);
    let span = last.at.saturating_duration_since(first.at);
    if span < WINDOW / 2 {
        return None;
    }
    let gap_then = first.last.saturating_sub(first.from);
    let gap_now = last.last.saturating_sub(last.from);
    if gap_now == 0 || gap_now < gap_then {
        return None;
    }
    let copied = last.from.saturating_sub(first.from) as f64 / span.as_secs_f64();
    // A copy that hardly moves (failing over and over, stuck on something)
    // is not helped by holding writes, and must not stall the group.
    if copied < STALLED {
        return None;
    }
    Some((copied * SHARE).max(MIN_RATE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_copy_that_closes_in_holds_nothing() {
        let p = Pace::default();
        let t = Instant::now();
        // The gap shrinks: 1000, 800, 600.
        p.listed_at(t, 2, 100, 1100);
        p.listed_at(t + secs(1.0), 2, 600, 1400);
        p.listed_at(t + secs(2.0), 2, 1100, 1700);
        assert_eq!(p.pacing(), None);
        assert_eq!(p.slot_at(t + secs(2.0)), None);
    }

    #[test]
    fn a_copy_that_falls_behind_holds_writes_to_half_its_pace() {
        let p = Pace::default();
        let t = Instant::now();
        // Copies 500 versions a second while the master adds 600.
        p.listed_at(t, 2, 100, 1100);
        p.listed_at(t + secs(1.0), 2, 600, 1700);
        assert_eq!(p.pacing(), None, "too little history to judge");
        p.listed_at(t + secs(2.0), 2, 1100, 2300);
        assert_eq!(p.pacing(), Some(250.0));
        // One write every 4 ms, each taking the next slot.
        let now = t + secs(2.0);
        assert_eq!(p.slot_at(now), None);
        assert_eq!(p.slot_at(now), Some(now + secs(0.004)));
        assert_eq!(p.slot_at(now), Some(now + secs(0.008)));
        // A write much later starts at once.
        assert_eq!(p.slot_at(now + secs(1.0)), None);
    }

    #[test]
    fn a_stalled_copy_holds_nothing() {
        let p = Pace::default();
        let t = Instant::now();
        // The same position over and over (its copy keeps failing), or
        // 30 versions a second: the master writes on.
        p.listed_at(t, 2, 100, 1000);
        p.listed_at(t + secs(1.0), 2, 100, 2000);
        p.listed_at(t + secs(2.0), 2, 100, 3000);
        p.listed_at(t, 3, 100, 1000);
        p.listed_at(t + secs(2.0), 3, 160, 3000);
        assert_eq!(p.pacing(), None);
    }

    #[test]
    fn pacing_ends_when_nobody_lists_any_more() {
        let p = Pace::default();
        let t = Instant::now();
        p.listed_at(t, 3, 0, 1000);
        p.listed_at(t + secs(2.0), 3, 100, 2000);
        assert!(p.pacing().is_some());
        let later = t + secs(2.0) + WINDOW + secs(0.1);
        assert_eq!(p.slot_at(later), None);
        assert_eq!(p.pacing(), None);
    }

    #[test]
    fn members_are_judged_apart_and_the_slowest_sets_the_pace() {
        let p = Pace::default();
        let t = Instant::now();
        // Member 2 closes in; member 3 falls behind at 100 a second.
        p.listed_at(t, 2, 5000, 6000);
        p.listed_at(t, 3, 0, 6000);
        p.listed_at(t + secs(2.0), 2, 7000, 7500);
        assert_eq!(p.pacing(), None);
        p.listed_at(t + secs(2.0), 3, 200, 7500);
        assert_eq!(p.pacing(), Some(50.0));
        // Member 3 copies faster now, but still falls behind: its latest
        // pace counts.
        p.listed_at(t + secs(2.5), 3, 700, 8500);
        assert_eq!(p.pacing(), Some(700.0 / 2.5 * SHARE));
        // Listings without an asker are not judged.
        let q = Pace::default();
        q.listed_at(t, 0, 0, 6000);
        q.listed_at(t + secs(2.0), 0, 0, 9000);
        assert_eq!(q.pacing(), None);
    }
}
