//! The issuer's key set, kept fresh: fetched in the background as often as the issuer's
//! `Cache-Control: max-age` says (within bounds), again on demand when a token names a `kid` we do
//! not hold (at most once per interval, however many tokens ask), conditionally (`If-None-Match`)
//! so that an unchanged set costs a 304.
//!
//! Failure policy: a failed refresh keeps the last good set, retried with backoff (1 s, doubling up
//! to the minimum interval), for at most `max_stale` past the moment that set should have been
//! refreshed (the last time the issuer confirmed it, by a 200 or a 304, plus the interval it
//! asked for); past that, no key is served and verification answers
//! [`KeysUnavailable`](crate::VerifyError::KeysUnavailable). The bound exists because a key the
//! issuer retired (maybe because it leaked) must stop verifying even where the issuer cannot be
//! reached.
//!
//! Concurrency: readers take the current set from a `std::sync::RwLock` held only to clone an
//! `Arc` (never across an await); fetches are serialised by a `tokio::sync::Mutex`, and a caller
//! that waited on it while another fetch ran takes that fetch's result instead of starting its own,
//! so N simultaneous misses cost one request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::Uri;
use tokio::time::Instant;

use crate::config::RefreshPolicy;
use crate::error::FetchError;
use crate::fetch::{Fetched, Fetcher};
use crate::jwks::{Key, KeySet};

/// The first retry after a failed fetch; doubles up to the minimum refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// What looking up a `kid` found.
pub(crate) enum Lookup {
    Found(Arc<Key>),
    Unknown,
    /// No key set, or one past `max_stale`.
    Unavailable,
}

/// Why a fetch is made: only the on-demand kind is rate-limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Schedule,
    UnknownKid,
    Manual,
}

struct Snapshot {
    keys: Arc<KeySet>,
    /// Until when this set may be served: the last time the issuer confirmed it (200 or 304),
    /// plus the refresh interval then chosen, plus `max_stale`.
    usable_until: Instant,
}

struct FetchState {
    etag: Option<String>,
    last_on_demand: Option<Instant>,
    consecutive_failures: u32,
    next_scheduled: Instant,
    last_error: Option<FetchError>,
}

pub(crate) struct KeyCache {
    url: Uri,
    fetcher: Fetcher,
    policy: RefreshPolicy,
    allowed: Vec<jsonwebtoken::Algorithm>,
    current: RwLock<Option<Snapshot>>,
    /// Fetches attempted so far; read before waiting for the fetch lock, to tell whether another
    /// caller fetched meanwhile.
    attempts: AtomicU64,
    last_failed: AtomicBool,
    fetch: tokio::sync::Mutex<FetchState>,
}

impl KeyCache {
    pub(crate) fn new(
        url: Uri,
        fetcher: Fetcher,
        policy: RefreshPolicy,
        allowed: Vec<jsonwebtoken::Algorithm>,
    ) -> Self {
        Self {
            url,
            fetcher,
            policy,
            allowed,
            current: RwLock::new(None),
            attempts: AtomicU64::new(0),
            last_failed: AtomicBool::new(false),
            fetch: tokio::sync::Mutex::new(FetchState {
                etag: None,
                last_on_demand: None,
                consecutive_failures: 0,
                next_scheduled: Instant::now(),
                last_error: None,
            }),
        }
    }

    pub(crate) fn lookup(&self, kid: &str) -> Lookup {
        let keys = {
            // A poisoned lock only means a panic elsewhere while swapping an Arc: the value is whole.
            let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            match &*current {
                Some(snapshot) if Instant::now() <= snapshot.usable_until => snapshot.keys.clone(),
                _ => return Lookup::Unavailable,
            }
        };
        keys.get(kid).map_or(Lookup::Unknown, Lookup::Found)
    }

    /// The key `kid`, fetching the key set again if we do not hold it (rate-limited).
    ///
    /// # Errors
    /// [`UnknownKey`](crate::VerifyError::UnknownKey) when the issuer's current set does not hold
    /// it; [`KeysUnavailable`](crate::VerifyError::KeysUnavailable) when we cannot tell.
    pub(crate) async fn key(&self, kid: &str) -> Result<Arc<Key>, crate::VerifyError> {
        if let Lookup::Found(key) = self.lookup(kid) {
            return Ok(key);
        }
        // The result does not matter here: the lookup below sees whatever it brought.
        let _ = self.refresh(Trigger::UnknownKid).await;
        match self.lookup(kid) {
            Lookup::Found(key) => Ok(key),
            Lookup::Unknown if !self.last_failed.load(Ordering::Acquire) => Err(crate::VerifyError::UnknownKey),
            // The set we hold may just be missing a key published since: cannot tell.
            Lookup::Unknown | Lookup::Unavailable => Err(crate::VerifyError::KeysUnavailable),
        }
    }

