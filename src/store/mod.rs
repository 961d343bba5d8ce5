//! Where families and refresh tokens live: the [`FamilyStore`] trait, [`postgres`], [`sqlite`], and
//! [`Backend`], the one type through which the server opens, migrates, watches and closes
//! whichever backend its configuration names.
//!
//! The trait speaks in domain records and leaves the policy (what is expired, what the grace
//! window allows) to the issuer, with the exceptions that atomicity forces, all in
//! [`FamilyStore::spend`]: it spends a token only if it is *live* at `now`, and it revokes the
//! family in the same atomic step when the token presented is already spent and the request is
//! neither a retry within the grace window nor a second delivery of itself (see
//! [`SpendRequest`]). Once the database has seen a replay, the family is revoked, whatever
//! happens to the caller afterwards.
//!
//! Every write is *idempotent*: running it twice has the effect of running it once, and the
//! second run tells what the first did (Issue's insert of a fresh random id fails on that id,
//! which says the same). That is what lets a store resolve a write whose answer was lost (the
//! connection dropped after the statement was sent) by running it again on a new connection,
//! instead of answering "unavailable" for something that may have happened; see [`StoreError`].
//!
//! Every write that changes a family also records what it did in the audit trail ([`audit`]), in
//! the same atomic step, with the [`Actor`] it was given; being idempotent, a write run again
//! records nothing more.
//!
//! [`postgres::pool::ConnectionPool`] holds the PostgreSQL connections (and explains why it is not sqlx's).
//! [`cached::CachedStore`] wraps any store with an in-memory cache of family liveness, so that
//! Introspect of an access token needs no database round trip for a family it has seen;
//! [`postgres::revocations`] keeps it current with revocations committed anywhere.

pub mod audit;
mod backend;
pub mod cached;
#[cfg(test)]
mod contract;
pub mod postgres;
pub mod sqlite;

use std::future::Future;

use serde_json::{Map, Value};
use time::OffsetDateTime;

pub use self::audit::{AuditEvent, EventFilter, EventKind, TargetKind};
pub use self::backend::{Backend, Target};
use crate::domain::{Actor, FamilyId, RotateLimit, Seal, TokenHash};

