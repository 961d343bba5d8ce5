//! The use cases: issue ([`Issuer::issue`]), rotate ([`rotate`]), revoke ([`revoke`]),
//! introspect ([`introspect`]), authorize a bearer for a route ([`authorize`], behind Envoy's
//! ext_authz), list sessions ([`sessions`]) and the storage cleanup ([`cleanup`]).
//!
//! Knows neither tonic nor sqlx: it takes validated inputs ([`types`]) and `now`, talks to a
//! [`FamilyStore`] and a [`Keyring`], and returns domain results or an [`Error`]. CPU work
//! (generating and hashing refresh tokens, sealing, signing) happens before or after the store
//! call, never inside a database transaction.

pub mod authorize;
pub mod cleanup;
pub mod error;
pub mod introspect;
pub mod refresh_token;
pub mod revoke;
pub mod rotate;
pub mod rotation;
pub mod sessions;
pub mod types;

use std::sync::Arc;

use time::{Duration, OffsetDateTime};
use tracing::{Span, field};

use crate::domain::{Actor, FamilyId, RotateLimit};
pub use error::Error;
pub use introspect::{ActiveToken, TokenType};
use refresh_token::RefreshToken;
pub use revoke::Subjects;
pub use sessions::{Session, SessionsPage};
use types::IssueParams;

use crate::keys::{AccessClaims, Jwks, Keyring, ServerSecret};
use crate::store::{FamilyRecord, FamilyStore, NewFamily, NewRefreshToken};

/// The server's token policy: who it is and how long things live.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `iss` of every access token.
    pub issuer: String,
    /// `aud` when Issue names none.
    pub default_audience: String,
    pub access_ttl: Duration,
    /// Idle lifetime of a refresh token.
    pub refresh_ttl: Duration,
    /// Absolute lifetime of a family.
    pub family_ttl: Duration,
    /// How long after a spend presenting the spent token again counts as a client retry rather
    /// than theft; zero is strict.
    pub reuse_grace: Duration,
    /// Tolerated clock skew for `nbf` and `iat` in the future (never applied to `exp`).
    pub leeway: Duration,
    /// Most live families per (subject, client_id); Issue beyond it revokes the oldest.
    pub max_sessions: u32,
    /// Record every rotation in the audit trail (`--audit-rotations`), not only the events that
    /// are always recorded (issued, reuse detected, revoked, evicted).
    pub audit_rotations: bool,
    /// How fast one family may rotate, across every replica: the store enforces it in the spend
    /// (each server also limits each presented token with it, in memory).
    pub rotate_limit: RotateLimit,
}

/// A fresh access token and refresh token.
#[derive(Debug)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: RefreshToken,
    /// Seconds from now until the access token's `exp`.
    pub expires_in: i64,
    pub refresh_expires_at: OffsetDateTime,
    pub family_id: FamilyId,
}

/// The issuer a server runs: over the family cache and whichever backend is configured.
pub type RuntimeIssuer = Issuer<crate::store::RuntimeStore>;

/// The token service's use cases over a store and a keyring.
pub struct Issuer<S> {
    store: S,
    keys: Arc<Keyring>,
    /// Keys seals and page tokens; never stored.
    secret: ServerSecret,
    policy: Policy,
}

/// `now + ttl`, or an internal error for a time that cannot be represented (configuration bounds
/// make that impossible with a sane clock; the arithmetic stays checked regardless).
fn later(now: OffsetDateTime, ttl: Duration) -> Result<OffsetDateTime, Error> {
    now.checked_add(ttl)
        .ok_or_else(|| Error::Internal("time arithmetic out of range".into()))
}

impl<S: FamilyStore> Issuer<S> {
    pub fn new(store: S, keys: Arc<Keyring>, secret: ServerSecret, policy: Policy) -> Self {
        Self {
            store,
            keys,
            secret,
            policy,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The JWK Set verifiers fetch: every key that signs or may have signed a live token.
    pub fn jwks(&self) -> Arc<Jwks> {
        self.keys.jwks()
    }

    /// Starts a family and returns its first pair. Beyond [`Policy::max_sessions`] live families
    /// of the subject for this client, the oldest are revoked: only ever of the same subject and
    /// client id as the new family, so a caller the policy lets issue only for some subjects and
    /// client ids can evict only sessions it could have issued itself. The audit trail records
    /// both (`issued`, `evicted`) by `actor`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when storage is down, [`Error::OutcomeUnknown`] when it stopped
    /// answering mid-way; [`Error::Internal`] otherwise.
    #[tracing::instrument(level = "debug", name = "issue", skip_all, fields(family_id = field::Empty))]
    pub async fn issue(&self, params: IssueParams, actor: &Actor, now: OffsetDateTime) -> Result<TokenPair, Error> {
        let expires_at = later(now, self.policy.family_ttl)?;
        let family = FamilyRecord {
            id: FamilyId::new_random(),
            subject: params.subject.as_str().to_owned(),
            client_id: params.client_id.as_str().to_owned(),
            scopes: params.scopes.as_slice().to_vec(),
            audiences: params.audiences.as_slice().to_vec(),
            claims: params.claims.as_map().clone(),
            created_at: now,
            last_rotated_at: now,
            refresh_expires_at: later(now, self.policy.refresh_ttl)?.min(expires_at),
            expires_at,
            revoked_at: None,
        };
        Span::current().record("family_id", field::display(family.id));
        let refresh_token = RefreshToken::generate()?;
        let first = NewRefreshToken {
            hash: refresh_token.hash(),
            expires_at: family.refresh_expires_at,
        };
        let access_token = self.mint(&family, now)?;
        let new = NewFamily {
            family,
            first,
            max_live: self.policy.max_sessions,
        };
        let evicted = self.store.create_family(&new, actor).await?;
        crate::telemetry::metrics::revoked(crate::telemetry::metrics::Revoked::Eviction, evicted.len() as u64);
        for family in evicted {
            tracing::info!(target: "security", %family, subject = %new.family.subject, client_id = %new.family.client_id,
                reason = "evicted", max_sessions = self.policy.max_sessions,
                "oldest session revoked: too many live sessions for this subject and client");
        }
        Ok(self.pair(&new.family, access_token, refresh_token, first.expires_at, now))
    }

    /// Signs an access token for `family`, never outliving the family.
    fn mint(&self, family: &FamilyRecord, now: OffsetDateTime) -> Result<String, Error> {
        let iat = now.unix_timestamp();
        let claims = AccessClaims {
            iss: self.policy.issuer.clone(),
            sub: family.subject.clone(),
            aud: family.audiences.clone(),
            exp: self.access_expiry(family, now),
            iat,
            nbf: iat,
            jti: uuid::Uuid::new_v4().to_string(),
            client_id: family.client_id.clone(),
            scope: family.scopes.join(" "),
            sid: family.id.to_string(),
            extra: family.claims.clone(),
        };
        Ok(self.keys.sign(&claims)?)
    }

    fn access_expiry(&self, family: &FamilyRecord, now: OffsetDateTime) -> i64 {
        now.checked_add(self.policy.access_ttl)
            .map_or(family.expires_at, |exp| exp.min(family.expires_at))
            .unix_timestamp()
    }

    fn pair(
        &self,
        family: &FamilyRecord,
        access_token: String,
        refresh_token: RefreshToken,
        refresh_expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> TokenPair {
        TokenPair {
            access_token,
            refresh_token,
            expires_in: self.access_expiry(family, now) - now.unix_timestamp(),
            refresh_expires_at,
            family_id: family.id,
        }
    }
}
