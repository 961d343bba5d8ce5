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
//! - A read that raced with a revocation must not put "live" back: a miss notes the revocation
//!   epoch before asking the database, and caches "live" only if no revocation happened since,
//!   checked and inserted under the same lock revocations take.
//! - "Live" is trusted for at most `max_age`. That bounds how long a revocation made by *another*
//!   replica can go unseen; propagating revocations between replicas (a later issue) only has
//!   to call [`CachedStore::mark_revoked`] to make that immediate.
//!
//! What it leaves out: refresh tokens and rotation always go to the database, where the
//! one-time-use guarantee lives.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use time::OffsetDateTime;

use super::{
    FamilyStatus, FamilyStore, IdleWindow, NewFamily, Purged, RefreshTokenRecord, Revocation, RevokeReason,
    SessionCursor, SessionRecord, SpendOutcome, SpendRequest, StoreError,
};
use crate::issuer::refresh_token::TokenHash;
use crate::issuer::types::FamilyId;

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

/// Wraps `S`, answering [`FamilyStore::family_status`] from memory when it can.
pub struct CachedStore<S> {
    inner: S,
    entries: Cache<FamilyId, Entry>,
    /// Bumped by every revocation; see the module docs.
    epoch: AtomicU64,
    /// Serialises "check epoch, insert live" against "bump epoch, insert revoked". A std mutex:
    /// held for one map insert, never across an await, and only on misses and revocations.
    writes: Mutex<()>,
    max_age: Duration,
}

