//! The use cases: issue, rotate, revoke, introspect, list sessions.
//!
//! Knows neither tonic nor sqlx: it takes validated inputs ([`types`]) and `now`, talks to a
//! [`FamilyStore`] and a [`Keyring`], and returns domain results or an [`Error`]. CPU work
//! (generating and hashing refresh tokens, signing) happens before or after the store call,
//! never inside a database transaction.

pub mod error;
pub mod refresh_token;
pub mod rotation;
pub mod types;

use time::{Duration, OffsetDateTime};
use tracing::{Span, field};

pub use error::Error;
use refresh_token::RefreshToken;
use rotation::Verdict;
use types::{FamilyId, IssueParams, PresentedToken, RevokeTarget, Subject};

use crate::keys::{AccessClaims, Keyring};
use crate::store::{FamilyRecord, FamilyStore, NewRefreshToken, RevokeReason, SpendOutcome, SpendRequest};

/// Most sessions ListSessions returns.
pub const MAX_SESSIONS_LISTED: u32 = 1000;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Access,
    Refresh,
}

impl TokenType {
    /// RFC 7662 / RFC 8693 token type names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Access => "access_token",
            Self::Refresh => "refresh_token",
        }
    }
}

/// What Introspect says about a live token.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveToken {
    pub token_type: TokenType,
    pub subject: String,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub client_id: String,
    pub issuer: String,
    /// Empty for refresh tokens.
    pub jti: String,
    pub family_id: FamilyId,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

/// One live family, for ListSessions.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub family_id: FamilyId,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub created_at: OffsetDateTime,
    pub last_rotated_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub idle_expires_at: OffsetDateTime,
}

/// The token service's use cases over a store and a keyring.
pub struct Issuer<S> {
    store: S,
    keys: Keyring,
    policy: Policy,
}

