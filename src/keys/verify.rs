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

use jsonwebtoken::{Validation, decode, decode_header};
use serde::Deserialize;

use super::{KeySet, Keyring, mint::ACCESS_TOKEN_TYP};
use crate::telemetry::metrics::{self, Cache};

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
        let generation = self.current.load();
        let Some(cache) = generation.verified.as_ref() else {
            return verify_signature(&generation.keys, token, issuer).map(Arc::new);
        };
        if let Some(verified) = cache.get(token)
            && verified.iss == issuer
        {
            metrics::cache_hit(Cache::Verified);
            return Ok(verified);
        }
        metrics::cache_miss(Cache::Verified);
        // Only valid tokens are remembered: garbage cannot crowd out real entries.
        let verified = Arc::new(verify_signature(&generation.keys, token, issuer)?);
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
        verify_signature(&self.current.load().keys, token, issuer)
    }
}

fn verify_signature(keys: &KeySet, token: &str, issuer: &str) -> Result<VerifiedToken, VerifyError> {
    let header = decode_header(token).map_err(|_| VerifyError::Malformed)?;
    // RFC 7515 §4.1.11: a `crit` extension must be understood, and we issue and understand none.
    if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) || header.crit.is_some() {
        return Err(VerifyError::Malformed);
    }
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| keys.by_kid.get(kid))
        .ok_or(VerifyError::UnknownKey)?;
    // The algorithm is the key's, never the token's: `alg: none`, HS256 signed with a public key
    // and any other algorithm fail here (RFC 8725 §3.1), before any signature is checked.
    let alg = key.alg().jwt();
    if header.alg != alg {
        return Err(VerifyError::Malformed);
    }
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.set_issuer(&[issuer]);
    decode::<VerifiedToken>(token, &key.decoding, &validation)
        .map(|data| data.claims)
        .map_err(|_| VerifyError::Rejected)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::Map;

    use super::*;
    use crate::keys::{AccessClaims, KeyAlgorithm, KeySet, SigningKey};

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

    fn key(alg: KeyAlgorithm) -> SigningKey {
        SigningKey::generate(alg).unwrap().0
    }

    fn keyring_with_cache(bytes: usize) -> Keyring {
        Keyring::new(KeySet::single(key(KeyAlgorithm::EdDSA)), bytes)
    }

    fn cached_entries(keys: &Keyring) -> usize {
        Option::as_ref(&keys.current.load().verified).map_or(0, quick_cache::sync::Cache::len)
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
        assert_eq!(header.kid.as_deref(), Some(keys.active_kid().as_str()));
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
        let generation = keys.current.load();
        let cache = Option::as_ref(&generation.verified).unwrap();
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
        assert!(keys.current.load().verified.is_none());
    }

    #[test]
    fn every_algorithm_signs_tokens_that_verify_and_no_other_algorithm_is_accepted_for_its_key() {
        for alg in KeyAlgorithm::ALL {
            let keys = Keyring::new(KeySet::single(key(alg)), 0);
            let token = keys.sign(&claims()).unwrap();
            assert_eq!(decode_header(&token).unwrap().alg, alg.jwt());
            assert_eq!(
                *keys.verify(&token, "https://issuer.test").unwrap(),
                verified(&claims())
            );
            // The same token claiming another algorithm (the signature unchanged) is refused
            // before any signature is checked.
            let (_, rest) = token.split_once('.').unwrap();
            for other in ["EdDSA", "ES256", "RS256", "HS256", "none"]
                .into_iter()
                .filter(|o| *o != alg.name())
            {
                let header = format!(r#"{{"alg":"{other}","typ":"at+jwt","kid":"{}"}}"#, keys.active_kid());
                let forged = format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header));
                assert!(keys.verify(&forged, "https://issuer.test").is_err(), "{alg} as {other}");
            }
        }
    }

    #[test]
    fn hs256_signed_with_the_published_public_key_is_refused() {
        use aws_lc_rs::hmac;
        let keys = Keyring::new(KeySet::single(key(KeyAlgorithm::RS256)), 0);
        // The attacker's "secret" is what anyone can fetch: the JWKS text of the key.
        let public = keys.jwks().json.clone();
        let header = format!(r#"{{"alg":"HS256","typ":"at+jwt","kid":"{}"}}"#, keys.active_kid());
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
        let input = format!("{}.{body}", URL_SAFE_NO_PAD.encode(header));
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, public.as_bytes()), input.as_bytes());
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(keys.verify(&forged, "https://issuer.test"), Err(VerifyError::Malformed));
    }

    #[test]
    fn a_rotation_keeps_published_keys_verifying_and_a_retired_key_stops_at_once_even_cached() {
        let (old, old_der) = SigningKey::generate(KeyAlgorithm::EdDSA).unwrap();
        let old_copy = || SigningKey::from_pkcs8_der(&old_der).unwrap();
        let (_, new_der) = SigningKey::generate(KeyAlgorithm::ES256).unwrap();
        let new_copy = || SigningKey::from_pkcs8_der(&new_der).unwrap();
        let keys = Keyring::new(KeySet::single(old), DEFAULT_CACHE);
        let before = keys.sign(&claims()).unwrap();
        keys.verify(&before, "https://issuer.test").unwrap(); // cached

        // generate: the new key is published, the old one still signs
        let change = keys.replace(KeySet::new(old_copy(), [new_copy()]));
        assert_eq!(
            (change.added.len(), change.removed.len(), change.activated),
            (1, 0, None)
        );
        assert_eq!(keys.jwks().json.matches("\"kid\"").count(), 2);
        // activate: new tokens carry the new kid, old ones still verify
        let change = keys.replace(KeySet::new(new_copy(), [old_copy()]));
        assert_eq!(change.activated.as_deref(), Some(new_der_kid(&new_der).as_str()));
        let after = keys.sign(&claims()).unwrap();
        assert_ne!(decode_header(&after).unwrap().kid, decode_header(&before).unwrap().kid);
        assert!(keys.verify(&before, "https://issuer.test").is_ok());
        assert!(keys.verify(&after, "https://issuer.test").is_ok());
        // retire the old key: its tokens stop verifying, although one was cached
        let change = keys.replace(KeySet::single(new_copy()));
        assert_eq!(change.removed.len(), 1);
        assert_eq!(
            keys.verify(&before, "https://issuer.test"),
            Err(VerifyError::UnknownKey)
        );
        assert!(keys.verify(&after, "https://issuer.test").is_ok());
        // the same set again changes nothing
        assert!(keys.replace(KeySet::single(new_copy())).is_empty());
    }

    const DEFAULT_CACHE: usize = 1024 * 1024;

    fn new_der_kid(der: &[u8]) -> String {
        SigningKey::from_pkcs8_der(der).unwrap().kid().to_owned()
    }
}
