//! Abuse limits (issue 11): each caller's own rate ([`CallerRate`], from the policy file) and the
//! per-family Rotate limit ([`RotateLimiter`]). Token buckets from `governor` (GCRA; a caller's own bucket is lock-free;
//! the rate limiter most of the tower/axum ecosystem uses). Both are checked before any database
//! work, and a refused call has done nothing.
//!
//! # The per-family Rotate limit
//! Kept in two places:
//! - **the store**, per family ([`crate::domain::RotateLimit`]): the family's bucket is on its
//!   row and checked by the spend statement itself, so every replica on one database shares it
//!   and a chain whose rotations alternate between replicas is limited as on one server. A
//!   refusal spends nothing; the token rotates normally once the bucket refills.
//! - **this server's memory** ([`RotateLimiter`]), per presented token: a spent (or stolen)
//!   token replayed in a loop runs out after `burst` calls, before it costs the database
//!   anything. (The store cannot bucket a token it refuses without writing on every refusal.)
//!
//! The first refusal of each token or family is a security event (once: a loop cannot flood the
//! log). The default burst (100) is above 64 so that 64 clients racing with one token still reach
//! the database and hear one success and 63 TOKEN_REUSED; the default sustained rate (1 a second
//! per family) is far above a legitimate client's (one rotation per access-token lifetime,
//! minutes).
//!
//! # Memory
//! Callers come from the file, so per-caller state is bounded by it. The Rotate limiter's keys
//! come from requests: whenever it tracks more keys than its high-water mark, it drops every key
//! whose bucket is full again (`retain_recent`), which at 1 rotation a second is a key unused for
//! `burst` seconds at most, and raises the mark to twice what is left (amortised O(1) a call).
//!
//! The keyed buckets live in governor's `HashMapStateStore` (one std `Mutex<HashMap>`), not its
//! `dashmap` store: a Rotate takes the lock once for well under a microsecond against ~120 µs of
//! server CPU, and the dashmap feature was the one place the service pulled in a second copy of
//! `hashbrown` by its own choice (issue 16; the A/B is in BENCHMARKS.md).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::TokenHash;
use crate::issuer::refresh_token::RefreshToken;
use crate::issuer::types::PresentedToken;

/// A call refused by a rate limit; nothing was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} rate limit exceeded: retry in {}s", retry_after_seconds(*.retry_after))]
pub struct RateLimited {
    /// Which limit: `caller` or `rotate`.
    pub what: &'static str,
    pub retry_after: Duration,
}

/// Whole seconds, rounded up (HTTP `Retry-After` has no fractions; at least 1).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// One caller's rate as the policy file writes it (`rate = { per_second = 200, burst = 400 }`).
/// Defined here, beside the bucket it sets, so that the file's parser depends on the limits and
/// not the other way round.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: u32,
    /// Defaults to `per_second`.
    pub burst: Option<u32>,
}

/// One caller's token bucket.
#[derive(Debug)]
pub struct CallerRate {
    rate: Rate,
    limiter: DefaultDirectRateLimiter,
}

impl CallerRate {
    /// `None` when the rate or the burst is zero.
    pub fn new(rate: Rate) -> Option<Self> {
        let per_second = NonZeroU32::new(rate.per_second)?;
        let burst = NonZeroU32::new(rate.burst.unwrap_or(rate.per_second))?;
        Some(Self {
            rate,
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
        })
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one call from the bucket.
    ///
    /// # Errors
    /// [`RateLimited`] with the wait until the next call would be allowed.
    pub fn check(&self) -> Result<(), RateLimited> {
        self.limiter.check().map_err(|not_until| RateLimited {
            what: "caller",
            retry_after: not_until.wait_time_from(self.limiter.clock().now()),
        })
    }
}

pub use crate::domain::RotateLimit;

/// What went over a Rotate limit, for the security log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RotateKey {
    Token([u8; 32]),
    Family(Uuid),
}

/// Keys tracked before the first pruning.
const MIN_HIGH_WATER: usize = 10_000;
/// Keys over the limit already logged.
const REPORTED_REMEMBERED: usize = 10_000;

