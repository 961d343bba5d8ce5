//! Introspect (RFC 7662): is a token live right now? A bad token is an answer (inactive), not an
//! error.

use time::OffsetDateTime;

use super::refresh_token::RefreshToken;
use super::types::PresentedToken;
use super::{Error, Issuer};
use crate::domain::FamilyId;
use crate::store::FamilyStore;

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

impl<S: FamilyStore> Issuer<S> {
    /// Whether `token` is live at `now` (RFC 7662): `None` for inactive, whatever the reason.
    ///
    /// # Errors
    /// [`Error::Unavailable`] only; a bad token is an answer, not an error.
    #[tracing::instrument(level = "debug", name = "introspect", skip_all)]
    pub async fn introspect(&self, token: PresentedToken, now: OffsetDateTime) -> Result<Option<ActiveToken>, Error> {
        let text = token.expose();
        if RefreshToken::has_prefix(text) {
            self.introspect_refresh(text, now).await
        } else {
            self.judge_access(text, now).await
        }
    }

    /// Whether `text` is a live access token of ours at `now`: signature, `typ` and `iss`
    /// (through the verified-token cache), exact `exp`, `nbf`/`iat` within the leeway, and its
    /// family not revoked (through the family cache: a hot token costs no database query).
    /// Introspect and the ext_authz Check ([`super::authorize`]) both judge with this, so that
    /// the two cannot drift apart.
    pub(super) async fn judge_access(&self, text: &str, now: OffsetDateTime) -> Result<Option<ActiveToken>, Error> {
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
}
