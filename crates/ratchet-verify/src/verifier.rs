//! [`Verifier`]: checks a token the way ratchet's Introspect does, with the key set from
//! [`crate::cache`].
//!
//! The order of the checks matters: the header is judged (type, algorithm) before any key is
//! chosen, the key is chosen by `kid` only and must have been published for the token's `alg`,
//! and no claim is looked at before the signature verified, so an unsigned token learns nothing
//! about what we would accept. What this deliberately leaves out: revocation. A local verifier
//! cannot know a session was revoked; tokens are short-lived for that reason, and a service that
//! must know calls ratchet's Introspect.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::Uri;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation, decode, decode_header};

use crate::cache::{KeyCache, Trigger, run_refresher};
use crate::claims::Claims;
use crate::config::{Builder, Expectations, RefreshPolicy};
use crate::error::{ConfigError, FetchError, VerifyError};
use crate::fetch::Fetcher;

/// Tokens longer than this are refused unread. ratchet's largest (8 KiB of extra claims) take
/// about 11 KiB; gRPC metadata is usually capped at 16 KiB anyway.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Verifies ratchet access tokens locally. Cheap to clone (an `Arc`); clones share the key set and
/// its background refresh, which stops when the last clone is dropped.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let verifier = ratchet_verify::Verifier::builder("http://ratchet:8080/.well-known/jwks.json", "ratchet")
///     .audience("billing")
///     .build()?;
/// verifier.refresh().await?; // optional: fail fast when the key set cannot be fetched
/// let claims = verifier.verify("eyJ...").await?;
/// println!("{} may {:?}", claims.sub, claims.scopes().collect::<Vec<_>>());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    expect: Expectations,
    keys: Arc<KeyCache>,
    url: Uri,
    refresher: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("jwks_url", &self.inner.url)
            .field("issuer", &self.inner.expect.issuer)
            .field("audiences", &self.inner.expect.audiences)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier of tokens issued by `issuer` (exactly the `iss` ratchet is configured with,
    /// `RATCHET_ISSUER`), with keys from `jwks_url` (ratchet's
    /// `http://<RATCHET_HTTP_LISTEN>/.well-known/jwks.json`), every other setting at its default.
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    /// See [`Builder::build`].
    pub fn new(jwks_url: &str, issuer: &str) -> Result<Self, ConfigError> {
        Self::builder(jwks_url, issuer).build()
    }

    /// Like [`new`](Self::new), with the other settings to choose; see [`Builder`].
    pub fn builder(jwks_url: impl Into<String>, issuer: impl Into<String>) -> Builder {
        Builder::new(jwks_url, issuer)
    }

    pub(crate) fn start(
        runtime: &tokio::runtime::Handle,
        url: Uri,
        fetcher: Fetcher,
        policy: RefreshPolicy,
        expect: Expectations,
    ) -> Self {
        let keys = Arc::new(KeyCache::new(url.clone(), fetcher, policy, expect.algorithms.clone()));
        let refresher = runtime.spawn(run_refresher(keys.clone())).abort_handle();
        Self {
            inner: Arc::new(Inner {
                expect,
                keys,
                url,
                refresher,
            }),
        }
    }

    /// Fetches the key set now (sharing a fetch already under way) and says whether that worked.
    /// Not needed for verifying; useful at startup to wait for the keys or to fail fast.
    ///
    /// # Errors
    /// The fetch failed; the last good key set, if any, is still served.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        self.inner.keys.refresh(Trigger::Manual).await
    }

    /// Verifies `token` now (the system clock). May wait for a key set fetch when the token names
    /// a `kid` we do not hold.
    ///
    /// # Errors
    /// Why the token is not valid; see [`VerifyError`].
    pub async fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX));
        self.verify_at(token, now).await
    }

    /// Verifies `token` as of `now` (Unix seconds).
    ///
    /// # Errors
    /// Why the token is not valid; see [`VerifyError`].
    pub async fn verify_at(&self, token: &str, now: i64) -> Result<Claims, VerifyError> {
        let expect = &self.inner.expect;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::Malformed);
        }
        // `alg: none` (not an Algorithm) and other unparsable headers fail here.
        let header = decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if !header.typ.as_deref().is_some_and(is_access_token_type) {
            return Err(VerifyError::WrongType);
        }
        // RFC 7515 §4.1.11: a `crit` extension must be understood, and we understand none.
        if header.crit.is_some() {
            return Err(VerifyError::Malformed);
        }
        // Before any key is looked at (RFC 8725 §3.1): HMAC is never in this list.
        if !expect.algorithms.contains(&header.alg) {
            return Err(VerifyError::DisallowedAlgorithm);
        }
        let kid = header.kid.as_deref().ok_or(VerifyError::UnknownKey)?;
        let key = self.inner.keys.key(kid).await?;
        if key.alg != header.alg {
            return Err(VerifyError::DisallowedAlgorithm);
        }
        let claims = decode::<Claims>(token, &key.decoding, &validation(key.alg))
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidSignature => VerifyError::BadSignature,
                ErrorKind::InvalidAlgorithm => VerifyError::DisallowedAlgorithm,
                _ => VerifyError::Malformed,
            })?
            .claims;
        if claims.iss != expect.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        if !expect.audiences.is_empty() && !claims.aud.iter().any(|aud| expect.audiences.contains(aud)) {
            return Err(VerifyError::WrongAudience);
        }
        // RFC 7519 §4.1.4: valid only *before* exp; the leeway extends that.
        if now >= claims.exp.saturating_add(expect.leeway) {
            return Err(VerifyError::Expired);
        }
        // Like Introspect, a token issued in the future is not valid yet either.
        let horizon = now.saturating_add(expect.leeway);
        if claims.nbf.is_some_and(|nbf| nbf > horizon) || claims.iat > horizon {
            return Err(VerifyError::NotYetValid);
        }
        Ok(claims)
    }
}

/// RFC 9068 §4: "at+jwt" or "application/at+jwt"; media types compare case-insensitively
/// (RFC 7515 §4.1.9, RFC 2045 §5.1). ratchet itself writes `at+jwt`.
fn is_access_token_type(typ: &str) -> bool {
    let short = typ
        .get(.."application/".len())
        .filter(|prefix| prefix.eq_ignore_ascii_case("application/"))
        .map_or(typ, |_| &typ["application/".len()..]);
    short.eq_ignore_ascii_case("at+jwt")
}

/// The signature check and the claims' presence and types; iss, aud and time are checked by
/// [`Verifier::verify_at`] itself (jsonwebtoken reads the system clock and would accept an `iss`
/// array holding ours).
fn validation(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_rfc_9068_spellings_of_the_type_are_accepted_in_any_case() {
        for typ in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"] {
            assert!(is_access_token_type(typ), "{typ}");
        }
        for typ in [
            "JWT",
            "jwt",
            "application/jwt",
            "at+jwt ",
            "x/at+jwt",
            "",
            "application/",
            "applicationat+jwt",
        ] {
            assert!(!is_access_token_type(typ), "{typ}");
        }
    }
}
