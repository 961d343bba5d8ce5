//! Authorize: may the bearer of this access token pass, given what the route requires? The
//! decision behind Envoy's ext_authz Check (`grpc/authz.rs`), without anything of Envoy's.
//!
//! The token is judged exactly as Introspect judges an access token (one function,
//! `Issuer::judge_access`), with the same caches; then the route's requirements: every required
//! scope granted, and the required audience among the token's. A refresh token is never a bearer
//! credential here: it fails verification like any other non-JWT.
//!
//! What it leaves out: reading HTTP headers (the transport finds the token) and saying *why* a
//! token is invalid (a denial names no detail that helps an attacker).

use time::OffsetDateTime;

use super::introspect::ActiveToken;
use super::types::{MAX_LIST_LEN, MAX_NAME_BYTES, PresentedToken, Scopes};
use super::{Error, Issuer};
use crate::domain::FieldError;
use crate::store::FamilyStore;

/// Longest `required_scopes` text: [`MAX_LIST_LEN`] scopes of [`MAX_NAME_BYTES`], space-separated.
pub const MAX_REQUIRED_SCOPES_BYTES: usize = MAX_LIST_LEN * (MAX_NAME_BYTES + 1);

/// What a route requires of a token beyond being live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// All required (RFC 6750 §3: "the required scope").
    scopes: Scopes,
    audience: Option<String>,
}

impl Requirements {
    /// `scopes`: space-separated scope tokens, all required; `audience`: one audience the token
    /// must carry. Either may be empty (no requirement).
    ///
    /// # Errors
    /// Too long, too many scopes, a scope outside RFC 6749's scope-token set, or an audience over
    /// [`MAX_NAME_BYTES`] or holding a control character.
    pub fn parse(scopes: &str, audience: &str) -> Result<Self, FieldError> {
        if scopes.len() > MAX_REQUIRED_SCOPES_BYTES {
            return Err(FieldError::new(
                "required_scopes",
                format!("must be at most {MAX_REQUIRED_SCOPES_BYTES} bytes"),
            ));
        }
        let words: Vec<String> = scopes
            .split_ascii_whitespace()
            .take(MAX_LIST_LEN + 1)
            .map(str::to_owned)
            .collect();
        let scopes = Scopes::parse(words).map_err(|e| FieldError::new(format!("required_{}", e.field), e.problem))?;
        let audience = match audience.trim() {
            "" => None,
            a if a.len() > MAX_NAME_BYTES => {
                return Err(FieldError::new(
                    "audience",
                    format!("must be at most {MAX_NAME_BYTES} bytes"),
                ));
            }
            a if a.chars().any(|c| c.is_control()) => {
                return Err(FieldError::new("audience", "must not contain control characters"));
            }
            a => Some(a.to_owned()),
        };
        Ok(Self { scopes, audience })
    }

    pub fn scopes(&self) -> &[String] {
        self.scopes.as_slice()
    }

    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow(ActiveToken),
    Deny(Denial),
}

/// Why a request is refused; deliberately coarse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Malformed, unknown, forged, expired or revoked: RFC 6750 `invalid_token`.
    InvalidToken,
    /// A live token without every required scope, or without the required audience: RFC 6750
    /// `insufficient_scope`. `missing_scopes` is empty when only the audience falls short.
    InsufficientScope { missing_scopes: Vec<String> },
}

impl<S: FamilyStore> Issuer<S> {
    /// Whether the bearer of `token` meets `requirements` at `now`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] (or [`Error::Internal`]) when the token's family had to be looked
    /// up and storage did not answer; every problem with the token is a [`Denial`].
    #[tracing::instrument(level = "debug", name = "authorize", skip_all)]
    pub async fn authorize(
        &self,
        token: &PresentedToken,
        requirements: &Requirements,
        now: OffsetDateTime,
    ) -> Result<Decision, Error> {
        let Some(active) = self.judge_access(token.expose(), now).await? else {
            return Ok(Decision::Deny(Denial::InvalidToken));
        };
        Ok(judge_requirements(active, requirements))
    }
}

/// The route's requirements against a live token.
fn judge_requirements(active: ActiveToken, requirements: &Requirements) -> Decision {
    let missing_scopes: Vec<String> = requirements
        .scopes()
        .iter()
        .filter(|scope| !active.scopes.contains(scope))
        .cloned()
        .collect();
    let audience_ok = requirements
        .audience()
        .is_none_or(|audience| active.audiences.iter().any(|a| a == audience));
    if missing_scopes.is_empty() && audience_ok {
        Decision::Allow(active)
    } else {
        Decision::Deny(Denial::InsufficientScope { missing_scopes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FamilyId;
    use crate::issuer::introspect::TokenType;

    fn active(scopes: &[&str], audiences: &[&str]) -> ActiveToken {
        ActiveToken {
            token_type: TokenType::Access,
            subject: "alice".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
            client_id: "web".into(),
            issuer: "https://issuer.test".into(),
            jti: "j".into(),
            family_id: FamilyId::new_random(),
            issued_at: 0,
            expires_at: 1,
        }
    }

    #[test]
    fn no_requirements_allow_any_live_token() {
        let token = active(&[], &["api"]);
        assert_eq!(
            judge_requirements(token.clone(), &Requirements::default()),
            Decision::Allow(token)
        );
    }

    #[test]
    fn every_required_scope_must_be_granted_and_the_missing_ones_are_named() {
        let required = Requirements::parse("read  write admin", "").unwrap();
        let token = active(&["read", "write", "other"], &["api"]);
        assert_eq!(
            judge_requirements(token, &required),
            Decision::Deny(Denial::InsufficientScope {
                missing_scopes: vec!["admin".into()]
            })
        );
        let token = active(&["admin", "write", "read"], &["api"]);
        assert!(matches!(judge_requirements(token, &required), Decision::Allow(_)));
    }

    #[test]
    fn the_required_audience_must_be_among_the_tokens() {
        let required = Requirements::parse("", "orders").unwrap();
        assert_eq!(
            judge_requirements(active(&[], &["api", "billing"]), &required),
            Decision::Deny(Denial::InsufficientScope { missing_scopes: vec![] })
        );
        assert!(matches!(
            judge_requirements(active(&[], &["api", "orders"]), &required),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn requirements_are_bounded_and_must_be_scope_tokens() {
        assert!(Requirements::parse(&"a ".repeat(MAX_LIST_LEN), "").is_ok());
        let many: String = (0..=MAX_LIST_LEN).map(|i| format!("s{i} ")).collect();
        assert_eq!(Requirements::parse(&many, "").unwrap_err().field, "required_scopes");
        assert!(Requirements::parse(&"x".repeat(MAX_REQUIRED_SCOPES_BYTES + 1), "").is_err());
        assert!(
            Requirements::parse("say\"hi\"", "").is_err(),
            "a quote would break the challenge"
        );
        assert!(Requirements::parse("", &"a".repeat(MAX_NAME_BYTES + 1)).is_err());
        assert!(Requirements::parse("", "a\u{7}b").is_err());
        assert_eq!(Requirements::parse(" ", " ").unwrap(), Requirements::default());
    }
}