impl<S: FamilyStore> Issuer<S> {
    pub fn new(store: S, keys: Keyring, policy: Policy) -> Self {
        Self { store, keys, policy }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Starts a family and returns its first pair.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when storage is down; [`Error::Internal`] otherwise.
    #[tracing::instrument(name = "issue", skip_all, fields(family_id = field::Empty))]
    pub async fn issue(&self, params: IssueParams, now: OffsetDateTime) -> Result<TokenPair, Error> {
        let expires_at = now + self.policy.family_ttl;
        let family = FamilyRecord {
            id: FamilyId::new_random(),
            subject: params.subject.as_str().to_owned(),
            client_id: params.client_id.as_str().to_owned(),
            scopes: params.scopes.as_slice().to_vec(),
            audiences: params.audiences.as_slice().to_vec(),
            claims: params.claims.as_map().clone(),
            created_at: now,
            last_rotated_at: now,
            refresh_expires_at: (now + self.policy.refresh_ttl).min(expires_at),
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
        self.store.create_family(&family, &first).await?;
        Ok(self.pair(&family, access_token, refresh_token, first.expires_at, now))
    }

    /// Spends a refresh token and returns the next pair of its family.
    ///
    /// # Errors
    /// [`Error::TokenInvalid`], [`Error::TokenExpired`], [`Error::TokenRevoked`],
    /// [`Error::TokenReused`] (after revoking the family), [`Error::Unavailable`].
    #[tracing::instrument(name = "rotate", skip_all, fields(family_id = field::Empty))]
    pub async fn rotate(&self, token: PresentedToken, now: OffsetDateTime) -> Result<TokenPair, Error> {
        let presented = RefreshToken::parse(token.expose()).ok_or(Error::TokenInvalid)?;
        let successor = RefreshToken::generate()?;
        let request = SpendRequest {
            presented: presented.hash(),
            successor: NewRefreshToken {
                hash: successor.hash(),
                expires_at: now + self.policy.refresh_ttl,
            },
            successor_seal: presented.seal(&successor),
            now,
        };
        let record = match self.store.spend(&request).await? {
            SpendOutcome::Spent {
                family,
                successor_expires_at,
            } => {
                Span::current().record("family_id", field::display(family.id));
                let access_token = self.mint(&family, now)?;
                return Ok(self.pair(&family, access_token, successor, successor_expires_at, now));
            }
            SpendOutcome::Refused(record) => record,
        };
        if let Some(record) = &record {
            Span::current().record("family_id", field::display(record.family.id));
        }
        match (rotation::judge(record.as_ref(), now, self.policy.reuse_grace), record) {
            (Verdict::Retry, Some(record)) => {
                let stored = record.successor.as_ref().and_then(|s| s.seal.map(|seal| (s, seal)));
                let Some((stored, seal)) = stored else {
                    return Err(Error::Internal("retry verdict without a sealed successor".into()));
                };
                let again = presented.unseal(&seal);
                if again.hash() != stored.hash {
                    return Err(Error::Internal("sealed successor does not match its hash".into()));
                }
                tracing::info!("refresh token presented again within the grace window; answering with its successor");
                let access_token = self.mint(&record.family, now)?;
                Ok(self.pair(&record.family, access_token, again, stored.expires_at, now))
            }
            (Verdict::Reuse { already_revoked }, Some(record)) => {
                let family = record.family.id;
                // Commit the revocation before answering: an error path must never lose it.
                if !already_revoked && self.store.revoke_family(family, now, RevokeReason::Reuse).await? {
                    tracing::warn!(target: "security", %family, subject = %record.family.subject,
                        "spent refresh token presented again: family revoked");
                } else {
                    tracing::warn!(target: "security", %family, subject = %record.family.subject,
                        "spent refresh token presented again: family was already revoked");
                }
                Err(Error::TokenReused { family })
            }
            (Verdict::Invalid, _) => Err(Error::TokenInvalid),
            (Verdict::Expired, _) => Err(Error::TokenExpired),
            (Verdict::Revoked, _) => Err(Error::TokenRevoked),
            (Verdict::Retry | Verdict::Reuse { .. } | Verdict::Inconsistent, _) => {
                Err(Error::Internal("a live refresh token could not be spent".into()))
            }
        }
    }

    /// Revokes the families `target` names; returns how many this call revoked. Unknown,
    /// invalid or already revoked targets count zero (RFC 7009 §2.2).
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    #[tracing::instrument(name = "revoke", skip_all)]
    pub async fn revoke(&self, target: RevokeTarget, now: OffsetDateTime) -> Result<u32, Error> {
        let family = match target {
            RevokeTarget::Family(id) => Some(id),
            RevokeTarget::Token(token) => self.family_of(&token).await?,
            RevokeTarget::Subject(subject) => {
                let count = self.store.revoke_subject(subject.as_str(), now).await?.len();
                tracing::info!(target: "security", subject = %subject.as_str(), count, "families revoked by subject");
                return Ok(u32::try_from(count).unwrap_or(u32::MAX));
            }
        };
        let Some(family) = family else { return Ok(0) };
        let revoked = self.store.revoke_family(family, now, RevokeReason::Revoke).await?;
        if revoked {
            tracing::info!(target: "security", %family, "family revoked");
        }
        Ok(u32::from(revoked))
    }

    /// The family a token belongs to, if it is one of ours. Access tokens count even after their
    /// `exp`: revoking a session with a stale token in hand must still work.
    async fn family_of(&self, token: &PresentedToken) -> Result<Option<FamilyId>, Error> {
        let text = token.expose();
        if RefreshToken::has_prefix(text) {
            let Some(refresh) = RefreshToken::parse(text) else {
                return Ok(None);
            };
            return Ok(self.store.refresh_token(&refresh.hash()).await?.map(|r| r.family.id));
        }
        Ok(self
            .keys
            .verify(text, &self.policy.issuer)
            .ok()
            .and_then(|claims| FamilyId::parse("sid", &claims.sid).ok()))
    }

    /// Whether `token` is live at `now` (RFC 7662): `None` for inactive, whatever the reason.
    ///
    /// # Errors
    /// [`Error::Unavailable`] only; a bad token is an answer, not an error.
    #[tracing::instrument(name = "introspect", skip_all)]
    pub async fn introspect(&self, token: PresentedToken, now: OffsetDateTime) -> Result<Option<ActiveToken>, Error> {
        let text = token.expose();
        if RefreshToken::has_prefix(text) {
            self.introspect_refresh(text, now).await
        } else {
            self.introspect_access(text, now).await
        }
    }

    async fn introspect_access(&self, text: &str, now: OffsetDateTime) -> Result<Option<ActiveToken>, Error> {
        let Ok(claims) = self.keys.verify(text, &self.policy.issuer) else {
            return Ok(None);
        };
        let now_secs = now.unix_timestamp();
        let skew = self.policy.leeway.whole_seconds();
        // exp is exact (inactive from its second on); only future nbf/iat get leeway.
        if now_secs >= claims.exp || claims.nbf > now_secs + skew || claims.iat > now_secs + skew {
            return Ok(None);
        }
        let Ok(family_id) = FamilyId::parse("sid", &claims.sid) else {
            return Ok(None);
        };
        let live = self
            .store
            .family_status(family_id)
            .await?
            .is_some_and(|status| !status.revoked && now < status.expires_at);
        Ok(live.then(|| ActiveToken {
            token_type: TokenType::Access,
            subject: claims.sub.clone(),
            scopes: claims
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            audiences: claims.aud.clone(),
            client_id: claims.client_id.clone(),
            issuer: claims.iss.clone(),
            jti: claims.jti.clone(),
            family_id,
            issued_at: claims.iat,
            expires_at: claims.exp,
        }))
    }

    async fn introspect_refresh(&self, text: &str, now: OffsetDateTime) -> Result<Option<ActiveToken>, Error> {
        let Some(refresh) = RefreshToken::parse(text) else {
            return Ok(None);
        };
        let Some(record) = self.store.refresh_token(&refresh.hash()).await? else {
            return Ok(None);
        };
        let family = record.family;
        let live = family.revoked_at.is_none()
            && record.spent_at.is_none()
            && now < record.expires_at
            && now < family.expires_at;
        Ok(live.then(|| ActiveToken {
            token_type: TokenType::Refresh,
            subject: family.subject,
            scopes: family.scopes,
            audiences: family.audiences,
            client_id: family.client_id,
            issuer: self.policy.issuer.clone(),
            jti: String::new(),
            family_id: family.id,
            issued_at: record.created_at.unix_timestamp(),
            expires_at: record.expires_at.unix_timestamp(),
        }))
    }

    /// The live sessions of `subject`, newest first.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    #[tracing::instrument(name = "list_sessions", skip_all)]
    pub async fn list_sessions(&self, subject: Subject, now: OffsetDateTime) -> Result<Vec<Session>, Error> {
        let families = self
            .store
            .live_families(subject.as_str(), now, MAX_SESSIONS_LISTED)
            .await?;
        Ok(families
            .into_iter()
            .map(|f| Session {
                family_id: f.id,
                client_id: f.client_id,
                scopes: f.scopes,
                created_at: f.created_at,
                last_rotated_at: f.last_rotated_at,
                expires_at: f.expires_at,
                idle_expires_at: f.refresh_expires_at,
            })
            .collect())
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
        (now + self.policy.access_ttl).min(family.expires_at).unix_timestamp()
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
