//! A family-liveness cache in front of any [`FamilyStore`].
//!
//! Introspect of an access token needs one fact from storage: is its family live? Asking the
//! database on every call would make Introspect cost a round trip; this cache answers from memory
//! for families it has seen, and stays safe by these rules:
//!
//! - Revocation is permanent, so a cached "revoked" never goes stale.
//! - Every revocation that passes through this store marks the family revoked here after the
//!   database committed it and before the call returns. Once Revoke, or reuse detection, has
//!   answered, no Introspect on this server sees the family live.
//! - Revocations made anywhere else (another replica, an operator's SQL) arrive through
//!   [`FamilyCache::mark_revoked_elsewhere`], called by the revocation listener
//!   ([`super::postgres::revocations`]) within milliseconds of their commit.
//! - A read that raced with a revocation must not put "live" back: a miss notes the revocation
//!   epoch before asking the database, and caches "live" only if no revocation happened since,
//!   checked and inserted under the same lock revocations take.
//! - "Live" is trusted for `max_age` (`--family-cache-ttl`) on its own. Beyond that only while
//!   the listener vouches that revocations are reaching this server ([`FamilyCache::current_until`],
//!   renewed by its probe every second, dropped the moment its connection is lost), and never
//!   beyond [`MAX_CURRENT_AGE`]. So `max_age` bounds how long a revocation made elsewhere can go
//!   unseen while the listener is down, and costs nothing while it is up.
//! - Notifications sent while the listener was down are lost for good: when it subscribes
//!   again, [`FamilyCache::forget_all`] drops every entry and bumps the epoch, so nothing learned
//!   before is trusted after.
//!
//! What it leaves out: refresh tokens and rotation always go to the database, where the
//! one-time-use guarantee lives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use time::OffsetDateTime;

use super::{
    AuditEvent, EventFilter, FamilyStatus, FamilyStore, IdleWindow, NewFamily, Purged, RefreshTokenRecord, Revocation,
    RevokeReason, SessionCursor, SessionRecord, SpendOutcome, SpendRequest, StoreError, SweepLock,
};
use crate::domain::{Actor, FamilyId, TokenHash};
use crate::telemetry::metrics;

/// Longest a cached "live" is trusted even while revocations are known to reach this server: a
/// backstop for a revocation that bypassed the notification (an operator's SQL with triggers
/// disabled, a restored backup). One read per family per 10 minutes is nothing to the database.
pub const MAX_CURRENT_AGE: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, Copy)]
enum Entry {
    Live {
        expires_at: OffsetDateTime,
        cached_at: Instant,
    },
    Revoked {
        expires_at: OffsetDateTime,
    },
}

/// The cache itself, shared by a [`CachedStore`] and the revocation listener that keeps it
/// current.
pub struct FamilyCache {
    entries: Cache<FamilyId, Entry>,
    /// Bumped by every revocation; see the module docs.
    epoch: AtomicU64,
    /// Serialises "check epoch, insert live" against "bump epoch, insert revoked". A std mutex:
    /// held for one map operation, never across an await, and only on misses and revocations.
    writes: Mutex<()>,
    max_age: Duration,
    /// Until when revocations made elsewhere are known to reach this cache, in nanoseconds since
    /// `base`; 0: they are not (no listener, or it is down). An atomic, not a lock: Introspect's
    /// hit path reads it (only for entries older than `max_age`).
    current_until: AtomicU64,
    base: Instant,
}

