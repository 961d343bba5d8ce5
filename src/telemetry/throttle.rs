//! At most one log line per kind of refusal and per caller (or peer) a minute, with the count of
//! the lines left out: a client guessing API keys used to write one WARN per guess (300 guesses,
//! 300 lines), so whoever could reach the port could fill the disk and bury the events that
//! matter.
//!
//! Each (event, who) pair is logged at once the first time; within the next [`INTERVAL`] the same
//! pair is only counted, and the next line about it (the next refusal after the interval, or
//! [`report_suppressed`]'s summary, whichever comes first) carries `suppressed = N`. A summary is
//! written while refusals go on and for the last ones when they stop, so no count is lost; at
//! shutdown [`report_all_suppressed`] writes the rest.
//!
//! Bounded: at most [`MAX_KEYS`] pairs are tracked. A refusal about anyone else while the map is
//! full counts against its event's one shared `(others)` pair, so varying the peer (many
//! addresses, many certificates) buys no more lines and no more memory: at most
//! `MAX_KEYS + events` lines per interval whatever the request rate. A pair is forgotten once an
//! interval passes with nothing to report.
//!
//! Why not `governor` (a dependency already, for the callers' rates): its keyed limiter answers
//! yes or no, but what must reach the log is *how many* were left out, per pair, also after the
//! refusals stop; that needs a count per pair and a sweep that reports it, which is this map
//! anyway. A `std` mutex: it is taken on refusals only (never on an admitted call), for a hash
//! lookup.
//!
//! Global, like the tracing subscriber it feeds: a refusal is logged from layers that share
//! nothing else (the access layer, Issue's checks, ext_authz).
//!
//! What it leaves out: events that are already rare by construction (a family revoked for
//! reuse, a policy reload), which are logged every time; the Rotate limiter reports each key
//! once on its own (`policy::limits`).

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How often a pair may be logged: a minute is the granularity of log dashboards, and keeps a
/// sustained attack to one line a minute per offender.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Pairs tracked at once. Far more than the distinct callers misbehaving at once in a real
/// deployment; a few hundred KiB at worst (a peer identity is at most 2 KiB).
pub const MAX_KEYS: usize = 256;
/// The `who` of the pair shared by everyone beyond [`MAX_KEYS`].
pub const OTHERS: &str = "(others)";

static SECURITY: LazyLock<Throttle> = LazyLock::new(|| Throttle::new(INTERVAL, MAX_KEYS));

/// Whether to log a security event of kind `event` about `who` (a caller's name, a peer's
/// identity or address) now: `Some(suppressed)`, the number of such lines left out since the last
/// one, or `None`: leave it out (it is counted).
pub fn security_event(event: &'static str, who: &str) -> Option<u64> {
    SECURITY.admit(event, who, Instant::now())
}

/// Writes the counts of left-out lines every quarter [`INTERVAL`], until `stopped`.
pub async fn report_suppressed(mut stopped: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(INTERVAL / 4);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => SECURITY.sweep(Instant::now()).into_iter().for_each(report),
            _ = stopped.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// Writes every count of left-out lines not yet written (at shutdown).
pub fn report_all_suppressed() {
    SECURITY.drain().into_iter().for_each(report);
}

fn report(pending: Pending) {
    tracing::warn!(target: "security", event = pending.event, who = %pending.who, suppressed = pending.suppressed,
        "security events left out of the log (at most one line a minute per event and caller)");
}

/// Lines left out for one pair, to be reported.
#[derive(Debug, PartialEq, Eq)]
pub struct Pending {
    pub event: &'static str,
    pub who: Box<str>,
    pub suppressed: u64,
}

/// The limiter itself; [`security_event`] uses one for the whole process.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    capacity: usize,
    /// Keys the map by a keyed hash of the pair, so that a lookup allocates nothing; a collision
    /// (2^-64, with keys an attacker cannot know) would only merge two pairs' counts.
    hasher: RandomState,
    pairs: Mutex<HashMap<u64, Pair>>,
}

#[derive(Debug)]
struct Pair {
    event: &'static str,
    who: Box<str>,
    logged_at: Instant,
    suppressed: u64,
}

impl Pair {
    fn new(event: &'static str, who: &str, now: Instant) -> Self {
        Self {
            event,
            who: who.into(),
            logged_at: now,
            suppressed: 0,
        }
    }

