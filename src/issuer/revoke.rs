//! Revoke: end families, named by a token, by id, or by subject (RFC 7009 semantics: unknown or
//! already revoked targets are not an error, they count zero).

use time::OffsetDateTime;

use super::refresh_token::RefreshToken;
use super::types::{FamilyId, PresentedToken, RevokeTarget};
use super::{Error, Issuer};
use crate::store::{FamilyStore, Revocation, RevokeReason};

/// Families revoked per statement when revoking a subject: each batch commits on its own, so a
/// subject with 100k families never needs one statement long enough to hit the timeout.
pub const REVOKE_BATCH: u32 = 1000;

impl<S: FamilyStore> Issuer<S> {
    /// Revokes the families `target` names; returns how many this call revoked.
    ///
    /// # Errors
    /// [`Error::Unavailable`], [`Error::OutcomeUnknown`]. Revoking a subject goes in batches that
    /// each commit: after an error some of its families may be revoked already, and a retry
    /// finishes the job.
    #[tracing::instrument(name = "revoke", skip_all)]
    pub async fn revoke(&self, target: RevokeTarget, now: OffsetDateTime) -> Result<u32, Error> {
        let family = match target {
            RevokeTarget::Family(id) => Some(id),
            RevokeTarget::Token(token) => self.family_of(&token).await?,
            RevokeTarget::Subject(subject) => {
                let mut count = 0usize;
                loop {
                    let batch = self.store.revoke_subject(subject.as_str(), now, REVOKE_BATCH).await?;
                    count += batch.len();
                    if batch.len() < REVOKE_BATCH as usize {
                        break;
                    }
                }
                tracing::info!(target: "security", subject = %subject.as_str(), count, "families revoked by subject");
                return Ok(u32::try_from(count).unwrap_or(u32::MAX));
            }
        };
        let Some(family) = family else { return Ok(0) };
        let revoked = self.store.revoke_family(family, now, RevokeReason::Revoke).await? == Revocation::Revoked;
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
}
