//! Rotate: spend a refresh token, answer with the next pair of its family.
//!
//! The store's spend is the one atomic step (see [`crate::store::SpendRequest`]): it spends a
//! live token, or — for a spent one that is neither a grace-window retry nor a second delivery
//! of this request — revokes the family in the same statement. What is left here is explaining a
//! refusal ([`rotation::judge`]), answering a retry from the seal, and logging what happened.

use time::OffsetDateTime;
use tracing::{Span, field};

use super::refresh_token::RefreshToken;
use super::rotation::{self, Verdict};
use super::types::PresentedToken;
use super::{Error, Issuer, TokenPair, later};
use crate::domain::Actor;
use crate::store::{
    FamilyStore, NewRefreshToken, RefreshTokenRecord, Revocation, RevokeReason, SpendOutcome, SpendRequest,
};
use crate::telemetry::metrics::{self, Revoked};

impl<S: FamilyStore> Issuer<S> {
    /// Spends a refresh token and returns the next pair of its family. The audit trail records a
    /// reuse detection, and the rotation itself with [`super::Policy::audit_rotations`], by
    /// `actor`.
    ///
    /// # Errors
    /// [`Error::TokenInvalid`], [`Error::TokenExpired`], [`Error::TokenRevoked`],
    /// [`Error::TokenReused`] (the family is revoked by then), [`Error::RotateLimited`] (nothing
    /// was spent: the family rotates too fast), [`Error::Unavailable`] (nothing was
    /// spent), [`Error::OutcomeUnknown`] (storage stopped answering and the spend may have
    /// happened).
    #[tracing::instrument(level = "debug", name = "rotate", skip_all, fields(family_id = field::Empty))]
    pub async fn rotate(&self, token: PresentedToken, actor: &Actor, now: OffsetDateTime) -> Result<TokenPair, Error> {
        let presented = RefreshToken::parse(token.expose()).ok_or(Error::TokenInvalid)?;
        let successor = RefreshToken::generate()?;
        let grace = self.policy.reuse_grace;
        let request = SpendRequest {
            presented: presented.hash(),
            successor: NewRefreshToken {
                hash: successor.hash(),
                expires_at: later(now, self.policy.refresh_ttl)?,
            },
            // Without a grace window nothing will ever need to open it: keep none.
            successor_seal: grace.is_positive().then(|| presented.seal(&successor, &self.secret)),
            now,
            retry_after: now
                .checked_sub(grace)
                .ok_or_else(|| Error::Internal("time arithmetic out of range".into()))?,
            audit_rotation: self.policy.audit_rotations,
            rotate_limit: self.policy.rotate_limit,
        };
        let (record, revoked_for_reuse) = match self.store.spend(&request, actor).await? {
            SpendOutcome::Spent {
                family,
                successor_expires_at,
            } => {
                Span::current().record("family_id", field::display(family.id));
                metrics::rotated();
                let access_token = self.mint(&family, now)?;
                return Ok(self.pair(&family, access_token, successor, successor_expires_at, now));
            }
            SpendOutcome::Refused {
                token,
                revoked_for_reuse,
            } => (token, revoked_for_reuse),
            SpendOutcome::Limited { family, retry_at } => {
                Span::current().record("family_id", field::display(family));
                return Err(Error::RotateLimited {
                    family,
                    retry_after: (retry_at - now).try_into().unwrap_or(std::time::Duration::ZERO),
                });
            }
        };
        if let Some(record) = &record {
            Span::current().record("family_id", field::display(record.family.id));
        }
        match (rotation::judge(record.as_ref(), now, grace), record) {
            (Verdict::Retry, Some(record)) if !revoked_for_reuse => self.answer_retry(&presented, &record, now),
            (Verdict::Reuse { already_revoked }, Some(record)) => Err(self
                .reuse(&record, actor, now, already_revoked, revoked_for_reuse)
                .await),
            (verdict, Some(record)) if revoked_for_reuse => {
                // The statement revoked the family but the rules saw no reuse: a bug, but the
                // family is revoked either way, and that is what the caller must hear.
                tracing::error!(?verdict, family = %record.family.id, "the spend statement revoked a family for reuse that the rotation rules did not judge reuse");
                metrics::revoked(Revoked::Reuse, 1);
                Err(Error::TokenReused {
                    family: record.family.id,
                })
            }
            (Verdict::Invalid, _) => Err(Error::TokenInvalid),
            (Verdict::Expired, _) => Err(Error::TokenExpired),
            (Verdict::Revoked, _) => Err(Error::TokenRevoked),
            (Verdict::Retry | Verdict::Reuse { .. } | Verdict::Inconsistent, _) => {
                Err(Error::Internal("a live refresh token could not be spent".into()))
            }
        }
    }

    /// A retry within the grace window: the same successor as the first answer, opened from its
    /// seal, and a fresh access token.
    fn answer_retry(
        &self,
        presented: &RefreshToken,
        record: &RefreshTokenRecord,
        now: OffsetDateTime,
    ) -> Result<TokenPair, Error> {
        let stored = record.successor.as_ref().and_then(|s| s.seal.map(|seal| (s, seal)));
        let Some((stored, seal)) = stored else {
            return Err(Error::Internal("retry verdict without a sealed successor".into()));
        };
        let again = presented.unseal(&seal, &self.secret);
        if again.hash() != stored.hash {
            // The seal was made under another server secret: replicas that do not share it, or
            // a secret changed within the grace window.
            return Err(Error::Internal(
                "sealed successor does not open: was the server secret (RATCHET_SEAL_KEY or the signing key) changed, or do replicas differ?".into(),
            ));
        }
        tracing::info!(family = %record.family.id, "refresh token presented again within the grace window; answering with its successor");
        let access_token = self.mint(&record.family, now)?;
        Ok(self.pair(&record.family, access_token, again, stored.expires_at, now))
    }

    /// A spent token presented again: the family must end up revoked, and the security log say
    /// so. Normally the spend statement did it (`revoked_by_store`) or it was revoked before.
    async fn reuse(
        &self,
        record: &RefreshTokenRecord,
        actor: &Actor,
        now: OffsetDateTime,
        already_revoked: bool,
        revoked_by_store: bool,
    ) -> Error {
        let family = record.family.id;
        let subject = &record.family.subject;
        metrics::reuse_detected();
        if revoked_by_store {
            metrics::revoked(Revoked::Reuse, 1);
            tracing::warn!(target: "security", %family, %subject, "spent refresh token presented again: family revoked");
        } else if already_revoked {
            tracing::warn!(target: "security", %family, %subject, "spent refresh token presented again: family was already revoked");
        } else {
            // The rules and the statement disagree (a bug): never leave the family live.
            tracing::error!(%family, "the rotation rules judged reuse that the spend statement did not act on; revoking the family now");
            match self.store.revoke_family(family, now, RevokeReason::Reuse, actor).await {
                Ok(Revocation::Revoked) => metrics::revoked(Revoked::Reuse, 1),
                Ok(_) => {}
                Err(error) => return error.into(),
            }
            tracing::warn!(target: "security", %family, %subject, "spent refresh token presented again: family revoked");
        }
        Error::TokenReused { family }
    }
}
