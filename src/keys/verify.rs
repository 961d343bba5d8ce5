//! Verifying access tokens we signed.
//!
//! Only the signature, the header and `iss` are checked here; the time claims are left to the
//! caller, which owns the clock (jsonwebtoken would read the system clock and, by default, allow
//! 60 seconds of leeway on `exp`, which RFC 9068 does not want for our own tokens).
//!
//! A verified token comes back as a [`VerifiedToken`]: the registered claims only. The caller's
//! extra claims are skipped while parsing, never allocated: nothing that verifies needs them, and
//! kept in the cache they cost far more memory than the token text (8 KiB of small claims parse
//! into over 100 KiB of maps and strings).

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use serde::Deserialize;

use super::{Keyring, mint::ACCESS_TOKEN_TYP};

/// Why a token is not a valid access token of ours. Deliberately coarse: callers answer
/// "inactive" or TOKEN_INVALID for all of these, and details stay in debug logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a JWT, or an algorithm or type we do not issue")]
    Malformed,
    #[error("signed by a key we do not know")]
    UnknownKey,
    #[error("bad signature or claims")]
    Rejected,
}

/// What a verified access token says, as Introspect and Revoke need it: the claims of
/// [`AccessClaims`](super::AccessClaims) without the extra ones. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VerifiedToken {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub scope: String,
    /// The family (session) id.
    pub sid: String,
}

impl VerifiedToken {
    /// Bytes on the heap behind this value (not counting allocator overhead).
    pub(super) fn heap_bytes(&self) -> usize {
        let strings = [&self.iss, &self.sub, &self.jti, &self.client_id, &self.scope, &self.sid];
        strings.iter().map(|s| s.capacity()).sum::<usize>()
            + self.aud.capacity() * size_of::<String>()
            + self.aud.iter().map(String::capacity).sum::<usize>()
    }
}

impl Keyring {
    /// Checks that `token` is an access token signed by one of our keys for `issuer`, and returns
    /// its registered claims. `exp`, `nbf` and `iat` are *not* checked.
    ///
    /// # Errors
    /// See [`VerifyError`].
    pub fn verify(&self, token: &str, issuer: &str) -> Result<Arc<VerifiedToken>, VerifyError> {
        let Some(cache) = &self.verified else {
            return self.verify_signature(token, issuer).map(Arc::new);
        };
        if let Some(verified) = cache.get(token)
            && verified.iss == issuer
        {
            return Ok(verified);
        }
        // Only valid tokens are remembered: garbage cannot crowd out real entries.
        let verified = Arc::new(self.verify_signature(token, issuer)?);
        if super::entry_bytes(token, &verified) <= self.verified_entry_limit {
            cache.insert(token.to_owned(), verified.clone());
        }
        Ok(verified)
    }

    /// [`verify`](Self::verify) without the cache: always checks the signature.
    ///
    /// # Errors
    /// See [`VerifyError`].
    pub fn verify_signature(&self, token: &str, issuer: &str) -> Result<VerifiedToken, VerifyError> {
        // `alg: none` and every algorithm but EdDSA fail here or at the check below, before any
        // key is chosen (RFC 8725 §3.1).
        let header = decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(VerifyError::Malformed);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(VerifyError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.set_issuer(&[issuer]);
        decode::<VerifiedToken>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|_| VerifyError::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::Map;

    use super::*;
    use crate::keys::{AccessClaims, SigningKey};

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "https://issuer.test".into(),
            sub: "alice".into(),
            aud: vec!["api".into()],
            exp: 2_000_000_000,
            iat: 1_000,
            nbf: 1_000,
            jti: "j1".into(),
            client_id: "web".into(),
            scope: "read write".into(),
            sid: "s1".into(),
            extra: Map::from_iter([("tenant".to_string(), serde_json::json!("acme"))]),
        }
    }

    /// What verifying a token minted from `claims` must give back.
    fn verified(claims: &AccessClaims) -> VerifiedToken {
        VerifiedToken {
            iss: claims.iss.clone(),
            sub: claims.sub.clone(),
            aud: claims.aud.clone(),
            exp: claims.exp,
            iat: claims.iat,
            nbf: claims.nbf,
            jti: claims.jti.clone(),
            client_id: claims.client_id.clone(),
            scope: claims.scope.clone(),
            sid: claims.sid.clone(),
        }
    }