impl<S> CachedStore<S> {
    /// A cache of at most `capacity` families, trusting "live" for `max_age`.
    pub fn new(inner: S, capacity: usize, max_age: Duration) -> Self {
        Self {
            inner,
            entries: Cache::new(capacity.max(1)),
            epoch: AtomicU64::new(0),
            writes: Mutex::new(()),
            max_age,
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Records that `id` is revoked (this server revoked it, or a peer said so).
    pub fn mark_revoked(&self, id: FamilyId, expires_at: Option<OffsetDateTime>) {
        let _guard = self.writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let expires_at = expires_at
            .or_else(|| match self.entries.get(&id) {
                Some(Entry::Live { expires_at, .. } | Entry::Revoked { expires_at }) => Some(expires_at),
                None => None,
            })
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        self.entries.insert(id, Entry::Revoked { expires_at });
    }

    fn remember_live(&self, id: FamilyId, expires_at: OffsetDateTime, epoch_before_read: u64) {
        let _guard = self.writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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

impl<S: FamilyStore> FamilyStore for CachedStore<S> {
    async fn create_family(&self, new: &NewFamily) -> Result<Vec<FamilyId>, StoreError> {
        let evicted = self.inner.create_family(new).await?;
        for id in &evicted {
            self.mark_revoked(*id, None);
        }
        Ok(evicted)
    }

    async fn spend(&self, request: &SpendRequest) -> Result<SpendOutcome, StoreError> {
        let outcome = self.inner.spend(request).await?;
        if let SpendOutcome::Refused {
            token: Some(token),
            revoked_for_reuse: true,
        } = &outcome
        {
            self.mark_revoked(token.family.id, Some(token.family.expires_at));
        }
        Ok(outcome)
    }

    async fn refresh_token(&self, hash: &TokenHash) -> Result<Option<RefreshTokenRecord>, StoreError> {
        self.inner.refresh_token(hash).await
    }

    async fn family_status(&self, id: FamilyId) -> Result<Option<FamilyStatus>, StoreError> {
        match self.entries.get(&id) {
            Some(Entry::Revoked { expires_at }) => {
                return Ok(Some(FamilyStatus {
                    revoked: true,
                    expires_at,
                }));
            }
            Some(Entry::Live { expires_at, cached_at }) if cached_at.elapsed() < self.max_age => {
                return Ok(Some(FamilyStatus {
                    revoked: false,
                    expires_at,
                }));
            }
            _ => {}
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let status = self.inner.family_status(id).await?;
        match status {
            Some(FamilyStatus {
                revoked: false,
                expires_at,
            }) => self.remember_live(id, expires_at, epoch),
            Some(FamilyStatus {
                revoked: true,
                expires_at,
            }) => self.mark_revoked(id, Some(expires_at)),
            None => {}
        }
        Ok(status)
    }

    async fn revoke_family(
        &self,
        id: FamilyId,
        now: OffsetDateTime,
        reason: RevokeReason,
    ) -> Result<Revocation, StoreError> {
        let revocation = self.inner.revoke_family(id, now, reason).await?;
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
    ) -> Result<Vec<FamilyId>, StoreError> {
        let revoked = self.inner.revoke_subject(subject, now, limit).await?;
        for id in &revoked {
            self.mark_revoked(*id, None);
        }
        Ok(revoked)
    }

    async fn live_families(
        &self,
        subject: &str,
        now: OffsetDateTime,
        after: Option<SessionCursor>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.live_families(subject, now, after, limit).await
    }

    async fn revoked_families(&self, ended_before: OffsetDateTime, limit: u32) -> Result<Vec<FamilyId>, StoreError> {
        self.inner.revoked_families(ended_before, limit).await
    }

    async fn idle_window(
        &self,
        after: Option<FamilyId>,
        window: u32,
        ended_before: OffsetDateTime,
    ) -> Result<IdleWindow, StoreError> {
        self.inner.idle_window(after, window, ended_before).await
    }

    async fn purge_families(&self, families: &[FamilyId], limit: u32) -> Result<Purged, StoreError> {
        // Nothing to forget: a purged family had ended, which cached entries already say (a
        // "live" entry is checked against its expiry, and "revoked" stays true).
        self.inner.purge_families(families, limit).await
    }

    async fn clear_seals(&self, sealed_before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        self.inner.clear_seals(sealed_before, limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A store that only knows family statuses, counting how often it is asked.
    #[derive(Default)]
    struct Statuses {
        revoked: Mutex<bool>,
        reads: AtomicUsize,
    }

    fn never<T>() -> Result<T, StoreError> {
        Err(StoreError::Internal("not used in this test".into()))
    }

    impl FamilyStore for Statuses {
        async fn create_family(&self, _: &NewFamily) -> Result<Vec<FamilyId>, StoreError> {
            never()
        }
        async fn spend(&self, _: &SpendRequest) -> Result<SpendOutcome, StoreError> {
            never()
        }
        async fn refresh_token(&self, _: &TokenHash) -> Result<Option<RefreshTokenRecord>, StoreError> {
            never()
        }
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
        ) -> Result<Revocation, StoreError> {
            if id == unknown() {
                return Ok(Revocation::Unknown);
            }
            *self.revoked.lock().unwrap() = true;
            Ok(Revocation::Revoked)
        }
        async fn revoke_subject(&self, _: &str, _: OffsetDateTime, _: u32) -> Result<Vec<FamilyId>, StoreError> {
            never()
        }
        async fn live_families(
            &self,
            _: &str,
            _: OffsetDateTime,
            _: Option<SessionCursor>,
            _: u32,
        ) -> Result<Vec<SessionRecord>, StoreError> {
            never()
        }
        async fn revoked_families(&self, _: OffsetDateTime, _: u32) -> Result<Vec<FamilyId>, StoreError> {
            never()
        }
        async fn idle_window(&self, _: Option<FamilyId>, _: u32, _: OffsetDateTime) -> Result<IdleWindow, StoreError> {
            never()
        }
        async fn purge_families(&self, _: &[FamilyId], _: u32) -> Result<Purged, StoreError> {
            never()
        }
        async fn clear_seals(&self, _: OffsetDateTime, _: u32) -> Result<u64, StoreError> {
            never()
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
        let epoch = store.epoch.load(Ordering::SeqCst);
        let revocation = store
            .revoke_family(unknown(), OffsetDateTime::UNIX_EPOCH, RevokeReason::Revoke)
            .await
            .unwrap();
        assert_eq!(revocation, Revocation::Unknown);
        assert_eq!(
            store.epoch.load(Ordering::SeqCst),
            epoch,
            "a revocation of nothing bumped the epoch"
        );
        assert!(
            store.entries.get(&unknown()).is_none(),
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
            .revoke_family(id, OffsetDateTime::UNIX_EPOCH, RevokeReason::Revoke)
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
        let epoch = store.epoch.load(Ordering::SeqCst);
        // The read saw "live", then a revocation happened before it could cache that.
        store.mark_revoked(id, None);
        store.remember_live(id, OffsetDateTime::UNIX_EPOCH, epoch);
        assert!(store.family_status(id).await.unwrap().unwrap().revoked);
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