/// The store a server runs on: the family cache in front of the backend chosen at run time. The
/// transport and the use cases are generic over [`FamilyStore`]; this is the one type startup
/// fixes them to, whichever backend the configuration names.
pub type RuntimeStore = cached::CachedStore<Backend>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Storage failures, named for what the caller may conclude and do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing happened: the database could not be reached, refused the work, or timed out
    /// before committing. Retrying is safe.
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    /// Nothing happened: serialization failures persisted through every retry.
    #[error("too much contention: gave up after {attempts} attempts")]
    Contention { attempts: u32 },
    /// A write was sent and its answer lost, and the database could not be asked again in time:
    /// it may or may not have happened.
    #[error("the outcome of a write is unknown: the database stopped answering")]
    OutcomeUnknown(#[source] BoxError),
    /// The database refused a value as invalid data (SQLSTATE class 22): input that validation
    /// should have caught. Nothing happened.
    #[error("the database refused a value as invalid")]
    InvalidData(#[source] BoxError),
    /// A bug or a broken invariant; not the caller's fault and not worth retrying.
    #[error("storage failure")]
    Internal(#[source] BoxError),
}

/// Why `migrate` failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot reach the database")]
    Unreachable(#[source] BoxError),
    #[error("cannot create the database")]
    Create(#[source] BoxError),
    #[error("cannot apply migrations")]
    Apply(#[source] BoxError),
    #[error("cannot close the connection")]
    Close(#[source] BoxError),
}

/// Why a family was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// An explicit Revoke call, naming what it names.
    Revoke(TargetKind),
    /// A spent refresh token was presented again.
    Reuse,
    /// Its subject and client started more live sessions than allowed; it was the oldest.
    Evicted,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoke(_) => "revoke",
            Self::Reuse => "reuse",
            Self::Evicted => "evicted",
        }
    }

    /// The audit event a revocation for this reason is recorded as, with its detail.
    pub fn event(self) -> (EventKind, Option<&'static str>) {
        match self {
            Self::Revoke(target) => (EventKind::Revoked, Some(target.as_str())),
            Self::Reuse => (EventKind::ReuseDetected, None),
            Self::Evicted => (EventKind::Evicted, None),
        }
    }
}

/// A family as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyRecord {
    pub id: FamilyId,
    pub subject: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub claims: Map<String, Value>,
    pub created_at: OffsetDateTime,
    pub last_rotated_at: OffsetDateTime,
    /// Idle expiry of the family's newest refresh token.
    pub refresh_expires_at: OffsetDateTime,
    /// Absolute end of the family.
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// A new refresh token row.
#[derive(Debug, Clone, Copy)]
pub struct NewRefreshToken {
    pub hash: TokenHash,
    pub expires_at: OffsetDateTime,
}

/// A new family with its first refresh token, and how many live families its subject may keep
/// for its client.
#[derive(Debug, Clone)]
pub struct NewFamily {
    pub family: FamilyRecord,
    pub first: NewRefreshToken,
    /// At most this many live families per (subject, client_id), the new one included: the
    /// oldest beyond it are revoked ([`RevokeReason::Evicted`]) by the same atomic step.
    pub max_live: u32,
}

/// A refresh token as stored, with its family and, once spent, its successor.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshTokenRecord {
    pub family: FamilyRecord,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub spent_at: Option<OffsetDateTime>,
    pub successor: Option<Successor>,
}

/// What a spent token was rotated into.
#[derive(Debug, Clone, PartialEq)]
pub struct Successor {
    pub hash: TokenHash,
    /// The successor's secret sealed under the spent token's ([`Seal`]); kept only while the
    /// reuse grace window may need it and cleared when the successor is spent.
    pub seal: Option<Seal>,
    pub expires_at: OffsetDateTime,
    pub spent: bool,
}

/// Spend `presented` and store `successor` in its place, atomically, if and only if at `now`:
/// the presented token exists and is unspent, `now < expires_at` for it and for its family, the
/// family is not revoked, and the family's Rotate bucket has room under `rotate_limit` (taking a
/// rotation from it: see [`RotateLimit`]). The successor's expiry is capped at the family's.
///
/// If instead the presented token is already spent, its family is live, and the request is not a
/// *retry* (the spend was after `retry_after`, its successor is unspent, unexpired and sealed)
/// nor this very request delivered again (the token was spent into `successor`), the family is
/// revoked for reuse in the same atomic step.
#[derive(Debug, Clone, Copy)]
pub struct SpendRequest {
    pub presented: TokenHash,
    pub successor: NewRefreshToken,
    /// Stored with the successor when the server has a reuse grace window; `None` without one.
    pub successor_seal: Option<Seal>,
    pub now: OffsetDateTime,
    /// `now` minus the reuse grace window.
    pub retry_after: OffsetDateTime,
    /// Record a `rotated` event when the token is spent (`--audit-rotations`). Reuse is recorded
    /// whatever this says.
    pub audit_rotation: bool,
    /// How fast the family may rotate; its bucket is kept with the family.
    pub rotate_limit: RotateLimit,
}

/// The result of [`FamilyStore::spend`].
#[derive(Debug, Clone, PartialEq)]
pub enum SpendOutcome {
    /// The token is spent into the requested successor (by this call, or by an earlier delivery
    /// of the same request), which expires at `successor_expires_at`.
    Spent {
        family: FamilyRecord,
        successor_expires_at: OffsetDateTime,
    },
    /// Not spent by this request. `token` is the presented token as it stood before (`None`:
    /// unknown), for the issuer to say why; `revoked_for_reuse` says whether this call revoked
    /// its family because the token was already spent.
    Refused {
        token: Option<RefreshTokenRecord>,
        revoked_for_reuse: bool,
    },
    /// Not spent: the token is live, but its family's Rotate bucket is full until `retry_at`
    /// (the one refusal that passes: the same token rotates then).
    Limited { family: FamilyId, retry_at: OffsetDateTime },
}

/// What [`FamilyStore::revoke_family`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// This call revoked it.
    Revoked,
    /// It was revoked before.
    AlreadyRevoked,
    /// No such family.
    Unknown,
}