    /// Claims carrying `count` small extra claims (`"k0001": "v"`, 12 bytes of JSON each).
    fn with_small_claims(jti: usize, count: usize) -> AccessClaims {
        let extra = (0..count).map(|i| (format!("k{i:04}"), serde_json::json!("v")));
        AccessClaims {
            jti: format!("j{jti}"),
            extra: extra.collect(),
            ..claims()
        }
    }

    fn keyring_with_cache(bytes: usize) -> Keyring {
        Keyring::new(SigningKey::generate().unwrap().0, bytes)
    }

    fn cached_entries(keys: &Keyring) -> usize {
        keys.verified.as_ref().map_or(0, quick_cache::sync::Cache::len)
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let keys = Keyring::generate().unwrap();
        let token = keys.sign(&claims()).unwrap();
        assert_eq!(
            *keys.verify(&token, "https://issuer.test").unwrap(),
            verified(&claims())
        );
        assert_eq!(cached_entries(&keys), 1);
        // the second time from the cache, same answer
        assert_eq!(
            *keys.verify(&token, "https://issuer.test").unwrap(),
            verified(&claims())
        );
        let header = decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(keys.active_kid()));
    }

    #[test]
    fn wrong_issuer_other_key_tampering_and_alg_none_are_rejected() {
        let keys = Keyring::generate().unwrap();
        let token = keys.sign(&claims()).unwrap();
        keys.verify(&token, "https://issuer.test").unwrap(); // cached now
        assert!(keys.verify(&token, "https://other.test").is_err());
        assert!(
            Keyring::generate()
                .unwrap()
                .verify(&token, "https://issuer.test")
                .is_err()
        );

        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims();
        forged.sub = "mallory".into();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], body, parts[2]);
        assert_eq!(
            keys.verify(&tampered, "https://issuer.test"),
            Err(VerifyError::Rejected)
        );

        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
        assert_eq!(
            keys.verify(&format!("{none}.{body}."), "https://issuer.test"),
            Err(VerifyError::Malformed)
        );
        assert!(keys.verify("garbage", "https://issuer.test").is_err());
    }

    #[test]
    fn the_cache_stays_within_its_byte_budget_however_large_the_tokens() {
        // Entries of ~12 KiB (650 small claims), under the 16 KiB entry limit: 200 of them would
        // need twice the budget.
        const BUDGET: usize = 1024 * 1024;
        let keys = keyring_with_cache(BUDGET);
        for jti in 0..200 {
            let token = keys.sign(&with_small_claims(jti, 650)).unwrap();
            keys.verify(&token, "https://issuer.test").unwrap();
        }
        let cache = keys.verified.as_ref().unwrap();
        assert!(cache.len() > 40, "it still caches: {} entries", cache.len());
        assert!(cache.weight() <= BUDGET as u64, "{} bytes cached", cache.weight());
    }

    #[test]
    fn tokens_heavier_than_a_64th_of_the_budget_verify_but_are_not_cached() {
        let keys = keyring_with_cache(64 * 4096);
        let heavy = keys.sign(&with_small_claims(1, 650)).unwrap();
        assert_eq!(
            *keys.verify(&heavy, "https://issuer.test").unwrap(),
            verified(&with_small_claims(1, 650))
        );
        assert_eq!(cached_entries(&keys), 0);
        let light = keys.sign(&claims()).unwrap();
        keys.verify(&light, "https://issuer.test").unwrap();
        assert_eq!(cached_entries(&keys), 1);
    }

    #[test]
    fn a_zero_budget_verifies_every_time_and_caches_nothing() {
        let keys = keyring_with_cache(0);
        let token = keys.sign(&claims()).unwrap();
        assert_eq!(
            *keys.verify(&token, "https://issuer.test").unwrap(),
            verified(&claims())
        );
        assert_eq!(
            *keys.verify(&token, "https://issuer.test").unwrap(),
            verified(&claims())
        );
        assert!(keys.verified.is_none());
    }
}
