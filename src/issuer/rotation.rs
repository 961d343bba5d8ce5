//! The rotation rules: why a refresh token that could not be spent was refused, and what to do.
//!
//! Pure: it looks at the stored state and the clock, and decides. The store has already tried
//! the atomic spend; this runs only when that did not happen.

use time::{Duration, OffsetDateTime};

use crate::store::RefreshTokenRecord;

/// What to do with a presented refresh token that was not spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Unknown token.
    Invalid,
    Expired,
    Revoked,
    /// A client retry within the grace window: answer again with the same successor.
    Retry,
    /// Theft: revoke the family (unless that already happened), then refuse.
    Reuse {
        already_revoked: bool,
    },
    /// Live, yet the spend did not happen: only a store bug can get here.
    Inconsistent,
}

/// Judges `presented` at `now` under a reuse grace window of `grace` (zero: strict).
///
/// A spent token is a retry or theft whatever else holds, because presenting it at all is the
/// signal; even when its family is already dead, the caller learns TOKEN_REUSED (64 clients racing
/// for one token: one wins, all 63 others hear "reused", whether or not the first loser already
/// revoked the family). Only a family past its absolute lifetime is simply over. An unspent token
/// is refused for its family's revocation or for expiry.
pub fn judge(presented: Option<&RefreshTokenRecord>, now: OffsetDateTime, grace: Duration) -> Verdict {
    let Some(token) = presented else {
        return Verdict::Invalid;
    };
    let family = &token.family;
    if let Some(spent_at) = token.spent_at {
        if family.revoked_at.is_some() {
            return Verdict::Reuse { already_revoked: true };
        }
        if now >= family.expires_at {
            return Verdict::Expired;
        }
        // Only the *latest* spend can be retried: once the successor is itself spent (or gone),
        // the family has moved on and an answer with that successor would branch it.
        let retry = grace.is_positive()
            && now < spent_at + grace
            && token
                .successor
                .as_ref()
                .is_some_and(|s| !s.spent && s.seal.is_some() && now < s.expires_at);
        return if retry {
            Verdict::Retry
        } else {
            Verdict::Reuse { already_revoked: false }
        };
    }
    if family.revoked_at.is_some() {
        Verdict::Revoked
    } else if now >= family.expires_at || now >= token.expires_at {
        Verdict::Expired
    } else {
        Verdict::Inconsistent
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::domain::{FamilyId, Seal, TokenHash};
    use crate::store::{FamilyRecord, Successor};

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
    }

    fn token() -> RefreshTokenRecord {
        RefreshTokenRecord {
            family: FamilyRecord {
                id: FamilyId::new_random(),
                subject: "alice".into(),
                client_id: String::new(),
                scopes: vec![],
                audiences: vec!["api".into()],
                claims: Map::new(),
                created_at: t(0),
                last_rotated_at: t(0),
                refresh_expires_at: t(100),
                expires_at: t(1000),
                revoked_at: None,
            },
            created_at: t(0),
            expires_at: t(100),
            spent_at: None,
            successor: None,
        }
    }

    fn spent_at(at: i64, successor_spent: bool) -> RefreshTokenRecord {
        let mut token = token();
        token.spent_at = Some(t(at));
        token.successor = Some(Successor {
            hash: TokenHash([1; 32]),
            seal: Some(Seal([2; 32])),
            expires_at: t(at + 100),
            spent: successor_spent,
        });
        token
    }

    #[test]
    fn unknown_revoked_and_expired_tokens() {
        assert_eq!(judge(None, t(0), Duration::ZERO), Verdict::Invalid);
        let mut revoked = token();
        revoked.family.revoked_at = Some(t(6));
        assert_eq!(judge(Some(&revoked), t(7), Duration::ZERO), Verdict::Revoked);
        let mut spent_then_revoked = spent_at(5, false);
        spent_then_revoked.family.revoked_at = Some(t(6));
        assert_eq!(
            judge(Some(&spent_then_revoked), t(7), Duration::seconds(60)),
            Verdict::Reuse { already_revoked: true }
        );
        assert_eq!(judge(Some(&token()), t(100), Duration::ZERO), Verdict::Expired);
        assert_eq!(
            judge(Some(&spent_at(5, false)), t(1000), Duration::ZERO),
            Verdict::Expired
        );
        assert_eq!(judge(Some(&token()), t(99), Duration::ZERO), Verdict::Inconsistent);
    }

    #[test]
    fn a_spent_token_is_reuse_unless_retried_within_the_grace_window() {
        let grace = Duration::seconds(10);
        assert_eq!(
            judge(Some(&spent_at(5, false)), t(6), Duration::ZERO),
            Verdict::Reuse { already_revoked: false }
        );
        assert_eq!(judge(Some(&spent_at(5, false)), t(14), grace), Verdict::Retry);
        assert_eq!(
            judge(Some(&spent_at(5, false)), t(15), grace),
            Verdict::Reuse { already_revoked: false }
        );
        // the family moved on: the successor was spent too
        assert_eq!(
            judge(Some(&spent_at(5, true)), t(6), grace),
            Verdict::Reuse { already_revoked: false }
        );
        // spent, then idle-expired: still theft
        assert_eq!(
            judge(Some(&spent_at(5, false)), t(500), Duration::ZERO),
            Verdict::Reuse { already_revoked: false }
        );
    }
}