/// Liveness of a family, as Introspect needs it for access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyStatus {
    pub revoked: bool,
    pub expires_at: OffsetDateTime,
}

/// A live family as ListSessions shows it; only these columns are read.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: FamilyId,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub created_at: OffsetDateTime,
    pub last_rotated_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub refresh_expires_at: OffsetDateTime,
}

/// Where a page of sessions starts: strictly after this one in the listing order (newest
/// first: `created_at` descending, then `id` descending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCursor {
    pub created_at: OffsetDateTime,
    pub id: FamilyId,
}

/// What [`FamilyStore::purge_families`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub families: u64,
    pub tokens: u64,
}

/// One window of the expiry sweep ([`FamilyStore::idle_window`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdleWindow {
    /// The families of the window that expired.
    pub ended: Vec<FamilyId>,
    /// The last family of the window, where the next one starts; `None` at the end.
    pub last: Option<FamilyId>,
}

/// This replica's turn at cleanup ([`FamilyStore::sweep_lock`]): held for a whole pass, given
/// back when dropped (also when the pass fails or is cancelled half-way).
#[must_use = "the sweep lock is given back as soon as it is dropped"]
pub struct SweepLock {
    /// What holds the lock (on PostgreSQL, the session that took it); nothing where one process
    /// owns the database anyway.
    _held: Option<Box<dyn Send>>,
}

impl SweepLock {
    /// No lock to take: the store is this process's alone.
    pub(crate) fn unshared() -> Self {
        Self { _held: None }
    }

    /// Held as long as `holder` lives.
    pub(crate) fn held_by(holder: impl Send + 'static) -> Self {
        Self {
            _held: Some(Box::new(holder)),
        }
    }
}

impl std::fmt::Debug for SweepLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SweepLock").finish_non_exhaustive()
    }
}

/// Every [`FamilyStore`] method, once, as `name(argument: Type, ...) -> Ok type;`, handed to
/// `$callback!`: how [`Backend`] (one match per method) and [`cached::CachedStore`] (straight
/// through to the store it wraps, for the methods it does not watch) are written without
/// repeating each method. A method added to the trait and not here fails to compile in both, so
/// the list cannot fall behind; a backend implements the trait, and nothing else changes.
macro_rules! family_store_methods {
    ($callback:ident) => {
        $callback! {
            create_family(new: &NewFamily, actor: &Actor) -> Vec<FamilyId>;
            spend(request: &SpendRequest, actor: &Actor) -> SpendOutcome;
            refresh_token(hash: &TokenHash) -> Option<RefreshTokenRecord>;
            family_status(id: FamilyId) -> Option<FamilyStatus>;
            family_subject(id: FamilyId) -> Option<String>;
            revoke_family(id: FamilyId, now: OffsetDateTime, reason: RevokeReason, actor: &Actor) -> Revocation;
            revoke_subject(subject: &str, now: OffsetDateTime, limit: u32, actor: &Actor) -> Vec<FamilyId>;
            live_families(subject: &str, now: OffsetDateTime, after: Option<SessionCursor>, limit: u32) -> Vec<SessionRecord>;
            revoked_families(revoked_before: OffsetDateTime, limit: u32) -> Vec<FamilyId>;
            idle_window(after: Option<FamilyId>, window: u32, ended_before: OffsetDateTime) -> IdleWindow;
            purge_families(families: &[FamilyId], limit: u32) -> Purged;
            clear_seals(sealed_before: OffsetDateTime, limit: u32) -> u64;
            events(filter: &EventFilter) -> Vec<AuditEvent>;
            purge_events(before: OffsetDateTime, limit: u32) -> u64;
            ping() -> ();
            sweep_lock() -> Option<SweepLock>;
        }
    };
}
pub(crate) use family_store_methods;