    /// Fetch the key set now, unless another caller's fetch finished while we waited for ours (then
    /// its result is ours) or, for `Trigger::UnknownKid`, one ran less than the interval ago.
    ///
    /// # Errors
    /// The fetch (ours or the one we shared) failed.
    pub(crate) async fn refresh(&self, trigger: Trigger) -> Result<(), FetchError> {
        let seen = self.attempts.load(Ordering::Acquire);
        let mut state = self.fetch.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen {
            return state.last_error.clone().map_or(Ok(()), Err);
        }
        let now = Instant::now();
        if trigger == Trigger::UnknownKid {
            if state
                .last_on_demand
                .is_some_and(|last| now.duration_since(last) < self.policy.unknown_kid_interval)
            {
                tracing::debug!("unknown kid: key set refresh skipped (rate limit)");
                return state.last_error.clone().map_or(Ok(()), Err);
            }
            state.last_on_demand = Some(now);
        }
        let result = self.fetch_once(&mut state).await;
        self.attempts.fetch_add(1, Ordering::AcqRel);
        self.last_failed.store(result.is_err(), Ordering::Release);
        let delay = match &result {
            Ok(interval) => {
                state.consecutive_failures = 0;
                *interval
            }
            Err(error) => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                tracing::warn!(%error, url = %self.url, ?trigger, have_keys = self.has_snapshot(),
                    "key set refresh failed; keeping the last good set");
                FIRST_RETRY
                    .saturating_mul(2u32.saturating_pow(state.consecutive_failures - 1))
                    .min(self.policy.min_interval)
            }
        };
        state.next_scheduled = Instant::now() + delay;
        state.last_error = result.as_ref().err().cloned();
        result.map(|_| ())
    }

    /// One fetch; on success the set is current and the answer is when to fetch next.
    async fn fetch_once(&self, state: &mut FetchState) -> Result<Duration, FetchError> {
        // Conditional only while we hold the set that ETag names.
        let etag = if self.has_snapshot() {
            state.etag.as_deref()
        } else {
            None
        };
        let fetched = self.fetcher.get(&self.url, etag).await?;
        let (keys, etag, max_age) = match fetched {
            Fetched::NotModified { max_age } => (None, None, max_age),
            Fetched::Modified { body, etag, max_age } => (Some(KeySet::parse(&body, &self.allowed)?), etag, max_age),
        };
        let interval = max_age
            .unwrap_or(self.policy.default_interval)
            .clamp(self.policy.min_interval, self.policy.max_interval);
        let usable_until = Instant::now() + interval + self.policy.max_stale;
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match (keys, current.as_mut()) {
            (Some(keys), _) => {
                tracing::debug!(keys = keys.len(), url = %self.url, "key set fetched");
                *current = Some(Snapshot {
                    keys: Arc::new(keys),
                    usable_until,
                });
                state.etag = etag;
            }
            (None, Some(snapshot)) => snapshot.usable_until = usable_until,
            // A 304 is only accepted for a conditional request, which needs a set.
            (None, None) => return Err(FetchError::Invalid("304 without a key set".into())),
        }
        Ok(interval)
    }

    fn has_snapshot(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// When the background task should fetch next.
    async fn next_scheduled(&self) -> Instant {
        self.fetch.lock().await.next_scheduled
    }
}

/// The background refresher: fetches at once, then whenever the last fetch (by anyone) said to.
/// Ends when every [`Verifier`](crate::Verifier) clone is gone (the handle aborts it).
pub(crate) async fn run_refresher(cache: Arc<KeyCache>) {
    loop {
        let due = cache.next_scheduled().await;
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
            // Another fetch may have moved the schedule meanwhile: look again.
            if cache.next_scheduled().await > Instant::now() {
                continue;
            }
        }
        let _ = cache.refresh(Trigger::Schedule).await;
    }
}
