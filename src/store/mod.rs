//! Where families and refresh tokens live: the [`FamilyStore`] trait, and [`postgres`].
//!
//! The trait speaks in domain records and leaves every policy decision (what is expired, what is
//! reuse, what the grace window allows) to the issuer, with one exception that atomicity forces:
//! [`FamilyStore::spend`] is a compare-and-set that spends a token only if it is *live* at `now`
//! (see [`SpendRequest`]), so that no token can be spent twice.
//!
//! [`pool::ConnectionPool`] holds the PostgreSQL connections (and explains why it is not sqlx's).
//! [`cached::CachedStore`] wraps any store with an in-memory cache of family liveness, so that
//! Introspect of an access token needs no database round trip for a family it has seen.

pub mod cached;
pub mod pool;
pub mod postgres;

use std::future::Future;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::issuer::refresh_token::{Seal, TokenHash};
use crate::issuer::types::FamilyId;

/// Storage failures, named for what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or did not answer in time: retry later.
    #[error("database unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Serialization failures persisted through every retry.
    #[error("too much contention: gave up after {attempts} attempts")]
    Contention { attempts: u32 },
    /// A bug or a broken invariant; not the caller's fault and not worth retrying.
    #[error("storage failure")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why a family was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// An explicit Revoke call.
    Revoke,
    /// A spent refresh token was presented again.
    Reuse,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoke => "revoke",
            Self::Reuse => "reuse",
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
    pub seal: Option<Seal>,
    pub expires_at: OffsetDateTime,
    pub spent: bool,
}

/// Spend `presented` and store `successor` in its place, atomically, if and only if at `now`:
/// the presented token exists and is unspent, `now < expires_at` for it and for its family, and
/// the family is not revoked. The successor's expiry is capped at the family's.
#[derive(Debug, Clone, Copy)]
pub struct SpendRequest {
    pub presented: TokenHash,
    pub successor: NewRefreshToken,
    pub successor_seal: Seal,
    pub now: OffsetDateTime,
}

/// The result of [`FamilyStore::spend`].
#[derive(Debug, Clone, PartialEq)]
pub enum SpendOutcome {
    /// The token was live and is now spent; the successor is stored, expiring at `successor_expires_at`.
    Spent {
        family: FamilyRecord,
        successor_expires_at: OffsetDateTime,
    },
    /// Nothing changed. The presented token as it stands, for the issuer to say why (`None`: unknown).
    Refused(Option<RefreshTokenRecord>),
}

/// Liveness of a family, as Introspect needs it for access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyStatus {
    pub revoked: bool,
    pub expires_at: OffsetDateTime,
}

/// Persistent state of families and refresh tokens. Every method is atomic.
///
/// Implementations retry serialization failures themselves and report
/// [`StoreError::Contention`] only when retries are exhausted.
pub trait FamilyStore: Send + Sync + 'static {
    /// Stores a new family and its first refresh token.
    fn create_family(
        &self,
        family: &FamilyRecord,
        first: &NewRefreshToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The rotation compare-and-set; see [`SpendRequest`].
    fn spend(&self, request: &SpendRequest) -> impl Future<Output = Result<SpendOutcome, StoreError>> + Send;

    /// A refresh token by hash, with its family.
    fn refresh_token(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<RefreshTokenRecord>, StoreError>> + Send;

    /// Whether a family exists and is revoked.
    fn family_status(&self, id: FamilyId) -> impl Future<Output = Result<Option<FamilyStatus>, StoreError>> + Send;

    /// Revokes one family; `true` if this call revoked it (it existed and was not revoked).
    fn revoke_family(
        &self,
        id: FamilyId,
        now: OffsetDateTime,
        reason: RevokeReason,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Revokes every unrevoked family of `subject` that has not reached its absolute expiry;
    /// returns the ones this call revoked.
    fn revoke_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<FamilyId>, StoreError>> + Send;

    /// The live families of `subject` at `now`, newest first, at most `limit`.
    fn live_families(
        &self,
        subject: &str,
        now: OffsetDateTime,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<FamilyRecord>, StoreError>> + Send;

    /// Cheap round trip to tell whether storage answers (health checks).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