/// Persistent state of families and refresh tokens. Every method is atomic, and every write is
/// idempotent (see the module docs).
///
/// Implementations retry serialization failures themselves and report
/// [`StoreError::Contention`] only when retries are exhausted.
pub trait FamilyStore: Send + Sync + 'static {
    /// Stores a new family and its first refresh token, and revokes the oldest live families of
    /// the same subject and client beyond [`NewFamily::max_live`]; returns those it revoked.
    /// Records `issued` for the new family and `evicted` for each it revoked, by `actor`.
    fn create_family(
        &self,
        new: &NewFamily,
        actor: &Actor,
    ) -> impl Future<Output = Result<Vec<FamilyId>, StoreError>> + Send;

    /// The rotation compare-and-set; see [`SpendRequest`]. Records `reuse_detected` when it
    /// revokes the family, and `rotated` when it spends the token and
    /// [`SpendRequest::audit_rotation`] asks for it.
    fn spend(
        &self,
        request: &SpendRequest,
        actor: &Actor,
    ) -> impl Future<Output = Result<SpendOutcome, StoreError>> + Send;

    /// A refresh token by hash, with its family.
    fn refresh_token(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<RefreshTokenRecord>, StoreError>> + Send;

    /// Whether a family exists and is revoked.
    fn family_status(&self, id: FamilyId) -> impl Future<Output = Result<Option<FamilyStatus>, StoreError>> + Send;

    /// The subject of a family, if it exists (whatever its state): what a caller limited to some
    /// subjects is checked against when it names a family by id.
    fn family_subject(&self, id: FamilyId) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Revokes one family; if this call revoked it, records the event `reason` stands for
    /// ([`RevokeReason::event`]) by `actor`.
    fn revoke_family(
        &self,
        id: FamilyId,
        now: OffsetDateTime,
        reason: RevokeReason,
        actor: &Actor,
    ) -> impl Future<Output = Result<Revocation, StoreError>> + Send;

    /// Revokes at most `limit` unrevoked families of `subject` that have not reached their
    /// absolute expiry, and returns them; fewer than `limit` means there are no more. Records
    /// `revoked` (named by subject) for each, by `actor`.
    fn revoke_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        limit: u32,
        actor: &Actor,
    ) -> impl Future<Output = Result<Vec<FamilyId>, StoreError>> + Send;

    /// The live families of `subject` at `now`, newest first, starting after `after`, at most
    /// `limit`.
    fn live_families(
        &self,
        subject: &str,
        now: OffsetDateTime,
        after: Option<SessionCursor>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<SessionRecord>, StoreError>> + Send;

    /// At most `limit` families revoked before `revoked_before`.
    fn revoked_families(
        &self,
        revoked_before: OffsetDateTime,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<FamilyId>, StoreError>> + Send;

    /// The expiry sweep: of the next `window` families after `after` (in an order of the store's
    /// choosing that a later call continues), those that expired (idle or absolute) before
    /// `ended_before`.
    fn idle_window(
        &self,
        after: Option<FamilyId>,
        window: u32,
        ended_before: OffsetDateTime,
    ) -> impl Future<Output = Result<IdleWindow, StoreError>> + Send;

    /// Deletes `families`, which must have ended, with their refresh tokens and seals. Runs as
    /// several statements, none of which deletes more than about `limit` rows; each is atomic.
    fn purge_families(
        &self,
        families: &[FamilyId],
        limit: u32,
    ) -> impl Future<Output = Result<Purged, StoreError>> + Send;

    /// Clears at most `limit` seals made before `sealed_before` (left over when a successor was
    /// never spent); returns how many.
    fn clear_seals(
        &self,
        sealed_before: OffsetDateTime,
        limit: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The audit events `filter` selects, newest first. A read that neither waits for writers nor
    /// holds them up: `ratchet events` runs it beside a busy server.
    fn events(&self, filter: &EventFilter) -> impl Future<Output = Result<Vec<AuditEvent>, StoreError>> + Send;

    /// Deletes at most `limit` audit events recorded before `before`, the oldest first (the
    /// retention); returns how many.
    fn purge_events(&self, before: OffsetDateTime, limit: u32) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Cheap round trip to tell whether storage answers (health checks).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes the cleanup lock without waiting, so that of the servers sharing the store one
    /// cleans at a time: `None` when another holds it (that server is sweeping; this one skips
    /// its round). Held until the returned guard is dropped.
    ///
    /// A store only one process can open (SQLite, which holds a lock file) always grants it.
    fn sweep_lock(&self) -> impl Future<Output = Result<Option<SweepLock>, StoreError>> + Send;
}