    fn admit(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        if now.saturating_duration_since(self.logged_at) < interval {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.logged_at = now;
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Throttle {
    /// At most one line per pair per `interval`, at most `capacity` pairs (plus one per event).
    pub fn new(interval: Duration, capacity: usize) -> Self {
        Self {
            interval,
            capacity,
            hasher: RandomState::new(),
            pairs: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Pair>> {
        // A panic elsewhere while holding it left counts at worst; they are still counts.
        self.pairs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// See [`security_event`].
    pub fn admit(&self, event: &'static str, who: &str, now: Instant) -> Option<u64> {
        let mut pairs = self.lock();
        let key = self.hasher.hash_one((event, who));
        if let Some(pair) = pairs.get_mut(&key) {
            return pair.admit(now, self.interval);
        }
        let (key, who) = if pairs.len() < self.capacity {
            (key, who)
        } else {
            (self.hasher.hash_one((event, OTHERS)), OTHERS)
        };
        match pairs.entry(key) {
            Slot::Occupied(pair) => pair.into_mut().admit(now, self.interval),
            Slot::Vacant(slot) => {
                slot.insert(Pair::new(event, who, now));
                Some(0)
            }
        }
    }

    /// The pairs whose interval has passed: those with lines left out are returned (to be
    /// reported now, which starts their next interval); the others are forgotten.
    pub fn sweep(&self, now: Instant) -> Vec<Pending> {
        let mut pending = Vec::new();
        self.lock().retain(|_, pair| {
            if now.saturating_duration_since(pair.logged_at) < self.interval {
                return true;
            }
            if pair.suppressed == 0 {
                return false;
            }
            pending.push(Pending {
                event: pair.event,
                who: pair.who.clone(),
                suppressed: std::mem::take(&mut pair.suppressed),
            });
            pair.logged_at = now;
            true
        });
        pending
    }

    /// Every pair with lines left out, interval passed or not; forgets them all.
    pub fn drain(&self) -> Vec<Pending> {
        self.lock()
            .drain()
            .filter(|(_, pair)| pair.suppressed > 0)
            .map(|(_, pair)| Pending {
                event: pair.event,
                who: pair.who,
                suppressed: pair.suppressed,
            })
            .collect()
    }

    /// Pairs tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_pair_is_logged_first_then_once_an_interval_with_the_count_left_out() {
        let throttle = Throttle::new(MINUTE, 8);
        let start = Instant::now();
        assert_eq!(throttle.admit("unknown caller", "10.0.0.1", start), Some(0));
        for second in 1..=299 {
            let now = start + Duration::from_millis(second * 100);
            assert_eq!(throttle.admit("unknown caller", "10.0.0.1", now), None);
        }
        // Other pairs are their own.
        assert_eq!(throttle.admit("unknown caller", "10.0.0.2", start), Some(0));
        assert_eq!(throttle.admit("rpc refused", "10.0.0.1", start), Some(0));
        assert_eq!(throttle.admit("unknown caller", "10.0.0.1", start + MINUTE), Some(299));
        assert_eq!(throttle.admit("unknown caller", "10.0.0.1", start + MINUTE), None);
    }

    #[test]
    fn a_sweep_reports_what_was_left_out_and_forgets_quiet_pairs() {
        let throttle = Throttle::new(MINUTE, 8);
        let start = Instant::now();
        throttle.admit("unknown caller", "a", start);
        throttle.admit("unknown caller", "a", start);
        throttle.admit("unknown caller", "b", start);
        assert_eq!(throttle.sweep(start + MINUTE / 2), vec![], "nothing is due yet");
        assert_eq!(
            throttle.sweep(start + MINUTE),
            vec![Pending {
                event: "unknown caller",
                who: "a".into(),
                suppressed: 1
            }]
        );
        assert_eq!(throttle.tracked(), 1, "b had nothing to report: forgotten");
        // a's report started its next interval: the next refusal is counted, not logged.
        assert_eq!(throttle.admit("unknown caller", "a", start + MINUTE), None);
        assert_eq!(throttle.drain().len(), 1);
        assert_eq!(throttle.tracked(), 0);
        assert_eq!(throttle.admit("unknown caller", "a", start + MINUTE), Some(0));
    }

    #[test]
    fn beyond_the_capacity_everyone_shares_one_pair_per_event() {
        let throttle = Throttle::new(MINUTE, 4);
        let start = Instant::now();
        let logged = (0..10_000)
            .filter(|i| throttle.admit("unknown caller", &format!("peer-{i}"), start).is_some())
            .count();
        assert_eq!(logged, 5, "four pairs, then one for everyone else");
        assert!(throttle.admit("rpc refused", "peer-x", start).is_some());
        assert_eq!(throttle.tracked(), 6);
        let others = throttle.drain();
        assert_eq!(
            others,
            vec![Pending {
                event: "unknown caller",
                who: OTHERS.into(),
                suppressed: 10_000 - 5
            }]
        );
    }
}
