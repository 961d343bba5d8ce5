//! Revoke: end families, named by a token, by id, or by subject (RFC 7009 semantics: unknown or
//! already revoked targets are not an error, they count zero).
//!
//! A call may be limited to some subjects ([`Subjects`], from the caller policy, which this layer
//! does not know): a family named by id or token whose subject is outside them counts zero, the
//! very answer an unknown family gets, so a caller learns nothing about families it may not
//! touch. (A subject named outright is the transport's to refuse, before this runs.)

use std::fmt;
use std::sync::Arc;

use time::OffsetDateTime;

use super::refresh_token::RefreshToken;
use super::types::{PresentedToken, RevokeTarget};
use super::{Error, Issuer};
use crate::domain::{Actor, FamilyId};
use crate::store::{FamilyStore, Revocation, RevokeReason, TargetKind};
use crate::telemetry::metrics::{self, Revoked};

/// Families revoked per statement when revoking a subject: each batch commits on its own, so a
/// subject with 100k families never needs one statement long enough to hit the timeout.
pub const REVOKE_BATCH: u32 = 1000;

/// Whose families a call may end when it names them by id or token.
#[derive(Clone)]
pub enum Subjects {
    /// Anyone's: nothing needs looking up.
    Any,
    /// Those of the subjects the predicate allows.
    Only(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl Subjects {
    pub fn only(allows: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self::Only(Arc::new(allows))
    }

    pub fn allows(&self, subject: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(allows) => allows(subject),
        }
    }
}

impl fmt::Debug for Subjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Any => "Subjects::Any",
            Self::Only(_) => "Subjects::Only(..)",
        })
    }
}

impl<S: FamilyStore> Issuer<S> {
    /// Revokes the families `target` names, of `subjects` only; returns how many this call
    /// revoked. The audit trail records each (`revoked`, with what `target` named) by `actor`.
    ///
    /// # Errors
    /// [`Error::Unavailable`], [`Error::OutcomeUnknown`]. Revoking a subject goes in batches that
    /// each commit: after an error some of its families may be revoked already, and a retry
    /// finishes the job.
    #[tracing::instrument(level = "debug", name = "revoke", skip_all)]
    pub async fn revoke(
        &self,
        target: RevokeTarget,
        subjects: Subjects,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<u32, Error> {
        let (named, counted_as) = match &target {
            RevokeTarget::Family(_) => (TargetKind::Family, Revoked::Family),
            RevokeTarget::Token(_) => (TargetKind::Token, Revoked::Token),
            RevokeTarget::Subject(_) => (TargetKind::Subject, Revoked::Subject),
        };
        let family = match target {
            RevokeTarget::Family(id) if matches!(subjects, Subjects::Any) => Some(id),
            RevokeTarget::Family(id) => {
                let subject = self.store.family_subject(id).await?;
                subject.and_then(|subject| within(&subjects, id, &subject))
            }
            RevokeTarget::Token(token) => self
                .family_of(&token)
                .await?
                .and_then(|(id, subject)| within(&subjects, id, &subject)),
            RevokeTarget::Subject(subject) => {
                let mut count = 0usize;
                loop {
                    let batch = self
                        .store
                        .revoke_subject(subject.as_str(), now, REVOKE_BATCH, actor)
                        .await?;
                    // Per batch: each commits on its own, and stays revoked if a later one fails.
                    metrics::revoked(counted_as, batch.len() as u64);
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
        let revoked = self
            .store
            .revoke_family(family, now, RevokeReason::Revoke(named), actor)
            .await?
            == Revocation::Revoked;
        if revoked {
            metrics::revoked(counted_as, 1);
            tracing::info!(target: "security", %family, "family revoked");
        }
        Ok(u32::from(revoked))
    }

    /// The family a token belongs to, and its subject, if it is one of ours. Access tokens count
    /// even after their `exp`: revoking a session with a stale token in hand must still work.
    async fn family_of(&self, token: &PresentedToken) -> Result<Option<(FamilyId, String)>, Error> {
        let text = token.expose();
        if RefreshToken::has_prefix(text) {
            let Some(refresh) = RefreshToken::parse(text) else {
                return Ok(None);
            };
            let record = self.store.refresh_token(&refresh.hash()).await?;
            return Ok(record.map(|r| (r.family.id, r.family.subject)));
        }
        Ok(self
            .keys
            .verify(text, &self.policy.issuer)
            .ok()
            .and_then(|claims| Some((FamilyId::parse("sid", &claims.sid).ok()?, claims.sub.clone()))))
    }
}

/// `family`, if `subject` (its subject) is one of `subjects`; else nothing, logged.
fn within(subjects: &Subjects, family: FamilyId, subject: &str) -> Option<FamilyId> {
    if subjects.allows(subject) {
        return Some(family);
    }
    tracing::warn!(target: "security", %family, subject, "revoke refused: the family's subject is outside the caller's subjects (answered as not found)");
    None
}