impl FamilyCache {
    /// At most `capacity` families, trusting "live" for `max_age` on its own.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            entries: Cache::new(capacity.max(1)),
            epoch: AtomicU64::new(0),
            writes: Mutex::new(()),
            max_age,
            current_until: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// What its entries hold, estimated: each is a key and an entry in the cache's table (its
    /// own overhead per slot is not counted).
    pub fn bytes(&self) -> u64 {
        let entry = size_of::<(FamilyId, Entry)>() as u64;
        self.entries.len() as u64 * entry
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `id` is revoked (this server revoked it, or the database said so).
    pub fn mark_revoked(&self, id: FamilyId, expires_at: Option<OffsetDateTime>) {
        let _guard = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let expires_at = expires_at
            .or_else(|| match self.entries.get(&id) {
                Some(Entry::Live { expires_at, .. } | Entry::Revoked { expires_at }) => Some(expires_at),
                None => None,
            })
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        self.entries.insert(id, Entry::Revoked { expires_at });
    }

    /// Records that someone else revoked `id`. Only a family this cache holds gets an entry: one
    /// it does not is read from the database when asked, and a bulk revocation of 100k families
    /// nobody here introspects must not push out the live entries that are in use. The epoch moves
    /// either way, so that a read of `id` in flight does not cache it live.
    pub fn mark_revoked_elsewhere(&self, id: FamilyId) {
        let _guard = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        match self.entries.peek(&id) {
            Some(Entry::Live { expires_at, .. }) => {
                self.entries.insert(id, Entry::Revoked { expires_at });
            }
            Some(Entry::Revoked { .. }) | None => {}
        }
    }

    /// Forgets everything and bumps the epoch: what was learned while revocations may have been
    /// missed is not trusted after. Called when the listener subscribes (again).
    pub fn forget_all(&self) {
        let _guard = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    /// Until `until`, the listener vouches that revocations made elsewhere reach this cache as
    /// they commit, so a cached "live" older than `max_age` may still be trusted (up to
    /// [`MAX_CURRENT_AGE`]). Renewed by each of its probes; `None`: from now on they may not.
    pub fn current_until(&self, until: Option<Instant>) {
        let nanos = until.map_or(0, |until| {
            let nanos = until.saturating_duration_since(self.base).as_nanos();
            u64::try_from(nanos).unwrap_or(u64::MAX).max(1)
        });
        self.current_until.store(nanos, Ordering::Release);
    }

    /// Whether a "live" cached at `cached_at` may be answered without asking the database.
    fn trusts(&self, cached_at: Instant) -> bool {
        let now = Instant::now();
        let age = now.saturating_duration_since(cached_at);
        age < self.max_age
            || (age < MAX_CURRENT_AGE
                && now.saturating_duration_since(self.base).as_nanos()
                    < u128::from(self.current_until.load(Ordering::Acquire)))
    }

    fn remember_live(&self, id: FamilyId, expires_at: OffsetDateTime, epoch_before_read: u64) {
        let _guard = self.lock();
        if self.epoch.load(Ordering::SeqCst) == epoch_before_read {
            self.entries.insert(
                id,
                Entry::Live {
                    expires_at,
                    cached_at: Instant::now(),
                },
            );
        }
    }
}

/// Wraps `S`, answering [`FamilyStore::family_status`] from memory when it can.
pub struct CachedStore<S> {
    inner: S,
    cache: Arc<FamilyCache>,
}

impl<S> CachedStore<S> {
    /// A cache of at most `capacity` families, trusting "live" for `max_age` on its own.
    pub fn new(inner: S, capacity: usize, max_age: Duration) -> Self {
        Self {
            inner,
            cache: Arc::new(FamilyCache::new(capacity, max_age)),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The cache, for the revocation listener to keep current.
    pub fn cache(&self) -> Arc<FamilyCache> {
        self.cache.clone()
    }

    /// Records that `id` is revoked (this server revoked it, or the database said so).
    pub fn mark_revoked(&self, id: FamilyId, expires_at: Option<OffsetDateTime>) {
        self.cache.mark_revoked(id, expires_at);
    }
}

/// Straight through to the wrapped store: every method but those that see a revocation or answer
/// from the cache. Those are named here, to be skipped, and written out below; a method in both
/// places, or in neither, fails to compile. Not cached, and why: refresh tokens and rotation
/// always go to the database (the module docs); only Revoke by a caller limited to some subjects
/// asks `family_subject`; and a purge has nothing to forget, since a purged family had ended,
/// which cached entries already say (a "live" entry is checked against its expiry, and "revoked"
/// stays true).
macro_rules! pass_through {
    () => {};
    (create_family $args:tt -> $ok:ty; $($rest:tt)*) => { pass_through! { $($rest)* } };
    (spend $args:tt -> $ok:ty; $($rest:tt)*) => { pass_through! { $($rest)* } };
    (family_status $args:tt -> $ok:ty; $($rest:tt)*) => { pass_through! { $($rest)* } };
    (revoke_family $args:tt -> $ok:ty; $($rest:tt)*) => { pass_through! { $($rest)* } };
    (revoke_subject $args:tt -> $ok:ty; $($rest:tt)*) => { pass_through! { $($rest)* } };
    ($method:ident($($arg:ident: $type:ty),*) -> $ok:ty; $($rest:tt)*) => {
        async fn $method(&self, $($arg: $type),*) -> Result<$ok, StoreError> {
            self.inner.$method($($arg),*).await
        }
        pass_through! { $($rest)* }
    };
}

impl<S: FamilyStore> FamilyStore for CachedStore<S> {
    super::family_store_methods!(pass_through);

    async fn create_family(&self, new: &NewFamily, actor: &Actor) -> Result<Vec<FamilyId>, StoreError> {
        let evicted = self.inner.create_family(new, actor).await?;
        for id in &evicted {
            self.mark_revoked(*id, None);
        }
        Ok(evicted)
    }

    async fn spend(&self, request: &SpendRequest, actor: &Actor) -> Result<SpendOutcome, StoreError> {
        let outcome = self.inner.spend(request, actor).await?;
        if let SpendOutcome::Refused {
            token: Some(token),
            revoked_for_reuse: true,
        } = &outcome
        {
            self.mark_revoked(token.family.id, Some(token.family.expires_at));
        }
        Ok(outcome)
    }

    async fn family_status(&self, id: FamilyId) -> Result<Option<FamilyStatus>, StoreError> {
        let cache = &*self.cache;
        match cache.entries.get(&id) {
            Some(Entry::Revoked { expires_at }) => {
                metrics::cache_hit(metrics::Cache::Family);
                return Ok(Some(FamilyStatus {
                    revoked: true,
                    expires_at,
                }));
            }
            Some(Entry::Live { expires_at, cached_at }) if cache.trusts(cached_at) => {
                metrics::cache_hit(metrics::Cache::Family);
                return Ok(Some(FamilyStatus {
                    revoked: false,
                    expires_at,
                }));
            }
            _ => {}
        }
        metrics::cache_miss(metrics::Cache::Family);
        let epoch = cache.epoch.load(Ordering::SeqCst);
        let status = self.inner.family_status(id).await?;
        match status {
            Some(FamilyStatus {
                revoked: false,
                expires_at,
            }) => cache.remember_live(id, expires_at, epoch),
            Some(FamilyStatus {
                revoked: true,
                expires_at,
            }) => cache.mark_revoked(id, Some(expires_at)),
            None => {}
        }
        Ok(status)
    }

    async fn revoke_family(
        &self,
        id: FamilyId,
        now: OffsetDateTime,
        reason: RevokeReason,
        actor: &Actor,
    ) -> Result<Revocation, StoreError> {
        let revocation = self.inner.revoke_family(id, now, reason, actor).await?;
        // Also when this call found it already revoked: the cache may not know yet. Not for an
        // unknown id: anyone may send those, and each would evict a real entry and bump the epoch.
        if revocation != Revocation::Unknown {
            self.mark_revoked(id, None);
        }
        Ok(revocation)
    }

    async fn revoke_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        limit: u32,
        actor: &Actor,
    ) -> Result<Vec<FamilyId>, StoreError> {
        let revoked = self.inner.revoke_subject(subject, now, limit, actor).await?;
        for id in &revoked {
            self.mark_revoked(*id, None);
        }
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::store::TargetKind;

    /// A store that only knows family statuses, counting how often it is asked.
    #[derive(Default)]
    struct Statuses {
        revoked: Mutex<bool>,
        reads: AtomicUsize,
    }

    /// Every method the tests do not use refuses; the ones they use are written out below. The
    /// same list as the stores' (`family_store_methods!`), so a new trait method needs no stub.
    macro_rules! unused {
        () => {};
        (family_status $args:tt -> $ok:ty; $($rest:tt)*) => { unused! { $($rest)* } };
        (revoke_family $args:tt -> $ok:ty; $($rest:tt)*) => { unused! { $($rest)* } };
        (ping $args:tt -> $ok:ty; $($rest:tt)*) => { unused! { $($rest)* } };
        ($method:ident($($arg:ident: $type:ty),*) -> $ok:ty; $($rest:tt)*) => {
            async fn $method(&self, $(_: $type),*) -> Result<$ok, StoreError> {
                Err(StoreError::Internal("not used in this test".into()))
            }
            unused! { $($rest)* }
        };
    }

    impl FamilyStore for Statuses {
        crate::store::family_store_methods!(unused);

        async fn family_status(&self, _: FamilyId) -> Result<Option<FamilyStatus>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let revoked = *self.revoked.lock().unwrap();
            Ok(Some(FamilyStatus {
                revoked,
                expires_at: OffsetDateTime::UNIX_EPOCH,
            }))
        }
        async fn revoke_family(
            &self,
            id: FamilyId,
            _: OffsetDateTime,
            _: RevokeReason,
            _: &Actor,
        ) -> Result<Revocation, StoreError> {
            if id == unknown() {
                return Ok(Revocation::Unknown);
            }
            *self.revoked.lock().unwrap() = true;
            Ok(Revocation::Revoked)
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// A family id the stub store does not know.
    fn unknown() -> FamilyId {
        FamilyId::from_uuid(uuid::Uuid::nil())
    }

    #[tokio::test]
    async fn revoking_an_unknown_family_leaves_the_cache_alone() {
        let store = CachedStore::new(Statuses::default(), 16, Duration::from_secs(60));
        let known = FamilyId::new_random();
        assert!(!store.family_status(known).await.unwrap().unwrap().revoked);
        let epoch = store.cache.epoch.load(Ordering::SeqCst);
        let revocation = store
            .revoke_family(
                unknown(),
                OffsetDateTime::UNIX_EPOCH,
                RevokeReason::Revoke(TargetKind::Family),
                &Actor::NOBODY,
            )
            .await
            .unwrap();
        assert_eq!(revocation, Revocation::Unknown);
        assert_eq!(
            store.cache.epoch.load(Ordering::SeqCst),
            epoch,
            "a revocation of nothing bumped the epoch"
        );
        assert!(
            store.cache.entries.get(&unknown()).is_none(),
            "an unknown family took a cache entry"
        );
        assert!(!store.family_status(known).await.unwrap().unwrap().revoked);
        assert_eq!(
            store.inner().reads.load(Ordering::SeqCst),
            1,
            "the live entry was disturbed"
        );
    }

    #[tokio::test]
    async fn live_families_are_read_once_and_revocation_shows_at_once() {
        let store = CachedStore::new(Statuses::default(), 16, Duration::from_secs(60));
        let id = FamilyId::new_random();
        for _ in 0..5 {
            assert!(!store.family_status(id).await.unwrap().unwrap().revoked);
        }
        assert_eq!(store.inner().reads.load(Ordering::SeqCst), 1);
        store
            .revoke_family(
                id,
                OffsetDateTime::UNIX_EPOCH,
                RevokeReason::Revoke(TargetKind::Family),
                &Actor::NOBODY,
            )
            .await
            .unwrap();
        assert!(store.family_status(id).await.unwrap().unwrap().revoked);
        assert_eq!(
            store.inner().reads.load(Ordering::SeqCst),
            1,
            "revoked is answered from memory"
        );
    }

    #[tokio::test]
    async fn a_read_that_raced_a_revocation_does_not_cache_live() {
        let store = CachedStore::new(Statuses::default(), 16, Duration::from_secs(60));
        let id = FamilyId::new_random();
        let epoch = store.cache.epoch.load(Ordering::SeqCst);
        // The read saw "live", then a revocation happened before it could cache that.
        store.mark_revoked(id, None);
        store.cache.remember_live(id, OffsetDateTime::UNIX_EPOCH, epoch);
        assert!(store.family_status(id).await.unwrap().unwrap().revoked);
    }

    fn reads(store: &CachedStore<Statuses>) -> usize {
        store.inner().reads.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn while_revocations_reach_the_cache_live_outlives_the_ttl_and_not_a_moment_after() {
        let store = CachedStore::new(Statuses::default(), 16, Duration::ZERO);
        let id = FamilyId::new_random();
        store.family_status(id).await.unwrap();
        store.family_status(id).await.unwrap();
        assert_eq!(reads(&store), 2, "no listener: only the TTL counts");
        store
            .cache
            .current_until(Some(Instant::now() + Duration::from_secs(60)));
        store.family_status(id).await.unwrap();
        assert_eq!(reads(&store), 2, "the listener vouches for the entry");
        store.cache.current_until(None);
        store.family_status(id).await.unwrap();
        assert_eq!(reads(&store), 3, "the listener is down: back to the TTL");
        store.cache.current_until(Some(Instant::now()));
        store.family_status(id).await.unwrap();
        assert_eq!(reads(&store), 4, "its word has lapsed");
    }

    #[tokio::test]
    async fn a_revocation_made_elsewhere_marks_a_cached_family_and_stops_a_read_in_flight() {
        let store = CachedStore::new(Statuses::default(), 16, Duration::from_secs(60));
        let cached = FamilyId::new_random();
        assert!(!store.family_status(cached).await.unwrap().unwrap().revoked);
        store.cache.mark_revoked_elsewhere(cached);
        assert!(store.family_status(cached).await.unwrap().unwrap().revoked);
        assert_eq!(reads(&store), 1, "revoked is answered from memory");

        // A family this server never looked at takes no entry ...
        let elsewhere = FamilyId::new_random();
        let epoch = store.cache.epoch.load(Ordering::SeqCst);
        store.cache.mark_revoked_elsewhere(elsewhere);
        assert!(store.cache.entries.peek(&elsewhere).is_none());
        // ... but a read of it that saw "live" before the revocation does not cache that.
        store.cache.remember_live(elsewhere, OffsetDateTime::UNIX_EPOCH, epoch);
        assert!(store.cache.entries.peek(&elsewhere).is_none());
    }

    #[tokio::test]
    async fn forgetting_all_drops_every_entry_and_any_read_in_flight() {
        let store = CachedStore::new(Statuses::default(), 16, Duration::from_secs(60));
        let id = FamilyId::new_random();
        store.family_status(id).await.unwrap();
        let epoch = store.cache.epoch.load(Ordering::SeqCst);
        store.cache.forget_all();
        store
            .cache
            .remember_live(FamilyId::new_random(), OffsetDateTime::UNIX_EPOCH, epoch);
        assert_eq!(store.cache.entries.len(), 0);
        store.family_status(id).await.unwrap();
        assert_eq!(reads(&store), 2, "asked again after forgetting");
    }

    #[tokio::test]
    async fn live_entries_expire_after_max_age() {
        let store = CachedStore::new(Statuses::default(), 16, Duration::ZERO);
        let id = FamilyId::new_random();
        store.family_status(id).await.unwrap();
        store.family_status(id).await.unwrap();
        assert_eq!(store.inner().reads.load(Ordering::SeqCst), 2);
    }
}