/// The per-token Rotate limit, and the security log of both; see the module comment.
pub struct RotateLimiter {
    limiter: DefaultKeyedRateLimiter<[u8; 32]>,
    high_water: AtomicUsize,
    /// Keys whose refusal was logged as a security event: once each (while remembered), so
    /// that a replay loop cannot flood the log.
    reported: quick_cache::sync::Cache<RotateKey, ()>,
}

impl RotateLimiter {
    pub fn new(limit: RotateLimit) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(limit.per_second).allow_burst(limit.burst)),
            high_water: AtomicUsize::new(MIN_HIGH_WATER),
            reported: quick_cache::sync::Cache::new(REPORTED_REMEMBERED),
        }
    }

    /// Counts a Rotate of `token` against its bucket. A token not of our format is let through:
    /// Rotate refuses it without asking the database.
    ///
    /// # Errors
    /// [`RateLimited`]: over the limit; the token must not be spent.
    pub fn check(&self, token: &PresentedToken) -> Result<(), RateLimited> {
        match RefreshToken::parse(token.expose()) {
            Some(token) => self.check_hash(token.hash()),
            None => Ok(()),
        }
    }

    fn check_hash(&self, hash: TokenHash) -> Result<(), RateLimited> {
        let result = self.limiter.check_key(&hash.0).map_err(|not_until| {
            self.report(RotateKey::Token(hash.0));
            RateLimited {
                what: "rotate",
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }
        });
        self.prune_if_needed();
        result
    }

    /// The store refused a rotation of `family` over the family's limit: logged as a security
    /// event the first time.
    pub fn family_refused(&self, family: Uuid) {
        self.report(RotateKey::Family(family));
    }

    /// A security event the first time a key goes over the limit: a stolen token hammered, a
    /// replay loop, or a client rotating in a loop. (In the call's context, which names the caller.)
    fn report(&self, key: RotateKey) {
        if self.reported.get(&key).is_some() {
            return;
        }
        self.reported.insert(key, ());
        match key {
            RotateKey::Family(family) => tracing::warn!(target: "security", %family,
                "a family is rotated faster than the Rotate limit allows: refused by the store, nothing spent"),
            RotateKey::Token(_) => tracing::warn!(target: "security",
                "one refresh token presented more often than the Rotate limit allows: refused before the database"),
        }
    }

    fn prune_if_needed(&self) {
        let mark = self.high_water.load(Ordering::Relaxed);
        if self.limiter.len() > mark {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            let left = self.limiter.len();
            self.high_water.store((left * 2).max(MIN_HIGH_WATER), Ordering::Relaxed);
            tracing::debug!(left, "pruned the rotate limiter");
        }
    }

    /// Keys tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: u32, burst: u32) -> RotateLimit {
        RotateLimit {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn hash(n: u32) -> TokenHash {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        TokenHash(bytes)
    }

    #[test]
    fn a_token_gets_its_burst_then_waits_at_least_a_second_rounded_up() {
        let limiter = RotateLimiter::new(RotateLimit::default());
        for _ in 0..100 {
            limiter.check_hash(hash(1)).unwrap();
        }
        let refused = limiter.check_hash(hash(1)).unwrap_err();
        assert!(refused.retry_after <= Duration::from_secs(1), "{refused:?}");
        assert_eq!(retry_after_seconds(refused.retry_after), 1);
        limiter.check_hash(hash(2)).unwrap();
    }

    #[test]
    fn memory_stays_bounded_by_pruning_refilled_keys() {
        let limiter = RotateLimiter::new(limit(1000, 100));
        for n in 0..u32::try_from(MIN_HIGH_WATER).unwrap() {
            limiter.check_hash(hash(n)).unwrap();
        }
        // Every bucket refills within a millisecond at 1000 a second.
        std::thread::sleep(Duration::from_millis(20));
        for n in 0..10 {
            limiter.check_hash(hash(1_000_000 + n)).unwrap();
        }
        assert!(limiter.tracked() < 100, "{} keys left", limiter.tracked());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn a_caller_rate_refuses_past_its_burst() {
        let rate = CallerRate::new(Rate {
            per_second: 1,
            burst: Some(2),
        })
        .unwrap();
        rate.check().unwrap();
        rate.check().unwrap();
        assert_eq!(rate.check().unwrap_err().what, "caller");
        assert!(
            CallerRate::new(Rate {
                per_second: 0,
                burst: None
            })
            .is_none()
        );
    }
}
